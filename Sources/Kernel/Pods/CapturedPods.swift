import NIOConcurrencyHelpers

/// The pods this node captures in their own network namespaces (in-pod capture): what
/// the pod sources say, for the servers that listen inside the pods.
///
/// **Pod sources** (the local config's `netns` field and the admin server's `/pods`
/// today, istio-cni's ZDS next; see ``PodSource``) write through a ``PodFeed`` of their
/// own, named by origin: they add pods with their namespaces open, remove them, and may
/// resend everything they have as a snapshot (``PodFeed/beginSnapshot()``, then
/// ``PodFeed/add(_:)`` or ``PodFeed/keep(uid:)`` for each pod, then
/// ``PodFeed/endSnapshot()``, which removes what the snapshot did not mention). Two
/// sources never overwrite each other: each keeps its own entries, and when both have a
/// pod for one uid the one added most recently is the pod; removing it falls back to the
/// other.
///
/// **In-pod servers** (the capture plugin's 15001 and 15006 listeners, the `hbone`
/// plugin's 15008) follow ``pods`` or ``updates()``, usually through one
/// ``PodServerReconciler`` each. Each declares itself with ``declareServer(_:)`` during
/// provision and reports ``markListening(uid:server:)`` once it serves a pod.
///
/// Readiness has one component per pod, `pod <uid>`: pending while a source expects the
/// pod (``PodFeed/expect(uid:)``) and has not added it yet, and while any declared server
/// does not serve the pod that is there.
///
/// Thread-safe.
public final class CapturedPods: Sendable {
    /// One captured pod.
    public struct Pod: Sendable {
        /// The pod's workload uid (the mesh's key for it).
        public var uid: String
        /// Its network namespace, open.
        public var namespace: any NetworkNamespaceHandle
        /// `SO_MARK` for the proxy's sockets in the pod; nil: the namespace's own.
        public var mark: UInt32?
        /// The source that added it (``PodFeed/origin``); set by the feed.
        public internal(set) var origin: String = ""
        /// Who the pod is when its ``uid`` is not the mesh's key for it: istio-cni's ZDS
        /// names a pod by its Kubernetes UID and this, and the pod's mesh workload is the
        /// local one with the same name, namespace and service account (which may reach
        /// the mesh later than the pod). Nil: ``uid`` is the workload's uid.
        public var workloadInfo: PodWorkloadInfo?
        private let lookup = WorkloadLookup()

        /// Creates a pod entry.
        public init(
            uid: String, namespace: any NetworkNamespaceHandle, mark: UInt32? = nil, workloadInfo: PodWorkloadInfo? = nil
        ) {
            self.uid = uid
            self.namespace = namespace
            self.mark = mark
            self.workloadInfo = workloadInfo
        }

        /// The pod's mesh workload in `snapshot`: the workload with uid ``uid``, or, for a
        /// pod named by ``workloadInfo``, the workload on node `node` with its name,
        /// namespace and service account (the last match is remembered until the mesh
        /// changes). Nil while the mesh does not have it.
        public func workload(in snapshot: MeshSnapshot, node: String) -> Workload? {
            guard let info = workloadInfo else { return snapshot.workloads[uid] }
            return lookup.workload(matching: info, in: snapshot, node: node)
        }

        /// Where the proxy makes its sockets for this pod: inside its namespace, marked.
        public var placement: SocketPlacement { SocketPlacement(namespace: namespace, mark: mark) }
    }

    private struct Entry {
        var pod: Pod
        /// When it was added, across all origins: the newest entry of a uid is the pod.
        var sequence: UInt64
    }

