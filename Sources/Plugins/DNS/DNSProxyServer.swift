public import Kernel
public import Logging
public import NIOCore
import AmbitRuntime
import NIOConcurrencyHelpers

/// The DNS proxy: a UDP and a TCP server on one address, placed where a
/// ``SocketPlacement`` says (in-pod: inside the pod's namespace), answering with a
/// ``DNSQueryHandler`` (mesh answers, else the upstream resolvers).
///
/// UDP answers fit 512 bytes or the client's EDNS payload size (else TC is set and the
/// records dropped). TCP takes several length-prefixed queries per connection, answers
/// them as they complete (possibly out of order, RFC 7766), and closes a connection idle
/// for ``Options/tcpIdleTimeout``. At most ``Options/maxInFlight`` queries are worked on
/// at once per server; more UDP queries are dropped, more TCP ones answered SERVFAIL.
///
/// Thread-safe. Start with ``start(address:placement:group:mesh:client:upstreams:metrics:logger:options:)``,
/// end with ``stop()``.
public final class DNSProxyServer: Sendable {
    /// Tunables beyond the address and collaborators.
    public struct Options: Sendable {
        /// The cluster's DNS domain.
        public var clusterDomain: String
        /// How long to wait for one upstream's UDP answer.
        public var upstreamUDPTimeout: TimeAmount
        /// How long a TCP exchange with an upstream may take.
        public var upstreamTCPTimeout: TimeAmount
        /// How long a client TCP connection may be idle.
        public var tcpIdleTimeout: TimeAmount
        /// Queries worked on at once.
        public var maxInFlight: Int

        /// ztunnel's values: `cluster.local`, 2 s per UDP try, 5 s for TCP, 10 s idle.
        public init(
            clusterDomain: String = "cluster.local", upstreamUDPTimeout: TimeAmount = .seconds(2),
            upstreamTCPTimeout: TimeAmount = .seconds(5), tcpIdleTimeout: TimeAmount = .seconds(10),
            maxInFlight: Int = 1024
        ) {
            self.clusterDomain = clusterDomain
            self.upstreamUDPTimeout = upstreamUDPTimeout
            self.upstreamTCPTimeout = upstreamTCPTimeout
            self.tcpIdleTimeout = tcpIdleTimeout
            self.maxInFlight = maxInFlight
        }

        /// The options a ``DNSProxyConfig`` sets.
        public init(_ config: DNSProxyConfig) {
            self.init(
                clusterDomain: config.clusterDomain, upstreamUDPTimeout: config.upstreamTimeout.timeAmount,
                tcpIdleTimeout: config.tcpIdleTimeout.timeAmount)
        }

        /// The options a ``NodeDNSProxyConfig`` sets.
        public init(_ config: NodeDNSProxyConfig) {
            self.init(
                clusterDomain: config.clusterDomain, upstreamUDPTimeout: config.upstreamTimeout.timeAmount,
                tcpIdleTimeout: config.tcpIdleTimeout.timeAmount)
        }
    }

    /// The UDP address bound (the real port when port 0 was asked for).
    public let udpAddress: SocketAddr
    /// The TCP address bound.
    public let tcpAddress: SocketAddr

    private let udpChannel: any Channel
    private let tcpListener: TCPListener
    private let state: ServerState

    private init(udpChannel: any Channel, udpAddress: SocketAddr, tcpListener: TCPListener, state: ServerState) {
        self.udpChannel = udpChannel
        self.udpAddress = udpAddress
        self.tcpListener = tcpListener
        self.tcpAddress = tcpListener.localAddress
        self.state = state
    }

