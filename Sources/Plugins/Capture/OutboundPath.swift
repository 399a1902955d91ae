import Kernel
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The outbound path of a captured connection: identify the source workload, resolve
/// the destination, run the forwarding decision, connect upstream (plain TCP or a
/// tunnel), and hand both sides to the relay.
///
/// Thread-safe; runs on the captured channel's event loop.
final class OutboundPath: Sendable {
    private let context: PluginContext
    private let dialer: TCPDialer

    init(context: PluginContext, dialer: TCPDialer) {
        self.context = context
        self.dialer = dialer
    }

    private var logger: Logger { context.logger }

    /// Handles one SOCKS5 CONNECT: resolves, decides, connects. The returned future
    /// succeeds once upstream is connected; the relay starts when the SOCKS handler calls
    /// `start`.
    func connect(_ request: SOCKS5Request, from downstream: any Channel) -> EventLoopFuture<SOCKS5Connected> {
        let eventLoop = downstream.eventLoop
        guard let client = SocketAddr(downstream.remoteAddress) else {
            return eventLoop.makeFailedFuture(SOCKS5Error(.generalFailure, "client address unknown"))
        }
        let mesh = context.mesh.snapshot
        guard let source = mesh.workload(at: client.ip) else {
            logger.warning(
                "refused: source is not a workload of this mesh",
                metadata: ["source": "\(client)", "destination": "\(request)"])
            return eventLoop.makeFailedFuture(
                SOCKS5Error(.notAllowed, "source \(client.ip) is not a known workload"))
        }
        if !context.nodeName.isEmpty && !source.node.isEmpty && source.node != context.nodeName {
            logger.warning(
                "refused: source workload runs on another node",
                metadata: ["source": "\(source.uid)", "node": "\(source.node)"])
            return eventLoop.makeFailedFuture(
                SOCKS5Error(.notAllowed, "source \(source.uid) is not on node \(context.nodeName)"))
        }
        return resolve(request, mesh: mesh, network: source.network, on: eventLoop).flatMap { destination in
            self.route(
                OutboundRequest(source: source, sourceAddress: client, destination: destination),
                mesh: mesh, downstream: downstream, namespace: nil)
        }
    }

    /// Handles one connection redirected to the outbound listener inside a pod's network
    /// namespace (in-pod capture): the source is that pod's workload, the destination the
    /// connection's original destination. Upstream sockets (a plain connection or the HBONE
    /// connection) are made inside the pod's namespace too. The returned future succeeds
    /// once upstream is connected; call `start(nil)` to relay.
    func connectCaptured(
        from downstream: any Channel, source: Workload, destination: SocketAddr, namespace: NetworkNamespace
    ) -> EventLoopFuture<SOCKS5Connected> {
        guard let client = SocketAddr(downstream.remoteAddress) else {
            return downstream.eventLoop.makeFailedFuture(SOCKS5Error(.generalFailure, "client address unknown"))
        }
        return route(
            OutboundRequest(source: source, sourceAddress: client, destination: destination),
            mesh: context.mesh.snapshot, downstream: downstream, namespace: namespace)
    }

