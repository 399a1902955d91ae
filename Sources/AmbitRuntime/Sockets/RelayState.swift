import NIOCore

/// The decisions of one end of a relay, apart from the channel it drives.
///
/// ``RelayHandler`` feeds it every event of its channel and every signal from its peer (the
/// handler on the other channel) and does what it answers: write, flush, read, grant the
/// peer a read, wait for the queue to drain, shut the output, close or abort. The state
/// holds no channel, so every order of events can be checked without sockets.
///
/// The life of one end: until its channel is added and active it keeps the peer's signals
/// in order; then bytes flow, each read of the peer's granted by this end when its channel
/// can take more. Each direction ends on its own: the input with an EOF (told to the peer),
/// the output when the peer's EOF is passed on (shut once what is queued is written). The
/// channel closes once both have ended; an error, a reset or the peer's abortive close
/// closes it at once, the peer's clean close once what is queued is written.
///
/// Threading: a value owned by its handler, used on that handler's event loop.
struct RelayState {
    /// What one handler tells the other.
    enum Signal: Sendable, Equatable {
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

    /// Why this end's output is being ended.
    enum OutputEnd: Equatable {
        /// The peer's channel got EOF: pass the half-close on.
        case peerInputClosed
        /// The peer's channel closed cleanly: nothing more will come, so end and close.
        case peerClosed
    }

    /// What the handler does for an event.
    enum Action: Equatable {
        /// Nothing (a signal kept for the start, or one that no longer matters).
        case none
        /// Count the bytes and write them; the flush comes with the peer's `readComplete`.
        case write(ByteBuffer)
        /// Flush, then ask ``offerCredit(isWritable:)`` (writability is known after the flush).
        case flushAndOfferCredit
        /// Read once from this end's channel.
        case read
        /// Tell the peer it may read once (``Signal/resumeReading``).
        case grantCredit
        /// Write and flush nothing, and when that completes (after every write before it)
        /// report ``outputDrained(_:)``. A full close drops queued writes, hence the wait.
        case drain(OutputEnd)
        /// Shut this end's output (a FIN, an END_STREAM) and report ``outputShut(_:succeeded:)``.
        case shutOutput(OutputEnd)
        /// Close this end's channel, on the next tick: not from inside the event that led here.
        case close
        /// Close it so that its other end sees an abort (a reset on sockets), on the next tick.
        case abort
    }

    /// What to do once the handler is in the pipeline.
    enum Added: Equatable {
        /// The channel is active: ``start()`` now.
        case start
        /// The peer already failed: abort without starting, as a started end would.
        case abort
        /// Start on `channelActive`.
        case wait
    }

    /// What to do on this channel's EOF.
    enum InputClosed: Equatable {
        /// A repeat: nothing.
        case ignore
        /// Tell the peer (``Signal/inputClosed``).
        case tellPeer
        /// Tell the peer, then close: the output had already ended, so both directions are done.
        case tellPeerAndClose
    }

    /// What the start hands the handler to write before anything else.
    struct Start: Equatable {
        /// Bytes the downstream sent before the relay started, to write (and count) first.
        var initialData: ByteBuffer?
        /// The peer's signals that arrived before the start, to act on in order (through
        /// ``peerSignal(_:)``).
        var queued: [Signal]
    }

    /// How the channel's close ends the relay.
    struct Closed {
        /// The failure to report, when the close was not asked for and no error explains it.
        var failure: RelayError?
        /// Whether the peer must abort (reset) rather than end cleanly.
        var abortive: Bool
    }

    /// Which side of the relay this end is.
    let side: RelayError.Side
    private var initialData: ByteBuffer?

    /// The handler is in its channel's pipeline.
    private(set) var isAdded = false
    /// Added and active: from here on signals are acted on instead of kept.
    private(set) var started = false
    /// Signals that arrived before the start, in order.
    private var waiting: [Signal] = []

    /// This channel got EOF.
    private(set) var inputClosed = false
    /// This channel's output is ending (the peer's EOF or close is being passed on): no
    /// more data is written to it.
    private(set) var outputShutdownStarted = false
    /// This channel's output is shut.
    private(set) var outputClosed = false
    /// The relay asked for this channel's close (so the close is expected).
    private(set) var closeRequested = false
    /// This channel reported an error (or the relay could not be installed on it).
    private(set) var sawError = false
    /// This channel is closed: the end of this end.
    private(set) var channelClosed = false

    /// The peer may read once this channel is writable again.
    private(set) var peerAwaitsWritability = false
    /// The peer's channel got EOF.
    private(set) var peerInputClosed = false
    /// The peer's channel is closed.
    private(set) var peerClosed = false
    private var peerCloseAbortive = false

    init(side: RelayError.Side, initialData: ByteBuffer?) {
        self.side = side
        self.initialData = initialData
    }

    // MARK: This end's channel

    /// The handler was added to its pipeline.
    mutating func handlerAdded(channelIsActive: Bool) -> Added {
        isAdded = true
        if peerClosed && peerCloseAbortive {
            closeRequested = true
            return .abort
        }
        return channelIsActive ? .start : .wait
    }

    /// The handler left its pipeline. Removed from a live channel, this end can no longer
    /// move bytes: end the relay rather than leave the peer waiting for credit forever.
    mutating func handlerRemoved(channelIsActive: Bool) -> Action {
        isAdded = false
        guard !channelClosed && channelIsActive else { return .none }
        closeRequested = true
        return .close
    }

