import Logging
import NIOCore
import NIOHTTP2
import NIOSSL
import NIOTLS

/// What the connection handler reports to its owner (the pool or the server).
struct HBONEConnectionEvents {
    /// TLS finished with ALPN `h2`: streams may be opened.
    var ready: () -> Void = {}
    /// The peer sent GOAWAY: open no new streams on this connection.
    var goAway: () -> Void = {}
    /// The peer's SETTINGS_MAX_CONCURRENT_STREAMS.
    var peerMaxConcurrentStreams: (Int) -> Void = { _ in }
    /// The connection is closed; the error is why, when there was one.
    var closed: ((any Error)?) -> Void = { _ in }
}

/// Sits after `NIOHTTP2Handler` on an HBONE connection (client and server) and does what
/// the connection as a whole needs: checks that ALPN chose `h2`, raises the connection
/// receive window with a WINDOW_UPDATE on stream 0, sends keepalive PINGs and closes the
/// connection when one goes unanswered, and reports GOAWAY and the peer's stream limit.
///
/// Errors: only a connection error (RFC 9113 §5.4.1) ends the connection. A stream error
/// (§5.4.2) ends its stream with RST_STREAM, which NIOHTTP2 sends; this handler logs it
/// (the stream, the code and the reason) and every other stream goes on. Which one an
/// error was, NIOHTTP2 tells by the frame it answers with, which ``frameWatcher`` sees.
/// Install ``frameWatcher`` between TLS and `NIOHTTP2Handler`.
///
/// Threading: a channel handler; used on the connection's event loop only.
final class HBONEConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private let connectionWindow: Int
    private let keepaliveInterval: TimeAmount
    private let keepaliveTimeout: TimeAmount
    private let handshakeTimeout: TimeAmount?
    private var events: HBONEConnectionEvents
    private let logger: Logger
    /// Watches the frames NIOHTTP2 writes; goes between TLS and `NIOHTTP2Handler`.
    let frameWatcher: HTTP2FrameWatcher
    /// NIOHTTP2 sent GOAWAY with an error: the error it reports now is a connection error.
    private var connectionErrorSent: HTTP2ErrorCode?
    /// The last stream error reported, for the log line of the RST_STREAM that answers it.
    private var lastStreamError: String?

    private var started = false
    private var isReady = false
    private var error: (any Error)?
    private var keepalive: Scheduled<Void>?
    private var handshakeDeadline: Scheduled<Void>?
    private var outstandingPing: (data: HTTP2PingData, sentAt: NIODeadline)?
    private var closedReported = false

    init(
        connectionWindow: Int, keepaliveInterval: TimeAmount, keepaliveTimeout: TimeAmount,
        handshakeTimeout: TimeAmount?, isClient: Bool, logger: Logger, events: HBONEConnectionEvents
    ) {
        self.connectionWindow = connectionWindow
        self.keepaliveInterval = keepaliveInterval
        self.keepaliveTimeout = keepaliveTimeout
        self.handshakeTimeout = handshakeTimeout
        self.logger = logger
        self.events = events
        self.frameWatcher = HTTP2FrameWatcher(isClient: isClient)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let loop = context.eventLoop
        frameWatcher.events = HTTP2FrameWatcher.Events(
            goAway: { code in
                if code != .noError { self.connectionErrorSent = code }
            },
            reset: { stream, code in
                // A stream ended early by this side. CANCEL is the ordinary way a tunnel whose
                // other side failed (or was closed by force) ends; other codes are stream
                // errors, logged with the reason, which NIOHTTP2 reports just after it sends
                // the frame (or just before, when the frame had to wait for the socket).
                guard code != .cancel, code != .noError else { return }
                loop.assumeIsolated().execute {
                    self.logger.info(
                        "HBONE stream reset; the connection and its other streams go on",
                        metadata: [
                            "stream": "\(stream)", "code": "\(code)", "reason": "\(self.lastStreamError ?? "not reported")",
                        ])
                    self.lastStreamError = nil
                }
            })
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        if let handshakeTimeout {
            handshakeDeadline = context.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) {
                if !self.isReady {
                    self.error = HBONEError(.timedOut, "TLS handshake not finished within \(handshakeTimeout.nanoseconds / 1_000_000) ms")
                    context.close(promise: nil)
                }
            }
        }
        // The initial connection window is 65,535 bytes whatever SETTINGS say; only a
        // WINDOW_UPDATE on stream 0 raises it, and the sooner the better for throughput.
        let increment = connectionWindow - 65_535
        if increment > 0 {
            context.write(
                wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: increment))),
                promise: nil)
            context.flush()
        }
        scheduleKeepalive(context)
    }

    private func scheduleKeepalive(_ context: ChannelHandlerContext) {
        keepalive = context.eventLoop.assumeIsolated().scheduleTask(in: keepaliveInterval) {
            guard context.channel.isActive else { return }
            self.keepaliveTick(context)
            self.scheduleKeepalive(context)
        }
    }

    private func keepaliveTick(_ context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        if let outstanding = outstandingPing {
            if now - outstanding.sentAt >= keepaliveTimeout {
                error = HBONEError(
                    .connectionClosed,
                    "keepalive PING not acknowledged within \(keepaliveTimeout.nanoseconds / 1_000_000) ms")
                context.close(promise: nil)
            }
            return
        }
        let data = HTTP2PingData(withInteger: UInt64.random(in: 1...UInt64.max))
        outstandingPing = (data, now)
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .ping(data, ack: false))), promise: nil)
        // A timeout shorter than the interval would otherwise only be noticed at the next tick.
        context.eventLoop.assumeIsolated().scheduleTask(in: keepaliveTimeout) {
            if let outstanding = self.outstandingPing, outstanding.data == data, context.channel.isActive {
                self.keepaliveTick(context)
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.payload {
        case .ping(let data, ack: true):
            if outstandingPing?.data == data { outstandingPing = nil }
        case .goAway:
            events.goAway()
        case .settings(.settings(let settings)):
            for setting in settings where setting.parameter == .maxConcurrentStreams {
                events.peerMaxConcurrentStreams(setting.value)
            }
        default:
            break
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event {
            if negotiated == "h2" {
                isReady = true
                handshakeDeadline?.cancel()
                handshakeDeadline = nil
                events.ready()
            } else {
                error = HBONEError(
                    .handshakeFailed, "peer did not negotiate ALPN h2 (got \(negotiated ?? "no ALPN"))")
                context.close(promise: nil)
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Stream errors reach the connection too, whether NIOHTTP2 reset the stream (an
        // inbound protocol error on it) or refused a frame on it; only failures of the
        // connection as a whole end it, so one bad stream never takes the other tunnels
        // down. NIOHTTP2 answers a connection error with GOAWAY but leaves the close to us.
        if !isReady || connectionErrorSent != nil || Self.isConnectionFatal(error) {
            if self.error == nil { self.error = error }
            context.close(promise: nil)
            return
        }
        lastStreamError = "\(error)"
        logger.debug("HBONE stream error; only that stream is affected", metadata: ["reason": "\(error)"])
        // A reason no RST_STREAM followed (a refused frame) must not label a later one. A
        // RST_STREAM written just before this error has its log line queued ahead of this.
        context.eventLoop.assumeIsolated().execute { self.lastStreamError = nil }
    }

    /// Errors after which the connection cannot go on whatever NIOHTTP2 answered: TLS and
    /// socket failures, framing errors, and NIOHTTP2's denial-of-service protections (rapid
    /// reset, CONTINUATION and empty-frame floods, glitches). Flow-control errors are not
    /// here: they are stream errors on a stream's window and connection errors on the
    /// connection's, and NIOHTTP2's GOAWAY tells which.
    static func isConnectionFatal(_ error: any Error) -> Bool {
        switch error {
        case is NIOSSLError, is BoringSSLError, is IOError, is ChannelError,
            is NIOHTTP2Errors.BadClientMagic, is NIOHTTP2Errors.MissingPreface,
            is NIOHTTP2Errors.UnableToParseFrame, is NIOHTTP2Errors.ExcessivelyLargeHeaderBlock,
            is NIOHTTP2Errors.ExcessiveContinuationFrames, is NIOHTTP2Errors.ExcessiveEmptyDataFrames,
            is NIOHTTP2Errors.ExcessiveRSTFrames, is NIOHTTP2Errors.ExcessiveControlFrames,
            is NIOHTTP2Errors.ExcessiveStreamErrors, is NIOHTTP2Errors.ExcessiveNumberOfGlitches,
            is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering, is NIOHTTP2Errors.InvalidSetting,
            is NIOHTTP2Errors.ReceivedBadSettings, is NIOHTTP2Errors.InvalidStreamIDForPeer,
            is NIOHTTP2Errors.StreamIDTooSmall, is NIOHTTP2Errors.RaisedGoawayLastStreamID,
            is NIOHTTP2Errors.PushInViolationOfSetting:
            return true
        default:
            return false
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        keepalive?.cancel()
        keepalive = nil
        handshakeDeadline?.cancel()
        handshakeDeadline = nil
        if !closedReported {
            closedReported = true
            events.closed(error)
            events = HBONEConnectionEvents()
        }
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        keepalive?.cancel()
        handshakeDeadline?.cancel()
    }
}
