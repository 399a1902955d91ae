import NIOConcurrencyHelpers

/// The node's current view of the mesh: one immutable ``MeshSnapshot`` at a time, swapped
/// atomically, with change notifications. Several discovery sources feed it side by side.
///
/// **Deltas.** A source gets a ``MeshOrigin`` once (``origin(named:)``) and then sends
/// upserts and removals by key (``apply(_:from:)``), or its whole view for the store to
/// diff (``replace(with:from:)``). The next snapshot is made from the current one by
/// changing only the resources named, indexes included, so the cost of an update grows
/// with the update, not with the mesh.
///
/// **Conflicts.** Each source's resources are kept apart: a source never overwrites
/// another's. When two sources hold a resource with the same kind and key, the one
/// registered first (the lower ``MeshOrigin/rank``; plugins register in manifest order)
/// is in force; if it removes its version, the other's takes over. The snapshot names the
/// origin in force for each resource (``MeshSnapshot/origin(of:key:)``, `/config_dump`),
/// and ``conflicts`` lists the resources held by more than one source.
///
/// Thread-safe. Writers are serialised; readers take ``snapshot`` (a lock and a copy of a
/// reference-backed struct) or subscribe, and never wait for a writer's work.
public final class MeshStore: Sendable {
    private struct State {
        var snapshot: MeshSnapshot = .empty
        var subscribers: [UInt64: AsyncStream<MeshSnapshot>.Continuation] = [:]
        var observers: [UInt64: @Sendable (MeshSnapshot) -> Void] = [:]
        var nextID: UInt64 = 0
    }

    /// What each source holds, by kind: the store's bookkeeping behind the snapshot.
    struct Contributions: Sendable {
        var origins: [String] = []
        /// Per kind, per origin rank: that origin's resources.
        var tables: [ObjectIdentifier: [Int: any Sendable]] = [:]

        func table<R: MeshResource>(_ type: R.Type, origin: Int) -> ResourceTable<R.Key, R> {
            tables[ObjectIdentifier(type)]?[origin] as? ResourceTable<R.Key, R> ?? ResourceTable()
        }

        private mutating func modify<R: MeshResource>(_ type: R.Type, origin: Int, _ body: (inout ResourceTable<R.Key, R>) -> Void) {
            var table = self.table(type, origin: origin)
            tables[ObjectIdentifier(type), default: [:]][origin] = nil  // uniquely referenced while it changes
            body(&table)
            tables[ObjectIdentifier(type), default: [:]][origin] = table
        }

        mutating func upsert<R: MeshResource>(_ resource: R, origin: Int) -> Touched? {
            let key = resource.resourceKey
            guard table(R.self, origin: origin)[key] != resource else { return nil }
            modify(R.self, origin: origin) { $0[key] = resource }
            return Touched(R.self, key: key)
        }

        mutating func remove<R: MeshResource>(_ type: R.Type, key: R.Key, origin: Int) -> Touched? {
            guard table(type, origin: origin)[key] != nil else { return nil }
            modify(type, origin: origin) { $0[key] = nil }
            return Touched(type, key: key)
        }

        /// Every origin's version of the key, by rank: the first is in force.
        func versions<R: MeshResource>(_ type: R.Type, key: R.Key) -> [(origin: String, resource: R)] {
            guard let byOrigin = tables[ObjectIdentifier(type)] else { return [] }
            return origins.indices.compactMap { rank in
                (byOrigin[rank] as? ResourceTable<R.Key, R>)?[key].map { (origins[rank], $0) }
            }
        }
    }

    /// One resource whose version in force may have changed.
    struct Touched: Sendable {
        /// Recomputes the version in force; returns the resource's name, its conflict if
        /// more than one origin holds it, and whether what is in force changed.
        let recompute: @Sendable (Contributions, inout MeshSnapshot) -> (name: String, conflict: Conflict?, changed: Bool)

        init<R: MeshResource>(_ type: R.Type, key: R.Key) {
            recompute = { contributions, snapshot in
                let versions = contributions.versions(type, key: key)
                let winner = versions.first
                var changed = false
                if snapshot.resources(of: type)[key] != winner?.resource || snapshot.origin(of: type, key: key) != winner?.origin {
                    snapshot.set(type, key: key, to: winner?.resource, origin: winner?.origin)
                    changed = true
                }
                let conflict =
                    versions.count > 1
                    ? Conflict(kind: R.kind, key: "\(key)", inForce: versions[0].origin, shadowed: versions.dropFirst().map(\.origin))
                    : nil
                return ("\(R.kind)/\(key)", conflict, changed)
            }
        }
    }

