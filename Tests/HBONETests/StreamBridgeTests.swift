@testable import HBONE
import Logging
import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import NIOTLS
import Testing
import TestSupport

/// The stream bridge and the connection handler on embedded channels (no sockets): a
/// NIOHTTP2 client talks to an HBONE server connection (frame watcher, NIOHTTP2, connection
/// handler; each stream a bridge with an echo behind it that ends like the relay: an error
/// aborts, a half-close is passed on once everything queued is written). The tests drive
/// the states NIOHTTP2 can change under a frame: the peer half-closing or resetting while the
/// server's frames wait for the connection to be writable or for window.
@Suite("HBONE stream bridge on embedded channels: frames never outlive the stream state that allows them")
struct StreamBridgeTests {
    @Test("window updates after a remote half-close: NIOHTTP2's refused WINDOW_UPDATE does not end the tunnel")
    func windowUpdateAfterRemoteHalfClose() throws {
        let pair = try EmbeddedHBONE()
        let stream = try pair.openStream()
        // The connection cannot write: NIOHTTP2 buffers the stream's WINDOW_UPDATE (its window
        // fell below half as the echo consumed the bytes) and the echoed DATA.
        pair.setServerWritable(false)
        let payload = EmbeddedHBONE.bytes(40_000, seed: 1)
        try pair.send(payload, on: stream)
        try pair.interact()
        // The peer ends its direction while that WINDOW_UPDATE still waits.
        try pair.sendEnd(on: stream)
        try pair.interact()
        pair.setServerWritable(true)
        try pair.interact()

        let received = pair.received(on: stream)
        #expect(received.bytes == payload, "echoed \(received.bytes.count) of \(payload.count) bytes")
        #expect(received.endStream)
        #expect(received.reset == nil)
        #expect(pair.serverResets.isEmpty, "\(pair.serverResets)")
        #expect(pair.echo(stream)?.errors.isEmpty == true, "\(pair.echo(stream)?.errors ?? [])")
        // The refused frame was never written: the only WINDOW_UPDATEs on the stream came
        // before the peer's END_STREAM, none after.
        #expect(pair.serverFrames(on: stream, type: 0x8, after: pair.clientEndIndex[stream] ?? 0).isEmpty)
        #expect(pair.server.isActive)
    }

    @Test("a reset while data is buffered: the stream ends as an abort, nothing more is sent on it, other streams go on")
    func resetWhileDataIsBuffered() throws {
        let pair = try EmbeddedHBONE()
        let first = try pair.openStream()
        let second = try pair.openStream()
        pair.setServerWritable(false)
        try pair.send(EmbeddedHBONE.bytes(20_000, seed: 2), on: first)
        try pair.interact()
        // The echo's DATA waits in NIOHTTP2; the peer resets the stream.
        let resetAt = pair.serverFrameCount
        try pair.reset(first)
        try pair.interact()
        pair.setServerWritable(true)
        try pair.interact()

        #expect(pair.serverFrames(on: first, type: nil, after: resetAt).isEmpty, "\(pair.frames)")
        // The relay side learnt of the reset (and would reset the upstream connection).
        #expect(pair.echo(first)?.errors.isEmpty == false)
        // The other tunnel on the connection is untouched.
        let payload = EmbeddedHBONE.bytes(10_000, seed: 3)
        try pair.send(payload, on: second)
        try pair.sendEnd(on: second)
        try pair.interact()
        let received = pair.received(on: second)
        #expect(received.bytes == payload)
        #expect(received.endStream && received.reset == nil)
        #expect(pair.server.isActive)
        #expect(!pair.serverFrames.contains { $0.type == 0x7 }, "no GOAWAY")
    }

