/// What a policy sees of one connection.
public struct ConnectionAttributes: Sendable {
    /// The peer's authenticated identity; nil for plaintext. Policies trust it only when
    /// ``isMutualTLS`` is true.
    public var sourceIdentity: SpiffeID?
    /// The source address.
    public var sourceAddress: SocketAddr
    /// The source workload, when known.
    public var sourceWorkload: Workload?
    /// The destination address (after service resolution): the workload's address and
    /// the port the workload listens on.
    public var destinationAddress: SocketAddr
    /// The destination workload, when known.
    public var destinationWorkload: Workload?
    /// Whether the connection arrived over mTLS (HBONE).
    public var isMutualTLS: Bool

    /// Creates attributes.
    public init(
        sourceIdentity: SpiffeID?, sourceAddress: SocketAddr, sourceWorkload: Workload?,
        destinationAddress: SocketAddr, destinationWorkload: Workload?, isMutualTLS: Bool
    ) {
        self.sourceIdentity = sourceIdentity
        self.sourceAddress = sourceAddress
        self.sourceWorkload = sourceWorkload
        self.destinationAddress = destinationAddress
        self.destinationWorkload = destinationWorkload
        self.isMutualTLS = isMutualTLS
    }

    /// The identity policies may rely on: the peer identity of an mTLS connection, nil
    /// otherwise (a plaintext connection has no identity, whatever a caller filled in).
    public var authenticatedIdentity: SpiffeID? { isMutualTLS ? sourceIdentity : nil }
}

/// A verdict on one connection, with what decided it for logs and telemetry.
public struct AuthorizationDecision: Sendable, Equatable, CustomStringConvertible {
    /// The three answers an authorizer can give.
    public enum Verdict: String, Sendable, Equatable {
        /// The connection may proceed as far as this authorizer is concerned.
        case allow
        /// The connection must be refused; in a ``PolicyChain`` the first deny wins.
        case deny
        /// No opinion (e.g. the connection is outside what the plugin governs); the chain
        /// goes on as if the authorizer were absent.
        case abstain
    }

    /// The verdict.
    public var verdict: Verdict
    /// The deciding policy (`namespace/name`), if one decided.
    public var policy: String?
    /// The index of the deciding rule within ``policy``, if a rule matched.
    public var rule: Int?
    /// Why, in a few words, for logs and `ambit policy check`.
    public var reason: String
    /// The id of the plugin that gave the verdict; ``PolicyChain`` fills it in.
    public var plugin: String?

    /// Creates a decision.
    public init(verdict: Verdict, policy: String? = nil, rule: Int? = nil, reason: String, plugin: String? = nil) {
        self.verdict = verdict
        self.policy = policy
        self.rule = rule
        self.reason = reason
        self.plugin = plugin
    }

    /// True unless denied: an abstention does not stop a connection.
    public var allowed: Bool { verdict != .deny }

    /// An allow.
    public static func allow(policy: String? = nil, rule: Int? = nil, reason: String = "allowed") -> Self {
        Self(verdict: .allow, policy: policy, rule: rule, reason: reason)
    }

    /// A deny.
    public static func deny(policy: String? = nil, rule: Int? = nil, reason: String) -> Self {
        Self(verdict: .deny, policy: policy, rule: rule, reason: reason)
    }

    /// No opinion.
    public static func abstain(reason: String = "no opinion") -> Self {
        Self(verdict: .abstain, reason: reason)
    }

    /// `deny by authorization: default/deny-all rule 0: <reason>`, for logs.
    public var description: String {
        var text = verdict.rawValue
        if let plugin { text += " by \(plugin)" }
        if let policy {
            text += ": \(policy)"
            if let rule { text += " rule \(rule)" }
        }
        return text + ": " + reason
    }
}

/// Role ``PluginRole/policy``: decides whether an inbound connection may proceed.
///
/// The kernel's ``PolicyChain`` consults every enabled provider in manifest order: the
/// first ``AuthorizationDecision/Verdict/deny`` wins and ends the walk; allow and abstain
/// go on to the next provider. Inbound paths call the chain, not providers directly.
///
/// Threading: called concurrently from many connections; must be thread-safe and
/// should not block (it is async so it may wait on I/O, e.g. an external check).
///
/// Misbehaviour is contained by the chain, not trusted away: an authorizer that throws,
/// or that has not answered within the node's decision deadline (`node.policyDeadline`,
/// see ``PolicyGuard``), is taken as a deny of that connection, logged and counted; the
/// node keeps serving. A non-throwing implementation satisfies this requirement too.
public protocol ConnectionAuthorizer: AnyObject, Sendable {
    /// The verdict for one connection. Fail closed: if unsure, deny (or throw, which the
    /// chain turns into a deny naming the error).
    func authorize(_ connection: ConnectionAttributes) async throws -> AuthorizationDecision
}

/// A ``ConnectionAuthorizer`` that can often decide at once, without suspending: the
/// inbound path then decides on the connection's event loop, with no task hop (the
/// first-party `authorization` plugin evaluates its in-memory index this way).
///
/// ``authorizeImmediately(_:)`` is called on an event loop: it must not block or wait.
/// Returning nil sends the connection through ``ConnectionAuthorizer/authorize(_:)``
/// instead, under the chain's deadline.
public protocol ImmediateConnectionAuthorizer: ConnectionAuthorizer {
    /// The verdict now, or nil when it needs to wait (then `authorize` is called).
    func authorizeImmediately(_ connection: ConnectionAttributes) -> AuthorizationDecision?
}
