#if canImport(Glibc)
import Glibc
#endif
import AmbitRuntime
@testable import HBONE
import Kernel
import NIOCore
import NIOEmbedded
import NIOHTTP2
import Testing
import TestSupport

/// The stream bridge with the kernel's relay behind it, as on the node's inbound path: a
/// NIOHTTP2 client stream ↔ the HBONE server connection ↔ the bridge ↔ the relay ↔ an
/// embedded "workload" connection. All on one embedded loop, frames moved by hand.
@Suite("HBONE stream bridge with the relay behind it, on embedded channels")
struct StreamBridgeRelayTests {
    @Test("both END_STREAMs, the peer's first: the workload sees a half-close, the stream ends without a reset, nothing follows")
    func peerEndsFirst() throws {
        let relayed = RelayBehindStream()
        let pair = try EmbeddedHBONE(behind: relayed.join)
        let stream = try pair.openStream()
        try pair.send(Array("request".utf8), on: stream)
        try pair.sendEnd(on: stream)
        try pair.interact()
        let upstream = try #require(relayed.upstream)
        #expect(try relayed.written() == Array("request".utf8))
        #expect(relayed.socket.closes == [.output], "END_STREAM reaches the workload as a half-close")
        #expect(upstream.isActive)

        // The workload answers after the request's end, then ends its side.
        try upstream.writeInbound(ByteBuffer(string: "response"))
        upstream.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        try pair.interact()
        let received = pair.received(on: stream)
        #expect(received.bytes == Array("response".utf8))
        #expect(received.endStream)
        #expect(received.reset == nil)

        let serverEnd = try #require(pair.serverEndStreamIndex(stream))
        // Let the bridge's last-resort close come and go: nothing more on the stream.
        pair.loop.advanceTime(by: .seconds(11))
        try pair.interact()
        #expect(pair.serverFrames(on: stream, type: nil, after: serverEnd + 1).isEmpty, "\(pair.frames)")
        #expect(pair.serverResets.isEmpty, "\(pair.serverResets)")
        #expect(!upstream.isActive)
        #expect(pair.serverStream(stream)?.isActive == false)
        #expect(try relayed.outcome() == nil)
        #expect(relayed.record.bytes.sent == 7 && relayed.record.bytes.received == 8)
    }

    @Test("both END_STREAMs, ours first: bytes after our END_STREAM are not written, the peer's still arrive, no reset")
    func oursEndsFirst() throws {
        let relayed = RelayBehindStream()
        let pair = try EmbeddedHBONE(behind: relayed.join)
        let stream = try pair.openStream()
        let upstream = try #require(relayed.upstream)
        try upstream.writeInbound(ByteBuffer(string: "banner"))
        upstream.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        try pair.interact()
        #expect(pair.received(on: stream).bytes == Array("banner".utf8))
        #expect(pair.received(on: stream).endStream)
        let serverEnd = try #require(pair.serverEndStreamIndex(stream))

        // Bytes the workload's side somehow delivers after its EOF: not written on the stream.
        try upstream.writeInbound(ByteBuffer(string: "late"))
        try pair.interact()
        #expect(pair.serverFrames(on: stream, type: 0x0, after: serverEnd + 1).isEmpty, "no DATA after END_STREAM")
        #expect(pair.received(on: stream).bytes == Array("banner".utf8))

        // The peer's direction still flows, 40 KB of it (so window updates are due), then ends.
        let payload = EmbeddedHBONE.bytes(40_000, seed: 9)
        try pair.send(payload, on: stream)
        try pair.interact()
        #expect(try relayed.written() == payload)
        try pair.sendEnd(on: stream)
        try pair.interact()
        let clientEnd = try #require(pair.clientEndIndex[stream])
        pair.loop.advanceTime(by: .seconds(11))
        try pair.interact()

        #expect(pair.serverFrames(on: stream, type: nil, after: clientEnd).isEmpty, "nothing after both END_STREAMs: \(pair.frames)")
        #expect(!pair.serverFrames(on: stream, type: nil, after: serverEnd + 1).contains { $0.type != 0x8 }, "only window updates after our END_STREAM")
        #expect(pair.serverResets.isEmpty, "\(pair.serverResets)")
        #expect(pair.received(on: stream).reset == nil)
        #expect(!upstream.isActive)
        #expect(try relayed.outcome() == nil)
        #expect(relayed.record.bytes.received == 6, "the late bytes were not counted as relayed")
    }

