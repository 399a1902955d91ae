@testable import AmbitRuntime
import NIOCore
import Testing

/// One end of a relay as a value: every order of events that matters, its actions and how
/// its close ends the relay. No channel, no event loop.
@Suite("Relay state: one end's decisions, without channels")
struct RelayStateTests {
    private struct Failure: Error {}

    /// An end whose channel is added and active, started, with a credit granted to its peer.
    private static func started(_ side: RelayError.Side = .upstream) -> RelayState {
        var state = RelayState(side: side, initialData: nil)
        #expect(state.handlerAdded(channelIsActive: true) == .start)
        #expect(state.start() == RelayState.Start(initialData: nil, queued: []))
        #expect(state.startFlushed(isWritable: true) == .grantCredit)
        return state
    }

    private static func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    // MARK: Start

    @Test("signals before the start are kept in order and replayed after the initial data")
    func startReplaysInOrder() {
        var state = RelayState(side: .upstream, initialData: Self.bytes("handshake leftovers"))
        #expect(state.peerSignal(.data(Self.bytes("a"))) == .none)
        #expect(state.peerSignal(.readComplete) == .none)
        #expect(state.handlerAdded(channelIsActive: false) == .wait)
        #expect(state.peerSignal(.resumeReading) == .none)
        let start = state.start()
        #expect(start?.initialData == Self.bytes("handshake leftovers"))
        #expect(start?.queued == [.data(Self.bytes("a")), .readComplete, .resumeReading])
        // Replayed, the signals now act.
        #expect(state.peerSignal(.data(Self.bytes("a"))) == .write(Self.bytes("a")))
        #expect(state.peerSignal(.resumeReading) == .read)
        #expect(state.start() == nil, "started once")
    }

    @Test("empty initial data is not written")
    func emptyInitialData() {
        var state = RelayState(side: .upstream, initialData: ByteBuffer())
        #expect(state.handlerAdded(channelIsActive: true) == .start)
        #expect(state.start()?.initialData == nil)
    }

    @Test("a credit waits for writability and is granted once")
    func creditWaitsForWritability() {
        var state = RelayState(side: .downstream, initialData: nil)
        #expect(state.handlerAdded(channelIsActive: true) == .start)
        _ = state.start()
        #expect(state.startFlushed(isWritable: false) == .none)
        #expect(state.peerAwaitsWritability)
        #expect(state.writabilityChanged(isWritable: false) == .none)
        #expect(state.writabilityChanged(isWritable: true) == .grantCredit)
        #expect(state.writabilityChanged(isWritable: true) == .none, "one credit per wait")
        // The steady state: write, flush, credit.
        #expect(state.peerSignal(.data(Self.bytes("x"))) == .write(Self.bytes("x")))
        #expect(state.peerSignal(.readComplete) == .flushAndOfferCredit)
        #expect(state.offerCredit(isWritable: true) == .grantCredit)
    }

    // MARK: Half-closes

    @Test("our EOF, then the peer's: told to the peer, passed on as a half-close, then closed cleanly")
    func ourEOFThenPeers() {
        var state = Self.started()
        #expect(state.channelInputClosed() == .tellPeer)
        #expect(state.channelInputClosed() == .ignore, "an EOF is told once")
        #expect(state.peerSignal(.resumeReading) == .none, "nothing left to read")
        // The other direction still flows.
        #expect(state.peerSignal(.data(Self.bytes("reply"))) == .write(Self.bytes("reply")))
        #expect(state.peerSignal(.inputClosed) == .drain(.peerInputClosed))
        #expect(state.peerSignal(.data(Self.bytes("late"))) == .none, "nothing after the half-close")
        #expect(state.outputDrained(.peerInputClosed) == .shutOutput(.peerInputClosed))
        #expect(state.outputShut(.peerInputClosed, succeeded: true) == .close)
        let closed = state.channelClosed(forced: false)
        #expect(closed?.failure == nil)
        #expect(closed?.abortive == false)
    }

