#if canImport(Glibc)
import Glibc
#endif
@testable import AmbitRuntime
import Kernel
import NIOCore
import NIOEmbedded
import Testing

/// The relay's two handlers on embedded channels (no sockets, one event loop the test turns):
/// what each channel is asked to do (write, read, half-close, close) and how the relay ends.
@Suite("Relay handlers on embedded channels")
struct RelayEmbeddedTests {
    @Test("bytes flow both ways in order, counted, and each read cycle earns one read")
    func bytesFlowBothWays() throws {
        let relay = try EmbeddedRelay(initialData: ByteBuffer(string: "early "))
        // Installed: each side granted the other one read.
        #expect(relay.downstreamSocket.reads == 1)
        #expect(relay.upstreamSocket.reads == 1)
        #expect(relay.registry.count == 1)

        try relay.downstream.writeInbound(ByteBuffer(string: "hello "))
        try relay.downstream.writeInbound(ByteBuffer(string: "world"))
        try relay.upstream.writeInbound(ByteBuffer(string: "reply"))
        #expect(try relay.written(by: relay.upstream) == "early hello world")
        #expect(try relay.written(by: relay.downstream) == "reply")
        #expect(relay.downstreamSocket.reads == 3)
        #expect(relay.upstreamSocket.reads == 2)
        #expect(relay.record.bytes.sent == 17)
        #expect(relay.record.bytes.received == 5)
        #expect(relay.result == nil, "still open")
    }

    @Test("a partner that cannot take more stops the reads until it can")
    func backpressure() throws {
        let relay = try EmbeddedRelay()
        relay.upstream.isWritable = false
        try relay.downstream.writeInbound(ByteBuffer(string: "a"))
        #expect(relay.downstreamSocket.reads == 1, "no read while upstream is over its high water mark")
        relay.upstream.pipeline.fireChannelWritabilityChanged()
        #expect(relay.downstreamSocket.reads == 1)
        relay.upstream.isWritable = true
        relay.upstream.pipeline.fireChannelWritabilityChanged()
        #expect(relay.downstreamSocket.reads == 2)
        relay.upstream.pipeline.fireChannelWritabilityChanged()
        #expect(relay.downstreamSocket.reads == 2, "one read per credit")
        #expect(try relay.written(by: relay.upstream) == "a")
    }

    @Test("a half-close is passed on as a half-close; the other direction goes on; both EOFs end the relay cleanly",
          arguments: [RelayError.Side.downstream, .upstream])
    func halfCloseBothWays(first: RelayError.Side) throws {
        let relay = try EmbeddedRelay()
        let (a, b) = first == .downstream ? (relay.downstream, relay.upstream) : (relay.upstream, relay.downstream)
        let (aSocket, bSocket) = first == .downstream
            ? (relay.downstreamSocket, relay.upstreamSocket) : (relay.upstreamSocket, relay.downstreamSocket)

        try a.writeInbound(ByteBuffer(string: "request"))
        a.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        relay.loop.run()
        #expect(try relay.written(by: b) == "request")
        #expect(bSocket.closes == [.output], "a half-close, not a close")
        #expect(b.isActive && a.isActive)
        #expect(aSocket.closes.isEmpty)

        // The answer still flows after the request's EOF.
        try b.writeInbound(ByteBuffer(string: "response"))
        #expect(try relay.written(by: a) == "response")
        b.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        relay.loop.run()

        // Each output shut once, then closed (a repeated close of a closed channel is harmless).
        #expect(aSocket.closes.first == .output && aSocket.halfCloses == 1 && aSocket.closedFully)
        #expect(bSocket.closes.first == .output && bSocket.halfCloses == 1 && bSocket.closedFully)
        #expect(aSocket.writesAfterHalfClose == 0 && bSocket.writesAfterHalfClose == 0)
        #expect(!a.isActive && !b.isActive)
        #expect(try relay.outcome() == nil)
        #expect(relay.record.failure == nil)
        #expect(relay.registry.count == 0)
        let (request, response) = (UInt64("request".utf8.count), UInt64("response".utf8.count))
        #expect(relay.record.bytes.sent == (first == .downstream ? request : response))
        #expect(relay.record.bytes.received == (first == .downstream ? response : request))
    }

