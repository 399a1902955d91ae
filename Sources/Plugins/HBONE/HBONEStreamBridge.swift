import Kernel
import Logging
import NIOCore
import NIOHPACK
import NIOHTTP2

/// Turns one HTTP/2 stream channel into a byte channel the kernel's relay can drive: DATA
/// payloads in and out as `ByteBuffer`s, END_STREAM as half-close both ways.
///
/// It also carries the CONNECT exchange that precedes the bytes. Until ``open()`` it reads
/// only as far as the first HEADERS frame (the request on the server, the response on the
/// client) and holds any DATA that came with it, so nothing the peer sent early is lost or
/// handed to a relay that is not installed yet; held bytes are delivered on the relay's
/// first `read()`.
///
/// Why not NIOHTTP2's HTTP/1 codecs: a tunnel has no messages, only bytes, and the relay
/// needs `ChannelEvent.inputClosed` for END_STREAM and `close(mode: .output)` to send it,
/// which an `HTTP2StreamChannel` does not do by itself (it ignores the close mode and
/// resets the stream).
///
/// Errors and the stream's state. NIOHTTP2 checks every frame against the stream's state
/// when it leaves its buffers, not when it is written, and the state can change in between
/// (the peer half-closes or resets while a frame waits for the connection to be writable or
/// for flow-control window). So:
/// - the bridge itself never writes DATA, HEADERS or END_STREAM after its own END_STREAM
///   (such writes fail locally, nothing is sent), and every frame it writes is watched: if
///   NIOHTTP2 refuses one while the stream lives, bytes of the tunnel would be lost, so the
///   bridge resets the stream (RST_STREAM `INTERNAL_ERROR`), logs it with the stream and the
///   reason, and fails the relay, which resets the other side too;
/// - an error NIOHTTP2 raises on a stream that is still active, for a frame the bridge did
///   not write, is a refusal of NIOHTTP2's own flow-control frame: a stream WINDOW_UPDATE
///   it computed while the stream was open, buffered while the connection could not write,
///   and dropped because the peer ended its direction meanwhile. Window credit for a
///   direction that has ended is worth nothing, so the tunnel goes on untouched;
/// - an error on a stream that is closing (a reset by the peer, or NIOHTTP2's own reset
///   for a protocol error on this stream) is passed on as an ``HBONEError`` saying how
///   telemetry flags it (`-` for CANCEL, NO_ERROR or STREAM_CLOSED, else CONNECT), so the
///   relay ends the other side as an abort. Errors of the connection as a whole are
///   ``HBONEConnectionHandler``'s.
///
/// Threading: a channel handler; every member is used on the stream channel's event loop.
final class HBONEStreamBridge: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    /// Called once with the first HEADERS frame's headers, the bridge and its stream
    /// channel; the bridge then holds reads until ``open()``.
    typealias HeadHandler = (HPACKHeaders, HBONEStreamBridge, any Channel) -> Void

    private enum Phase {
        case awaitingHead
        case holding
        /// ``open()`` was called but nobody has asked to read yet: DATA that arrives now
        /// (often in the same read as the response head) is still held, because the relay
        /// that will consume it may not be installed yet.
        case opening
        case open
    }

    private var phase = Phase.awaitingHead
    private var onHead: HeadHandler?
    private var held: [ByteBuffer] = []
    private var heldEnd = false
    private var inputEnded = false
    private var outputEnded = false
    /// A full close was asked for on this side (the relay ending, a forced close).
    private var closing = false
    /// The last DATA write, so an empty write (the relay's "tell me when the queue is
    /// written") completes in order without putting an empty DATA frame on the wire: peers
    /// count those as a denial-of-service signal.
    private var lastWrite: EventLoopFuture<Void>?
    private var context: ChannelHandlerContext?
    /// A last-resort close for a stream whose final END_STREAM cannot be written (the
    /// peer never opens its window).
    private var lingering: Scheduled<Void>?
    /// This side reset the stream because one of its frames was refused.
    private var resetSent = false
    /// Set when NIOHTTP2 fails a frame of ours, just before it reports the same error
    /// through `errorCaught`, which then has nothing left to do.
    private var ownFrameRefused = false
    private let logger: Logger?

    init(logger: Logger? = nil, onHead: @escaping HeadHandler) {
        self.logger = logger
        self.onHead = onHead
    }

    // MARK: Used by the CONNECT exchange

    /// Sends a HEADERS frame (the response on the server, the request on the client).
    func sendHeaders(_ headers: HPACKHeaders, endStream: Bool, promise: EventLoopPromise<Void>? = nil) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard !outputEnded, !resetSent else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        if endStream { outputEnded = true }
        context.writeAndFlush(
            wrapOutboundOut(.headers(.init(headers: headers, endStream: endStream))),
            promise: watched(promise, frame: "HEADERS", context: context))
    }

    /// From now on bytes flow: held DATA is delivered on the next `read()` (the relay's
    /// first read), never before.
    func open() {
        if phase == .holding { phase = .opening }
    }

    // MARK: Inbound

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { context.read() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        if phase == .awaitingHead { context.read() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            if phase == .awaitingHead {
                phase = .holding
                if headers.endStream { heldEnd = true }
                let handler = onHead
                onHead = nil
                handler?(headers.headers, self, context.channel)
            } else if headers.endStream {
                // Trailers end the peer's direction; a tunnel has nothing to do with their fields.
                endInput(context)
            }
        case .data(let frame):
            guard case .byteBuffer(let buffer) = frame.data else { return }
            switch phase {
            case .awaitingHead:
                // DATA before HEADERS cannot happen on a valid stream; NIOHTTP2 rejects it first.
                context.close(promise: nil)
            case .holding, .opening:
                if buffer.readableBytes > 0 { held.append(buffer) }
                if frame.endStream { heldEnd = true }
            case .open:
                if buffer.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(buffer)) }
                if frame.endStream { endInput(context) }
            }
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        switch phase {
        case .awaitingHead:
            // Still waiting for the first HEADERS (it may come in CONTINUATION pieces).
            context.read()
        case .holding, .opening:
            break
        case .open:
            context.fireChannelReadComplete()
        }
    }

    // MARK: Outbound

    func read(context: ChannelHandlerContext) {
        switch phase {
        case .awaitingHead:
            context.read()
        case .holding:
            // The relay is not installed yet; the stream's own buffer and window hold the rest.
            break
        case .opening:
            phase = .open
            fallthrough
        case .open:
            if !held.isEmpty || heldEnd {
                let buffers = held
                held = []
                let end = heldEnd
                heldEnd = false
                for buffer in buffers { context.fireChannelRead(wrapInboundOut(buffer)) }
                if end { endInput(context) }
                context.fireChannelReadComplete()
            } else if !inputEnded {
                context.read()
            }
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        guard !outputEnded, !resetSent else {
            // After END_STREAM (or our reset) a DATA frame is a protocol error: never sent.
            promise?.fail(ChannelError.outputClosed)
            return
        }
        if buffer.readableBytes == 0 {
            if let lastWrite, let promise {
                lastWrite.cascade(to: promise)
            } else {
                promise?.succeed(())
            }
            return
        }
        let written = watched(promise, frame: "DATA", context: context)
        lastWrite = written.futureResult
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(buffer)))), promise: written)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch mode {
        case .output:
            // Half-close is END_STREAM: an empty DATA frame with the flag, after what is queued.
            if outputEnded || resetSent {
                promise?.succeed(())
                return
            }
            outputEnded = true
            let frame = HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(context.channel.allocator.buffer(capacity: 0)), endStream: true))
            context.writeAndFlush(wrapOutboundOut(frame), promise: watched(promise, frame: "END_STREAM", context: context))
        case .input:
            promise?.fail(ChannelError.operationUnsupported)
        case .all:
            closing = true
            if outputEnded && inputEnded {
                // Both directions are ending cleanly: NIOHTTP2 closes the stream once our
                // END_STREAM is on the wire. Closing now would reset it (RST_STREAM), and
                // peers rightly treat a stream of resets as an attack (rapid reset).
                if let promise { context.channel.closeFuture.cascade(to: promise) }
                if lingering == nil {
                    let channel = context.channel
                    lingering = context.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) }
                }
                return
            }
            context.close(mode: .all, promise: promise)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard context.channel.isActive else {
            // The stream is closing with this error: reset by the peer, or by NIOHTTP2 for a
            // protocol error on it. The relay ends the other side as an abort.
            guard let closed = error as? NIOHTTP2Errors.StreamClosed, !resetSent else {
                context.fireErrorCaught(error)
                return
            }
            logger?.debug(
                "HBONE stream reset",
                metadata: ["stream": "\(closed.streamID)", "code": "\(closed.errorCode)"])
            // As ztunnel flags it: a reset with CANCEL, NO_ERROR or STREAM_CLOSED ends the
            // tunnel the way a TCP reset ends a connection (`-`); any other code is an error
            // (CONNECT, and a failed connection).
            let ordinary = [HTTP2ErrorCode.cancel, .noError, .streamClosed].contains(closed.errorCode)
            context.fireErrorCaught(
                HBONEError(
                    .streamReset, "HBONE stream \(closed.streamID) reset (\(closed.errorCode))",
                    flag: ordinary ? .noFlag : .connectFailure))
            return
        }
        if ownFrameRefused {
            // Already handled where the frame failed: the stream is reset, the relay told.
            ownFrameRefused = false
            return
        }
        // NIOHTTP2 refused a frame of its own on a stream that lives on: a flow-control
        // WINDOW_UPDATE that waited in its buffer while the peer ended its direction.
        // Nothing of the tunnel is lost; do not end it.
        logger?.debug(
            "HBONE stream: a flow-control frame was not sent (the peer had ended its direction); the stream goes on",
            metadata: ["stream": "\(Self.streamID(context))", "reason": "\(error)"])
    }

    /// A promise for a frame this bridge writes, failing `promise` as NIOHTTP2 fails the frame
    /// and resetting the stream if NIOHTTP2 refused it while the stream lives.
    private func watched(
        _ promise: EventLoopPromise<Void>?, frame: StaticString, context: ChannelHandlerContext
    ) -> EventLoopPromise<Void> {
        let watched = promise ?? context.eventLoop.makePromise(of: Void.self)
        watched.futureResult.assumeIsolated().whenFailure { error in
            self.frameFailed(frame, error: error)
        }
        return watched
    }

    private func frameFailed(_ frame: StaticString, error: any Error) {
        // A write that failed because the stream or connection is gone is the closure's to
        // report; only a refusal while the stream lives means bytes would silently go missing.
        guard !Self.isClosure(error), let context, context.channel.isActive, !resetSent else { return }
        resetSent = true
        ownFrameRefused = true
        lingering?.cancel()
        lingering = nil
        let stream = Self.streamID(context)
        logger?.warning(
            "HBONE stream reset: a frame of the tunnel was refused",
            metadata: ["stream": "\(stream)", "frame": "\(frame)", "reason": "\(error)"])
        // On the next tick: NIOHTTP2 is failing the frame from inside its own write path.
        context.eventLoop.assumeIsolated().execute {
            guard let context = self.context else { return }
            context.writeAndFlush(self.wrapOutboundOut(.rstStream(.internalError)), promise: nil)
        }
        context.fireErrorCaught(
            HBONEError(.streamReset, "HBONE stream \(stream) reset: its \(frame) frame was refused (\(error))"))
    }

    /// Errors that say the stream or its connection is already gone.
    static func isClosure(_ error: any Error) -> Bool {
        error is ChannelError || error is NIOHTTP2Errors.StreamClosed || error is NIOHTTP2Errors.IOOnClosedConnection
    }

    private static func streamID(_ context: ChannelHandlerContext) -> String {
        (try? context.channel.syncOptions?.getOption(HTTP2StreamChannelOptions.streamID)).map { "\($0)" } ?? "unassigned"
    }

    func channelInactive(context: ChannelHandlerContext) {
        lingering?.cancel()
        lingering = nil
        // NIOHTTP2 closes the streams of a connection that goes away (the peer proxy killed,
        // drained or unreachable) as if they had ended cleanly. Unless the peer ended its
        // direction with END_STREAM or this side closed the stream, that is a lost stream:
        // say so, so the relay passes it on as an abort (a reset to the application) rather
        // than as a clean end that would pass for a complete transfer.
        if !inputEnded && !heldEnd && !closing && !resetSent {
            context.fireErrorCaught(
                HBONEError(
                    .connectionClosed, "the HBONE connection carrying the stream closed before the stream ended",
                    flag: .noFlag))
        }
        context.fireChannelInactive()
    }

    private func endInput(_ context: ChannelHandlerContext) {
        guard !inputEnded else { return }
        inputEnded = true
        context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }
}