    @Test("a reset by the peer aborts the workload's connection (no half-close) and fails the relay; no reset is sent back")
    func peerResetAbortsTheWorkload() throws {
        let relayed = RelayBehindStream()
        let pair = try EmbeddedHBONE(behind: relayed.join)
        let stream = try pair.openStream()
        try pair.send(Array("partial".utf8), on: stream)
        try pair.interact()
        #expect(try relayed.written() == Array("partial".utf8))
        let resetAt = pair.serverFrameCount
        try pair.reset(stream)
        try pair.interact()

        let upstream = try #require(relayed.upstream)
        #expect(!upstream.isActive)
        #expect(relayed.socket.closes.contains(.all))
        #expect(!relayed.socket.closes.contains(.output), "an abort, not a FIN")
        let error = try #require(try relayed.outcome())
        #expect(error.side == .downstream)
        #expect(pair.serverFrames(on: stream, type: nil, after: resetAt).isEmpty, "\(pair.frames)")
        #expect(pair.server.isActive)
    }

    @Test("the workload's reset resets the stream: the peer sees RST_STREAM, not END_STREAM")
    func workloadResetResetsTheStream() throws {
        let relayed = RelayBehindStream()
        let pair = try EmbeddedHBONE(behind: relayed.join)
        let stream = try pair.openStream()
        let upstream = try #require(relayed.upstream)
        upstream.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "read"))
        try pair.interact()
        #expect(pair.serverResets.contains { $0.stream == stream }, "\(pair.frames)")
        #expect(pair.serverEndStreamIndex(stream) == nil, "no END_STREAM: the truncated stream must not look complete")
        #expect(!pair.received(on: stream).endStream)
        #expect(try relayed.outcome()?.side == .upstream)
        #expect(pair.server.isActive, "one stream's abort leaves the connection alone")
    }
}

extension EmbeddedHBONE {
    /// The index in ``frames`` of the server's END_STREAM on `stream`.
    func serverEndStreamIndex(_ stream: HTTP2StreamID) -> Int? {
        frames.lastIndex { $0.stream == stream && ($0.type == 0x0 || $0.type == 0x1) && $0.flags & 0x1 != 0 }
    }
}

/// Stands where the workload's socket would be: records closes and keeps the channel open
/// on a half-close, as a socket does (a bare EmbeddedChannel closes entirely).
final class WorkloadSocket: ChannelOutboundHandler {
    typealias OutboundIn = Any
    private(set) var closes: [CloseMode] = []

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        closes.append(mode)
        if mode == .output {
            promise?.succeed(())
        } else {
            context.close(mode: mode, promise: promise)
        }
    }
}

/// The relay between each server stream and an embedded workload connection.
///
/// `@unchecked Sendable`: everything runs on the embedded loop, which is the test's thread.
final class RelayBehindStream: @unchecked Sendable {
    let socket = WorkloadSocket()
    let record = ConnectionRecord(
        direction: .inbound, source: SocketAddr("127.0.0.1:40000")!, destination: SocketAddr("127.0.0.1:8080")!,
        sourceWorkload: nil, destinationWorkload: nil, route: "hbone")
    private(set) var upstream: EmbeddedChannel?
    private var result: Result<Void, any Error>?

    func join(_ stream: any Channel) {
        let upstream = EmbeddedChannel(handler: socket, loop: stream.eventLoop as! EmbeddedEventLoop)
        upstream.connect(to: try! SocketAddress(ipAddress: "127.0.0.1", port: 8080), promise: nil)
        self.upstream = upstream
        Relay.join(downstream: stream, upstream: upstream, record: record, registry: nil)
            .assumeIsolated().whenComplete { self.result = $0 }
    }

    /// What the relay wrote to the workload since the last call.
    func written() throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let buffer = try upstream?.readOutbound(as: ByteBuffer.self) { bytes += Array(buffer: buffer) }
        return bytes
    }

    /// Nil for a clean end, the relay's error for a failed one; throws if it has not ended.
    func outcome() throws -> RelayError? {
        switch result {
        case nil: throw TestFailure("the relay has not ended")
        case .success: return nil
        case .failure(let error as RelayError): return error
        case .failure(let error): throw TestFailure("the relay failed with \(error), not a RelayError")
        }
    }
}
