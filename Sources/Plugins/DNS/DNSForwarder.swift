public import Kernel
public import NIOCore
import AmbitRuntime
import NIOConcurrencyHelpers

/// Sends queries the mesh does not answer to upstream resolvers, from sockets made where
/// a ``SocketPlacement`` says (in-pod: inside the pod's namespace, with the proxy's mark,
/// so the pod's DNS redirect does not catch them).
///
/// Each query goes to the upstreams in order until one answers: over UDP (a fresh socket
/// and a random id per attempt, waiting ``udpTimeout``); a truncated UDP answer is asked
/// again over TCP (2-byte length prefix, ``tcpTimeout`` for the connect and the answer)
/// when the client came over TCP, and otherwise passed on with its TC bit so the client
/// retries over TCP itself. An answer with an error code is the answer (it is passed on);
/// only no answer at all moves to the next upstream.
///
/// Thread-safe: a value type; ``forward(_:transport:on:)`` may run concurrently.
public struct DNSForwarder: Sendable {
    /// The resolvers, tried in order.
    public var upstreams: [SocketAddr]
    /// Where upstream sockets are made.
    public var placement: SocketPlacement
    /// How long to wait for one upstream's UDP answer.
    public var udpTimeout: TimeAmount
    /// How long a TCP exchange (connect, send, answer) may take.
    public var tcpTimeout: TimeAmount

    /// A forwarder to `upstreams`.
    public init(
        upstreams: [SocketAddr], placement: SocketPlacement = .node, udpTimeout: TimeAmount = .seconds(2),
        tcpTimeout: TimeAmount = .seconds(5)
    ) {
        self.upstreams = upstreams
        self.placement = placement
        self.udpTimeout = udpTimeout
        self.tcpTimeout = tcpTimeout
    }

    /// The upstreams to use when none are configured: the nameservers of `resolvConf`
    /// (the node's `/etc/resolv.conf`), empty when it cannot be read.
    public static func systemUpstreams(resolvConf path: String = "/etc/resolv.conf") -> [SocketAddr] {
        ResolvConf.load(path: path)?.nameservers ?? []
    }

    /// Why forwarding got no answer.
    public struct Failure: Error, Sendable, CustomStringConvertible {
        /// What each upstream did, in order.
        public var attempts: [String]
        public var description: String {
            attempts.isEmpty ? "no upstream resolvers are configured" : attempts.joined(separator: "; ")
        }
    }

    /// An upstream's answer.
    public struct Answer: Sendable {
        /// The answer as parsed.
        public var message: DNSMessage
        /// The answer's bytes with the client's id.
        public var bytes: [UInt8]
        /// The upstream that answered.
        public var upstream: SocketAddr
    }

    /// Forwards `query` (which came over `transport`) and returns the first upstream
    /// answer, with the query's id.
    ///
    /// - Throws: ``Failure`` when no upstream answered.
    public func forward(_ query: DNSMessage, transport: DNSTransport, on eventLoop: any EventLoop) async throws(Failure) -> Answer {
        var attempts: [String] = []
        for upstream in upstreams {
            var asked = query
            asked.header.id = UInt16.random(in: 0...UInt16.max)
            let bytes = asked.serialized()
            do {
                var answer = try await exchangeUDP(bytes, id: asked.header.id, with: upstream, on: eventLoop)
                if answer.message.header.truncated, transport == .tcp {
                    answer = try await exchangeTCP(bytes, id: asked.header.id, with: upstream, on: eventLoop)
                }
                answer.message.header.id = query.header.id
                answer.bytes[0] = UInt8(query.header.id >> 8)
                answer.bytes[1] = UInt8(query.header.id & 0xFF)
                return answer
            } catch {
                attempts.append("\(upstream): \(error)")
            }
        }
        throw Failure(attempts: attempts)
    }

