/// A string condition in an authorization rule.
public enum StringMatch: Sendable, Hashable, Codable {
    /// Equal to the value.
    case exact(String)
    /// Starts with the value.
    case prefix(String)
    /// Ends with the value.
    case suffix(String)
    /// Any non-empty value is present.
    case presence

    /// Whether `value` satisfies the condition; a missing value never does.
    public func matches(_ value: String?) -> Bool {
        guard let value, !value.isEmpty else { return false }
        switch self {
        case .exact(let expected): return value == expected
        case .prefix(let prefix): return value.hasPrefix(prefix)
        case .suffix(let suffix): return value.hasSuffix(suffix)
        case .presence: return true
        }
    }
}

extension StringMatch {
    /// The match as a principal condition: a leading `spiffe://` on an exact or prefix
    /// value is dropped, since principals are matched without it
    /// (`cluster.local/ns/a/sa/b`). Every mesh source (the local file, xDS) writes
    /// principals through this, so the same policy gives the same match.
    public var asPrincipal: StringMatch {
        switch self {
        case .exact(let text) where text.hasPrefix("spiffe://"): .exact(String(text.dropFirst(9)))
        case .prefix(let text) where text.hasPrefix("spiffe://"): .prefix(String(text.dropFirst(9)))
        default: self
        }
    }

    /// The condition "the service account is `serviceAccount` in `namespace`", matched
    /// against `namespace/serviceAccount` (ztunnel's `ServiceAccountMatch`).
    public static func serviceAccount(namespace: String, serviceAccount: String) -> StringMatch {
        .exact("\(namespace)/\(serviceAccount)")
    }
}

/// One match of a clause: every non-empty field must hold (fields AND), each field holds
/// when any of its values matches (values OR); `not…` fields must match none.
public struct PolicyMatch: Sendable, Hashable, Codable {
    public var namespaces: [StringMatch] = []
    public var notNamespaces: [StringMatch] = []
    public var principals: [StringMatch] = []
    public var notPrincipals: [StringMatch] = []
    public var serviceAccounts: [StringMatch] = []
    public var notServiceAccounts: [StringMatch] = []
    public var sourceIPs: [CIDR] = []
    public var notSourceIPs: [CIDR] = []
    public var destinationIPs: [CIDR] = []
    public var notDestinationIPs: [CIDR] = []
    public var destinationPorts: [UInt16] = []
    public var notDestinationPorts: [UInt16] = []

    /// An empty match (skipped during evaluation).
    public init() {}

    /// True when every field is empty: such a match is skipped.
    public var isEmpty: Bool {
        namespaces.isEmpty && notNamespaces.isEmpty && principals.isEmpty && notPrincipals.isEmpty
            && serviceAccounts.isEmpty && notServiceAccounts.isEmpty && sourceIPs.isEmpty
            && notSourceIPs.isEmpty && destinationIPs.isEmpty && notDestinationIPs.isEmpty
            && destinationPorts.isEmpty && notDestinationPorts.isEmpty
    }
}

/// An L4 authorization policy in the node proxy's internal form (ztunnel's local-config
/// shape): rules OR → clauses AND → matches OR.
public struct AuthorizationPolicy: Sendable, Hashable, Codable {
    /// Where a policy applies.
    public enum Scope: Sendable, Hashable, Codable {
        /// Every workload in the mesh.
        case global
        /// Every workload in the policy's namespace.
        case namespace
        /// Workloads in the policy's namespace whose labels include all of these (and
        /// workloads that name the policy in their own policy list).
        case workloadSelector([String: String])
    }

    /// What a matching policy does.
    public enum Action: String, Sendable, Hashable, Codable {
        /// Matching connections are allowed.
        case allow = "Allow"
        /// Matching connections are denied.
        case deny = "Deny"
    }

    /// Policy name.
    public var name: String
    /// Policy namespace.
    public var namespace: String
    /// Where it applies.
    public var scope: Scope
    /// Allow or deny.
    public var action: Action
    /// Dry-run policies are evaluated and logged only.
    public var dryRun: Bool
    /// rules (OR) → clauses (AND) → matches (OR).
    public var rules: [[[PolicyMatch]]]

    /// Creates a policy.
    public init(
        name: String, namespace: String, scope: Scope, action: Action, dryRun: Bool = false,
        rules: [[[PolicyMatch]]]
    ) {
        self.name = name
        self.namespace = namespace
        self.scope = scope
        self.action = action
        self.dryRun = dryRun
        self.rules = rules
    }

    /// `namespace/name`, the key workloads use to refer to a policy.
    public var key: String { "\(namespace)/\(name)" }
}