    /// Domain names resolve through the mesh's service hostnames first (a service VIP on
    /// the source's network), then through the system resolver.
    private func resolve(
        _ request: SOCKS5Request, mesh: MeshSnapshot, network: String, on eventLoop: any EventLoop
    ) -> EventLoopFuture<SocketAddr> {
        switch request.address {
        case .ip(let ip):
            return eventLoop.makeSucceededFuture(SocketAddr(ip: ip, port: request.port))
        case .domain(let name):
            let host = name.hasSuffix(".") ? String(name.dropLast()) : name
            for service in mesh.services(hostname: host) {
                if let vip = service.vips.first(where: { $0.network == network }) ?? service.vips.first {
                    return eventLoop.makeSucceededFuture(SocketAddr(ip: vip.ip, port: request.port))
                }
            }
            let port = request.port
            return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
                guard let ip = SystemResolver.resolve(host) else {
                    throw SOCKS5Error(.hostUnreachable, "cannot resolve \(host)")
                }
                return SocketAddr(ip: ip, port: port)
            }
        }
    }

    private func route(
        _ request: OutboundRequest, mesh: MeshSnapshot, downstream: any Channel, namespace: NetworkNamespace?
    ) -> EventLoopFuture<SOCKS5Connected> {
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
            report(
                refused: request, mesh: mesh, refusal.description,
                refusal.code == .noHealthyEndpoint ? .noHealthyUpstream : .noRoute)
            let reply: SOCKS5Reply = refusal.code == .noHealthyEndpoint ? .hostUnreachable : .notAllowed
            return eventLoop.makeFailedFuture(SOCKS5Error(reply, refusal.description))

        case .hbone(let target):
            guard let tunnel = context.provider(of: (any TunnelDialer).self), let source,
                let sourceAddress = request.sourceAddress
            else {
                logger.warning(
                    "refused: destination speaks HBONE and no tunnel plugin is enabled (enable `hbone`)",
                    metadata: metadata(["gateway": "\(target.gateway)"]))
                report(refused: request, mesh: mesh, "HBONE destination needs a tunnel plugin", .noRoute)
                return eventLoop.makeFailedFuture(
                    SOCKS5Error(.notAllowed, "HBONE destination needs a tunnel plugin"))
            }
            let tunnelRequest = TunnelRequest(
                source: source, sourceAddress: sourceAddress, gateway: target.gateway,
                authority: target.authority, expectedIdentities: target.expectedIdentities,
                destination: target.destinationWorkload, namespace: namespace)
            let record = ConnectionRecord(
                direction: .outbound, source: sourceAddress, destination: request.destination,
                sourceWorkload: source, destinationWorkload: target.destinationWorkload,
                destinationService: target.service, route: target.viaWaypoint ? "hbone-waypoint" : "hbone", isMutualTLS: true)
            return tunnel.openTunnel(tunnelRequest, on: eventLoop).flatMapErrorThrowing { error in
                self.report(failed: record, "tunnel to \(target.gateway) failed: \(error)")
                throw SOCKS5Error(.hostUnreachable, "tunnel to \(target.gateway) failed: \(error)")
            }.map { upstream in
                self.connected(downstream: downstream, upstream: upstream, record: record, bound: target.gateway)
            }

        case .plaintext(let destination, let workload, let service):
            return dial(
                destination, downstream: downstream, request: request, destinationWorkload: workload,
                service: service, route: "direct", namespace: namespace)

        case .passthrough(let destination):
            return dial(
                destination, downstream: downstream, request: request, destinationWorkload: nil,
                service: nil, route: "passthrough", namespace: namespace)
        }
    }

    private func dial(
        _ destination: SocketAddr, downstream: any Channel, request: OutboundRequest,
        destinationWorkload: Workload?, service: Service?, route: String, namespace: NetworkNamespace?
    ) -> EventLoopFuture<SOCKS5Connected> {
        let record = ConnectionRecord(
            direction: .outbound, source: request.sourceAddress ?? destination, destination: request.destination,
            sourceWorkload: request.source, destinationWorkload: destinationWorkload, destinationService: service,
            route: route)
        return dialer.placed(in: namespace).connect(to: destination, on: downstream.eventLoop).flatMapErrorThrowing { error in
            self.logger.info(
                "upstream connect failed",
                metadata: ["destination": "\(destination)", "error": "\(error)"])
            self.report(failed: record, "connect to \(destination) failed: \(error)")
            throw SOCKS5Error(Self.reply(for: error), "connect to \(destination) failed: \(error)")
        }.map { upstream in
            let bound = SocketAddr(upstream.localAddress) ?? destination
            return self.connected(downstream: downstream, upstream: upstream, record: record, bound: bound)
        }
    }

    private func connected(
        downstream: any Channel, upstream: any Channel, record: ConnectionRecord, bound: SocketAddr
    ) -> SOCKS5Connected {
        let sinks = context.providers(of: (any TelemetrySink).self)
        let logger = self.logger
        let registry = context.connections
        return SOCKS5Connected(
            boundAddress: bound,
            start: { leftover in
            for sink in sinks { sink.connectionOpened(record) }
            logger.debug(
                "relaying",
                metadata: [
                    "id": "\(record.id)", "source": "\(record.source)", "destination": "\(record.destination)",
                    "route": "\(record.route)",
                ])
            Relay.join(
                downstream: downstream, upstream: upstream, record: record, registry: registry,
                initialData: leftover
            ).whenComplete { _ in
                for sink in sinks { sink.connectionClosed(record) }
                logger.debug(
                    "connection closed",
                    metadata: [
                        "id": "\(record.id)", "sent": "\(record.bytes.sent)",
                        "received": "\(record.bytes.received)",
                    ])
            }
            },
            cancel: { upstream.close(promise: nil) })
    }

    /// Tells the telemetry sinks about a connection refused before relaying.
    private func report(refused request: OutboundRequest, mesh: MeshSnapshot, _ reason: String, _ flag: ResponseFlag) {
        let record = ConnectionRecord(
            direction: .outbound, source: request.sourceAddress ?? request.destination,
            destination: request.destination, sourceWorkload: request.source, destinationWorkload: nil,
            destinationService: mesh.service(at: request.destination.ip, network: request.source?.network ?? ""),
            route: "refused")
        record.recordFailure(reason, flag: flag)
        for sink in context.providers(of: (any TelemetrySink).self) { sink.connectionDenied(record) }
    }

    /// Tells the telemetry sinks that connecting upstream failed.
    private func report(failed record: ConnectionRecord, _ reason: String) {
        record.recordFailure(reason, flag: .connectFailure)
        for sink in context.providers(of: (any TelemetrySink).self) { sink.connectionFailed(record) }
    }

    /// Maps a connect failure to the SOCKS5 reply a client can act on.
    static func reply(for error: any Error) -> SOCKS5Reply {
        if let socket = error as? SocketError {
            switch socket.code {
            case .connectionRefused: return .connectionRefused
            case .connectTimedOut: return .hostUnreachable
            default: return socket.underlying.map { reply(for: $0) } ?? .generalFailure
            }
        }
        if let io = error as? IOError {
            switch io.errnoCode {
            case ECONNREFUSED: return .connectionRefused
            case ENETUNREACH: return .networkUnreachable
            case EHOSTUNREACH, ETIMEDOUT: return .hostUnreachable
            default: return .generalFailure
            }
        }
        if error is ChannelError { return .hostUnreachable }  // connect timeout
        if let connect = error as? NIOConnectionError, let first = connect.connectionErrors.first {
            return reply(for: first.error)
        }
        return .generalFailure
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
