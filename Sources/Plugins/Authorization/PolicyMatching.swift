import Kernel

/// The facts of one connection that L4 rules look at, computed once per decision so that
/// evaluating thousands of policies does not rebuild strings per policy.
///
/// Identity facts come only from an mTLS peer: a plaintext connection has no principal,
/// namespace or service account, so a positive identity field never matches it and a
/// `not…` identity field always does (there is nothing to exclude). That is ztunnel's
/// behaviour, and it is why Istio's "require mTLS" recipe (`DENY` with
/// `notPrincipals: ["*"]`) blocks plaintext.
struct ConnectionFacts: Sendable {
    /// `trust-domain/ns/NS/sa/SA` (no `spiffe://`), nil for plaintext.
    var principal: String?
    /// The peer's namespace, nil for plaintext.
    var namespace: String?
    /// `NS/SA`, nil for plaintext.
    var serviceAccount: String?
    var sourceIP: IPAddress
    var destinationIP: IPAddress
    var destinationPort: UInt16

    init(_ attributes: ConnectionAttributes) {
        let identity = attributes.authenticatedIdentity
        principal = identity?.principal
        namespace = identity?.namespace
        serviceAccount = identity.map { "\($0.namespace)/\($0.serviceAccount)" }
        sourceIP = attributes.sourceAddress.ip
        destinationIP = attributes.destinationAddress.ip
        destinationPort = attributes.destinationAddress.port
    }
}

/// Rule matching with ztunnel's L4 semantics: rules OR → clauses AND → matches OR; a
/// policy with no rules never matches; a rule with no clauses matches; a clause with no
/// matches matches; a match with every field empty is skipped (it cannot make its clause
/// match); within a match every non-empty field must hold, a field holds when any value
/// matches, and a `not…` field holds when no value matches.
enum PolicyMatching {
    /// The index of the first rule of `policy` that matches, nil when none does.
    static func firstMatchingRule(_ policy: AuthorizationPolicy, _ facts: ConnectionFacts) -> Int? {
        // `firstIndex(where:)`, `allSatisfy` and `contains(where:)` lend elements to the
        // closure; a `for` loop would copy each match (a dozen array references) out.
        policy.rules.firstIndex { ruleMatches($0, facts) }
    }

    static func ruleMatches(_ rule: [[PolicyMatch]], _ facts: ConnectionFacts) -> Bool {
        rule.allSatisfy { clauseMatches($0, facts) }
    }

    static func clauseMatches(_ clause: [PolicyMatch], _ facts: ConnectionFacts) -> Bool {
        clause.isEmpty || clause.contains { !$0.isEmpty && matchHolds($0, facts) }
    }

    static func matchHolds(_ match: PolicyMatch, _ facts: ConnectionFacts) -> Bool {
        // Spelled out rather than looping over `Field.allCases`: this is the innermost
        // loop of every decision, and the cheap checks (ports, addresses) go first.
        Field.destinationPorts.holds(match, facts) && Field.sourceIPs.holds(match, facts)
            && Field.destinationIPs.holds(match, facts) && Field.principals.holds(match, facts)
            && Field.namespaces.holds(match, facts) && Field.serviceAccounts.holds(match, facts)
    }

    /// The fields of a match, in the order explanations name them.
    enum Field: CaseIterable {
        case principals, namespaces, serviceAccounts, sourceIPs, destinationIPs, destinationPorts

        /// Whether both the positive and the `not…` list of this field hold.
        func holds(_ match: PolicyMatch, _ facts: ConnectionFacts) -> Bool {
            switch self {
            case .principals:
                return check(match.principals, match.notPrincipals) { $0.matchesBytes(facts.principal) }
            case .namespaces:
                return check(match.namespaces, match.notNamespaces) { $0.matchesBytes(facts.namespace) }
            case .serviceAccounts:
                return check(match.serviceAccounts, match.notServiceAccounts) { $0.matchesBytes(facts.serviceAccount) }
            case .sourceIPs:
                return check(match.sourceIPs, match.notSourceIPs) { $0.contains(facts.sourceIP) }
            case .destinationIPs:
                return check(match.destinationIPs, match.notDestinationIPs) { $0.contains(facts.destinationIP) }
            case .destinationPorts:
                return check(match.destinationPorts, match.notDestinationPorts) { $0 == facts.destinationPort }
            }
        }

        @inline(__always)
        private func check<T>(_ positive: [T], _ negative: [T], _ predicate: (T) -> Bool) -> Bool {
            (positive.isEmpty || positive.contains(where: predicate))
                && (negative.isEmpty || !negative.contains(where: predicate))
        }