    @Test("the peer's EOF, then ours: the half-close leaves our input reading, our EOF then closes")
    func peersEOFThenOurs() {
        var state = Self.started()
        #expect(state.peerSignal(.inputClosed) == .drain(.peerInputClosed))
        #expect(state.peerSignal(.inputClosed) == .none, "one half-close")
        #expect(state.offerCredit(isWritable: true) == .none, "the peer reads no more")
        #expect(state.outputDrained(.peerInputClosed) == .shutOutput(.peerInputClosed))
        #expect(state.outputShut(.peerInputClosed, succeeded: true) == .none, "our input is still open")
        #expect(!state.closeRequested)
        #expect(state.peerSignal(.resumeReading) == .read)
        #expect(state.channelInputClosed() == .tellPeerAndClose)
        let closed = state.channelClosed(forced: false)
        #expect(closed?.failure == nil)
        #expect(closed?.abortive == false)
    }

    @Test("both EOFs before the half-close completes: the shut output closes the channel")
    func bothEOFsWhileDraining() {
        var state = Self.started()
        #expect(state.peerSignal(.inputClosed) == .drain(.peerInputClosed))
        #expect(state.channelInputClosed() == .tellPeer, "the output has not been shut yet")
        #expect(state.outputDrained(.peerInputClosed) == .shutOutput(.peerInputClosed))
        #expect(state.closeRequested, "NIO closes a socket whose both directions are shut")
        #expect(state.outputShut(.peerInputClosed, succeeded: true) == .close)
    }

    @Test("a channel without half-close support closes instead")
    func halfCloseUnsupported() {
        var state = Self.started()
        #expect(state.peerSignal(.inputClosed) == .drain(.peerInputClosed))
        #expect(state.outputDrained(.peerInputClosed) == .shutOutput(.peerInputClosed))
        #expect(state.outputShut(.peerInputClosed, succeeded: false) == .close)
        #expect(!state.outputClosed)
        #expect(state.channelClosed(forced: false)?.failure == nil, "the close was asked for")
    }

    // MARK: Resets and errors

    @Test("the peer's EOF passed on, then a reset on our channel: the relay fails and the peer aborts")
    func eofThenReset() {
        var state = Self.started(.downstream)
        #expect(state.peerSignal(.inputClosed) == .drain(.peerInputClosed))
        #expect(state.outputDrained(.peerInputClosed) == .shutOutput(.peerInputClosed))
        #expect(state.outputShut(.peerInputClosed, succeeded: true) == .none)
        let error = state.errorCaught(Failure())
        #expect(error.code == .channelError)
        #expect(error.side == .downstream)
        #expect(error.underlying.map { $0 is Failure } == true)
        let closed = state.channelClosed(forced: false)
        #expect(closed?.failure == nil, "the error is the failure, reported once")
        #expect(closed?.abortive == true)
    }

    @Test("an error on our channel: reported with our side, the peer aborts", arguments: [RelayError.Side.upstream, .downstream])
    func errorOnOurSide(side: RelayError.Side) {
        var state = Self.started(side)
        let error = state.errorCaught(Failure())
        #expect(error.code == .channelError && error.side == side)
        #expect(state.closeRequested)
        let closed = state.channelClosed(forced: false)
        #expect(closed?.failure == nil)
        #expect(closed?.abortive == true)
        #expect(state.channelClosed(forced: false) == nil, "a close is reported once")
    }

    @Test("the peer's abortive close aborts our channel, without passing a half-close on")
    func peerAborts() {
        var state = Self.started()
        #expect(state.peerSignal(.data(Self.bytes("queued"))) == .write(Self.bytes("queued")))
        #expect(state.peerSignal(.closed(abortive: true)) == .abort)
        #expect(state.peerSignal(.closed(abortive: false)) == .none, "one close")
        #expect(state.offerCredit(isWritable: true) == .none, "no credit for a closed peer")
        let closed = state.channelClosed(forced: false)
        #expect(closed?.failure == nil, "our close was asked for; the peer's failure is the peer's")
        #expect(closed?.abortive == false)
    }

    @Test("our EOF, then the peer aborts: still an abort")
    func eofThenPeerAborts() {
        var state = Self.started()
        #expect(state.channelInputClosed() == .tellPeer)
        #expect(state.peerSignal(.closed(abortive: true)) == .abort)
    }

