public import Kernel
public import NIOCore
import ServiceLifecycle

/// HBONE: every in-mesh TCP connection travels as one HTTP/2 CONNECT stream over mutual
/// TLS between the source's and the destination's node proxies, with SPIFFE identities on
/// both ends (Istio ambient's wire protocol; an Istio ztunnel can be the peer).
///
/// Provides the ``PluginRole/tunnelDialer`` role (the client with its connection pool,
/// used by the capture plugin's outbound path) and the ``PluginRole/tunnelAcceptor`` role
/// (the server on 15008, which hands streams to the node's ``TunnelTerminator``: the node
/// proxy's inbound by default, a waypoint's HTTP engine in a waypoint). Requires an
/// ``PluginRole/identity`` provider for certificates and a ``PluginRole/tunnelTerminator``
/// (the node proxy's, enabled by default, unless another is).
public final class HBONEPlugin: Plugin, TunnelDialer, TunnelAcceptor {
    public typealias Config = HBONEConfig

    public static let id = "hbone"
    public static let summary = "mTLS + HTTP/2 CONNECT tunnels: client with connection pool, server on 15008"
    public static let provides: Set<PluginRole> = [.tunnelDialer, .tunnelAcceptor]
    public static let requires: Set<PluginRole> = [.identity, .tunnelTerminator]

    private let config: HBONEConfig
    private let context: PluginContext
    private let identity = IdentityHolder()
    private let terminator = TerminatorHolder()
    private let client: HBONEClient
    private let server: HBONEServer

    public init(config: HBONEConfig, context: PluginContext) throws {
        self.config = config
        self.context = context
        let tls = HBONETLSContexts(allowTLS12: config.allowTLS12)
        self.client = HBONEClient(config: config, context: context, identity: identity, tls: tls)
        self.server = HBONEServer(config: config, context: context, identity: identity, terminator: terminator, tls: tls)
    }

    public func provision() async throws {
        // A decoded config was validated with file and line; this catches one built in code.
        let problems = config.validate()
        if !problems.isEmpty {
            throw PluginError(.invalidConfiguration, plugin: Self.id, problems.map(\.description).joined(separator: "; "))
        }
        guard let provider = context.provider(of: (any IdentityProvider).self) else {
            throw PluginError(
                .dependency, plugin: Self.id,
                "no identity provider is enabled; add the `certificates` plugin before `hbone`")
        }
        identity.provider = provider
        if config.server.enabled {
            guard let terminator = context.provider(of: (any TunnelTerminator).self) else {
                throw PluginError(
                    .dependency, plugin: Self.id,
                    "the HBONE server is enabled but no tunnel terminator is: enable `node-proxy` (the default) or "
                        + "another plugin with the tunnel-terminator role, or set server.enabled: false")
            }
            self.terminator.terminator = terminator
            context.readiness.expect(HBONEServer.readinessComponent)
        }
    }

    public func run() async throws {
        if config.server.enabled {
            try await server.run()
        } else {
            try? await gracefulShutdown()
        }
    }

    public func drain() async {
        client.drain()
        await server.drain()
    }

    public func cleanup() async {
        await server.close()
        await client.close()
    }

    /// The HTTP status the HBONE server answers a terminator's refusal with, as ztunnel
    /// answers: 401 for a policy denial; 503 when the destination cannot be reached
    /// (connect failed, no healthy endpoint, a hostname authority naming no known service
    /// or no port of it) or is one of the proxy's own ports (a self call); 400 for
    /// everything else (a malformed or misdirected CONNECT).
    public static func status(for refusal: ConnectionRefusal) -> Int {
        switch refusal.code {
        case .denied: return 401
        case .connectFailed, .noHealthyEndpoint, .selfCall, .unresolvable, .servicePortUnknown: return 503
        default: return 400
        }
    }

    // MARK: TunnelDialer

    public func openTunnel(_ request: TunnelRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        client.openTunnel(request, on: eventLoop)
    }

    // MARK: TunnelAcceptor

    public var tunnelAddresses: [SocketAddr] { server.addresses }

    // MARK: Introspection

    /// Open server-side TLS connections.
    public var serverConnectionCount: Int { server.connectionCount }

    /// The server's handshake guard: connections handshaking now, and how many were
    /// closed at accept because `server.maxPendingHandshakes` were handshaking or closed
    /// because they outlasted `server.handshakeTimeout`.
    public var serverHandshakes: (pending: Int, refused: Int, timedOut: Int) {
        let counters = server.handshakes.snapshot
        return (counters.pending, counters.refused, counters.timedOut)
    }

    /// The client pool: one entry per pooled connection with the streams it carries now and
    /// has ever carried.
    public var poolConnections: [(key: String, activeStreams: Int, streamsOpened: Int, usable: Bool)] {
        client.pool.snapshot.map { ("\($0.key)", $0.reserved, $0.opened, $0.usable) }
    }
}