    @Test("a half-close while the peer's window is exhausted: END_STREAM waits behind the data, no reset")
    func halfCloseWhileWindowIsExhausted() throws {
        // The client grants 16 KiB per stream and reads only when told to.
        let pair = try EmbeddedHBONE(clientStreamWindow: 16_384)
        let stream = try pair.openStream(autoRead: false)
        let payload = EmbeddedHBONE.bytes(50_000, seed: 4)
        try pair.send(payload, on: stream)
        try pair.sendEnd(on: stream)
        try pair.interact()
        // The echo half-closed after its last write; the window holds most of the data back.
        let sent = pair.serverFrames(on: stream, type: 0x0, after: 0)
        #expect(sent.reduce(0) { $0 + $1.length } <= 16_384)
        #expect(!sent.contains { $0.flags & 0x1 != 0 }, "END_STREAM before the data it follows")
        #expect(pair.serverResets.isEmpty)

        // The peer reads: the window opens, the rest follows, then END_STREAM.
        for _ in 0..<50 {
            pair.clientStream(stream)?.read()
            try pair.interact()
            if pair.received(on: stream).endStream { break }
        }
        let received = pair.received(on: stream)
        #expect(received.bytes == payload, "echoed \(received.bytes.count) of \(payload.count) bytes")
        #expect(received.endStream && received.reset == nil)
        #expect(pair.serverResets.isEmpty, "\(pair.serverResets)")
        let data = pair.serverFrames(on: stream, type: 0x0, after: 0)
        #expect((data.last?.flags ?? 0) & 0x1 == 0x1, "END_STREAM is the last DATA frame")
        #expect(data.dropLast().allSatisfy { $0.flags & 0x1 == 0 })
    }

    @Test("after its own END_STREAM the bridge sends no DATA and no HEADERS: the writes fail locally")
    func nothingAfterOwnEndStream() throws {
        let pair = try EmbeddedHBONE(echo: false)
        let stream = try pair.openStream()
        let channel = try #require(pair.serverStream(stream))
        let bridge = try #require(pair.serverBridge(stream))
        let ended = pair.loop.makePromise(of: Void.self)
        channel.close(mode: .output, promise: ended)
        try pair.interact()
        try ended.futureResult.wait()
        #expect(pair.received(on: stream).endStream)
        let before = pair.serverFrameCount

        let write = pair.loop.makePromise(of: Void.self)
        channel.writeAndFlush(ByteBuffer(string: "late"), promise: write)
        let headers = pair.loop.makePromise(of: Void.self)
        bridge.sendHeaders(HPACKHeaders([("x-late", "1")]), endStream: true, promise: headers)
        try pair.interact()
        #expect(throws: ChannelError.outputClosed) { try write.futureResult.wait() }
        #expect(throws: ChannelError.outputClosed) { try headers.futureResult.wait() }
        #expect(pair.serverFrames(on: stream, type: nil, after: before).isEmpty)

        // The peer's own END_STREAM then closes the stream cleanly: no reset either way.
        try pair.sendEnd(on: stream)
        try pair.interact()
        #expect(pair.serverResets.isEmpty)
        #expect(pair.received(on: stream).reset == nil)
    }

    @Test("a stream error (DATA beyond the stream's window) resets that stream only; the connection and its other streams go on")
    func streamErrorResetsOnlyItsStream() throws {
        let pair = try EmbeddedHBONE(echo: false)
        let victim = try pair.openStream()
        let bystander = try pair.openStream()
        // Five 16,000-byte DATA frames on a 65,535-byte stream window, written raw (a
        // NIOHTTP2 client would never send them). The connection window is large.
        var frames = ByteBuffer()
        for _ in 0..<5 {
            frames.writeBytes([0x00, 0x3e, 0x80, 0x00, 0x00])  // length 16,000, DATA, no flags
            frames.writeInteger(UInt32(Int32(victim)))
            frames.writeBytes([UInt8](repeating: 7, count: 16_000))
        }
        try pair.server.writeInbound(frames)
        try pair.interact()

        #expect(pair.serverResets.contains { $0.stream == victim && $0.code == .flowControlError }, "\(pair.serverResets)")
        #expect(!pair.serverFrames.contains { $0.type == 0x7 }, "no GOAWAY: \(pair.frames)")
        #expect(pair.server.isActive)
        // The bystander still carries a tunnel both ways.
        let channel = try #require(pair.serverStream(bystander))
        try pair.send(Array("ping".utf8), on: bystander)
        try pair.interact()
        #expect(pair.serverBridgeReceived(bystander) == Array("ping".utf8))
        channel.writeAndFlush(ByteBuffer(string: "pong"), promise: nil)
        try pair.interact()
        #expect(pair.received(on: bystander).bytes == Array("pong".utf8))
    }