    @Test("a close nobody asked for (a reset seen while writing) fails the relay and aborts the peer")
    func unexpectedClose() {
        var state = Self.started(.upstream)
        #expect(state.peerSignal(.data(Self.bytes("x"))) == .write(Self.bytes("x")))
        let closed = state.channelClosed(forced: false)
        #expect(closed?.failure?.code == .closedUnexpectedly)
        #expect(closed?.failure?.side == .upstream)
        #expect(closed?.abortive == true)
        // Anything later from the peer is dropped, not kept.
        #expect(state.peerSignal(.data(Self.bytes("y"))) == .none)
        #expect(state.peerSignal(.resumeReading) == .none)
        #expect(state.peerSignal(.closed(abortive: true)) == .none)
    }

    @Test("a forced close is clean for the relay but an abort for the peer")
    func forcedClose() {
        var state = Self.started()
        let closed = state.channelClosed(forced: true)
        #expect(closed?.failure == nil)
        #expect(closed?.abortive == true)
    }

    @Test("setup failure: reported once, the peer aborts")
    func setupFailure() {
        var state = RelayState(side: .downstream, initialData: nil)
        let error = state.abandon(Failure())
        #expect(error.code == .setupFailed && error.side == .downstream)
        let closed = state.channelClosed(forced: false)
        #expect(closed?.failure == nil)
        #expect(closed?.abortive == true)
        #expect(state.start() == nil)
    }

    // MARK: The peer's clean close

    @Test("the peer closes cleanly: what is queued is written, a half-close passed on, then closed")
    func peerClosesCleanly() {
        var state = Self.started()
        #expect(state.peerSignal(.closed(abortive: false)) == .drain(.peerClosed))
        #expect(state.outputDrained(.peerClosed) == .shutOutput(.peerClosed))
        #expect(state.outputShut(.peerClosed, succeeded: true) == .close)
        let closed = state.channelClosed(forced: false)
        #expect(closed?.failure == nil)
        #expect(closed?.abortive == false)
    }

    @Test("the peer's EOF, then its clean close: one half-close, then closed")
    func peerEOFThenClose() {
        var state = Self.started()
        #expect(state.peerSignal(.inputClosed) == .drain(.peerInputClosed))
        #expect(state.peerSignal(.closed(abortive: false)) == .drain(.peerClosed))
        #expect(state.outputDrained(.peerInputClosed) == .shutOutput(.peerInputClosed))
        #expect(state.outputDrained(.peerClosed) == .close, "no second half-close")
    }

    @Test("the peer failed before we were added: abort without starting, as after the start")
    func peerAbortedBeforeAdded() {
        var state = RelayState(side: .downstream, initialData: Self.bytes("never sent"))
        #expect(state.peerSignal(.closed(abortive: true)) == .none)
        #expect(state.handlerAdded(channelIsActive: true) == .abort, "a reset, not a FIN that passes for an empty answer")
        #expect(state.channelClosed(forced: false)?.failure == nil)
    }

    @Test("the peer closed cleanly before our channel was active: the start finishes the close")
    func peerClosedBeforeActive() {
        var state = RelayState(side: .upstream, initialData: Self.bytes("first"))
        #expect(state.handlerAdded(channelIsActive: false) == .wait)
        #expect(state.peerSignal(.data(Self.bytes("a"))) == .none)
        #expect(state.peerSignal(.closed(abortive: false)) == .none)
        let start = state.start()
        #expect(start?.initialData == Self.bytes("first"))
        #expect(start?.queued == [.data(Self.bytes("a"))])
        #expect(state.peerSignal(.data(Self.bytes("a"))) == .write(Self.bytes("a")))
        #expect(state.startFlushed(isWritable: true) == .drain(.peerClosed), "no credit: the peer is gone")
    }

    @Test("the peer aborted before our channel was active: the start aborts")
    func peerAbortedBeforeActive() {
        var state = RelayState(side: .upstream, initialData: nil)
        #expect(state.handlerAdded(channelIsActive: false) == .wait)
        #expect(state.peerSignal(.closed(abortive: true)) == .abort)
    }

    // MARK: The handler's pipeline

    @Test("removed from a live channel, an end closes; from a closed one it does nothing")
    func handlerRemoved() {
        var live = Self.started()
        #expect(live.handlerRemoved(channelIsActive: true) == .close)
        // Signals for a removed handler wait (nothing acts on them).
        #expect(live.peerSignal(.resumeReading) == .none)

        var closed = Self.started()
        _ = closed.channelClosed(forced: false)
        #expect(closed.handlerRemoved(channelIsActive: false) == .none)
    }
}
