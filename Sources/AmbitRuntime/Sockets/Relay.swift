#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOConcurrencyHelpers
public import NIOCore
public import Kernel

/// The bidirectional byte pump between an application's connection and its destination:
/// the proxy's hot path.
///
/// One handler sits at the end of each channel's pipeline. Bytes move as the
/// `ByteBuffer`s NIO read them into (no copies, no async hop per chunk), and each side
/// reads only when its partner can take more, so a slow reader stalls its writer instead
/// of growing the proxy's memory.
public enum Relay {
    /// The write-buffer water marks the relay puts on both channels.
    ///
    /// The kernel's socket buffers (autotuned up to megabytes) do the bulk buffering; the
    /// user-space queue only has to absorb one read cycle (NIO reads at most 4 × 64 KiB
    /// per cycle with its default allocator). A 256 KiB high mark takes a whole cycle
    /// without flipping writability on every burst; the 32 KiB low mark resumes reading
    /// before the queue runs dry, so the socket never idles waiting for a read. Worst case
    /// per direction: high mark + one cycle ≈ 512 KiB of user-space memory.
    public static let writeBufferWaterMark = ChannelOptions.Types.WriteBufferWaterMark(
        low: 32 * 1024, high: 256 * 1024)

    /// How the relay's sockets size their reads: from 512 bytes, growing (to 64 KiB) as
    /// reads fill the buffer and shrinking as they stop.
    ///
    /// A socket keeps its last receive buffer for the next read, so this is what an idle
    /// connection holds in user space: NIO's default starts at 2 KiB, which on a node
    /// holding tens of thousands of idle tunnels is most of their memory. A bulk transfer
    /// reaches 64 KiB reads within a few reads.
    public static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 64 * 1024)

    /// Joins two active channels into a bidirectional byte pump and returns a future that
    /// completes when both are closed.
    ///
    /// `downstream` is the originator (application side), `upstream` the destination side.
    /// Bytes downstream→upstream are added to `record.bytes` ``ByteCounters/addSent(_:)`` as
    /// they are written (queued on the upstream channel), upstream→downstream to
    /// ``ByteCounters/addReceived(_:)``. `initialData` (bytes the downstream sent before the
    /// relay started, e.g. after a SOCKS handshake) is written upstream first and counted.
    ///
    /// A half-close is forwarded (the partner's output is shut once everything queued for it
    /// is written) and the other direction keeps flowing; each channel is closed once both
    /// of its directions are done. An error on either side, a reset, or
    /// ``ConnectionRecord/close()`` closes both sides at once.
    ///
    /// The record is registered in `registry` now and unregistered exactly once, after both
    /// channels are closed; its closer closes both channels abortively (a reset on sockets),
    /// so neither end can take the cut connection for a complete one.
    ///
    /// Threading: may be called from any thread; the channels may be on different event
    /// loops (bytes then hop once per read cycle). Called on the downstream's event loop
    /// with both channels on it, the relay installs itself synchronously and never hops.
    /// Bytes a channel reads before the relay is installed go wherever its pipeline sends
    /// them, so hand over from a handshake handler on the channel's own loop and pass what
    /// it buffered as `initialData`. The channels may also still be registering (e.g. from
    /// a listener's child initializer): the relay starts on `channelActive`.
    ///
    /// - Returns: a future on the downstream's event loop that succeeds when both channels
    ///   are closed after a clean end, or fails with the first ``RelayError`` (after both
    ///   are closed and the record is unregistered). The reason is also recorded with
    ///   ``ConnectionRecord/recordFailure(_:)``. A close by ``ConnectionRecord/close()`` is
    ///   a clean end.
    @discardableResult
    public static func join(
        downstream: any Channel, upstream: any Channel, record: ConnectionRecord,
        registry: ConnectionRegistry?, initialData: ByteBuffer? = nil
    ) -> EventLoopFuture<Void> {
        let outcome = RelayOutcome(record: record)
        registry?.register(record)
        record.setCloser {
            outcome.markForced()
            abortiveClose(downstream)
            abortiveClose(upstream)
        }

        let sameLoop = downstream.eventLoop === upstream.eventLoop
        let downstreamHandler = RelayHandler(side: .downstream, counters: record.bytes, outcome: outcome, initialData: nil)
        let upstreamHandler = RelayHandler(
            side: .upstream, counters: record.bytes, outcome: outcome, initialData: initialData)
        downstreamHandler.pair(with: upstreamHandler, on: upstream.eventLoop, sameLoop: sameLoop)
        upstreamHandler.pair(with: downstreamHandler, on: downstream.eventLoop, sameLoop: sameLoop)
        install(LoopOwned(upstreamHandler), into: upstream)
        install(LoopOwned(downstreamHandler), into: downstream)

        return downstream.closeFuture.and(upstream.closeFuture).flatMapThrowing { _ in
            registry?.unregister(record)
            // The closer holds both channels; drop them now that nothing is left to close.
            record.setCloser {}
            if let error = outcome.error { throw error }
        }
    }

    /// Closes `channel` so that its other end sees an abort, not a clean end of stream: a
    /// connection closed by force (drain deadline, policy change) has not finished its
    /// transfer. A socket is reset (SO_LINGER 0: RST instead of FIN); a multiplexed stream
    /// resets itself on a plain close.
    private static func abortiveClose(_ channel: any Channel) {
        guard let lingering = resetOnClose(channel) else {
            channel.close(promise: nil)
            return
        }
        lingering.whenComplete { _ in channel.close(promise: nil) }
    }

    /// Makes `channel`'s close send a reset (SO_LINGER 0) when it is a socket; nil for
    /// other channels (a multiplexed stream resets itself on a plain close).
    @discardableResult
    static func resetOnClose(_ channel: any Channel) -> EventLoopFuture<Void>? {
        (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
    }

    private static func install(_ handler: LoopOwned<RelayHandler>, into channel: any Channel) {
        if channel.eventLoop.inEventLoop {
            installNow(handler.value, into: channel)
        } else {
            channel.eventLoop.execute { installNow(handler.value, into: channel) }
        }
    }

    private static func installNow(_ handler: RelayHandler, into channel: any Channel) {
        // Only socket channels take buffer and half-closure options. Multiplexed stream
        // channels (an HTTP/2 stream carrying an HBONE tunnel) accept autoRead alone, trap on
        // any other option, bound their buffering by flow control, and signal half-closure
        // through a handler of their own.
        let isSocket = channel is any SocketOptionProvider
        do {
            if let options = channel.syncOptions {
                try options.setOption(.autoRead, value: false)
                if isSocket {
                    try options.setOption(.writeBufferWaterMark, value: writeBufferWaterMark)
                    try options.setOption(.recvAllocator, value: receiveAllocator)
                    // Best effort: a channel type without half-closure closes on EOF, which the
                    // relay can only take as an unexpected close that ends both sides.
                    try? options.setOption(.allowRemoteHalfClosure, value: true)
                }
            } else {
                // On the channel's loop these complete at once for NIO's own channel types.
                channel.setOption(.autoRead, value: false).whenFailure { _ in channel.close(promise: nil) }
                if isSocket {
                    channel.setOption(.writeBufferWaterMark, value: writeBufferWaterMark).whenFailure { _ in }
                    channel.setOption(.recvAllocator, value: receiveAllocator).whenFailure { _ in }
                    channel.setOption(.allowRemoteHalfClosure, value: true).whenFailure { _ in }
                }
            }
            try channel.pipeline.syncOperations.addHandler(handler)
        } catch {
            handler.abandon(channel: channel, error: error)
        }
    }
}

