import NIOConcurrencyHelpers
import NIOCore

/// The HBONE server's guard against slow handshakes (slowloris): connections that have
/// been accepted but have not finished TLS are counted, at most `limit` are let in at a
/// time (the rest are closed as they are accepted), and each must finish within `timeout`
/// of being accepted — the certificate fetch for the destination included — or it is
/// closed.
///
/// Only connections still handshaking count: an established connection frees its slot,
/// so the cap never limits how many tunnels a node carries.
///
/// Thread-safe.
final class PendingHandshakes: Sendable {
    /// What the gate has done, for introspection and tests.
    struct Counters: Sendable, Equatable {
        /// Connections handshaking now.
        var pending = 0
        /// Connections closed at accept because `limit` were already handshaking.
        var refused = 0
        /// Connections closed because their handshake outlasted `timeout`.
        var timedOut = 0
    }

    let limit: Int
    let timeout: TimeAmount
    private let counters = NIOLockedValueBox(Counters())

    init(limit: Int, timeout: TimeAmount) {
        self.limit = limit
        self.timeout = timeout
    }

    var snapshot: Counters { counters.withLockedValue { $0 } }

    /// Admits a just-accepted connection: nil when `limit` connections are handshaking
    /// already (the caller closes it), else its slot. The slot is freed when the channel
    /// closes or ``Slot/established()`` is called; if neither happens within `timeout`
    /// the channel is closed and `onTimeout` called.
    func admit(_ channel: any Channel, onTimeout: @escaping @Sendable () -> Void) -> Slot? {
        let admitted = counters.withLockedValue { counters -> Bool in
            guard counters.pending < limit else {
                counters.refused += 1
                return false
            }
            counters.pending += 1
            return true
        }
        guard admitted else { return nil }
        let slot = Slot(counters: counters)
        let deadline = channel.eventLoop.scheduleTask(in: timeout) {
            if slot.free(timedOut: true) {
                onTimeout()
                channel.close(promise: nil)
            }
        }
        slot.deadline = deadline
        channel.closeFuture.whenComplete { _ in
            slot.free(timedOut: false)
            deadline.cancel()
        }
        return slot
    }

    /// One handshaking connection's place under the cap.
    final class Slot: Sendable {
        private let counters: NIOLockedValueBox<Counters>
        private let state = NIOLockedValueBox<(held: Bool, deadline: Scheduled<Void>?)>((true, nil))

        fileprivate init(counters: NIOLockedValueBox<Counters>) {
            self.counters = counters
        }

        fileprivate var deadline: Scheduled<Void>? {
            get { state.withLockedValue { $0.deadline } }
            set { state.withLockedValue { $0.deadline = newValue } }
        }

        /// The handshake finished: the connection no longer counts and has no deadline.
        func established() {
            if free(timedOut: false) { deadline?.cancel() }
        }

        /// Frees the slot once; true if this call freed it.
        @discardableResult
        fileprivate func free(timedOut: Bool) -> Bool {
            let wasHeld = state.withLockedValue { state -> Bool in
                defer { state.held = false }
                return state.held
            }
            guard wasHeld else { return false }
            counters.withLockedValue { counters in
                counters.pending -= 1
                if timedOut { counters.timedOut += 1 }
            }
            return true
        }
    }
}