    /// A resource more than one source holds, and which one's version is in force.
    public struct Conflict: Sendable, Hashable, Codable {
        /// The resource kind (``MeshResource/kind``).
        public var kind: String
        /// The key, as text.
        public var key: String
        /// The origin whose version is in force (the lowest rank).
        public var inForce: String
        /// The other origins holding a version, by rank.
        public var shadowed: [String]

        /// Creates a conflict record.
        public init(kind: String, key: String, inForce: String, shadowed: [String]) {
            self.kind = kind
            self.key = key
            self.inForce = inForce
            self.shadowed = shadowed
        }
    }

    private let state = NIOLockedValueBox(State())
    /// Writers' state, locked for a whole change (readers never take it).
    private let writer = NIOLockedValueBox(WriterState())

    private struct WriterState {
        var contributions = Contributions()
        var conflicts: [String: Conflict] = [:]
    }

    /// Creates an empty store.
    public init() {}

    /// The current snapshot.
    public var snapshot: MeshSnapshot {
        state.withLockedValue { $0.snapshot }
    }

    /// The origin named `name`, registered on first use: earlier registrations win
    /// conflicts (see the type's notes).
    public func origin(named name: String) -> MeshOrigin {
        writer.withLockedValue { writer in
            if let rank = writer.contributions.origins.firstIndex(of: name) { return MeshOrigin(name: name, rank: rank) }
            writer.contributions.origins.append(name)
            return MeshOrigin(name: name, rank: writer.contributions.origins.count - 1)
        }
    }

    /// The registered origins, by rank.
    public var origins: [String] { writer.withLockedValue { $0.contributions.origins } }

    /// Resources held by more than one source, sorted by kind and key.
    public var conflicts: [Conflict] {
        writer.withLockedValue { $0.conflicts.values.sorted { ($0.kind, $0.key) < ($1.kind, $1.key) } }
    }

    /// Applies `delta` from `origin` and, if anything in force changed, publishes the next
    /// snapshot (version + 1) and notifies subscribers; a change hidden behind another
    /// origin's version publishes nothing. Returns the snapshot now in force.
    @discardableResult
    public func apply(_ delta: MeshDelta, from origin: MeshOrigin) -> MeshSnapshot {
        change(from: origin, always: false) { _ in [delta] }.snapshot
    }

    /// Makes `content` everything `origin` holds of the kinds it sets: the store diffs it
    /// against what the origin held (upserting what is new or changed, removing what is
    /// gone) and applies the difference. Returns the snapshot now in force and how many
    /// resources the origin changed.
    @discardableResult
    public func replace(with content: MeshContent, from origin: MeshOrigin) -> (snapshot: MeshSnapshot, changes: Int) {
        change(from: origin, always: false) { content.deltas(against: $0, origin: origin.rank) }
    }

    /// Replaces everything with `snapshot`'s workloads, services and policies, as the
    /// origin `publish` (for tests and single-source tools; discovery sources use their
    /// own origin). Always publishes a new version. Returns the published snapshot.
    @discardableResult
    public func publish(_ snapshot: MeshSnapshot) -> MeshSnapshot {
        let origin = origin(named: "publish")
        let content = MeshContent(snapshot)
        return change(from: origin, always: true) { content.deltas(against: $0, origin: origin.rank) }.snapshot
    }

    /// Under the writer lock: applies the deltas `make` returns (from what the origins hold
    /// now) to `origin`'s contributions, recomputes the touched resources on a copy of the
    /// current snapshot and swaps it in, so snapshots follow one another. Publishes when
    /// something in force changed, or `always`. Returns the snapshot in force and how
    /// many changes the deltas held.
    private func change(
        from origin: MeshOrigin, always: Bool, _ make: (Contributions) -> [MeshDelta]
    ) -> (snapshot: MeshSnapshot, changes: Int) {
        writer.withLockedValue { writer in
            let deltas = make(writer.contributions)
            var next = state.withLockedValue { $0.snapshot }
            var changed = false
            for change in deltas.lazy.flatMap(\.changes) {
                guard let touched = change.apply(&writer.contributions, origin.rank) else { continue }
                let outcome = touched.recompute(writer.contributions, &next)
                writer.conflicts[outcome.name] = outcome.conflict
                changed = changed || outcome.changed
            }
            let changes = deltas.reduce(0) { $0 + $1.count }
            guard changed || always else { return (next, changes) }
            next.setVersion(next.version + 1)
            let (continuations, observers) = state.withLockedValue { state in
                state.snapshot = next
                return (Array(state.subscribers.values), Array(state.observers.values))
            }
            for continuation in continuations { continuation.yield(next) }
            for observer in observers { observer(next) }
            return (next, changes)
        }
    }

    /// A stream of snapshots: the current one first, then every change. Only the
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

    /// Calls `observer` synchronously on every change, on the writer's thread, in order.
    /// Keep it short, and do not change the store from it (the writer holds its lock). Returns a token for ``removeObserver(_:)``.
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
