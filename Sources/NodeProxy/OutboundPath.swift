public import AmbitRuntime
public import Kernel
import Logging
public import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Where a captured connection asked to go: an address, or a name (SOCKS5 lets clients
/// send one) that resolves through the mesh's service hostnames first.
public enum OutboundDestination: Sendable, Equatable, CustomStringConvertible {
    /// An IP address and port.
    case address(SocketAddr)
    /// A host name and port.
    case domain(String, port: UInt16)

    public var description: String {
        switch self {
        case .address(let address): return "\(address)"
        case .domain(let name, let port): return "\(name):\(port)"
        }
    }
}

/// A captured connection whose upstream is connected, waiting for its capture source to
/// finish its own protocol (a SOCKS5 reply) before bytes flow.
public struct OutboundConnection: Sendable {
    /// The upstream connection's local address (SOCKS5's BND.ADDR), or the tunnel's gateway.
    public var boundAddress: SocketAddr
    /// Starts the relay, on the captured channel's event loop, forwarding `leftover` (bytes
    /// the client sent before the relay) upstream first. Telemetry hears of the connection
    /// as opened now and as closed when both sides are.
    public var start: @Sendable (_ leftover: ByteBuffer?) -> Void
    /// Gives up instead (the client went away meanwhile): closes the upstream side.
    public var cancel: @Sendable () -> Void
}

/// The outbound path every capture source uses (SOCKS5, in-pod redirection): identify the
/// source workload, resolve the destination, run the forwarding decision, connect
/// upstream (plain TCP or a tunnel through the ``TunnelDialer``), and relay.
///
/// Failures are ``ConnectionRefusal``s, logged here and reported to telemetry as denied
/// or failed; each capture source maps them to its own protocol's answer.
///
/// Thread-safe; runs on the captured channel's event loop.
public final class OutboundPath: Sendable {
    private let context: PluginContext
    private let dialer: TCPDialer

    /// An outbound path for the plugin owning `context`, dialing plain TCP with `dialer`.
    public init(context: PluginContext, dialer: TCPDialer) {
        self.context = context
        self.dialer = dialer
    }

    private var logger: Logger { context.logger }

    /// A connection a client opened to the proxy explicitly (SOCKS5): its source address
    /// names its workload, which must run on this node. Resolves, decides, connects; the
    /// future succeeds once upstream is connected.
    public func connect(from downstream: any Channel, to destination: OutboundDestination) -> EventLoopFuture<OutboundConnection> {
        let eventLoop = downstream.eventLoop
        guard let client = SocketAddr(downstream.remoteAddress) else {
            return eventLoop.makeFailedFuture(ConnectionRefusal(.sourceUnknown, "client address unknown"))
        }
        let mesh = context.mesh.snapshot
        // The source is looked up in its own network, whatever the node's is called.
        guard let source = context.localWorkload(at: client.ip, in: mesh) else {
            if let remote = mesh.workloads(at: client.ip).last {
                logger.warning(
                    "refused: source workload runs on another node",
                    metadata: ["source": "\(remote.uid)", "node": "\(remote.node)"])
                return eventLoop.makeFailedFuture(
                    ConnectionRefusal(.sourceUnknown, "source \(remote.uid) is not on node \(context.nodeName)"))
            }
            logger.warning(
                "refused: source is not a workload of this mesh",
                metadata: ["source": "\(client)", "destination": "\(destination)"])
            return eventLoop.makeFailedFuture(
                ConnectionRefusal(.sourceUnknown, "source \(client.ip) is not a known workload"))
        }
        return resolve(destination, mesh: mesh, source: source, on: eventLoop).flatMap { destination in
            self.route(
                OutboundRequest(source: source, sourceAddress: client, destination: destination, network: self.context.nodeNetwork),
                mesh: mesh, downstream: downstream, placement: .node)
        }
    }

    /// A connection captured inside a pod's network namespace (in-pod redirection): the
    /// source is that pod's workload, the destination the connection's original
    /// destination. Upstream sockets (a plain connection or the tunnel's) are made inside
    /// the pod's namespace too.
    public func connectCaptured(
        from downstream: any Channel, source: Workload, destination: SocketAddr, placement: SocketPlacement
    ) -> EventLoopFuture<OutboundConnection> {
        guard let client = SocketAddr(downstream.remoteAddress) else {
            return downstream.eventLoop.makeFailedFuture(ConnectionRefusal(.sourceUnknown, "client address unknown"))
        }
        return route(
            OutboundRequest(source: source, sourceAddress: client, destination: destination, network: context.nodeNetwork),
            mesh: context.mesh.snapshot, downstream: downstream, placement: placement)
    }

    /// Domain names resolve through the mesh's service hostnames first (the service the
    /// source's namespace sees by that name, its VIP on the node's network), then through
    /// the system resolver.
    private func resolve(
        _ destination: OutboundDestination, mesh: MeshSnapshot, source: Workload, on eventLoop: any EventLoop
    ) -> EventLoopFuture<SocketAddr> {
        switch destination {
        case .address(let address):
            return eventLoop.makeSucceededFuture(address)
        case .domain(let name, let port):
            let host = name.hasSuffix(".") ? String(name.dropLast()) : name
            let network = context.nodeNetwork
            if let service = mesh.service(hostname: host, namespace: source.namespace),
                let vip = service.vips.first(where: { $0.network == network }) ?? service.vips.first
            {
                return eventLoop.makeSucceededFuture(SocketAddr(ip: vip.ip, port: port))
            }
            return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
                guard let ip = SystemResolver.resolve(host) else {
                    throw ConnectionRefusal(.unresolvable, "cannot resolve \(host)")
                }
                return SocketAddr(ip: ip, port: port)
            }
        }
    }

    private func route(
        _ request: OutboundRequest, mesh: MeshSnapshot, downstream: any Channel,
        placement: SocketPlacement
    ) -> EventLoopFuture<OutboundConnection> {
        let eventLoop = downstream.eventLoop
        let decision = Forwarding.decide(request, in: mesh)
        let source = request.source
        // Built only when something is logged: admitted connections pay nothing for it.
        func metadata(_ extra: Logger.Metadata) -> Logger.Metadata {
            extra.merging(
                ["source": "\(source?.uid ?? "unknown")", "destination": "\(request.destination)"]
            ) { own, _ in own }
        }
        switch decision {
        case .refuse(let refusal):
            logger.info("refused outbound connection", metadata: metadata(["reason": "\(refusal)"]))
            // Refused before any connection attempt: logged, not counted (ztunnel adds no
            // `istio_tcp_*` series for these either).
            return eventLoop.makeFailedFuture(refusal)

        case .hbone(let target):
            guard let tunnel = context.provider(of: (any TunnelDialer).self), let source,
                let sourceAddress = request.sourceAddress
            else {
                logger.warning(
                    "refused: destination speaks HBONE and no tunnel plugin is enabled (enable `hbone`)",
                    metadata: metadata(["gateway": "\(target.gateway)"]))
                let refusal = ConnectionRefusal(.noTunnel, "HBONE destination needs a tunnel plugin")
                return eventLoop.makeFailedFuture(refusal)
            }
            let tunnelRequest = TunnelRequest(
                source: source, sourceAddress: sourceAddress, gateway: target.gateway,
                authority: target.authority, expectedIdentities: target.expectedIdentities,
                destination: target.destinationWorkload, placement: placement, service: target.service,
                inner: target.inner)
            // Through a waypoint the source reporter's destination is the waypoint (the peer
            // this node connects to and verifies), as in ztunnel; the service stays the one
            // the application addressed.
            let record = ConnectionRecord(
                direction: .outbound, source: sourceAddress, destination: request.destination,
                sourceWorkload: source, destinationWorkload: target.viaWaypoint ? target.waypoint : target.destinationWorkload,
                destinationService: target.service, route: Self.route(of: target), isMutualTLS: true,
                tunnelAuthority: target.authority, transportDestination: target.gateway)
            return tunnel.openTunnel(tunnelRequest, on: eventLoop).flatMapErrorThrowing { error in
                // The tunnel's own words (refused with a status, TLS, timeout) and flag
                // (IDENTITY_ERROR, NETWORK_POLICY, else CONNECT); no socket error underneath.
                let refusal = ConnectionRefusal(
                    .connectFailed, "tunnel to \(target.gateway) failed: \(error)",
                    flag: (error as? any ResponseFlagProviding)?.responseFlag)
                self.report(failed: record, refusal)
                throw refusal
            }.map { upstream in
                self.connected(downstream: downstream, upstream: upstream, record: record, bound: target.gateway)
            }

        case .plaintext(let destination, let workload, let service):
            return dial(
                destination, downstream: downstream, request: request, destinationWorkload: workload,
                service: service, route: "direct", placement: placement)

        case .passthrough(let destination):
            return dial(
                destination, downstream: downstream, request: request, destinationWorkload: nil,
                service: nil, route: "passthrough", placement: placement)
        }
    }

    /// The path's name in the connection registry: `double-hbone` through a network
    /// gateway (to the endpoint or its waypoint), `hbone-waypoint`, or `hbone`.
    private static func route(of target: HBONETarget) -> String {
        if target.inner != nil { return "double-hbone" }
        return target.viaWaypoint ? "hbone-waypoint" : "hbone"
    }

    private func dial(
        _ destination: SocketAddr, downstream: any Channel, request: OutboundRequest,
        destinationWorkload: Workload?, service: Service?, route: String, placement: SocketPlacement
    ) -> EventLoopFuture<OutboundConnection> {
        let record = ConnectionRecord(
            direction: .outbound, source: request.sourceAddress ?? destination, destination: request.destination,
            sourceWorkload: request.source, destinationWorkload: destinationWorkload, destinationService: service,
            route: route, transportDestination: destination)
        return dialer.placed(placement).connect(to: destination, on: downstream.eventLoop).flatMapErrorThrowing { error in
            self.logger.info(
                "upstream connect failed",
                metadata: ["destination": "\(destination)", "error": "\(error)"])
            let refusal = ConnectionRefusal(
                .connectFailed, "connect to \(destination) failed: \(error)", underlying: error)
            self.report(failed: record, refusal)
            throw refusal
        }.map { upstream in
            let bound = SocketAddr(upstream.localAddress) ?? destination
            return self.connected(downstream: downstream, upstream: upstream, record: record, bound: bound)
        }
    }

    private func connected(
        downstream: any Channel, upstream: any Channel, record: ConnectionRecord, bound: SocketAddr
    ) -> OutboundConnection {
        let context = self.context
        return OutboundConnection(
            boundAddress: bound,
            start: { leftover in
                _ = context.relayReporting(downstream: downstream, upstream: upstream, record: record, initialData: leftover)
            },
            cancel: { upstream.close(promise: nil) })
    }

    /// Tells the telemetry sinks that connecting upstream failed.
    private func report(failed record: ConnectionRecord, _ refusal: ConnectionRefusal) {
        record.recordFailure(refusal.message, flag: refusal.flag)
        record.report(.failed, to: context.providers(of: (any TelemetrySink).self))
    }
}

/// Blocking name resolution for the thread pool: the first address getaddrinfo returns.
enum SystemResolver {
    static func resolve(_ host: String) -> IPAddress? {
        if let literal = IPAddress(host) { return literal }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0, let first = result else { return nil }
        defer { freeaddrinfo(first) }
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            if let sockaddr = entry.pointee.ai_addr {
                switch Int32(entry.pointee.ai_family) {
                case AF_INET:
                    let address = sockaddr.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
                    return .v4(UInt32(bigEndian: address.sin_addr.s_addr))
                case AF_INET6:
                    let address = sockaddr.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee }
                    var bytes = address.sin6_addr
                    return IPAddress(bytes: withUnsafeBytes(of: &bytes) { Array($0) })
                default:
                    break
                }
            }
            cursor = entry.pointee.ai_next
        }
        return nil
    }
}