/// Why a relay ended badly. The relay's future fails with the first one; the record keeps
/// its text as the connection's failure.
public struct RelayError: Error, CustomStringConvertible {
    /// Which of the two connections failed.
    public enum Side: String, Sendable {
        /// The originator's (application side) connection.
        case downstream
        /// The destination's connection.
        case upstream
    }

    /// What went wrong, as a growable set of named codes.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// The channel reported an error (e.g. a reset while reading).
        public static let channelError = Code("channelError")
        /// The channel closed before both directions were finished, without an error of
        /// its own: typically a reset noticed while writing, or a close by someone else.
        public static let closedUnexpectedly = Code("closedUnexpectedly")
        /// The relay could not be installed on the channel (e.g. it was already closed).
        public static let setupFailed = Code("setupFailed")

        public var description: String { name }
    }

    /// What went wrong.
    public var code: Code
    /// Which side.
    public var side: Side
    /// The error from NIO or the system, when there is one.
    public var underlying: (any Error)?

    /// Creates an error.
    public init(code: Code, side: Side, underlying: (any Error)? = nil) {
        self.code = code
        self.side = side
        self.underlying = underlying
    }

    public var description: String {
        switch code {
        case .channelError: return "\(side) connection failed: \(underlying.map { "\($0)" } ?? "unknown error")"
        case .closedUnexpectedly: return "\(side) connection closed before the relay finished (reset or write failure)"
        default: return "relay setup on the \(side) connection failed: \(underlying.map { "\($0)" } ?? "unknown error")"
        }
    }
}

