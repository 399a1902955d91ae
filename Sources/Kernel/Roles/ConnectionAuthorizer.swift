/// What a policy sees of one connection.
public struct ConnectionAttributes: Sendable {
    /// The peer's authenticated identity; nil for plaintext.
    public var sourceIdentity: SpiffeID?
    /// The source address.
    public var sourceAddress: SocketAddr
    /// The source workload, when known.
    public var sourceWorkload: Workload?
    /// The destination address (after service resolution).
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
}

/// A policy's verdict, with what decided it for logs and telemetry.
public struct AuthorizationDecision: Sendable, Equatable {
    /// Allowed or not.
    public var allowed: Bool
    /// The deciding policy (`namespace/name`), if one decided.
    public var policy: String?
    /// Why, in a few words.
    public var reason: String

    /// An allow.
    public static func allow(policy: String? = nil, reason: String = "allowed") -> Self {
        Self(allowed: true, policy: policy, reason: reason)
    }

    /// A deny.
    public static func deny(policy: String? = nil, reason: String) -> Self {
        Self(allowed: false, policy: policy, reason: reason)
    }
}

/// Role ``PluginRole/policy``: decides whether an inbound connection may proceed. Every
/// enabled policy plugin is consulted in manifest order; the first deny wins.
///
/// Threading: called concurrently from many connections; must be thread-safe and
/// should not block (it is async so it may wait on I/O, e.g. an external check).
public protocol ConnectionAuthorizer: AnyObject, Sendable {
    /// The verdict for one connection. Fail closed: if unsure, deny.
    func authorize(_ connection: ConnectionAttributes) async -> AuthorizationDecision
}
