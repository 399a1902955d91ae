import Capture
import Kernel
import Logging
import NIOCore
import NIOEmbedded
import Testing

/// The SOCKS5 server handler on an embedded channel (no sockets): the delegate's future is
/// completed by the test, time moves only when the test advances it.
@Suite("SOCKS5 server handler on an embedded channel")
struct SOCKS5HandlerEmbeddedTests {
    static let greeting: [UInt8] = [5, 1, 0]
    /// CONNECT 10.1.2.3:80.
    static let request: [UInt8] = [5, 1, 0, 1, 10, 1, 2, 3, 0, 80]
    static let destination = SOCKS5Request(address: .ip(IPAddress("10.1.2.3")!), port: 80)
    static let methodAccepted: [UInt8] = [5, 0]
    /// Success, bound to 10.0.0.1:5000.
    static let succeeded: [UInt8] = [5, 0, 0, 1, 10, 0, 0, 1, 0x13, 0x88]

    static func failed(_ code: UInt8) -> [UInt8] { [5, code, 0, 1, 0, 0, 0, 0, 0, 0] }

    @Test("greeting and request in one read: one request, then the success reply, the handler leaves and the relay starts")
    func handshakeInOneRead() throws {
        let socks = try EmbeddedSOCKS5()
        try socks.client(Self.greeting + Self.request)
        #expect(try socks.written() == Self.methodAccepted)
        #expect(socks.requests == [Self.destination])

        try socks.connect()
        #expect(try socks.written() == Self.succeeded)
        #expect(socks.starts == [nil], "started once, with no early bytes")
        #expect(socks.cancels == 0)
        #expect(!socks.handlerInPipeline)
        // The relay now gets what the client sends.
        try socks.client(Array("GET /".utf8))
        #expect(socks.relayed == Array("GET /".utf8))
        #expect(socks.channel.isActive)
    }

    @Test("greeting and request one byte at a time: answered only once each message is complete")
    func handshakeByteByByte() throws {
        let socks = try EmbeddedSOCKS5()
        for (index, byte) in (Self.greeting + Self.request).enumerated() {
            try socks.client([byte])
            let written = try socks.written()
            switch index {
            case Self.greeting.count - 1: #expect(written == Self.methodAccepted, "after byte \(index)")
            default: #expect(written.isEmpty, "after byte \(index)")
            }
            let complete = index == Self.greeting.count + Self.request.count - 1
            #expect(socks.requests.count == (complete ? 1 : 0), "after byte \(index)")
        }
        #expect(socks.requests == [Self.destination])
        try socks.connect()
        #expect(try socks.written() == Self.succeeded)
        #expect(socks.starts == [nil])
    }

    @Test("reads pass while handshaking, are held while the delegate connects, and one is re-issued after the start")
    func readsHeldWhileConnecting() throws {
        let socks = try EmbeddedSOCKS5()
        socks.channel.read()
        #expect(socks.socket.reads == 1, "handshaking: reads go down")
        try socks.client(Self.greeting + Self.request)
        socks.channel.read()
        socks.channel.read()
        #expect(socks.socket.reads == 1, "no read() passed down while the delegate's future is pending")
        try socks.connect()
        #expect(socks.socket.reads == 2, "the held read, issued once the relay is in place")
    }

    @Test("no read held while connecting: none is issued after the start")
    func noHeldRead() throws {
        let socks = try EmbeddedSOCKS5()
        try socks.client(Self.greeting + Self.request)
        try socks.connect()
        #expect(socks.socket.reads == 0)
    }

    @Test("bytes after the request, in its read and in later ones, go to start in order")
    func earlyBytesGoToStart() throws {
        let socks = try EmbeddedSOCKS5()
        try socks.client(Self.greeting + Self.request + Array("GET ".utf8))
        try socks.client(Array("/ HTTP/1.1".utf8))
        #expect(try socks.written() == Self.methodAccepted, "no reply before the delegate answers")
        try socks.connect()
        #expect(socks.starts == [Array("GET / HTTP/1.1".utf8)])
        #expect(socks.relayed.isEmpty, "early bytes go to start, not to the pipeline")
        try socks.client(Array("\r\n".utf8))
        #expect(socks.relayed == Array("\r\n".utf8))
    }

    @Test("the client leaves while the delegate connects: its upstream is cancelled when the future succeeds")
    func clientLeavesWhileConnecting() throws {
        let socks = try EmbeddedSOCKS5()
        try socks.client(Self.greeting + Self.request)
        _ = try socks.written()
        try socks.channel.close().wait()
        socks.loop.run()
        try socks.connect()
        #expect(socks.cancels == 1)
        #expect(socks.starts.isEmpty)
        #expect(try socks.written().isEmpty)
    }

