public import Kernel

/// An immutable set of L4 authorization policies, indexed so that finding the policies
/// of a destination costs lookups, not a scan: a decision's cost grows with the
/// policies that apply to the destination, never with unrelated ones.
///
/// Which policies apply to a destination workload:
/// - `Global` scope policies (from any namespace; Istio policies without a selector in
///   the root namespace translate to this);
/// - `Namespace` scope policies of the workload's namespace;
/// - `WorkloadSelector` policies of the workload's namespace whose labels are all among
///   the workload's labels; a selector policy in the root namespace selects workloads in
///   every namespace (Istio's rule); a selector with no labels selects by name only;
/// - `WorkloadSelector` policies the workload names in its `authorizationPolicies` list
///   (`namespace/name`, how ztunnel's control plane attaches them);
/// - the DENY policies istiod derives from `PeerAuthentication` for the workload's
///   effective mTLS mode (`<root>/istio_converted_static_strict` for STRICT,
///   `<ns>/converted_peer_authentication_<name>` for port-level modes).
///
/// Thread-safe (immutable); build a new index when policies change.
public final class PolicyIndex: Sendable {
    /// The namespace whose selector-less policies are mesh-wide.
    public let rootNamespace: String
    /// Every policy, in the order given.
    public let policies: [AuthorizationPolicy]

    private let global: PolicyBucket
    private let byNamespace: [String: PolicyBucket]
    /// Selector policies by namespace (the root namespace's apply everywhere), then by one
    /// of their labels, so only policies that could select a workload are looked at.
    private let selectors: [String: [LabelPair: [IndexedPolicy]]]
    /// Selector policies by `namespace/name`, for workloads' policy lists.
    private let byKey: [String: [IndexedPolicy]]
    /// PeerAuthentication, and the policies derived from it by key.
    let peerAuthentication: PeerAuthenticationPolicies
    private let derived: [String: IndexedPolicy]

    /// Indexes `policies` and the policies derived from `peerAuthentications`. Duplicate
    /// `namespace/name` keys are kept (both apply).
    public init(
        _ policies: [AuthorizationPolicy], peerAuthentications: [PeerAuthentication] = [],
        rootNamespace: String = "istio-system"
    ) {
        self.rootNamespace = rootNamespace
        self.policies = policies
        let peer = PeerAuthenticationPolicies(peerAuthentications, rootNamespace: rootNamespace)
        peerAuthentication = peer
        var derived: [String: IndexedPolicy] = [:]
        for (offset, policy) in ([peer.staticStrict] + peer.converted.values.sorted { $0.key < $1.key }).enumerated() {
            derived[policy.key] = IndexedPolicy(policy, order: policies.count + offset)
        }
        self.derived = derived
        var global: [IndexedPolicy] = []
        var namespaces: [String: [IndexedPolicy]] = [:]
        var selectors: [String: [LabelPair: [IndexedPolicy]]] = [:]
        var byKey: [String: [IndexedPolicy]] = [:]
        for (order, policy) in policies.enumerated() {
            let indexed = IndexedPolicy(policy, order: order)
            switch policy.scope {
            case .global:
                global.append(indexed)
            case .namespace:
                namespaces[policy.namespace, default: []].append(indexed)
            case .workloadSelector(let labels):
                byKey[indexed.key, default: []].append(indexed)
                // The smallest label pair is as good a key as any: a workload must carry
                // all of them, so it carries this one.
                if let first = labels.min(by: { ($0.key, $0.value) < ($1.key, $1.value) }) {
                    selectors[policy.namespace, default: [:]][LabelPair(key: first.key, value: first.value), default: []]
                        .append(indexed)
                }
            }
        }
        self.global = PolicyBucket(global)
        self.byNamespace = namespaces.mapValues(PolicyBucket.init)
        self.selectors = selectors
        self.byKey = byKey
    }

    /// The policies that apply to `workload`, in evaluation order (global, namespace,
    /// selected), dry-run ones included.
    public func applicable(to workload: Workload) -> [AuthorizationPolicy] {
        buckets(for: workload).flatMap { $0.all }.sorted { $0.order < $1.order }.map(\.policy)
    }

    func buckets(for workload: Workload) -> [PolicyBucket] {
        var buckets = [global]
        if let namespace = byNamespace[workload.namespace] { buckets.append(namespace) }
        var selected: [IndexedPolicy] = []
        var seen: Set<ObjectIdentifier> = []
        func consider(_ candidate: IndexedPolicy) {
            guard seen.insert(ObjectIdentifier(candidate)).inserted else { return }
            selected.append(candidate)
        }
        if !workload.labels.isEmpty {
            let spaces = workload.namespace == rootNamespace ? [rootNamespace] : [workload.namespace, rootNamespace]
            for space in spaces {
                guard let byLabel = selectors[space] else { continue }
                for (key, value) in workload.labels {
                    guard let candidates = byLabel[LabelPair(key: key, value: value)] else { continue }
                    for candidate in candidates where candidate.selects(workload.labels) { consider(candidate) }
                }
            }
        }
        for key in workload.authorizationPolicies {
            for candidate in byKey[key] ?? [] { consider(candidate) }
        }
        if !peerAuthentication.isEmpty,
            let attached = peerAuthentication.attached(namespace: workload.namespace, labels: workload.labels)
        {
            for policy in attached.policies {
                if let candidate = derived[policy.key] { consider(candidate) }
            }
        }
        if !selected.isEmpty { buckets.append(PolicyBucket(selected.sorted { $0.order < $1.order })) }
        return buckets
    }
}

extension PolicyIndex {
    /// How the workload's PeerAuthentication mode was reached (which mesh, namespace and
    /// workload policies), nil when no PeerAuthentication applies to it.
    public func peerAuthenticationOrigin(for workload: Workload) -> String? {
        guard !peerAuthentication.isEmpty else { return nil }
        return peerAuthentication.attached(namespace: workload.namespace, labels: workload.labels)?.origin
    }

    /// Whether `key` names a policy derived from PeerAuthentication.
    func isDerived(_ key: String) -> Bool { derived[key] != nil }
}

/// A label `key=value`.
struct LabelPair: Hashable, Sendable {
    var key: String
    var value: String
}

/// A policy with what the hot path needs precomputed, shared by reference.
final class IndexedPolicy: Sendable {
    let policy: AuthorizationPolicy
    let key: String
    let order: Int
    let selector: [String: String]

    init(_ policy: AuthorizationPolicy, order: Int) {
        self.policy = policy
        self.key = policy.key
        self.order = order
        if case .workloadSelector(let labels) = policy.scope {
            selector = labels
        } else {
            selector = [:]
        }
    }

    func selects(_ labels: [String: String]) -> Bool {
        selector.allSatisfy { labels[$0.key] == $0.value }
    }
}

/// Policies of one scope split by how they are evaluated.
final class PolicyBucket: Sendable {
    let deny: [IndexedPolicy]
    let allow: [IndexedPolicy]
    let dryRun: [IndexedPolicy]

    init(_ policies: [IndexedPolicy]) {
        deny = policies.filter { !$0.policy.dryRun && $0.policy.action == .deny }
        allow = policies.filter { !$0.policy.dryRun && $0.policy.action == .allow }
        dryRun = policies.filter { $0.policy.dryRun }
    }

    var all: [IndexedPolicy] { deny + allow + dryRun }
}
