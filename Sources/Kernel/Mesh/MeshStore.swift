import NIOConcurrencyHelpers

/// The node's current view of the mesh: one immutable ``MeshSnapshot`` at a time, swapped
/// atomically, with change notifications.
///
/// Thread-safe. Discovery sources call ``publish(_:)``; everyone else reads
/// ``snapshot`` (cheap: a lock and a copy of a reference-backed struct) or subscribes.
public final class MeshStore: Sendable {
    private struct State {
        var snapshot: MeshSnapshot = .empty
        var subscribers: [UInt64: AsyncStream<MeshSnapshot>.Continuation] = [:]
        var observers: [UInt64: @Sendable (MeshSnapshot) -> Void] = [:]
        var nextID: UInt64 = 0
    }

    private let state = NIOLockedValueBox(State())

    /// Creates an empty store.
    public init() {}

    /// The current snapshot.
    public var snapshot: MeshSnapshot {
        state.withLockedValue { $0.snapshot }
    }

    /// Replaces the mesh with `snapshot` (its version is reassigned) and notifies
    /// subscribers and observers. Returns the published snapshot.
    @discardableResult
    public func publish(_ snapshot: MeshSnapshot) -> MeshSnapshot {
        let (published, continuations, observers) = state.withLockedValue { state in
            let next = snapshot.withVersion(state.snapshot.version + 1)
            state.snapshot = next
            return (next, Array(state.subscribers.values), Array(state.observers.values))
        }
        for continuation in continuations { continuation.yield(published) }
        for observer in observers { observer(published) }
        return published
    }

    /// A stream of snapshots: the current one first, then every publish. Only the
    /// newest pending snapshot is kept for a slow reader.
    public func updates() -> AsyncStream<MeshSnapshot> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: MeshSnapshot.self, bufferingPolicy: .bufferingNewest(1))
        let id = state.withLockedValue { state in
            let id = state.nextID
            state.nextID += 1
            state.subscribers[id] = continuation
            continuation.yield(state.snapshot)
            return id
        }
        continuation.onTermination = { [weak self] _ in
            self?.state.withLockedValue { _ = $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Calls `observer` synchronously on every publish, on the publisher's thread.
    /// Keep it short. Returns a token for ``removeObserver(_:)``.
    @discardableResult
    public func observe(_ observer: @escaping @Sendable (MeshSnapshot) -> Void) -> UInt64 {
        state.withLockedValue { state in
            let id = state.nextID
            state.nextID += 1
            state.observers[id] = observer
            return id
        }
    }

    /// Stops calling an observer.
    public func removeObserver(_ token: UInt64) {
        state.withLockedValue { _ = $0.observers.removeValue(forKey: token) }
    }
}
