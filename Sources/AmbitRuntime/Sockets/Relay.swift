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
    ///   ``ConnectionRecord/recordFailure(_:flag:)``, with the error's
    ///   ``RelayError/responseFlag`` unless that is `-` (a peer's reset is an ordinary end).
    ///   A close by ``ConnectionRecord/close()`` is a clean end.
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

extension RelayError: ResponseFlagProviding {
    /// How telemetry flags a connection whose relay ended with this error, as ztunnel does:
    /// a peer that resets or goes away mid-transfer (a reset, a broken pipe, a socket no
    /// longer connected, a close before the relay finished) ends a TCP connection the
    /// ordinary way, `-`, and is not a failure; an underlying error that says its own flag
    /// (``ResponseFlagProviding``, e.g. a tunnel's stream reset with an error code) decides;
    /// any other error (a timeout, an unreachable host, a protocol error) is
    /// ``ResponseFlag/connectFailure``, which also counts the connection as failed.
    public var responseFlag: ResponseFlag {
        if let flagged = underlying as? any ResponseFlagProviding { return flagged.responseFlag }
        guard code != .closedUnexpectedly, let underlying else { return .noFlag }
        if let io = underlying as? IOError {
            switch io.errnoCode {
            case ECONNRESET, EPIPE, ENOTCONN: return .noFlag
            default: return .connectFailure
            }
        }
        if let channel = underlying as? ChannelError {
            switch channel {
            case .eof, .ioOnClosedChannel, .alreadyClosed, .outputClosed, .inputClosed: return .noFlag
            default: return .connectFailure
            }
        }
        return .connectFailure
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
        // The record's failure is the relay's first, the one its future fails with: two
        // handlers on different loops may fail at once.
        let first = state.withLockedValue { state in
            guard state.error == nil else { return false }
            state.error = error
            return true
        }
        guard first else { return }
        // A flag other than `-` (and only the first one recorded: a policy close's DENY
        // stays) makes telemetry count the close as failed.
        let flag = error.responseFlag
        if flag == .noFlag {
            record.recordFailure(error.description)
        } else {
            record.recordFailure(error.description, flag: flag)
        }
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
/// writes what the peer forwards. What to do on each event is ``RelayState``'s decision;
/// the handler carries the bytes and signals and performs the actions. All state is touched
/// on its own channel's event loop only; the peer is called directly when it shares the
/// loop and through `EventLoop.execute` otherwise, with one batch per read cycle.
///
/// Flow control is a credit: the peer sends `resumeReading` when its channel can take more
/// (after flushing a batch while writable, or when it becomes writable again), and only then
/// does this handler call `read()`. So at most one read cycle is ever in flight beyond the
/// peer's high water mark.
final class RelayHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    typealias Signal = RelayState.Signal

    private var state: RelayState
    private let counters: ByteCounters
    private let outcome: RelayOutcome

    private var peer: RelayHandler?
    private var peerLoop: (any EventLoop)?
    private var peerSharesLoop = true
    /// Cross-loop only: data of the current read cycle, shipped with the next signal.
    private var outbox: [Signal] = []

    private var context: ChannelHandlerContext?

    init(side: RelayError.Side, counters: ByteCounters, outcome: RelayOutcome, initialData: ByteBuffer?) {
        self.state = RelayState(side: side, initialData: initialData)
        self.counters = counters
        self.outcome = outcome
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
        switch state.handlerAdded(channelIsActive: context.channel.isActive) {
        case .start: start(context)
        case .abort: perform(.abort, context)
        case .wait: break
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        perform(state.handlerRemoved(channelIsActive: context.channel.isActive), context)
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
        perform(state.writabilityChanged(isWritable: context.channel.isWritable), context)
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            switch state.channelInputClosed() {
            case .ignore:
                break
            case .tellPeer:
                send(.inputClosed)
            case .tellPeerAndClose:
                send(.inputClosed)
                perform(.close, context)
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        outcome.fail(state.errorCaught(error))
        perform(.close, context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        channelDidClose()
        context.fireChannelInactive()
    }

    /// Installation failed: the channel cannot carry its half of the relay, so end both.
    func abandon(channel: any Channel, error: any Error) {
        outcome.fail(state.abandon(error))
        channel.close(promise: nil)
        channelDidClose()
    }

    // MARK: Signals from the peer

    /// Acts on a signal from the peer; always called on this handler's event loop.
    func receive(_ signal: Signal) {
        if case .closed = signal {
            peer = nil
            outbox = []
        }
        let action = state.peerSignal(signal)
        guard let context else { return }
        perform(action, context)
    }

    // MARK: Internals

    private func start(_ context: ChannelHandlerContext) {
        guard let start = state.start() else { return }
        if let data = start.initialData { perform(.write(data), context) }
        for signal in start.queued { perform(state.peerSignal(signal), context) }
        context.flush()
        perform(state.startFlushed(isWritable: context.channel.isWritable), context)
    }

    private func perform(_ action: RelayState.Action, _ context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .write(let buffer):
            switch state.side {
            case .upstream: counters.addSent(buffer.readableBytes)
            case .downstream: counters.addReceived(buffer.readableBytes)
            }
            context.write(wrapOutboundOut(buffer), promise: nil)
        case .flushAndOfferCredit:
            context.flush()
            perform(state.offerCredit(isWritable: context.channel.isWritable), context)
        case .read:
            context.read()
        case .grantCredit:
            send(.resumeReading)
        case .drain(let end):
            // An empty write completes after all writes before it.
            let drained = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: drained)
            drained.futureResult.assumeIsolated().whenComplete { _ in
                self.perform(self.state.outputDrained(end), context)
            }
        case .shutOutput(let end):
            let shut = context.eventLoop.makePromise(of: Void.self)
            context.close(mode: .output, promise: shut)
            shut.futureResult.assumeIsolated().whenComplete { result in
                let succeeded = if case .success = result { true } else { false }
                self.perform(self.state.outputShut(end, succeeded: succeeded), context)
            }
        case .close:
            close(context)
        case .abort:
            // The peer failed (reset, error, unexpected close): end our channel the same way,
            // so its other end cannot take the truncated transfer for a complete one. A socket
            // is reset (SO_LINGER 0: RST instead of FIN); a multiplexed stream resets itself
            // on a plain close.
            Relay.resetOnClose(context.channel)
            close(context)
        }
    }

    private func close(_ context: ChannelHandlerContext) {
        // Closed on the next tick, not from inside whatever event led here: a partner that
        // closes synchronously (an HTTP/2 stream ending) can bring us here from within
        // NIO's EOF handling (`channelReadComplete` before its own input close), and a full
        // close at that point trips NIO's registration assertion when NIO then shuts the
        // input of the already closed socket.
        context.eventLoop.assumeIsolated().execute {
            context.close(promise: nil)
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

    private func channelDidClose() {
        guard let closed = state.channelClosed(forced: outcome.isForced) else { return }
        if let failure = closed.failure { outcome.fail(failure) }
        send(.closed(abortive: closed.abortive))
        peer = nil
        outbox = []
    }
}