    private struct State {
        /// Entries by uid, then origin.
        var entries: [String: [String: Entry]] = [:]
        /// Uids a source announced and has not added (or removed) yet, with the origins.
        var expected: [String: Set<String>] = [:]
        /// Open snapshots: the uids each origin mentioned since it began one.
        var snapshots: [String: Set<String>] = [:]
        var servers: Set<String> = []
        var listening: [String: Set<String>] = [:]
        /// Why a server does not serve a pod, by uid and server.
        var failures: [String: [String: String]] = [:]
        var statusWatchers: [UInt64: AsyncStream<Void>.Continuation] = [:]
        var subscribers: [UInt64: AsyncStream<[String: Pod]>.Continuation] = [:]
        var nextID: UInt64 = 0
        var nextSequence: UInt64 = 0
        var claimsAllLocal = false

        func current(_ uid: String) -> Pod? {
            entries[uid]?.values.max { $0.sequence < $1.sequence }?.pod
        }

        var pods: [String: Pod] {
            var pods: [String: Pod] = [:]
            pods.reserveCapacity(entries.count)
            for uid in entries.keys {
                if let pod = current(uid) { pods[uid] = pod }
            }
            return pods
        }

        /// Whether `uid`'s readiness component is pending.
        func isPending(_ uid: String) -> Bool {
            guard current(uid) != nil else { return !(expected[uid] ?? []).isEmpty }
            return !servers.isSubset(of: listening[uid] ?? [])
        }
    }

    /// What one mutation changed, to act on outside the lock.
    private struct Outcome {
        var changed = false
        var readiness: [(uid: String, pending: Bool)] = []
        var pods: [String: Pod] = [:]
        var subscribers: [AsyncStream<[String: Pod]>.Continuation] = []
        var watchers: [AsyncStream<Void>.Continuation] = []
    }

    private let state = NIOLockedValueBox(State())
    private let readiness: Readiness

    /// A registry reporting to `readiness`.
    public init(readiness: Readiness) {
        self.readiness = readiness
    }

    /// The readiness component of one pod.
    public static func readinessComponent(uid: String) -> String { "pod \(uid)" }

    /// The feed a pod source writes through, for `origin` (`config`, `admin`, `zds`, …).
    /// Feeds of one origin share its entries.
    public func feed(origin: String) -> PodFeed {
        PodFeed(origin: origin, registry: self)
    }

    /// Declares `server` as a plugin that opens listeners in every captured pod. Call it
    /// from ``Plugin/provision()``, before pods are added.
    public func declareServer(_ server: String) {
        state.withLockedValue { _ = $0.servers.insert(server) }
    }

    /// Reports that `server` serves pod `uid` (its listeners are up, or it has none to
    /// open for this pod). Ignored for pods not in the list.
    public func markListening(uid: String, server: String) {
        mutate { state, outcome in
            guard state.current(uid) != nil else { return }
            state.listening[uid, default: []].insert(server)
            state.failures[uid]?[server] = nil
            if state.failures[uid]?.isEmpty == true { state.failures[uid] = nil }
            outcome.readiness.append((uid, state.isPending(uid)))
        }
    }

    /// Reports that `server` could not start serving pod `uid` (it will retry), and why:
    /// what ``waitUntilServed(uid:timeout:)`` answers.
    public func markFailed(uid: String, server: String, reason: String) {
        mutate { state, outcome in
            guard state.current(uid) != nil else { return }
            state.failures[uid, default: [:]][server] = reason
            outcome.readiness.append((uid, state.isPending(uid)))
        }
    }

    /// How a wait for a pod's servers ended.
    public enum ServeOutcome: Sendable, Equatable {
        /// Every declared server serves the pod.
        case served
        /// A server could not start for it (the first reason, `server: reason`).
        case failed(String)
        /// The pod left the registry.
        case removed
        /// Neither within the time allowed.
        case timedOut
    }

