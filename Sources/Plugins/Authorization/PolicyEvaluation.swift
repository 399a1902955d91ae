public import Kernel

/// The outcome of evaluating a connection against a ``PolicyIndex``.
public struct PolicyEvaluation: Sendable {
    /// A dry-run policy that matched: logged, never enforced.
    public struct DryRunMatch: Sendable, Equatable, CustomStringConvertible {
        /// `namespace/name`.
        public var policy: String
        /// What it would do.
        public var action: AuthorizationPolicy.Action
        /// The matching rule.
        public var rule: Int

        /// Creates a match record.
        public init(policy: String, action: AuthorizationPolicy.Action, rule: Int) {
            self.policy = policy
            self.action = action
            self.rule = rule
        }

        public var description: String { "\(policy) (\(action.rawValue.uppercased()), rule \(rule))" }
    }

    /// The enforced decision (dry-run policies left out).
    public var decision: AuthorizationDecision
    /// The destination workload the policies were chosen for; nil when unknown.
    public var destination: Workload?
    /// Dry-run policies that matched.
    public var dryRunMatches: [DryRunMatch]
    /// The decision had dry-run policies been enforced; nil when no dry-run policy applies.
    public var dryRunDecision: AuthorizationDecision?
}

extension PolicyIndex {
    /// Evaluates one connection, in Istio's order:
    /// 1. dry-run policies are evaluated and only reported (``PolicyEvaluation/dryRunMatches``);
    /// 2. any matching DENY policy denies;
    /// 3. with no ALLOW policy applying, the connection is allowed;
    /// 4. any matching ALLOW policy allows;
    /// 5. otherwise it is denied.
    ///
    /// The destination is the attributes' workload, refreshed from `mesh` by uid (labels
    /// may have changed since the connection opened), else the workload at the
    /// destination address. An unknown destination is denied: a node proxy only serves
    /// workloads it knows.
    public func evaluate(_ attributes: ConnectionAttributes, mesh: MeshSnapshot) -> PolicyEvaluation {
        guard let workload = Self.destination(of: attributes, in: mesh) else {
            return PolicyEvaluation(
                decision: .deny(reason: "destination \(attributes.destinationAddress.ip) is not a workload of this mesh"),
                destination: nil, dryRunMatches: [], dryRunDecision: nil)
        }
        return evaluate(attributes, destination: workload)
    }

    /// Evaluates one connection to a known destination workload (see
    /// ``evaluate(_:mesh:)``).
    public func evaluate(_ attributes: ConnectionAttributes, destination workload: Workload) -> PolicyEvaluation {
        let facts = ConnectionFacts(attributes)
        let buckets = buckets(for: workload)
        let decision = Self.decide(buckets, facts, workload: workload, enforceDryRun: false)
        var dryRunMatches: [PolicyEvaluation.DryRunMatch] = []
        var dryRunDecision: AuthorizationDecision?
        if buckets.contains(where: { !$0.dryRun.isEmpty }) {
            for bucket in buckets {
                for candidate in bucket.dryRun {
                    if let rule = PolicyMatching.firstMatchingRule(candidate.policy, facts) {
                        dryRunMatches.append(.init(policy: candidate.key, action: candidate.policy.action, rule: rule))
                    }
                }
            }
            dryRunDecision = Self.decide(buckets, facts, workload: workload, enforceDryRun: true)
        }
        return PolicyEvaluation(
            decision: decision, destination: workload, dryRunMatches: dryRunMatches, dryRunDecision: dryRunDecision)
    }

    static func destination(of attributes: ConnectionAttributes, in mesh: MeshSnapshot) -> Workload? {
        if let known = attributes.destinationWorkload {
            return mesh.workloads[known.uid] ?? known
        }
        return mesh.workload(at: attributes.destinationAddress.ip)
    }

    private static func decide(
        _ buckets: [PolicyBucket], _ facts: ConnectionFacts, workload: Workload, enforceDryRun: Bool
    ) -> AuthorizationDecision {
        // Walk the buckets in place: a decision allocates nothing per policy.
        func candidates(_ action: AuthorizationPolicy.Action) -> [[IndexedPolicy]] {
            buckets.flatMap { bucket -> [[IndexedPolicy]] in
                let enforced = action == .deny ? bucket.deny : bucket.allow
                return enforceDryRun ? [enforced, bucket.dryRun.filter { $0.policy.action == action }] : [enforced]
            }
        }
        let denies = candidates(.deny)
        for list in denies {
            for candidate in list {
                if let rule = PolicyMatching.firstMatchingRule(candidate.policy, facts) {
                    return .deny(
                        policy: candidate.key, rule: rule,
                        reason: "DENY policy \(candidate.key) rule \(rule) matches")
                }
            }
        }
        let allowLists = candidates(.allow)
        if allowLists.allSatisfy(\.isEmpty) {
            return .allow(
                reason: denies.allSatisfy(\.isEmpty)
                    ? "no policy applies to \(workload.namespace)/\(workload.name)"
                    : "no DENY policy matches and no ALLOW policy applies to \(workload.namespace)/\(workload.name)")
        }
        for list in allowLists {
            for candidate in list {
                if let rule = PolicyMatching.firstMatchingRule(candidate.policy, facts) {
                    return .allow(
                        policy: candidate.key, rule: rule,
                        reason: "ALLOW policy \(candidate.key) rule \(rule) matches")
                }
            }
        }
        let allows = allowLists.flatMap { $0 }
        let names = allows.prefix(5).map(\.key).joined(separator: ", ") + (allows.count > 5 ? ", …" : "")
        return .deny(
            reason: "ALLOW policies apply to \(workload.namespace)/\(workload.name) and none matches (\(allows.count): \(names))")
    }

    /// Why each applicable policy did or did not match, for `ambit policy check`: one
    /// entry per policy in evaluation order.
    public func explain(_ attributes: ConnectionAttributes, destination workload: Workload) -> [PolicyExplanation] {
        let facts = ConnectionFacts(attributes)
        let origin = peerAuthenticationOrigin(for: workload)
        return buckets(for: workload).flatMap { $0.deny + $0.allow + $0.dryRun }.map { candidate in
            let rule = PolicyMatching.firstMatchingRule(candidate.policy, facts)
            var details = rule.map { ["rule \($0) matches: " + PolicyMatching.describeRule(candidate.policy.rules[$0])] }
                ?? PolicyMatching.explainMismatch(candidate.policy, facts)
            if let origin, isDerived(candidate.key) { details.append("derived from " + origin) }
            return PolicyExplanation(policy: candidate.policy, matchingRule: rule, details: details)
        }
    }
}

/// One applicable policy and why it matched or not.
public struct PolicyExplanation: Sendable {
    /// The policy.
    public var policy: AuthorizationPolicy
    /// The first matching rule, nil when none matches.
    public var matchingRule: Int?
    /// One line per rule (or one for the matching rule).
    public var details: [String]

    /// `default/allow-sleep (ALLOW, Namespace)`.
    public var summary: String {
        let scope: String
        switch policy.scope {
        case .global: scope = "Global"
        case .namespace: scope = "Namespace"
        case .workloadSelector(let labels):
            scope = labels.isEmpty
                ? "WorkloadSelector by name"
                : "WorkloadSelector " + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",")
        }
        return "\(policy.key) (\(policy.action.rawValue.uppercased())\(policy.dryRun ? ", dry-run" : ""), \(scope))"
    }
}
