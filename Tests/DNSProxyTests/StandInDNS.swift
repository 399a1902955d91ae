import AmbitRuntime
import DNSProxy
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TestSupport
import Testing

/// A tiny upstream DNS server on real UDP and TCP sockets (one port), answering with a
/// closure and counting the queries per transport.
final class StandInDNS: Sendable {
    enum Reply: Sendable {
        case answer(DNSMessage)
        /// No answer at all.
        case silent
    }

    let address: SocketAddr
    private let udp: any Channel
    private let tcp: TCPListener
    private let counts: NIOLockedValueBox<[DNSTransport: Int]>

    private init(address: SocketAddr, udp: any Channel, tcp: TCPListener, counts: NIOLockedValueBox<[DNSTransport: Int]>) {
        self.address = address
        self.udp = udp
        self.tcp = tcp
        self.counts = counts
    }

    func queries(_ transport: DNSTransport) -> Int { counts.withLockedValue { $0[transport] ?? 0 } }

    static func start(
        on ip: String, placement: SocketPlacement = .node, reply: @escaping @Sendable (DNSMessage, DNSTransport) -> Reply
    ) async throws -> StandInDNS {
        let counts = NIOLockedValueBox<[DNSTransport: Int]>([:])
        let group = MultiThreadedEventLoopGroup.singleton
        let respond: @Sendable ([UInt8], DNSTransport) -> [UInt8]? = { bytes, transport in
            counts.withLockedValue { $0[transport, default: 0] += 1 }
            guard let query = try? DNSMessage(parsing: bytes), case .answer(var message) = reply(query, transport) else {
                return nil
            }
            message.header.id = query.header.id
            return message.serialized()
        }
        let tcp = try await TCPListener.bind(
            ListenerOptions(address: SocketAddr(ip: IPAddress(ip)!, port: 0), placement: placement), group: group
        ) {
            channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(StandInTCPHandler(respond: respond))
            }
        }
        let address = tcp.localAddress
        let udp = try await DatagramSocket.bind(address, placement: placement, group: group) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(StandInUDPHandler(respond: respond))
            }
        }
        return StandInDNS(address: address, udp: udp, tcp: tcp, counts: counts)
    }

    func stop() async {
        await tcp.stopAccepting()
        try? await udp.close()
    }
}

private final class StandInUDPHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>
    let respond: @Sendable ([UInt8], DNSTransport) -> [UInt8]?
    init(respond: @escaping @Sendable ([UInt8], DNSTransport) -> [UInt8]?) { self.respond = respond }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = Self.unwrapInboundIn(data)
        guard let answer = respond(Array(envelope.data.readableBytesView), .udp) else { return }
        let buffer = context.channel.allocator.buffer(bytes: answer)
        context.writeAndFlush(Self.wrapOutboundOut(AddressedEnvelope(remoteAddress: envelope.remoteAddress, data: buffer)), promise: nil)
    }
}

private final class StandInTCPHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let respond: @Sendable ([UInt8], DNSTransport) -> [UInt8]?
    var pending: [UInt8] = []
    init(respond: @escaping @Sendable ([UInt8], DNSTransport) -> [UInt8]?) { self.respond = respond }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pending += Self.unwrapInboundIn(data).readableBytesView
        while pending.count >= 2 {
            let length = Int(pending[0]) << 8 | Int(pending[1])
            guard pending.count >= 2 + length else { return }
            let message = Array(pending[2..<2 + length])
            pending.removeFirst(2 + length)
            if let answer = respond(message, .tcp) {
                let framed = [UInt8(answer.count >> 8), UInt8(answer.count & 0xFF)] + answer
                context.writeAndFlush(Self.wrapOutboundOut(context.channel.allocator.buffer(bytes: framed)), promise: nil)
            }
        }
    }
}

