public import NIOCore

/// A connection a tunnel listener accepted, before its TLS handshake: where it arrived.
public struct AcceptedTunnelConnection: Sendable {
    /// The address it arrived on (the listener's, or the workload address it was sent to).
    public var local: SocketAddr
    /// The peer proxy's address.
    public var remote: SocketAddr
    /// The captured pod whose network namespace the listener is in (in-pod capture), by
    /// workload uid; nil for a listener in the proxy's own namespace.
    public var pod: String?
    /// Where the terminator makes its own sockets for this connection: inside that pod's
    /// namespace, with its mark; ``SocketPlacement/node`` for a listener in the proxy's
    /// own namespace.
    public var placement: SocketPlacement

    /// Creates a description of an accepted connection.
    public init(local: SocketAddr, remote: SocketAddr, pod: String? = nil, placement: SocketPlacement = .node) {
        self.local = local
        self.remote = remote
        self.pod = pod
        self.placement = placement
    }
}

/// Whom a tunnel server is for one accepted connection: the certificate it presents and
/// what it requires of the peer. Chosen by the ``TunnelTerminator`` before the handshake.
public struct TunnelServerIdentity: Sendable {
    /// The identity whose certificate the server presents (from the ``IdentityProvider``).
    public var identity: SpiffeID
    /// Peers must present a certificate chaining to that certificate's roots, with a
    /// SPIFFE identity in this trust domain.
    public var peerTrustDomain: String
    /// The workload the connection is for, when it is one (a node proxy terminates for
    /// its local workloads); nil for a proxy that terminates as itself (a waypoint). A
    /// 200 answer carries its description (`baggage`).
    public var workload: Workload?

    /// Creates a server identity.
    public init(identity: SpiffeID, peerTrustDomain: String, workload: Workload? = nil) {
        self.identity = identity
        self.peerTrustDomain = peerTrustDomain
        self.workload = workload
    }
}

/// Where a tunnelled stream asks to go: the CONNECT `:authority`, as the tunnel transport
/// parsed it. What an authority may name is the terminator's rule.
public enum TunnelAuthority: Sendable, Hashable, CustomStringConvertible {
    /// `ip:port` (`[ipv6]:port`): a workload's or a service's address.
    case address(SocketAddr)
    /// `hostname:port`: a service by its hostname and one of its ports, as a network
    /// gateway forwards the inner tunnel of double HBONE.
    case hostname(String, port: UInt16)

    /// The port the authority names.
    public var port: UInt16 {
        switch self {
        case .address(let address): return address.port
        case .hostname(_, let port): return port
        }
    }

    /// The address, when the authority is one; nil for a hostname.
    public var address: SocketAddr? {
        if case .address(let address) = self { return address }
        return nil
    }

    /// As written on the wire: `ip:port`, `[ipv6]:port` or `hostname:port`.
    public var description: String {
        switch self {
        case .address(let address): return address.description
        case .hostname(let hostname, let port): return "\(hostname):\(port)"
        }
    }
}

/// One tunnelled stream, its framing checked by the tunnel transport (a CONNECT with one
/// `ip:port` or `hostname:port` authority): what a terminator decides on.
public struct TunnelStreamRequest: Sendable {
    /// The connection the stream arrived on.
    public var connection: AcceptedTunnelConnection
    /// What the terminator chose for that connection.
    public var server: TunnelServerIdentity
    /// The peer's verified identity (mutual TLS); nil if it presented none.
    public var peerIdentity: SpiffeID?
    /// The CONNECT authority: where the peer wants the stream to go.
    public var authority: TunnelAuthority
    /// The authority's address; nil when it names a hostname.
    public var target: SocketAddr? { authority.address }
    /// The connection's peer (the TCP source of the tunnel): the source for policy and
    /// telemetry. Never taken from the peer's headers.
    public var source: SocketAddr
    /// What the peer claims as the original client (`forwarded: for=`), if it sent one.
    /// Anyone holding a mesh certificate can write anything here, so the node proxy never
    /// uses it (ztunnel's inbound does not read it either); a terminator that serves a
    /// trusted forwarder may.
    public var forwardedFor: SocketAddr?
    /// The service hostname the peer says the application addressed (`forwarded: host=`),
    /// if it sent one. A claim like ``forwardedFor``: it may only name the service
    /// telemetry reports (and only among the destination workload's own services), never
    /// decide routing or policy.
    public var forwardedHost: String?
    /// The peer's description of its workload (W3C `baggage`), informational only.
    public var baggage: [String: String]
    /// The network the peer says the connection came from (HBONE `x-forwarded-network`,
    /// the inner CONNECT of double HBONE). When it is not the node's, the connection
    /// crossed a network gateway and its TCP peer is the gateway, not the source workload.
    public var forwardedNetwork: String?
    /// How the stream arrived, for records and logs: `hbone`.
    public var route: String
    /// How long the terminator may take to reach what is behind it (the transport's
    /// `connectTimeout`).
    public var connectTimeout: TimeAmount