/// What both handlers of one relay share across their event loops: the first failure and
/// whether the close was forced. Touched a few times per connection, never per chunk.
final class RelayOutcome: Sendable {
    private let record: ConnectionRecord
    private let state = NIOLockedValueBox<(error: RelayError?, forced: Bool)>((nil, false))

    init(record: ConnectionRecord) {
        self.record = record
    }

    func fail(_ error: RelayError) {
        record.recordFailure(error.description)
        state.withLockedValue { if $0.error == nil { $0.error = error } }
    }

    func markForced() {
        state.withLockedValue { $0.forced = true }
    }

    var isForced: Bool { state.withLockedValue { $0.forced } }
    var error: RelayError? { state.withLockedValue { $0.error } }
}

/// Carries a reference to the event loop that owns the object.
///
/// Sound for relay handlers because each is only ever used on its own channel's event loop:
/// this wrapper moves the reference there and is opened only there.
struct LoopOwned<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// One end of a relay: the last handler of its channel's pipeline.
///
/// It forwards what its channel reads to its peer (the handler on the other channel) and
/// writes what the peer forwards. All state is touched on its own channel's event loop
/// only; the peer is called directly when it shares the loop and through
/// `EventLoop.execute` otherwise, with one batch per read cycle.
///
/// Flow control is a credit: the peer sends `resumeReading` when its channel can take more
/// (after flushing a batch while writable, or when it becomes writable again), and only then
/// does this handler call `read()`. So at most one read cycle is ever in flight beyond the
/// peer's high water mark.
final class RelayHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What one handler tells the other.
    enum Signal: Sendable {
        /// Bytes the sender's channel read: write them (flush comes with `readComplete`).
        case data(ByteBuffer)
        /// The sender's read cycle ended: flush, then grant a credit if still writable.
        case readComplete
        /// The sender's channel can take more: read once.
        case resumeReading
        /// The sender's channel got EOF: shut our output once the queue is written.
        case inputClosed
        /// The sender's channel is closed. Abortive: close now, dropping what is queued.
        case closed(abortive: Bool)
    }

    private let side: RelayError.Side
    private let counters: ByteCounters
    private let outcome: RelayOutcome
    private var initialData: ByteBuffer?

    private var peer: RelayHandler?
    private var peerLoop: (any EventLoop)?
    private var peerSharesLoop = true
    /// Cross-loop only: data of the current read cycle, shipped with the next signal.
    private var outbox: [Signal] = []

    private var context: ChannelHandlerContext?
    /// Added and active: from here on signals are acted on instead of queued.
    private var started = false
    /// Signals that arrived before the channel was ready, in order.
    private var waiting: [Signal] = []

    private var inputClosed = false
    private var outputShutdownStarted = false
    private var outputClosed = false
    private var closeRequested = false
    private var sawError = false
    private var channelClosed = false
    private var peerAwaitsWritability = false
    private var peerInputClosed = false
    private var peerClosed = false
    private var peerCloseAbortive = false

    init(side: RelayError.Side, counters: ByteCounters, outcome: RelayOutcome, initialData: ByteBuffer?) {
        self.side = side
        self.counters = counters
        self.outcome = outcome
        self.initialData = initialData
    }

    /// Links the two handlers; called once, before either is installed.
    func pair(with peer: RelayHandler, on loop: any EventLoop, sameLoop: Bool) {
        self.peer = peer
        self.peerLoop = loop
        self.peerSharesLoop = sameLoop
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // channelInactive is not replayed for a channel that closed before we were added.
        context.channel.closeFuture.assumeIsolated().whenComplete { _ in self.channelDidClose() }
        if peerClosed && peerCloseAbortive {
            requestClose(context)
        } else if context.channel.isActive {
            start(context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        // Removed from a live channel, this end can no longer move bytes: end the relay
        // rather than leave the peer waiting for credit forever.
        if !channelClosed && context.channel.isActive { requestClose(context) }
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        send(.data(unwrapInboundIn(data)))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        send(.readComplete)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if peerAwaitsWritability && context.channel.isWritable {
            peerAwaitsWritability = false
            send(.resumeReading)
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed, !inputClosed {
            inputClosed = true
            send(.inputClosed)
            if outputClosed { requestClose(context) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        sawError = true
        outcome.fail(RelayError(code: .channelError, side: side, underlying: error))
        requestClose(context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        channelDidClose()
        context.fireChannelInactive()
    }

    /// Installation failed: the channel cannot carry its half of the relay, so end both.
    func abandon(channel: any Channel, error: any Error) {
        sawError = true
        outcome.fail(RelayError(code: .setupFailed, side: side, underlying: error))
        closeRequested = true
        channel.close(promise: nil)
        channelDidClose()
    }

    // MARK: Signals from the peer

    /// Acts on a signal from the peer; always called on this handler's event loop.
    func receive(_ signal: Signal) {
        if case .closed(let abortive) = signal {
            peerDidClose(abortive: abortive)
            return
        }
        guard started, let context else {
            if !channelClosed { waiting.append(signal) }
            return
        }
        handle(signal, context: context)
    }

    private func handle(_ signal: Signal, context: ChannelHandlerContext) {
        switch signal {
        case .data(let buffer):
            guard !outputShutdownStarted, !channelClosed else { return }
            count(buffer.readableBytes)
            context.write(wrapOutboundOut(buffer), promise: nil)
        case .readComplete:
            context.flush()
            offerCredit(context)
        case .resumeReading:
            if !inputClosed && !channelClosed { context.read() }
        case .inputClosed:
            peerInputClosed = true
            shutdownOutput(context)
        case .closed(let abortive):
            peerDidClose(abortive: abortive)
        }
    }

    // MARK: Internals

    private func start(_ context: ChannelHandlerContext) {
        guard !started, !channelClosed else { return }
        started = true
        if let data = initialData {
            initialData = nil
            if data.readableBytes > 0 {
                count(data.readableBytes)
                context.write(wrapOutboundOut(data), promise: nil)
            }
        }
        let queued = waiting
        waiting = []
        for signal in queued { handle(signal, context: context) }
        context.flush()
        if peerClosed {
            finishAfterPeerClose(context)
        } else {
            offerCredit(context)
        }
    }

    private func count(_ bytes: Int) {
        switch side {
        case .upstream: counters.addSent(bytes)
        case .downstream: counters.addReceived(bytes)
        }
    }

    /// Lets the peer read once more if our channel can take it, else as soon as it can.
    private func offerCredit(_ context: ChannelHandlerContext) {
        guard !peerInputClosed, !peerClosed, !channelClosed else { return }
        if context.channel.isWritable {
            send(.resumeReading)
        } else {
            peerAwaitsWritability = true
        }
    }

    private func send(_ signal: Signal) {
        guard let peer, let peerLoop else { return }
        if peerSharesLoop {
            peer.receive(signal)
            return
        }
        outbox.append(signal)
        if case .data = signal { return }
        let batch = outbox
        outbox = []
        let target = LoopOwned(peer)
        peerLoop.execute {
            for signal in batch { target.value.receive(signal) }
        }
    }

    /// Forwards the peer's EOF: once everything queued is written, shut our output.
    private func shutdownOutput(_ context: ChannelHandlerContext) {
        guard !outputShutdownStarted, !channelClosed else { return }
        outputShutdownStarted = true
        // A full close (which NIO escalates to when our input is already shut) drops queued
        // writes, so wait for the queue to drain first: an empty write completes after all
        // writes before it.
        let drained = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: drained)
        drained.futureResult.assumeIsolated().whenComplete { _ in
            if self.inputClosed { self.closeRequested = true }
            let shut = context.eventLoop.makePromise(of: Void.self)
            context.close(mode: .output, promise: shut)
            shut.futureResult.assumeIsolated().whenComplete { result in
                switch result {
                case .success:
                    self.outputClosed = true
                    if self.inputClosed { self.requestClose(context) }
                case .failure:
                    // Half-close unsupported (or the channel is gone): a full close is the
                    // only way left to pass the EOF on.
                    self.requestClose(context)
                }
            }
        }
    }

    private func peerDidClose(abortive: Bool) {
        guard !peerClosed else { return }
        peerClosed = true
        peerCloseAbortive = abortive
        peer = nil
        outbox = []
        guard let context, !channelClosed else { return }
        if abortive {
            abort(context)
        } else if started {
            finishAfterPeerClose(context)
        }
        // Not started yet: `start` finishes once the channel is active.
    }

    /// Nothing can be forwarded to the closed peer any more: deliver what is queued for our
    /// channel (unless the peer failed), then close it.
    private func finishAfterPeerClose(_ context: ChannelHandlerContext) {
        if peerCloseAbortive {
            abort(context)
            return
        }
        let drained = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: drained)
        drained.futureResult.assumeIsolated().whenComplete { _ in
            // A clean close of the peer ends its data: pass that on as a half-close before
            // closing. On a socket the close sends the FIN anyway; on a multiplexed stream
            // (HTTP/2) a bare close is a reset, which would turn a clean end into an abort.
            // NIO closes a socket whose output was shut when EOF arrives without reporting
            // the input close, so this is the only notice the relay gets of that end.
            guard !self.outputShutdownStarted else {
                self.requestClose(context)
                return
            }
            self.outputShutdownStarted = true
            // A close follows in any case, and NIO turns the half-close into one when the
            // input is already shut.
            self.closeRequested = true
            let shut = context.eventLoop.makePromise(of: Void.self)
            context.close(mode: .output, promise: shut)
            shut.futureResult.assumeIsolated().whenComplete { _ in self.requestClose(context) }
        }
    }

    /// The peer failed (reset, error, unexpected close): end our channel the same way, so
    /// its other end cannot take the truncated transfer for a complete one. A socket is
    /// reset (SO_LINGER 0: RST instead of FIN); a multiplexed stream resets itself on a
    /// plain close.
    private func abort(_ context: ChannelHandlerContext) {
        Relay.resetOnClose(context.channel)
        requestClose(context)
    }

    private func requestClose(_ context: ChannelHandlerContext) {
        closeRequested = true
        // Closed on the next tick, not from inside whatever event led here: a partner that
        // closes synchronously (an HTTP/2 stream ending) can bring us here from within
        // NIO's EOF handling (`channelReadComplete` before its own input close), and a full
        // close at that point trips NIO's registration assertion when NIO then shuts the
        // input of the already closed socket.
        context.eventLoop.assumeIsolated().execute {
            context.close(promise: nil)
        }
    }

    private func channelDidClose() {
        guard !channelClosed else { return }
        channelClosed = true
        let expected = closeRequested || outputClosed || outcome.isForced
        if !expected && !sawError {
            outcome.fail(RelayError(code: .closedUnexpectedly, side: side))
        }
        // A forced close (``ConnectionRecord/close()``) is an abort for the peer too: its end
        // must not pass a half-close on (a FIN or END_STREAM) before it closes.
        send(.closed(abortive: sawError || !expected || outcome.isForced))
        peer = nil
        waiting = []
        outbox = []
        initialData = nil
    }
}