/// A DNS client over real sockets.
enum DNSTestClient {
    /// Sends each of `datagrams` from one UDP socket to `server` and returns the first
    /// answer that comes back (nil when none in `timeout`).
    static func udp(
        _ datagrams: [[UInt8]], to server: SocketAddr, placement: SocketPlacement = .node, timeout: TimeAmount = .seconds(5)
    ) async throws -> [UInt8]? {
        let group = MultiThreadedEventLoopGroup.singleton
        let promise = group.next().makePromise(of: [UInt8]?.self)
        let channel = try await DatagramSocket.bind(
            SocketAddr(ip: IPAddress("127.0.53.1")!, port: 0), placement: placement, group: promise.futureResult.eventLoop
        ) {
            channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(FirstDatagram(promise: promise))
            }
        }
        let timer = channel.eventLoop.scheduleTask(in: timeout) { promise.succeed(nil) }
        defer {
            timer.cancel()
            channel.close(promise: nil)
        }
        for datagram in datagrams {
            try await channel.writeAndFlush(
                AddressedEnvelope(remoteAddress: try server.nioAddress(), data: channel.allocator.buffer(bytes: datagram)))
        }
        return try await promise.futureResult.get()
    }

    static func udp(_ query: DNSMessage, to server: SocketAddr, placement: SocketPlacement = .node) async throws -> DNSMessage {
        let bytes = try #require(try await udp([query.serialized()], to: server, placement: placement))
        return try DNSMessage(parsing: bytes)
    }

    /// Sends `queries` on one TCP connection and reads as many answers.
    static func tcp(_ queries: [DNSMessage], to server: SocketAddr) async throws -> [DNSMessage] {
        try await offload {
            let socket = try BlockingSocket(connectingTo: server)
            defer { socket.closeNow() }
            for query in queries {
                let bytes = query.serialized()
                try socket.send([UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes)
            }
            var answers: [DNSMessage] = []
            for _ in queries {
                let length = try socket.receive(exactly: 2)
                answers.append(try DNSMessage(parsing: try socket.receive(exactly: Int(length[0]) << 8 | Int(length[1]))))
            }
            return answers
        }
    }
}

private final class FirstDatagram: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let promise: EventLoopPromise<[UInt8]?>
    init(promise: EventLoopPromise<[UInt8]?>) { self.promise = promise }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        promise.succeed(Array(Self.unwrapInboundIn(data).data.readableBytesView))
    }
}

extension DNSTestClient {
    /// One query over a TCP connection made where `placement` says (inside a namespace,
    /// where a blocking socket of the test process cannot go).
    static func tcp(_ query: DNSMessage, to server: SocketAddr, placement: SocketPlacement) async throws -> DNSMessage {
        let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
        let channel = try await TCPDialer().placed(placement).connect(to: server, on: eventLoop).get()
        defer { channel.close(promise: nil) }
        let promise = eventLoop.makePromise(of: [UInt8].self)
        try await eventLoop.submit { try channel.pipeline.syncOperations.addHandler(FirstFrame(promise: promise)) }.get()
        try await channel.setOption(.autoRead, value: true).get()
        let bytes = query.serialized()
        try await channel.writeAndFlush(channel.allocator.buffer(bytes: [UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes))
        let timer = eventLoop.scheduleTask(in: .seconds(5)) { promise.fail(TestFailure("no TCP answer")) }
        defer { timer.cancel() }
        return try DNSMessage(parsing: try await promise.futureResult.get())
    }
}

private final class FirstFrame: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let promise: EventLoopPromise<[UInt8]>
    var pending: [UInt8] = []
    init(promise: EventLoopPromise<[UInt8]>) { self.promise = promise }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        pending += Self.unwrapInboundIn(data).readableBytesView
        guard pending.count >= 2 else { return }
        let length = Int(pending[0]) << 8 | Int(pending[1])
        if pending.count >= 2 + length { promise.succeed(Array(pending[2..<2 + length])) }
    }
}
