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

    init(onHead: @escaping HeadHandler) {
        self.onHead = onHead
    }

    // MARK: Used by the CONNECT exchange

    /// Sends a HEADERS frame (the response on the server, the request on the client).
    func sendHeaders(_ headers: HPACKHeaders, endStream: Bool, promise: EventLoopPromise<Void>? = nil) {
        guard let context else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        if endStream { outputEnded = true }
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers, endStream: endStream))), promise: promise)
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
        if buffer.readableBytes == 0 {
            if let lastWrite, let promise {
                lastWrite.cascade(to: promise)
            } else {
                promise?.succeed(())
            }
            return
        }
        let written = promise ?? context.eventLoop.makePromise(of: Void.self)
        lastWrite = written.futureResult
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(buffer)))), promise: written)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        switch mode {
        case .output:
            // Half-close is END_STREAM: an empty DATA frame with the flag, after what is queued.
            if outputEnded {
                promise?.succeed(())
                return
            }
            outputEnded = true
            let frame = HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(context.channel.allocator.buffer(capacity: 0)), endStream: true))
            context.writeAndFlush(wrapOutboundOut(frame), promise: promise)
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

    func channelInactive(context: ChannelHandlerContext) {
        lingering?.cancel()
        lingering = nil
        // NIOHTTP2 closes the streams of a connection that goes away (the peer proxy killed,
        // drained or unreachable) as if they had ended cleanly. Unless the peer ended its
        // direction with END_STREAM or this side closed the stream, that is a lost stream:
        // say so, so the relay passes it on as an abort (a reset to the application) rather
        // than as a clean end that would pass for a complete transfer.
        if !inputEnded && !heldEnd && !closing {
            context.fireErrorCaught(
                HBONEError(.connectionClosed, "the HBONE connection carrying the stream closed before the stream ended"))
        }
        context.fireChannelInactive()
    }

    private func endInput(_ context: ChannelHandlerContext) {
        guard !inputEnded else { return }
        inputEnded = true
        context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }
}