    @Test("the frame watcher finds GOAWAY and RST_STREAM in bytes split anywhere, after the client preface")
    func frameWatcherParsesSplitWrites() throws {
        var goAways: [HTTP2ErrorCode] = []
        var resets: [(HTTP2StreamID, HTTP2ErrorCode)] = []
        var types: [UInt8] = []
        var bytes = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
        bytes += [0, 0, 6, 0x4, 0, 0, 0, 0, 0] + [0, 4, 0, 0, 0xff, 0xff]  // SETTINGS
        bytes += [0, 0, 5, 0x0, 0x1, 0, 0, 0, 3] + Array("hello".utf8)  // DATA, END_STREAM, stream 3
        bytes += [0, 0, 4, 0x3, 0, 0, 0, 0, 5] + [0, 0, 0, 1]  // RST_STREAM 5 PROTOCOL_ERROR
        bytes += [0, 0, 8, 0x7, 0, 0, 0, 0, 0] + [0, 0, 0, 9] + [0, 0, 0, 0xb]  // GOAWAY ENHANCE_YOUR_CALM
        for split in [1, 2, 7, 9, 13, 64] {
            goAways = []
            resets = []
            types = []
            let watcher = HTTP2FrameWatcher(isClient: true)
            watcher.events = .init(
                goAway: { goAways.append($0) }, reset: { resets.append(($0, $1)) },
                frame: { type, _, _, _ in types.append(type) })
            let channel = EmbeddedChannel(handler: watcher)
            var index = 0
            while index < bytes.count {
                let end = min(bytes.count, index + split)
                try channel.writeOutbound(IOData.byteBuffer(ByteBuffer(bytes: bytes[index..<end])))
                index = end
            }
            #expect(types == [0x4, 0x0, 0x3, 0x7], "split \(split)")
            #expect(goAways == [.enhanceYourCalm], "split \(split)")
            #expect(resets.count == 1 && resets.first?.0 == 5 && resets.first?.1 == .protocolError, "split \(split)")
            _ = try channel.finish()
        }
    }
}

/// A NIOHTTP2 client and an HBONE server connection on one embedded event loop, bytes moved
/// between them by ``interact()``.
///
/// `@unchecked Sendable`: everything runs on the embedded loop, which is the test's thread.
final class EmbeddedHBONE: @unchecked Sendable {
    struct Frame {
        var type: UInt8
        var flags: UInt8
        var stream: HTTP2StreamID
        var length: Int
    }

    /// What the client's stream got from the server.
    struct Received {
        var bytes: [UInt8] = []
        var status: String?
        var endStream = false
        var reset: HTTP2ErrorCode?
    }

    let loop = EmbeddedEventLoop()
    let server: EmbeddedChannel
    let client: EmbeddedChannel
    private var multiplexer: NIOHTTP2Handler.StreamMultiplexer!
    private(set) var frames: [Frame] = []
    private(set) var serverResets: [(stream: HTTP2StreamID, code: HTTP2ErrorCode)] = []
    /// The index in ``frames`` when the client sent END_STREAM on a stream.
    private(set) var clientEndIndex: [HTTP2StreamID: Int] = [:]
    private var clientStreams: [HTTP2StreamID: (channel: any Channel, recorder: ClientRecorder)] = [:]
    private var serverSide: [HTTP2StreamID: (channel: any Channel, bridge: HBONEStreamBridge, echo: StreamEcho?)] = [:]

    var serverFrames: [Frame] { frames }
    var serverFrameCount: Int { frames.count }