    @Test(
        "a failed connect writes the error's reply and closes",
        arguments: [
            (SOCKS5Error(.connectionRefused, "refused") as any Error, UInt8(5)),
            (SOCKS5Error(.notAllowed, "policy") as any Error, UInt8(2)),
            (ChannelError.connectTimeout(.seconds(1)) as any Error, UInt8(1)),
        ])
    func failedConnect(error: any Error, reply: UInt8) throws {
        let socks = try EmbeddedSOCKS5()
        try socks.client(Self.greeting + Self.request)
        _ = try socks.written()
        socks.pending?.fail(error)
        socks.loop.run()
        #expect(try socks.written() == Self.failed(reply))
        #expect(!socks.channel.isActive)
        #expect(socks.starts.isEmpty)
    }

    @Test("an incomplete handshake is closed, unanswered, when the timeout passes")
    func timeoutWhileHandshaking() throws {
        let socks = try EmbeddedSOCKS5(timeout: .seconds(10))
        try socks.client([5, 1])
        socks.loop.advanceTime(by: .milliseconds(9_999))
        #expect(socks.channel.isActive)
        socks.loop.advanceTime(by: .milliseconds(1))
        #expect(!socks.channel.isActive)
        #expect(try socks.written().isEmpty)
        #expect(socks.requests.isEmpty)
    }

    @Test("a delegate slower than the timeout: general failure, close, then its late success is cancelled")
    func timeoutWhileConnecting() throws {
        let socks = try EmbeddedSOCKS5(timeout: .seconds(10))
        try socks.client(Self.greeting + Self.request)
        _ = try socks.written()
        socks.loop.advanceTime(by: .seconds(10))
        #expect(try socks.written() == Self.failed(1))
        #expect(!socks.channel.isActive)
        try socks.connect()
        #expect(socks.cancels == 1)
        #expect(socks.starts.isEmpty)
    }

    @Test("the timer ends with the handshake: an established connection outlives it")
    func timerCancelledOnSuccess() throws {
        let socks = try EmbeddedSOCKS5(timeout: .seconds(10))
        try socks.client(Self.greeting + Self.request)
        try socks.connect()
        socks.loop.advanceTime(by: .seconds(60))
        #expect(socks.channel.isActive)
        #expect(try socks.written() == Self.methodAccepted + Self.succeeded)
    }
}

/// Counts the reads that reach the socket's place in the pipeline.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = Any
    private(set) var reads = 0

    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

/// What the relay would see: the bytes that pass the pipeline after the handshake.
final class RelayedBytes: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private(set) var bytes: [UInt8] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytes += Array(buffer: unwrapInboundIn(data))
    }
}

/// A SOCKS5 server handler on a connected embedded channel, its delegate's future held for
/// the test to complete.
///
/// `@unchecked Sendable`: everything runs on the embedded loop, which is the test's thread.
final class EmbeddedSOCKS5: @unchecked Sendable {
    let loop = EmbeddedEventLoop()
    let channel: EmbeddedChannel
    let socket = ReadCounter()
    private(set) var requests: [SOCKS5Request] = []
    private(set) var pending: EventLoopPromise<SOCKS5Connected>?
    private(set) var starts: [[UInt8]?] = []
    private(set) var cancels = 0
    private let relay = RelayedBytes()

    init(timeout: TimeAmount = .seconds(10)) throws {
        channel = EmbeddedChannel(handler: socket, loop: loop)
        var logger = Logger(label: "socks5-embedded-test")
        logger.logLevel = .critical
        let handler = SOCKS5ServerHandler(handshakeTimeout: timeout, logger: logger) { request, channel in
            self.requests.append(request)
            let promise = channel.eventLoop.makePromise(of: SOCKS5Connected.self)
            self.pending = promise
            return promise.futureResult
        }
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 15080)).wait()
    }

    /// The client sends `bytes` as one read.
    func client(_ bytes: [UInt8]) throws {
        try channel.writeInbound(ByteBuffer(bytes: bytes))
    }

    /// The delegate connects: its future succeeds, bound to 10.0.0.1:5000.
    func connect() throws {
        let promise = try #require(pending)
        promise.succeed(
            SOCKS5Connected(
                boundAddress: SocketAddr("10.0.0.1:5000")!,
                start: { early in
                    self.starts.append(early.map { Array(buffer: $0) })
                    try? self.channel.pipeline.syncOperations.addHandler(self.relay)
                },
                cancel: { self.cancels += 1 }))
        loop.run()
    }

    /// What the handler wrote to the client since the last call.
    func written() throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { bytes += Array(buffer: buffer) }
        return bytes
    }

    var relayed: [UInt8] { relay.bytes }

    var handlerInPipeline: Bool {
        (try? channel.pipeline.syncOperations.handler(type: SOCKS5ServerHandler.self)) != nil
    }
}
