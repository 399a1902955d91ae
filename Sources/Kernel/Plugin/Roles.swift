import NIOCore

/// Role ``PluginRole/discovery``: a plugin that feeds the mesh model by publishing
/// snapshots into ``PluginContext/mesh``.
public protocol DiscoverySource: AnyObject, Sendable {
    /// Where the mesh comes from, for logs and `/config_dump` (e.g. a file path).
    var discoveryOrigin: String { get }
}

/// Role ``PluginRole/capture``: a plugin that takes application connections (SOCKS5,
/// in-pod redirection) and hands them to the outbound or inbound path.
public protocol CaptureSource: AnyObject, Sendable {
    /// The addresses it listens on, once bound (empty before ``Plugin/run()``).
    var captureAddresses: [SocketAddr] { get }
}

/// What a tunnel dialer needs to open one tunnelled stream.
public struct TunnelRequest: Sendable {
    /// The source workload (whose identity the tunnel presents).
    public var source: Workload
    /// The application's own source address.
    public var sourceAddress: SocketAddr
    /// Where to connect: a destination proxy's HBONE address, e.g. `10.0.0.2:15008`.
    public var gateway: SocketAddr
    /// The CONNECT authority: the final destination `ip:port` (or hostname:port).
    public var authority: String
    /// Identities the peer may present; anything else is rejected.
    public var expectedIdentities: [SpiffeID]
    /// The destination workload, when known.
    public var destination: Workload?

    /// Creates a request.
    public init(
        source: Workload, sourceAddress: SocketAddr, gateway: SocketAddr, authority: String,
        expectedIdentities: [SpiffeID], destination: Workload?
    ) {
        self.source = source
        self.sourceAddress = sourceAddress
        self.gateway = gateway
        self.authority = authority
        self.expectedIdentities = expectedIdentities
        self.destination = destination
    }
}

/// Role ``PluginRole/tunnelDialer``: opens tunnelled streams to other proxies (the
/// HBONE client).
///
/// Threading: called from event-loop threads; must be thread-safe.
public protocol TunnelDialer: AnyObject, Sendable {
    /// Opens one tunnelled stream. The returned channel carries the payload bytes
    /// (`ByteBuffer` in both directions), ready for the relay; the future fails with a
    /// descriptive error when the peer refuses or cannot be reached.
    func openTunnel(_ request: TunnelRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel>
}

/// Role ``PluginRole/tunnelAcceptor``: terminates tunnels from other proxies (the HBONE
/// server) and hands each stream to the inbound path.
public protocol TunnelAcceptor: AnyObject, Sendable {
    /// The addresses it accepts tunnels on, once bound.
    var tunnelAddresses: [SocketAddr] { get }
}

/// Role ``PluginRole/identity``: holds the certificates of the workload identities on
/// this node. Certificate-fetching requirements arrive with the certificates plugin.
public protocol IdentityProvider: AnyObject, Sendable {
    /// Identities the provider currently holds a usable certificate for.
    var availableIdentities: [SpiffeID] { get }
}

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

/// Role ``PluginRole/telemetry``: receives connection events from the kernel and the
/// capture and tunnel plugins.
///
/// Threading: called on event-loop threads; must not block. Every method has a no-op
/// default, so implement only what you need.
public protocol TelemetrySink: AnyObject, Sendable {
    /// A connection was accepted and its destination decided.
    func connectionOpened(_ connection: ConnectionRecord)
    /// A connection ended; its byte counters are final.
    func connectionClosed(_ connection: ConnectionRecord)
}

extension TelemetrySink {
    public func connectionOpened(_ connection: ConnectionRecord) {}
    public func connectionClosed(_ connection: ConnectionRecord) {}
}
