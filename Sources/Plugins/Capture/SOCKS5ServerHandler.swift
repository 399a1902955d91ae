import Kernel
public import Logging
public import NIOCore

/// The server side of the SOCKS5 handshake (RFC 1928; no authentication, CONNECT only)
/// on one accepted client connection.
///
/// Put it first in a fresh client channel's pipeline. It parses the greeting and the
/// request with ``SOCKS5Parser`` (bytes may arrive in any fragmentation), answers the
/// greeting, and calls `onRequest` exactly once with the parsed request. Then:
/// - **success**: when the returned future succeeds it writes the success reply carrying
///   ``SOCKS5Connected/boundAddress``, removes itself from the pipeline and calls
///   ``SOCKS5Connected/start`` with any bytes the client sent after its request;
/// - **failure**: when the future fails with a ``SOCKS5Error`` it writes that error's
///   reply code (any other error: ``SOCKS5Reply/generalFailure``) and closes the
///   connection. Protocol violations are answered as ``SOCKS5Parser`` describes and close
///   the connection too; a peer that does not speak SOCKS5 gets no answer at all.
///
/// While `onRequest` is pending the handler stops reading from the client (it holds back
/// `read()`), so early application bytes stay bounded to what one read cycle delivers;
/// it re-issues a held read after ``SOCKS5Connected/start`` has installed the relay.
/// If the handshake, including the delegate's connect, takes longer than
/// `handshakeTimeout`, the connection is closed (with a general-failure reply if the
/// request had already been accepted).
///
/// Threading: like every channel handler it is used on its channel's event loop only.
/// `onRequest` is called on that event loop and must not block; its future may complete
/// on any event loop. ``SOCKS5Connected/start`` and ``SOCKS5Connected/cancel`` are called
/// on the client channel's event loop.
public final class SOCKS5ServerHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private enum State {
        /// Reading the greeting and the request.
        case handshaking
        /// `onRequest` was called; waiting for its future.
        case connecting(SOCKS5Request)
        /// The success reply is written; removing ourselves and starting the relay.
        case established
        /// Refused, timed out or closed; nothing more happens on this connection.
        case closed
    }

    private let handshakeTimeout: TimeAmount
    private let onRequest: @Sendable (SOCKS5Request, any Channel) -> EventLoopFuture<SOCKS5Connected>
    private let logger: Logger

    private var state: State = .handshaking
    private var parser = SOCKS5Parser()
    /// Handshake bytes not consumed by the parser yet (at most one message's worth plus
    /// the read that completed it).
    private var unparsed: ByteBuffer?
    /// Application bytes that arrived after the request, for ``SOCKS5Connected/start``.
    private var early: ByteBuffer?
    /// What to start once we have left the pipeline.
    private var connected: SOCKS5Connected?
    /// Whether a `read()` was held back while waiting for the delegate.
    private var readHeld = false
    private var timeoutTask: Scheduled<Void>?

    /// Creates a handler for one client connection.
    /// - Parameters:
    ///   - handshakeTimeout: how long the client and the delegate together may take from
    ///     connection to success reply.
    ///   - logger: where handshake failures are logged (at debug level: a misbehaving
    ///     client is not the proxy's problem).
    ///   - onRequest: connects upstream for a parsed request and passes the client
    ///     channel for context (addresses, event loop); called once, on the event loop.
    public init(
        handshakeTimeout: TimeAmount = .seconds(10),
        logger: Logger = Logger(label: "capture.socks5"),
        onRequest: @escaping @Sendable (SOCKS5Request, any Channel) -> EventLoopFuture<SOCKS5Connected>
    ) {
        self.handshakeTimeout = handshakeTimeout
        self.logger = logger
        self.onRequest = onRequest
    }

    // MARK: Lifecycle

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { startTimer(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        startTimer(context: context)
        context.fireChannelActive()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        cancelTimer()
        switch state {
        case .handshaking, .connecting:
            // A pending delegate future finds `.closed` and cancels its upstream.
            state = .closed
            unparsed = nil
            early = nil
        case .established, .closed:
            break
        }
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimer()
    }

    public func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        let channel = context.channel
        let connected = self.connected
        let early = self.early
        let resumeReading = readHeld
        self.connected = nil
        self.early = nil
        readHeld = false
        context.leavePipeline(removalToken: removalToken)
        // Only now, with the handler gone, may the relay see the channel: anything it
        // installs sits where we were, and the early bytes go upstream before any new read.
        connected?.start(early)
        if resumeReading { channel.read() }
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = Self.unwrapInboundIn(data)
        switch state {
        case .handshaking:
            if unparsed == nil {
                unparsed = buffer
            } else {
                unparsed!.writeBuffer(&buffer)
            }
            advanceHandshake(context: context)
        case .connecting:
            // The client did not wait for the reply (optimistic data, e.g. a TLS
            // ClientHello); keep it for the relay. Reads are held, so this is bounded.
            if early == nil {
                early = buffer
            } else {
                early!.writeBuffer(&buffer)
            }
        case .established:
            context.fireChannelRead(data)
        case .closed:
            break
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch state {
        case .handshaking, .connecting:
            logger.debug(
                "SOCKS5 connection failed during the handshake",
                metadata: ["peer": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")", "error": "\(error)"])
            state = .closed
            cancelTimer()
            context.close(promise: nil)
        case .established:
            context.fireErrorCaught(error)
        case .closed:
            break
        }
    }

    // MARK: Outbound

    public func read(context: ChannelHandlerContext) {
        switch state {
        case .connecting, .established:
            // Hold reads until the relay is in place; see `removeHandler`.
            readHeld = true
        case .closed:
            // Closing: reading more of a refused client's bytes is pointless.
            break
        case .handshaking:
            context.read()
        }
    }

    // MARK: Handshake

    private func advanceHandshake(context: ChannelHandlerContext) {
        while case .handshaking = state, let buffer = unparsed, buffer.readableBytes > 0 {
            let (step, consumed) = parser.parse(buffer.readableBytesView)
            unparsed!.moveReaderIndex(forwardBy: consumed)
            switch step {
            case .needMoreData:
                unparsed!.discardReadBytes()
                return
            case .greetingAccepted:
                context.writeAndFlush(Self.wrapOutboundOut(context.channel.allocator.buffer(bytes: SOCKS5Wire.methodAccepted)), promise: nil)
            case .request(let request):
                if unparsed!.readableBytes > 0 { early = unparsed }
                unparsed = nil
                state = .connecting(request)
                logger.trace("SOCKS5 CONNECT", metadata: ["destination": "\(request)"])
                // Completion may be synchronous and re-enter `connectFinished`; the loop
                // condition sees the new state and stops.
                onRequest(request, context.channel)
                    .hop(to: context.eventLoop)
                    .assumeIsolated()
                    .whenComplete { result in self.connectFinished(result, context: context) }
            case .failed(let failure):
                refuse(context: context, answer: failure.answer, reason: failure.message)
            }
        }
    }

    private func connectFinished(_ result: Result<SOCKS5Connected, any Error>, context: ChannelHandlerContext) {
        guard case .connecting(let request) = state else {
            // The client left or the handshake timed out while the delegate connected.
            if case .success(let connected) = result { connected.cancel() }
            return
        }
        switch result {
        case .success(let connected):
            cancelTimer()
            state = .established
            self.connected = connected
            let reply = SOCKS5Reply.succeeded.encoded(boundAddress: connected.boundAddress)
            context.writeAndFlush(Self.wrapOutboundOut(context.channel.allocator.buffer(bytes: reply)), promise: nil)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        case .failure(let error):
            let socksError = error as? SOCKS5Error
            refuse(
                context: context, answer: .reply(socksError?.reply ?? .generalFailure),
                reason: "SOCKS5 CONNECT \(request) failed: \(socksError?.message ?? "\(error)")")
        }
    }

    /// Answers (if the answer means anything to the client) and closes once the answer
    /// is on the wire.
    private func refuse(context: ChannelHandlerContext, answer: SOCKS5ParseFailure.Answer, reason: String) {
        state = .closed
        cancelTimer()
        unparsed = nil
        early = nil
        logger.debug(
            "SOCKS5 handshake refused",
            metadata: ["peer": "\(context.channel.remoteAddress.map { "\($0)" } ?? "?")", "reason": "\(reason)"])
        let bytes: [UInt8]
        switch answer {
        case .none:
            context.close(promise: nil)
            return
        case .noAcceptableMethod:
            bytes = SOCKS5Wire.methodRejected
        case .reply(let reply):
            bytes = reply.encoded(boundAddress: nil)
        }
        context.writeAndFlush(Self.wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)))
            .assumeIsolated()
            .whenComplete { _ in context.close(promise: nil) }
    }

    // MARK: Timeout

    private func startTimer(context: ChannelHandlerContext) {
        guard timeoutTask == nil, case .handshaking = state else { return }
        timeoutTask = context.eventLoop.assumeIsolated().scheduleTask(in: handshakeTimeout) {
            self.handshakeTimedOut(context: context)
        }
    }

    private func cancelTimer() {
        timeoutTask?.cancel()
        timeoutTask = nil
    }

    private func handshakeTimedOut(context: ChannelHandlerContext) {
        timeoutTask = nil
        switch state {
        case .handshaking:
            // Half a greeting or request: the client is not a working SOCKS5 client.
            refuse(context: context, answer: .none, reason: "SOCKS5 handshake timed out")
        case .connecting(let request):
            refuse(
                context: context, answer: .reply(.generalFailure),
                reason: "SOCKS5 CONNECT \(request) timed out after \(handshakeTimeout)")
        case .established, .closed:
            break
        }
    }
}

@available(*, unavailable)
extension SOCKS5ServerHandler: Sendable {}