    /// Creates a request for an `ip:port` authority.
    public init(
        connection: AcceptedTunnelConnection, server: TunnelServerIdentity, peerIdentity: SpiffeID?,
        target: SocketAddr, source: SocketAddr, forwardedFor: SocketAddr? = nil, baggage: [String: String] = [:],
        route: String = "hbone", connectTimeout: TimeAmount = .seconds(10), forwardedHost: String? = nil,
        forwardedNetwork: String? = nil
    ) {
        self.init(
            connection: connection, server: server, peerIdentity: peerIdentity, authority: .address(target),
            source: source, forwardedFor: forwardedFor, baggage: baggage, route: route, connectTimeout: connectTimeout,
            forwardedHost: forwardedHost, forwardedNetwork: forwardedNetwork)
    }

    /// Creates a request.
    public init(
        connection: AcceptedTunnelConnection, server: TunnelServerIdentity, peerIdentity: SpiffeID?,
        authority: TunnelAuthority, source: SocketAddr, forwardedFor: SocketAddr? = nil,
        baggage: [String: String] = [:], route: String = "hbone", connectTimeout: TimeAmount = .seconds(10),
        forwardedHost: String? = nil, forwardedNetwork: String? = nil
    ) {
        self.connection = connection
        self.server = server
        self.peerIdentity = peerIdentity
        self.authority = authority
        self.source = source
        self.forwardedFor = forwardedFor
        self.forwardedHost = forwardedHost
        self.forwardedNetwork = forwardedNetwork
        self.baggage = baggage
        self.route = route
        self.connectTimeout = connectTimeout
    }
}

/// How a terminator answers one tunnelled stream: refuse it, or accept it and take its
/// bytes. Call exactly one of them, once, on ``eventLoop``.
public protocol TunnelStreamResponder: Sendable {
    /// The stream's event loop.
    var eventLoop: any EventLoop { get }
    /// Whether the peer still has the stream open.
    var isActive: Bool { get }
    /// Ends the stream with the transport's answer for `refusal` (HBONE: 401 when
    /// denied, 503 when the destination cannot be reached, 400 otherwise) and logs it.
    func refuse(_ refusal: ConnectionRefusal)
    /// Answers success and returns the stream as a channel of payload `ByteBuffer`s in
    /// both directions, ready for the relay (its reads start when the relay asks).
    func accept() -> any Channel
}

/// Role ``PluginRole/tunnelTerminator``: what ends the tunnels a tunnel listener
/// accepts. The tunnel transport (the HBONE plugin) keeps TLS, HTTP/2, CONNECT framing
/// and where it listens; the terminator decides whom the server is for each connection
/// and what happens to each stream. The node proxy terminates for its local workloads
/// (their certificates; the authority must be theirs; the stream goes to the workload);
/// a waypoint terminates as itself and ends streams in its HTTP engine.
///
/// Threading: called from event-loop threads; must be thread-safe and must not block.
public protocol TunnelTerminator: AnyObject, Sendable {
    /// Whom the server is for a connection accepted at `connection.local`, or why it is
    /// refused (the connection is closed before TLS).
    func serverIdentity(for connection: AcceptedTunnelConnection) -> Result<TunnelServerIdentity, ConnectionRefusal>

    /// Handles one stream: answer it through `responder`, now or later.
    func terminate(_ request: TunnelStreamRequest, responder: any TunnelStreamResponder)
}