    /// `behind`: what stands behind each server stream instead of the echo (or, with `echo`
    /// false, the recorder), e.g. the kernel's relay.
    init(
        clientStreamWindow: Int = 65_535, echo: Bool = true, behind: (@Sendable (any Channel) -> Void)? = nil
    ) throws {
        server = EmbeddedChannel(loop: loop)
        client = EmbeddedChannel(loop: loop)
        let logger = {
            var logger = Logger(label: "stream-bridge-test")
            logger.logLevel = .critical
            return logger
        }()
        let connection = HBONEConnectionHandler(
            connectionWindow: 16 << 20, keepaliveInterval: .hours(1), keepaliveTimeout: .hours(1), handshakeTimeout: nil,
            isClient: false, logger: logger, events: HBONEConnectionEvents())
        let http2 = NIOHTTP2Handler(mode: .server, eventLoop: loop) { [unowned self] stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.syncOptions?.setOption(.autoRead, value: false)
                let bridge = HBONEStreamBridge(logger: logger) { [unowned self] _, bridge, channel in
                    bridge.sendHeaders(HPACKHeaders([(":status", "200")]), endStream: false)
                    bridge.open()
                    let id = try! channel.syncOptions!.getOption(HTTP2StreamChannelOptions.streamID)
                    if let behind {
                        behind(channel)
                    } else if echo {
                        let handler = StreamEcho()
                        try! channel.pipeline.syncOperations.addHandler(handler)
                        self.serverSide[id]?.echo = handler
                    } else {
                        try! channel.pipeline.syncOperations.addHandler(ServerRecorder())
                    }
                }
                let id = try stream.syncOptions!.getOption(HTTP2StreamChannelOptions.streamID)
                self.serverSide[id] = (stream, bridge, nil)
                try stream.pipeline.syncOperations.addHandler(bridge)
            }
        }
        try server.pipeline.syncOperations.addHandlers([connection.frameWatcher, http2, connection])
        let watcherEvents = HTTP2FrameWatcher.Events(
            goAway: { _ in },
            reset: { [unowned self] stream, code in self.serverResets.append((stream, code)) },
            frame: { [unowned self] type, flags, stream, length in
                self.frames.append(Frame(type: type, flags: flags, stream: stream, length: length))
            })
        let connectionEvents = connection.frameWatcher.events
        connection.frameWatcher.events = .init(
            goAway: { code in
                connectionEvents.goAway(code)
                watcherEvents.goAway(code)
            },
            reset: { stream, code in
                connectionEvents.reset(stream, code)
                watcherEvents.reset(stream, code)
            },
            frame: watcherEvents.frame)

        var clientConfiguration = NIOHTTP2Handler.ConnectionConfiguration()
        clientConfiguration.initialSettings = [HTTP2Setting(parameter: .initialWindowSize, value: clientStreamWindow)]
        // NIOHTTP2 tops a stream's window up to its target as bytes arrive: keep them equal,
        // so the window opens only as the client reads.
        var clientStreamConfiguration = NIOHTTP2Handler.StreamConfiguration()
        clientStreamConfiguration.targetWindowSize = clientStreamWindow
        let clientHTTP2 = NIOHTTP2Handler(
            mode: .client, eventLoop: loop, connectionConfiguration: clientConfiguration,
            streamConfiguration: clientStreamConfiguration
        ) {
            $0.eventLoop.makeSucceededVoidFuture()
        }
        try client.pipeline.syncOperations.addHandlers([clientHTTP2, ErrorSink()])
        multiplexer = try clientHTTP2.syncMultiplexer()

        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 15008)).wait()
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 15008)).wait()
        server.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: "h2"))
        try interact()
    }

    static func bytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15
        return (0..<count).map { _ in
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    /// Moves bytes both ways until neither side has anything to send.
    func interact() throws {
        for _ in 0..<10_000 {
            var moved = false
            while let data = try client.readOutbound(as: IOData.self) {
                guard case .byteBuffer(let buffer) = data else { continue }
                try server.writeInbound(buffer)
                moved = true
            }
            while let data = try server.readOutbound(as: IOData.self) {
                guard case .byteBuffer(let buffer) = data else { continue }
                try client.writeInbound(buffer)
                moved = true
            }
            loop.run()
            if !moved { return }
        }
        throw TestFailure("the two sides never went quiet")
    }

    func setServerWritable(_ writable: Bool) {
        server.isWritable = writable
        server.pipeline.fireChannelWritabilityChanged()
    }

    /// Opens a CONNECT stream and waits for the 200.
    func openStream(autoRead: Bool = true) throws -> HTTP2StreamID {
        let recorder = ClientRecorder()
        let created = loop.makePromise(of: (any Channel).self)
        multiplexer.createStreamChannel(promise: created) { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.syncOptions?.setOption(.autoRead, value: autoRead)
                try channel.pipeline.syncOperations.addHandler(recorder)
            }
        }
        loop.run()
        let channel = try created.futureResult.wait()
        let headers = HPACKHeaders([(":method", "CONNECT"), (":authority", "127.0.0.1:8080")])
        channel.writeAndFlush(HTTP2Frame.FramePayload.headers(.init(headers: headers)), promise: nil)
        try interact()
        if !autoRead {
            channel.read()
            try interact()
        }
        let id = try channel.syncOptions!.getOption(HTTP2StreamChannelOptions.streamID)
        clientStreams[id] = (channel, recorder)
        guard recorder.received.status == "200" else { throw TestFailure("stream \(id): no 200 (\(recorder.received))") }
        return id
    }

    func send(_ bytes: [UInt8], on stream: HTTP2StreamID) throws {
        let channel = try clientChannel(stream)
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + 16_384)
            channel.write(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(bytes: bytes[offset..<end])))), promise: nil)
            offset = end
        }
        channel.flush()
    }

    func sendEnd(on stream: HTTP2StreamID) throws {
        clientEndIndex[stream] = frames.count
        try clientChannel(stream).writeAndFlush(
            HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true)), promise: nil)
    }

    /// Resets the stream from the client (RST_STREAM CANCEL).
    func reset(_ stream: HTTP2StreamID) throws {
        try clientChannel(stream).close(promise: nil)
    }

    func received(on stream: HTTP2StreamID) -> Received { clientStreams[stream]?.recorder.received ?? Received() }
    func clientStream(_ stream: HTTP2StreamID) -> (any Channel)? { clientStreams[stream]?.channel }
    func serverStream(_ stream: HTTP2StreamID) -> (any Channel)? { serverSide[stream]?.channel }
    func serverBridge(_ stream: HTTP2StreamID) -> HBONEStreamBridge? { serverSide[stream]?.bridge }
    func echo(_ stream: HTTP2StreamID) -> StreamEcho? { serverSide[stream]?.echo }

    func serverBridgeReceived(_ stream: HTTP2StreamID) -> [UInt8] {
        (try? serverSide[stream]?.channel.pipeline.syncOperations.handler(type: ServerRecorder.self))?.bytes ?? []
    }

    /// Frames the server wrote on `stream` (of `type`, or any) from index `after` on.
    func serverFrames(on stream: HTTP2StreamID, type: UInt8?, after: Int) -> [Frame] {
        frames.dropFirst(after).filter { $0.stream == stream && (type == nil || $0.type == type) }
    }

    private func clientChannel(_ stream: HTTP2StreamID) throws -> any Channel {
        guard let channel = clientStreams[stream]?.channel else { throw TestFailure("no client stream \(stream)") }
        return channel
    }
}