    /// The channel is added and active: start moving bytes. Nil if already started or closed.
    /// The handler writes what it returns, then flushes and asks ``startFlushed(isWritable:)``.
    mutating func start() -> Start? {
        guard !started, !channelClosed else { return nil }
        started = true
        let data = initialData.flatMap { $0.readableBytes > 0 ? $0 : nil }
        initialData = nil
        let queued = waiting
        waiting = []
        return Start(initialData: data, queued: queued)
    }

    /// The start's writes are flushed: finish what the peer's close left, or offer a credit.
    mutating func startFlushed(isWritable: Bool) -> Action {
        peerClosed ? finishAfterPeerClose() : offerCredit(isWritable: isWritable)
    }

    /// This channel's writability changed.
    mutating func writabilityChanged(isWritable: Bool) -> Action {
        guard peerAwaitsWritability && isWritable else { return .none }
        peerAwaitsWritability = false
        return .grantCredit
    }

    /// This channel got EOF.
    mutating func channelInputClosed() -> InputClosed {
        guard !inputClosed else { return .ignore }
        inputClosed = true
        guard outputClosed else { return .tellPeer }
        closeRequested = true
        return .tellPeerAndClose
    }

    /// This channel reported an error: the relay fails with it, and the handler closes the
    /// channel (the peer then aborts).
    mutating func errorCaught(_ error: any Error) -> RelayError {
        sawError = true
        closeRequested = true
        return RelayError(code: .channelError, side: side, underlying: error)
    }

    /// The relay could not be installed on this channel: the relay fails with it, and the
    /// handler closes the channel and then reports ``channelClosed(forced:)``.
    mutating func abandon(_ error: any Error) -> RelayError {
        sawError = true
        closeRequested = true
        return RelayError(code: .setupFailed, side: side, underlying: error)
    }

    /// What was queued before ``Action/drain(_:)`` is written (or failed).
    mutating func outputDrained(_ end: OutputEnd) -> Action {
        switch end {
        case .peerInputClosed:
            // NIO turns a half-close into a full one when the input is already shut.
            if inputClosed { closeRequested = true }
            return .shutOutput(.peerInputClosed)
        case .peerClosed:
            // A clean close of the peer ends its data: pass that on as a half-close before
            // closing. On a socket the close sends the FIN anyway; on a multiplexed stream
            // (HTTP/2) a bare close is a reset, which would turn a clean end into an abort.
            // NIO closes a socket whose output was shut when EOF arrives without reporting
            // the input close, so this is the only notice the relay gets of that end.
            closeRequested = true
            if outputShutdownStarted { return .close }
            outputShutdownStarted = true
            return .shutOutput(.peerClosed)
        }
    }

    /// The output shut of ``Action/shutOutput(_:)`` completed.
    mutating func outputShut(_ end: OutputEnd, succeeded: Bool) -> Action {
        if end == .peerInputClosed && succeeded {
            outputClosed = true
            guard inputClosed else { return .none }
        }
        // Both directions are done, the peer is gone, or half-close is unsupported (or the
        // channel is gone): a full close is the only way left to pass the EOF on.
        closeRequested = true
        return .close
    }

    /// The channel closed. Nil if it was already reported. `forced`: the record was closed
    /// by force (``ConnectionRecord/close()``), which is an abort for the peer too: its end
    /// must not pass a half-close on (a FIN or END_STREAM) before it closes.
    mutating func channelClosed(forced: Bool) -> Closed? {
        guard !channelClosed else { return nil }
        channelClosed = true
        waiting = []
        initialData = nil
        let expected = closeRequested || outputClosed || forced
        return Closed(
            failure: !expected && !sawError ? RelayError(code: .closedUnexpectedly, side: side) : nil,
            abortive: sawError || !expected || forced)
    }

    // MARK: The peer

    /// A signal from the peer.
    mutating func peerSignal(_ signal: Signal) -> Action {
        if case .closed(let abortive) = signal { return peerDidClose(abortive: abortive) }
        guard started, isAdded else {
            if !channelClosed { waiting.append(signal) }
            return .none
        }
        switch signal {
        case .data(let buffer):
            guard !outputShutdownStarted, !channelClosed else { return .none }
            return .write(buffer)
        case .readComplete:
            return .flushAndOfferCredit
        case .resumeReading:
            return !inputClosed && !channelClosed ? .read : .none
        case .inputClosed:
            peerInputClosed = true
            guard !outputShutdownStarted, !channelClosed else { return .none }
            outputShutdownStarted = true
            return .drain(.peerInputClosed)
        case .closed(let abortive):
            return peerDidClose(abortive: abortive)
        }
    }

    /// Whether the peer may read once more: now if this channel can take it, else as soon
    /// as it becomes writable.
    mutating func offerCredit(isWritable: Bool) -> Action {
        guard !peerInputClosed, !peerClosed, !channelClosed else { return .none }
        guard isWritable else {
            peerAwaitsWritability = true
            return .none
        }
        return .grantCredit
    }

    private mutating func peerDidClose(abortive: Bool) -> Action {
        guard !peerClosed else { return .none }
        peerClosed = true
        peerCloseAbortive = abortive
        guard isAdded, !channelClosed else { return .none }
        if abortive {
            closeRequested = true
            return .abort
        }
        // Not started yet: the start finishes once the channel is active.
        return started ? finishAfterPeerClose() : .none
    }

    /// Nothing can be forwarded to the closed peer any more: deliver what is queued for this
    /// channel (unless the peer failed, which the channel's other end must see as an abort,
    /// not as a complete transfer), then close it.
    private mutating func finishAfterPeerClose() -> Action {
        guard !peerCloseAbortive else {
            closeRequested = true
            return .abort
        }
        return .drain(.peerClosed)
    }
}