    @Test("a reset on either side closes the partner at once, without a half-close, and fails the relay with that side",
          arguments: [RelayError.Side.downstream, .upstream])
    func resetClosesThePartner(side: RelayError.Side) throws {
        let relay = try EmbeddedRelay()
        let (failing, partner) = side == .downstream ? (relay.downstream, relay.upstream) : (relay.upstream, relay.downstream)
        let partnerSocket = side == .downstream ? relay.upstreamSocket : relay.downstreamSocket
        try failing.writeInbound(ByteBuffer(string: "partial"))
        failing.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "read(descriptor:pointer:size:)"))
        relay.loop.run()

        #expect(!failing.isActive && !partner.isActive)
        #expect(partnerSocket.closedFully && partnerSocket.halfCloses == 0, "an abort, not a FIN")
        let error = try #require(try relay.outcome())
        #expect(error.side == side)
        #expect(error.code == .channelError)
        #expect(relay.record.failure == error.description)
        #expect(relay.registry.count == 0)
    }

    @Test("the peer's EOF passed on, then a reset: the partner is aborted, not half-closed")
    func halfCloseThenReset() throws {
        let relay = try EmbeddedRelay()
        relay.downstream.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        relay.loop.run()
        #expect(relay.upstreamSocket.closes == [.output])
        relay.upstream.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "read"))
        relay.loop.run()
        #expect(relay.downstreamSocket.closedFully && relay.downstreamSocket.halfCloses == 0)
        #expect(!relay.downstream.isActive && !relay.upstream.isActive)
        #expect(try relay.outcome()?.side == .upstream)
    }

    @Test("errors on both sides: the first is the relay's outcome and the record's failure")
    func firstFailureWins() throws {
        let relay = try EmbeddedRelay()
        relay.upstream.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "upstream read"))
        relay.downstream.pipeline.fireErrorCaught(IOError(errnoCode: EPIPE, reason: "downstream write"))
        relay.loop.run()
        let error = try #require(try relay.outcome())
        #expect(error.side == .upstream)
        #expect(relay.record.failure == error.description)
        #expect(relay.completions == 1)
        #expect(relay.registry.count == 0)
    }

    @Test("a close nobody asked for (a write failure) fails the relay and aborts the partner")
    func unexpectedClose() throws {
        let relay = try EmbeddedRelay()
        relay.upstream.close(promise: nil)
        relay.loop.run()
        #expect(relay.downstreamSocket.closedFully && relay.downstreamSocket.halfCloses == 0)
        #expect(!relay.downstream.isActive)
        let error = try #require(try relay.outcome())
        #expect(error.code == .closedUnexpectedly)
        #expect(error.side == .upstream)
    }

    @Test("a forced close (the record's closer) aborts both sides and ends the relay cleanly")
    func forcedClose() throws {
        let relay = try EmbeddedRelay()
        try relay.downstream.writeInbound(ByteBuffer(string: "in flight"))
        relay.record.close()
        relay.loop.run()
        #expect(relay.downstreamSocket.closedFully && relay.downstreamSocket.halfCloses == 0)
        #expect(relay.upstreamSocket.closedFully && relay.upstreamSocket.halfCloses == 0)
        #expect(try relay.outcome() == nil)
        #expect(relay.record.failure == nil)
        #expect(relay.registry.count == 0)
        #expect(relay.completions == 1)
    }

    @Test("a channel without half-close closes on the passed EOF; its partner then ends cleanly")
    func halfCloseUnsupported() throws {
        let relay = try EmbeddedRelay()
        relay.upstreamSocket.failsHalfClose = true
        relay.downstream.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        relay.loop.run()
        #expect(relay.upstreamSocket.closes.prefix(2) == [.output, .all])
        #expect(relay.downstreamSocket.closes.prefix(2) == [.output, .all], "a clean end, passed on as one")
        #expect(try relay.outcome() == nil)
    }
}

/// Stands where the socket would be, first in an embedded channel's pipeline: counts reads,
/// records closes, and keeps the channel open on a half-close as a socket does (a bare
/// EmbeddedChannel closes entirely).
final class SocketStandIn: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    private(set) var reads = 0
    private(set) var closes: [CloseMode] = []
    private(set) var writesAfterHalfClose = 0
    var halfCloses: Int { closes.count { $0 == .output } }
    var closedFully: Bool { closes.contains(.all) }
    private var outputShut = false
    var failsHalfClose = false

    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if outputShut && unwrapOutboundIn(data).readableBytes > 0 { writesAfterHalfClose += 1 }
        context.write(data, promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        closes.append(mode)
        guard mode == .output else {
            context.close(mode: mode, promise: promise)
            return
        }
        if failsHalfClose {
            promise?.fail(ChannelError.operationUnsupported)
        } else {
            outputShut = true
            promise?.succeed(())
        }
    }
}

/// Two connected embedded channels on one loop, joined by ``Relay/join``.
final class EmbeddedRelay {
    let loop = EmbeddedEventLoop()
    let downstream: EmbeddedChannel
    let upstream: EmbeddedChannel
    let downstreamSocket = SocketStandIn()
    let upstreamSocket = SocketStandIn()
    let registry = ConnectionRegistry()
    let record: ConnectionRecord
    private(set) var result: Result<Void, any Error>?
    private(set) var completions = 0

    init(initialData: ByteBuffer? = nil) throws {
        downstream = EmbeddedChannel(handler: downstreamSocket, loop: loop)
        upstream = EmbeddedChannel(handler: upstreamSocket, loop: loop)
        try downstream.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40_000)).wait()
        try upstream.connect(to: SocketAddress(ipAddress: "127.0.0.2", port: 8080)).wait()
        record = ConnectionRecord(
            direction: .outbound, source: SocketAddr("127.0.0.1:40000")!, destination: SocketAddr("127.0.0.2:8080")!,
            sourceWorkload: nil, destinationWorkload: nil, route: "direct")
        let done = Relay.join(
            downstream: downstream, upstream: upstream, record: record, registry: registry, initialData: initialData)
        done.assumeIsolated().whenComplete { result in
            self.result = result
            self.completions += 1
        }
    }

    /// Everything `channel` was asked to write since the last call, as text.
    func written(by channel: EmbeddedChannel) throws -> String {
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) {
            text += String(buffer: buffer)
        }
        return text
    }

    /// The relay's end: nil for a clean one, its error for a failed one; throws if it has
    /// not ended.
    func outcome() throws -> RelayError? {
        switch result {
        case nil: throw EmbeddedRelayFailure("the relay has not ended")
        case .success: return nil
        case .failure(let error as RelayError): return error
        case .failure(let error): throw EmbeddedRelayFailure("the relay failed with \(error), not a RelayError")
        }
    }
}

struct EmbeddedRelayFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