/// The server's end of a tunnel as the relay treats it: echoes every byte, passes the
/// peer's half-close on once everything queued is written, and aborts on any error.
final class StreamEcho: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private(set) var errors: [any Error] = []

    func handlerAdded(context: ChannelHandlerContext) {
        context.read()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
        context.read()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case ChannelEvent.inputClosed = event else { return }
        let drained = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(ByteBuffer()), promise: drained)
        drained.futureResult.assumeIsolated().whenComplete { _ in
            let shut = context.eventLoop.makePromise(of: Void.self)
            context.close(mode: .output, promise: shut)
            shut.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        errors.append(error)
        context.close(promise: nil)
    }
}

/// Records the bytes a server stream delivers (no echo).
final class ServerRecorder: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private(set) var bytes: [UInt8] = []

    func handlerAdded(context: ChannelHandlerContext) { context.read() }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytes += Array(buffer: unwrapInboundIn(data))
    }
    func channelReadComplete(context: ChannelHandlerContext) { context.read() }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {}
}

/// Records what a client stream receives.
final class ClientRecorder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTP2Frame.FramePayload
    private(set) var received = EmbeddedHBONE.Received()

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            if received.status == nil { received.status = headers.headers.first(name: ":status") }
            if headers.endStream { received.endStream = true }
        case .data(let data):
            if case .byteBuffer(let buffer) = data.data { received.bytes += Array(buffer: buffer) }
            if data.endStream { received.endStream = true }
        default:
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let closed = error as? NIOHTTP2Errors.StreamClosed { received.reset = closed.errorCode }
    }
}

/// Keeps errors from reaching the embedded pipeline's tail (which would rethrow them).
final class ErrorSink: ChannelInboundHandler {
    typealias InboundIn = Any
    func errorCaught(context: ChannelHandlerContext, error: any Error) {}
}