    /// Binds UDP and TCP on `address` where `placement` says and starts answering.
    ///
    /// - Parameters:
    ///   - address: where to listen (in-pod: `127.0.0.1:15053`); port 0 binds TCP on an
    ///     ephemeral port and UDP on the same one.
    ///   - placement: the namespace and mark for the servers and for upstream sockets.
    ///   - group: the event loops.
    ///   - mesh: the current mesh, read per query.
    ///   - client: the workload behind a query's source address (in-pod: the pod's,
    ///     whatever the address); nil answers SERVFAIL.
    ///   - upstreams: the resolvers to forward to; empty: the nameservers of the node's
    ///     `/etc/resolv.conf`.
    ///   - metrics: where queries are counted; nil: nowhere.
    ///   - logger: the proxy's logger.
    ///   - options: timeouts and the cluster domain.
    /// - Throws: ``SocketError`` when either socket cannot be bound (nothing stays open).
    public static func start(
        address: SocketAddr, placement: SocketPlacement, group: any EventLoopGroup,
        mesh: @escaping @Sendable () -> MeshSnapshot, client: @escaping @Sendable (SocketAddr) -> DNSClientInfo?,
        upstreams: [SocketAddr] = [], metrics: DNSMetrics?, logger: Logger, options: Options = Options()
    ) async throws -> DNSProxyServer {
        let forwarder = DNSForwarder(
            upstreams: upstreams.isEmpty ? DNSForwarder.systemUpstreams() : upstreams, placement: placement,
            udpTimeout: options.upstreamUDPTimeout, tcpTimeout: options.upstreamTCPTimeout)
        let handler = DNSQueryHandler(
            resolver: MeshDNSResolver(clusterDomain: options.clusterDomain), forwarder: forwarder, mesh: mesh,
            client: client, metrics: metrics, logger: logger)
        let state = ServerState(handler: handler, maxInFlight: options.maxInFlight)

        let idle = options.tcpIdleTimeout
        let listener = try await TCPListener.bind(ListenerOptions(address: address, placement: placement), group: group) {
            channel in
            channel.eventLoop.makeCompletedFuture {
                state.opened(channel)
                try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idle))
                try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(DNSLengthPrefixDecoder()))
                try channel.pipeline.syncOperations.addHandler(TCPQueryHandler(state: state))
            }
        }
        let udpBind = SocketAddr(ip: address.ip, port: listener.localAddress.port)
        let udp: any Channel
        do {
            udp = try await DatagramSocket.bind(udpBind, placement: placement, group: group) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(UDPQueryHandler(state: state))
                }
            }
        } catch {
            await listener.stopAccepting()
            throw error
        }
        logger.info(
            "DNS proxy listening",
            metadata: ["address": "\(listener.localAddress)", "placement": "\(placement)", "upstreams": "\(forwarder.upstreams)"])
        return DNSProxyServer(udpChannel: udp, udpAddress: udpBind, tcpListener: listener, state: state)
    }

    /// Stops both servers and closes open TCP client connections; queries being worked
    /// on finish, but their answers go nowhere. Idempotent.
    public func stop() async {
        udpChannel.close(promise: nil)
        await tcpListener.stopAccepting()
        try? await udpChannel.closeFuture.get()
        for channel in state.closeAll() { try? await channel.close() }
    }
}

/// What a server's handlers share: the query handler, the in-flight count and the open
/// TCP connections.
final class ServerState: Sendable {
    let handler: DNSQueryHandler
    private let maxInFlight: Int
    private let inFlight = NIOLockedValueBox(0)
    private let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]?>([:])

    init(handler: DNSQueryHandler, maxInFlight: Int) {
        self.handler = handler
        self.maxInFlight = maxInFlight
    }

    /// Takes a slot for one query; false when all are taken.
    func admit() -> Bool {
        inFlight.withLockedValue { count in
            guard count < maxInFlight else { return false }
            count += 1
            return true
        }
    }

    func done() { inFlight.withLockedValue { $0 -= 1 } }

    func opened(_ channel: any Channel) {
        let key = ObjectIdentifier(channel)
        let admitted = connections.withLockedValue { table -> Bool in
            guard table != nil else { return false }
            table?[key] = channel
            return true
        }
        if !admitted {
            channel.close(promise: nil)
            return
        }
        channel.closeFuture.whenComplete { [connections] _ in connections.withLockedValue { _ = $0?.removeValue(forKey: key) } }
    }

    /// The open connections, and no more from now on.
    func closeAll() -> [any Channel] {
        connections.withLockedValue { table in
            defer { table = nil }
            return table.map { Array($0.values) } ?? []
        }
    }
}

/// Answers each datagram to its sender.
private final class UDPQueryHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let state: ServerState

    init(state: ServerState) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = Self.unwrapInboundIn(data)
        guard let source = SocketAddr(envelope.remoteAddress), state.admit() else { return }
        let bytes = Array(envelope.data.readableBytesView)
        let channel = context.channel
        let eventLoop = context.eventLoop
        let remote = envelope.remoteAddress
        let state = self.state
        Task {
            defer { state.done() }
            guard let answer = await state.handler.answer(bytes, transport: .udp, from: source, on: eventLoop) else { return }
            var buffer = channel.allocator.buffer(capacity: answer.count)
            buffer.writeBytes(answer)
            channel.writeAndFlush(AddressedEnvelope(remoteAddress: remote, data: buffer), promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A UDP socket reports ICMP errors for earlier sends; the server goes on.
    }
}

/// Answers each length-prefixed query on a TCP connection; closes it when idle, or on a
/// framing error.
private final class TCPQueryHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let state: ServerState

    init(state: ServerState) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = Array(Self.unwrapInboundIn(data).readableBytesView)
        let channel = context.channel
        guard let source = SocketAddr(channel.remoteAddress) else { return }
        guard state.admit() else {
            if let header = DNSMessage.header(of: bytes) {
                let busy = MeshDNSResolver.error(.serverFailure, toHeader: header).serialized()
                context.writeAndFlush(Self.wrapOutboundOut(DNSLengthPrefixDecoder.frame(busy, allocator: channel.allocator)), promise: nil)
            }
            return
        }
        let eventLoop = context.eventLoop
        let state = self.state
        Task {
            defer { state.done() }
            guard let answer = await state.handler.answer(bytes, transport: .tcp, from: source, on: eventLoop) else {
                // Not even a header: the stream cannot be trusted any more.
                channel.close(promise: nil)
                return
            }
            channel.writeAndFlush(DNSLengthPrefixDecoder.frame(answer, allocator: channel.allocator), promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