        /// Why this field fails for the connection (nil when it holds), in words.
        func failure(_ match: PolicyMatch, _ facts: ConnectionFacts) -> String? {
            if holds(match, facts) { return nil }
            func list<T>(_ values: [T], _ show: (T) -> String) -> String {
                "[" + values.map(show).joined(separator: ", ") + "]"
            }
            func describe(_ name: String, _ positive: String, _ negative: String, _ value: String?, positiveFails: Bool) -> String {
                let seen = value ?? "none (plaintext has no identity)"
                return positiveFails ? "\(name) \(positive) do not match \(seen)" : "not\(name.prefix(1).uppercased())\(name.dropFirst()) \(negative) match \(seen)"
            }
            switch self {
            case .principals:
                let fails = !match.principals.isEmpty && !match.principals.contains { $0.matchesBytes(facts.principal) }
                return describe(
                    "principals", list(match.principals, Self.show), list(match.notPrincipals, Self.show), facts.principal,
                    positiveFails: fails)
            case .namespaces:
                let fails = !match.namespaces.isEmpty && !match.namespaces.contains { $0.matchesBytes(facts.namespace) }
                return describe(
                    "namespaces", list(match.namespaces, Self.show), list(match.notNamespaces, Self.show), facts.namespace,
                    positiveFails: fails)
            case .serviceAccounts:
                let fails =
                    !match.serviceAccounts.isEmpty && !match.serviceAccounts.contains { $0.matchesBytes(facts.serviceAccount) }
                return describe(
                    "serviceAccounts", list(match.serviceAccounts, Self.show), list(match.notServiceAccounts, Self.show),
                    facts.serviceAccount, positiveFails: fails)
            case .sourceIPs:
                let fails = !match.sourceIPs.isEmpty && !match.sourceIPs.contains { $0.contains(facts.sourceIP) }
                return fails
                    ? "sourceIps \(list(match.sourceIPs, \.description)) do not contain \(facts.sourceIP)"
                    : "notSourceIps \(list(match.notSourceIPs, \.description)) contain \(facts.sourceIP)"
            case .destinationIPs:
                let fails = !match.destinationIPs.isEmpty && !match.destinationIPs.contains { $0.contains(facts.destinationIP) }
                return fails
                    ? "destinationIps \(list(match.destinationIPs, \.description)) do not contain \(facts.destinationIP)"
                    : "notDestinationIps \(list(match.notDestinationIPs, \.description)) contain \(facts.destinationIP)"
            case .destinationPorts:
                let fails = !match.destinationPorts.isEmpty && !match.destinationPorts.contains(facts.destinationPort)
                return fails
                    ? "destinationPorts \(list(match.destinationPorts, \.description)) do not include \(facts.destinationPort)"
                    : "notDestinationPorts \(list(match.notDestinationPorts, \.description)) include \(facts.destinationPort)"
            }
        }

        /// A string match written the way Istio users write it.
        static func show(_ match: StringMatch) -> String {
            switch match {
            case .exact(let value): return value
            case .prefix(let value): return value + "*"
            case .suffix(let value): return "*" + value
            case .presence: return "*"
            }
        }
    }

    /// Why no rule of `policy` matches, one line per rule (`rule 0: clause 1: …`).
    static func explainMismatch(_ policy: AuthorizationPolicy, _ facts: ConnectionFacts) -> [String] {
        if policy.rules.isEmpty { return ["has no rules, so it matches nothing"] }
        return policy.rules.enumerated().map { index, rule in
            for (clauseIndex, clause) in rule.enumerated() where !clauseMatches(clause, facts) {
                let reasons = clause.map { match -> String in
                    if match.isEmpty { return "an empty match (skipped)" }
                    return Field.allCases.compactMap { $0.failure(match, facts) }.joined(separator: "; ")
                }
                return "rule \(index): clause \(clauseIndex): " + reasons.joined(separator: " | ")
            }
            return "rule \(index): matches"
        }
    }

    /// What a matching rule required, in words (`principals [a], destinationPorts [80]`),
    /// or "an empty rule (matches every connection)".
    static func describeRule(_ rule: [[PolicyMatch]]) -> String {
        let clauses = rule.compactMap { clause -> String? in
            let matches = clause.filter { !$0.isEmpty }.map(describe)
            if matches.isEmpty { return clause.isEmpty ? nil : "(no usable match)" }
            return matches.count == 1 ? matches[0] : "any of {" + matches.joined(separator: "} {") + "}"
        }
        return clauses.isEmpty ? "an empty rule (matches every connection)" : clauses.joined(separator: " and ")
    }

    static func describe(_ match: PolicyMatch) -> String {
        var parts: [String] = []
        func add<T>(_ name: String, _ values: [T], _ show: (T) -> String) {
            if !values.isEmpty { parts.append("\(name) [" + values.map(show).joined(separator: ", ") + "]") }
        }
        add("principals", match.principals, Field.show)
        add("notPrincipals", match.notPrincipals, Field.show)
        add("namespaces", match.namespaces, Field.show)
        add("notNamespaces", match.notNamespaces, Field.show)
        add("serviceAccounts", match.serviceAccounts, Field.show)
        add("notServiceAccounts", match.notServiceAccounts, Field.show)
        add("sourceIps", match.sourceIPs, \.description)
        add("notSourceIps", match.notSourceIPs, \.description)
        add("destinationIps", match.destinationIPs, \.description)
        add("notDestinationIps", match.notDestinationIPs, \.description)
        add("destinationPorts", match.destinationPorts, \.description)
        add("notDestinationPorts", match.notDestinationPorts, \.description)
        return parts.joined(separator: ", ")
    }
}

extension StringMatch {
    /// ``StringMatch/matches(_:)`` with a length check first, which rejects most
    /// candidates before a character comparison. A missing or empty value never matches.
    @inline(__always)
    func matchesBytes(_ value: String?) -> Bool {
        guard let value, !value.isEmpty else { return false }
        switch self {
        case .exact(let expected): return value == expected
        case .prefix(let prefix): return value.utf8.count >= prefix.utf8.count && value.hasPrefix(prefix)
        case .suffix(let suffix): return value.utf8.count >= suffix.utf8.count && value.hasSuffix(suffix)
        case .presence: return true
        }
    }
}