    private func exchangeUDP(_ query: [UInt8], id: UInt16, with upstream: SocketAddr, on eventLoop: any EventLoop) async throws -> Answer {
        let promise = eventLoop.makePromise(of: [UInt8].self)
        let local = SocketAddr(ip: upstream.ip.isIPv4 ? IPAddress("0.0.0.0")! : IPAddress("::")!, port: 0)
        let channel: any Channel
        do {
            channel = try await DatagramSocket.bind(local, placement: placement, group: eventLoop) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(UDPAnswerHandler(from: upstream, id: id, promise: promise))
                }
            }
        } catch {
            promise.fail(error)
            throw error
        }
        let timeout = channel.eventLoop.scheduleTask(in: udpTimeout) {
            promise.fail(ForwardError("no UDP answer in \(udpTimeout.nanoseconds / 1_000_000) ms"))
        }
        defer {
            timeout.cancel()
            channel.close(promise: nil)
        }
        var buffer = channel.allocator.buffer(capacity: query.count)
        buffer.writeBytes(query)
        let target = try upstream.nioAddress()
        channel.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: buffer)).whenFailure { promise.fail($0) }
        let bytes = try await promise.futureResult.get()
        return try Answer(message: DNSMessage(parsing: bytes), bytes: bytes, upstream: upstream)
    }

    private func exchangeTCP(_ query: [UInt8], id: UInt16, with upstream: SocketAddr, on eventLoop: any EventLoop) async throws -> Answer {
        let promise = eventLoop.makePromise(of: [UInt8].self)
        let timeout = eventLoop.scheduleTask(in: tcpTimeout) {
            promise.fail(ForwardError("no TCP answer in \(tcpTimeout.nanoseconds / 1_000_000) ms"))
        }
        defer { timeout.cancel() }
        let dialer = TCPDialer(options: DialerOptions(connectTimeout: tcpTimeout)).placed(placement)
        let channel: any Channel
        do {
            channel = try await dialer.connect(to: upstream, on: eventLoop).get()
        } catch {
            promise.fail(error)
            throw error
        }
        defer { channel.close(promise: nil) }
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(DNSLengthPrefixDecoder()))
            try channel.pipeline.syncOperations.addHandler(TCPAnswerHandler(id: id, promise: promise))
        }.get()
        _ = channel.setOption(.autoRead, value: true)
        channel.read()
        channel.writeAndFlush(DNSLengthPrefixDecoder.frame(query, allocator: channel.allocator)).whenFailure {
            promise.fail($0)
        }
        let bytes = try await promise.futureResult.get()
        return try Answer(message: DNSMessage(parsing: bytes), bytes: bytes, upstream: upstream)
    }
}

/// A forwarding step that failed, in words.
struct ForwardError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Takes the first datagram from the upstream that carries the query's id and is a
/// response; anything else (a stray or spoofed datagram) is ignored.
private final class UDPAnswerHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let from: SocketAddr
    private let id: UInt16
    private let promise: EventLoopPromise<[UInt8]>

    init(from: SocketAddr, id: UInt16, promise: EventLoopPromise<[UInt8]>) {
        self.from = from
        self.id = id
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = Self.unwrapInboundIn(data)
        guard SocketAddr(envelope.remoteAddress) == from else { return }
        let bytes = Array(envelope.data.readableBytesView)
        guard let header = DNSMessage.header(of: bytes), header.id == id, header.isResponse else { return }
        promise.succeed(bytes)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ForwardError("the UDP socket closed"))
    }
}

/// Takes the first message on the upstream TCP connection; one with another id fails.
private final class TCPAnswerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let id: UInt16
    private let promise: EventLoopPromise<[UInt8]>

    init(id: UInt16, promise: EventLoopPromise<[UInt8]>) {
        self.id = id
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = Array(Self.unwrapInboundIn(data).readableBytesView)
        if let header = DNSMessage.header(of: bytes), header.id == id, header.isResponse {
            promise.succeed(bytes)
        } else {
            promise.fail(ForwardError("the TCP answer does not match the query"))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(ForwardError("the upstream closed the TCP connection without an answer"))
    }
}