    /// Waits until every declared server serves pod `uid`, one reports a failure for it,
    /// the pod is removed, or `timeout` passes (a ZDS source acks istio-cni only once the
    /// pod's listeners are up).
    public func waitUntilServed(uid: String, timeout: Duration) async -> ServeOutcome {
        let (changes, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let id = state.withLockedValue { state in
            let id = state.nextID
            state.nextID += 1
            state.statusWatchers[id] = continuation
            return id
        }
        defer { _ = state.withLockedValue { $0.statusWatchers.removeValue(forKey: id) } }
        let deadline = ContinuousClock.now + timeout
        let timer = Task {
            try? await Task.sleep(until: deadline)
            continuation.yield()
        }
        defer { timer.cancel() }
        continuation.yield()
        for await _ in changes {
            let outcome = state.withLockedValue { state -> ServeOutcome? in
                guard state.current(uid) != nil else { return .removed }
                if state.servers.isSubset(of: state.listening[uid] ?? []) { return .served }
                if let (server, reason) = state.failures[uid]?.min(by: { $0.key < $1.key }) {
                    return .failed("\(server): \(reason)")
                }
                return nil
            }
            if let outcome { return outcome }
            if ContinuousClock.now >= deadline { return .timedOut }
        }
        return .timedOut
    }

    /// Why each server that does not serve pod `uid` failed to, by server.
    public func failures(uid: String) -> [String: String] {
        state.withLockedValue { $0.failures[uid] ?? [:] }
    }

    /// Reports that `server` no longer serves pod `uid` (it will retry); the pod is pending
    /// again.
    public func markNotListening(uid: String, server: String) {
        mutate { state, outcome in
            guard state.current(uid) != nil, state.listening[uid]?.remove(server) != nil else { return }
            outcome.readiness.append((uid, state.isPending(uid)))
        }
    }

    /// The captured pods by uid (for each uid, the newest source's entry).
    public var pods: [String: Pod] { state.withLockedValue { $0.pods } }

    /// The namespace of the pod of workload `uid`, if it is captured in-pod.
    public func namespace(forWorkload uid: String) -> (any NetworkNamespaceHandle)? {
        state.withLockedValue { $0.current(uid)?.namespace }
    }

    /// Whether a source has the pod of workload `uid` or expects to add it: its traffic is
    /// served inside the pod, not in the proxy's namespace.
    public func isClaimed(uid: String) -> Bool {
        state.withLockedValue { $0.current(uid) != nil || !($0.expected[uid] ?? []).isEmpty }
    }

    /// Declares that every local workload's traffic is served inside its pod or not at all
    /// (in-pod capture is this node's mode, as on a Kubernetes node, where a pod's IPs live
    /// only in its namespace): servers then open no listeners on local workloads' IPs in the
    /// proxy's own namespace, even for workloads no source has (yet) added. Call it from
    /// ``Plugin/provision()``.
    public func claimAllLocalWorkloads() {
        state.withLockedValue { $0.claimsAllLocal = true }
    }

    /// Whether ``claimAllLocalWorkloads()`` was called.
    public var claimsAllLocalWorkloads: Bool { state.withLockedValue { $0.claimsAllLocal } }

    /// The uids each origin has, for status pages.
    public var origins: [String: [String]] {
        state.withLockedValue { state in
            var byOrigin: [String: [String]] = [:]
            for (uid, entries) in state.entries {
                for origin in entries.keys { byOrigin[origin, default: []].append(uid) }
            }
            return byOrigin.mapValues { $0.sorted() }
        }
    }

    /// The pod list now, then after every change (only the newest is kept for a slow
    /// reader). Ends when the task iterating it is cancelled.
    public func updates() -> AsyncStream<[String: Pod]> {
        let (stream, continuation) = AsyncStream.makeStream(of: [String: Pod].self, bufferingPolicy: .bufferingNewest(1))
        let id = state.withLockedValue { state in
            let id = state.nextID
            state.nextID += 1
            state.subscribers[id] = continuation
            continuation.yield(state.pods)
            return id
        }
        continuation.onTermination = { [weak self] _ in
            self?.state.withLockedValue { _ = $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    // MARK: Writes (through a feed)

    func expect(uid: String, origin: String) {
        mutate { state, outcome in
            guard state.expected[uid, default: []].insert(origin).inserted else { return }
            outcome.readiness.append((uid, state.isPending(uid)))
        }
    }

    func add(_ pod: Pod, origin: String) {
        var pod = pod
        pod.origin = origin
        mutate { state, outcome in
            state.snapshots[origin]?.insert(pod.uid)
            state.expected[pod.uid]?.remove(origin)
            if state.expected[pod.uid]?.isEmpty == true { state.expected[pod.uid] = nil }
            let before = state.current(pod.uid)
            if let mine = state.entries[pod.uid]?[origin], mine.pod.namespace.isSame(as: pod.namespace),
                mine.pod.mark == pod.mark
            {
                // The same pod again (a resend): nothing changes for its servers.
                outcome.readiness.append((pod.uid, state.isPending(pod.uid)))
                return
            }
            state.entries[pod.uid, default: [:]][origin] = Entry(pod: pod, sequence: state.nextSequence)
            state.nextSequence += 1
            Self.podChanged(pod.uid, from: before, state: &state, outcome: &outcome)
        }
    }

    func remove(uid: String, origin: String) {
        mutate { state, outcome in
            state.snapshots[origin]?.remove(uid)
            let wasExpected = state.expected[uid]?.remove(origin) != nil
            if state.expected[uid]?.isEmpty == true { state.expected[uid] = nil }
            let before = state.current(uid)
            let removed = state.entries[uid]?.removeValue(forKey: origin) != nil
            if state.entries[uid]?.isEmpty == true { state.entries[uid] = nil }
            if removed {
                Self.podChanged(uid, from: before, state: &state, outcome: &outcome)
            } else if wasExpected {
                outcome.readiness.append((uid, state.isPending(uid)))
            }
        }
    }

    func keep(uid: String, origin: String) -> Bool {
        state.withLockedValue { state in
            guard state.entries[uid]?[origin] != nil else { return false }
            state.snapshots[origin]?.insert(uid)
            return true
        }
    }

    func beginSnapshot(origin: String) {
        state.withLockedValue { $0.snapshots[origin] = [] }
    }

    func endSnapshot(origin: String) -> [String] {
        let stale = state.withLockedValue { state -> [String] in
            guard let mentioned = state.snapshots.removeValue(forKey: origin) else { return [] }
            let have = state.entries.compactMap { $0.value[origin] != nil ? $0.key : nil }
            let announced = state.expected.compactMap { $0.value.contains(origin) ? $0.key : nil }
            return Set(have + announced).subtracting(mentioned).sorted()
        }
        for uid in stale { remove(uid: uid, origin: origin) }
        return stale
    }

    func uids(origin: String) -> [String] {
        state.withLockedValue { state in
            state.entries.compactMap { $0.value[origin] != nil ? $0.key : nil }.sorted()
        }
    }

    /// After an entry of `uid` changed: if the pod (the newest entry) is another one now,
    /// its servers start over and subscribers hear of it.
    private static func podChanged(_ uid: String, from before: Pod?, state: inout State, outcome: inout Outcome) {
        let after = state.current(uid)
        let same: Bool
        switch (before, after) {
        case (nil, nil): same = true
        case (let old?, let new?): same = old.namespace.isSame(as: new.namespace) && old.mark == new.mark
        default: same = false
        }
        if !same {
            state.listening[uid] = after == nil ? nil : []
            state.failures[uid] = nil
            outcome.changed = true
        }
        outcome.readiness.append((uid, state.isPending(uid)))
    }

    private func mutate(_ body: (inout State, inout Outcome) -> Void) {
        let outcome = state.withLockedValue { state -> Outcome in
            var outcome = Outcome()
            body(&state, &outcome)
            if !outcome.readiness.isEmpty || outcome.changed { outcome.watchers = Array(state.statusWatchers.values) }
            if outcome.changed {
                outcome.pods = state.pods
                outcome.subscribers = Array(state.subscribers.values)
            }
            return outcome
        }
        for (uid, pending) in outcome.readiness {
            let component = Self.readinessComponent(uid: uid)
            if pending { readiness.expect(component) } else { readiness.markReady(component) }
        }
        if outcome.changed {
            for subscriber in outcome.subscribers { subscriber.yield(outcome.pods) }
        }
        for watcher in outcome.watchers { watcher.yield() }
    }
}

/// Who a pod is, as istio-cni's ZDS names it (`WorkloadInfo`): the pod's name, namespace
/// and service account.
public struct PodWorkloadInfo: Sendable, Hashable, CustomStringConvertible {
    /// The pod's name.
    public var name: String
    /// Its namespace.
    public var namespace: String
    /// Its service account.
    public var serviceAccount: String

    /// Creates the description of a pod.
    public init(name: String, namespace: String, serviceAccount: String) {
        self.name = name
        self.namespace = namespace
        self.serviceAccount = serviceAccount
    }

    public var description: String { "\(namespace)/\(name) (service account \(serviceAccount))" }

    /// Whether `workload` is this pod (name, namespace and service account alike).
    public func matches(_ workload: Workload) -> Bool {
        workload.name == name && workload.namespace == namespace && workload.serviceAccount == serviceAccount
    }
}

/// The last answer of a pod's workload lookup by ``PodWorkloadInfo``, valid for one mesh
/// version: a lookup scans the node's workloads once per mesh change, not per connection.
final class WorkloadLookup: Sendable {
    private let last = NIOLockedValueBox<(version: UInt64, node: String, uid: String?)?>(nil)

    func workload(matching info: PodWorkloadInfo, in snapshot: MeshSnapshot, node: String) -> Workload? {
        if let cached = last.withLockedValue({ $0 }), cached.version == snapshot.version, cached.node == node {
            return cached.uid.flatMap { snapshot.workloads[$0] }
        }
        let found = snapshot.workloads.values.filter { $0.node == node && info.matches($0) }.min { $0.uid < $1.uid }
        last.withLockedValue { $0 = (snapshot.version, node, found?.uid) }
        return found
    }
}

/// One pod source's handle on the node's ``CapturedPods``: everything written through it
/// belongs to its ``origin`` and never touches another origin's pods.
///
/// Thread-safe.
public struct PodFeed: Sendable {
    /// The source's name, shown with each pod it adds (`config`, `admin`, `zds`).
    public let origin: String
    private let registry: CapturedPods

    init(origin: String, registry: CapturedPods) {
        self.origin = origin
        self.registry = registry
    }

    /// Announces that the source means to add the pod of workload `uid` (its namespace is
    /// not open yet): the pod is pending in readiness until added or removed.
    public func expect(uid: String) {
        registry.expect(uid: uid, origin: origin)
    }

    /// Adds the pod, or replaces this origin's entry for its uid. Adding the same
    /// namespace again changes nothing (the servers keep serving it).
    public func add(_ pod: CapturedPods.Pod) {
        registry.add(pod, origin: origin)
    }

    /// Removes this origin's entry (or announcement) for `uid`.
    public func remove(uid: String) {
        registry.remove(uid: uid, origin: origin)
    }

    /// Starts a snapshot: until ``endSnapshot()``, the feed notes which pods are added or
    /// kept.
    public func beginSnapshot() {
        registry.beginSnapshot(origin: origin)
    }

    /// Keeps this origin's pod `uid` as it is (ZDS's `KeepWorkload`: the namespace was
    /// sent before and is not sent again). False when the origin has no such pod.
    @discardableResult
    public func keep(uid: String) -> Bool {
        registry.keep(uid: uid, origin: origin)
    }

    /// Ends a snapshot: removes this origin's pods and announcements that the snapshot did
    /// not add or keep, and returns their uids. Without an open snapshot it does nothing.
    @discardableResult
    public func endSnapshot() -> [String] {
        registry.endSnapshot(origin: origin)
    }

    /// The uids this origin has added and not removed.
    public var uids: [String] { registry.uids(origin: origin) }
}

extension PluginContext {
    /// The pods this node captures inside their own network namespaces (in-pod capture),
    /// one registry per node.
    public var pods: CapturedPods {
        facilities.shared(CapturedPods.self) { CapturedPods(readiness: readiness) }
    }
}
