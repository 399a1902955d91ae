public import NIOCore

/// The tunnel carried inside another (double HBONE through a network gateway): the outer
/// tunnel ends at the gateway, which forwards its bytes unread to the next hop; inside it
/// the source opens a second mTLS connection and CONNECT to the destination itself.
public struct InnerTunnel: Sendable, Equatable {
    /// The inner CONNECT authority (`<service hostname>:<port>` through a network gateway).
    public var authority: String
    /// Identities the far end of the inner tunnel may present.
    public var expectedIdentities: [SpiffeID]
    /// The source's network, sent on the inner CONNECT as `x-forwarded-network` so the
    /// destination knows the connection crossed a gateway (and does not take the gateway's
    /// address for the source's); empty sends nothing.
    public var originNetwork: String

    /// Creates an inner tunnel.
    public init(authority: String, expectedIdentities: [SpiffeID], originNetwork: String = "") {
        self.authority = authority
        self.expectedIdentities = expectedIdentities
        self.originNetwork = originNetwork
    }
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
    /// The service the application addressed, when it addressed one. The tunnel names it
    /// to the peer (HBONE: `forwarded: host=<hostname>`) so the destination can report it;
    /// it changes neither where the tunnel goes nor what policy sees.
    public var service: Service?
    /// Where the tunnel's socket must be made: inside the source pod's network namespace
    /// under in-pod capture (the connection then leaves from the pod, marked so it is not
    /// recaptured); ``SocketPlacement/node`` for the proxy's own namespace.
    public var placement: SocketPlacement
    /// A second tunnel to open inside this one (double HBONE): ``gateway``, ``authority`` and
    /// ``expectedIdentities`` then describe the outer tunnel to the network gateway, and the
    /// stream handed back is the inner tunnel's. Nil for an ordinary tunnel.
    public var inner: InnerTunnel?

    /// Creates a request.
    public init(
        source: Workload, sourceAddress: SocketAddr, gateway: SocketAddr, authority: String,
        expectedIdentities: [SpiffeID], destination: Workload?, placement: SocketPlacement = .node,
        service: Service? = nil, inner: InnerTunnel? = nil
    ) {
        self.source = source
        self.sourceAddress = sourceAddress
        self.gateway = gateway
        self.authority = authority
        self.expectedIdentities = expectedIdentities
        self.destination = destination
        self.placement = placement
        self.service = service
        self.inner = inner
    }
}

/// Role ``PluginRole/tunnelDialer``: opens tunnelled streams to other proxies (the
/// HBONE client).
///
/// Threading: called from event-loop threads; must be thread-safe.
public protocol TunnelDialer: AnyObject, Sendable {
    /// Opens one tunnelled stream. The returned channel carries the payload bytes
    /// (`ByteBuffer` in both directions), ready for the relay; the future fails with a
    /// descriptive error when the peer refuses or cannot be reached, a
    /// ``ResponseFlagProviding`` one to say how telemetry flags the failure (else
    /// `CONNECT`).
    func openTunnel(_ request: TunnelRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel>
}

/// Role ``PluginRole/tunnelAcceptor``: terminates tunnels from other proxies (the HBONE
/// server) and hands each stream to the inbound path.
public protocol TunnelAcceptor: AnyObject, Sendable {
    /// The addresses it accepts tunnels on, once bound.
    var tunnelAddresses: [SocketAddr] { get }
}
