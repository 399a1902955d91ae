import NIOConcurrencyHelpers

/// The pods this node captures in their own network namespaces (in-pod capture), shared
/// by the plugins that open listeners inside them.
///
/// The capture plugin owns the list: it ``add(_:)``s a pod once its namespace is open and
/// ``remove(uid:)``s it when the pod goes. Every plugin that serves pods inside their
/// namespaces (capture: 15001 and 15006; hbone: 15008) declares itself with
/// ``declareServer(_:)`` during provision and reports ``markListening(uid:server:)`` once
/// its listeners for a pod are up. Readiness has one component per pod, `pod <uid>`,
/// pending until every declared server is listening for it.
///
/// Thread-safe.
public final class CapturedPods: Sendable {
    /// One captured pod.
    public struct Pod: Sendable {
        /// The pod's workload uid (the mesh's key for it).
        public var uid: String
        /// Its network namespace, open.
        public var namespace: any NetworkNamespaceHandle

        /// Creates a pod entry.
        public init(uid: String, namespace: any NetworkNamespaceHandle) {
            self.uid = uid
            self.namespace = namespace
        }
    }

    private struct State {
        var pods: [String: Pod] = [:]
        var servers: Set<String> = []
        var listening: [String: Set<String>] = [:]
        var subscribers: [UInt64: AsyncStream<[String: Pod]>.Continuation] = [:]
        var nextID: UInt64 = 0
    }

    private let state = NIOLockedValueBox(State())
    private let readiness: Readiness

    /// A registry reporting to `readiness`.
    public init(readiness: Readiness) {
        self.readiness = readiness
    }

    /// The readiness component of one pod.
    public static func readinessComponent(uid: String) -> String { "pod \(uid)" }

    /// Declares `server` as a plugin that opens listeners in every captured pod. Call it
    /// from ``Plugin/provision()``, before pods are added.
    public func declareServer(_ server: String) {
        state.withLockedValue { _ = $0.servers.insert(server) }
    }

    /// Adds (or replaces) a pod; it is pending in readiness until every declared server
    /// listens in it.
    public func add(_ pod: Pod) {
        readiness.expect(Self.readinessComponent(uid: pod.uid))
        let (pods, subscribers, done) = state.withLockedValue { state in
            state.pods[pod.uid] = pod
            state.listening[pod.uid] = []
            return (state.pods, Array(state.subscribers.values), state.servers.isEmpty)
        }
        if done { readiness.markReady(Self.readinessComponent(uid: pod.uid)) }
        for subscriber in subscribers { subscriber.yield(pods) }
    }

    /// Removes a pod (it is no longer pending either).
    public func remove(uid: String) {
        let (pods, subscribers) = state.withLockedValue { state in
            state.pods[uid] = nil
            state.listening[uid] = nil
            return (state.pods, Array(state.subscribers.values))
        }
        readiness.markReady(Self.readinessComponent(uid: uid))
        for subscriber in subscribers { subscriber.yield(pods) }
    }

    /// Reports that `server`'s listeners for pod `uid` are up (or that it has none to open
    /// for this pod). Ignored for pods not in the list.
    public func markListening(uid: String, server: String) {
        let complete = state.withLockedValue { state -> Bool in
            guard state.pods[uid] != nil else { return false }
            state.listening[uid, default: []].insert(server)
            return state.servers.isSubset(of: state.listening[uid] ?? [])
        }
        if complete { readiness.markReady(Self.readinessComponent(uid: uid)) }
    }

    /// Reports that `server` no longer listens in pod `uid` (it will retry); the pod is
    /// pending again.
    public func markNotListening(uid: String, server: String) {
        let known = state.withLockedValue { state -> Bool in
            guard state.pods[uid] != nil else { return false }
            state.listening[uid]?.remove(server)
            return true
        }
        if known { readiness.expect(Self.readinessComponent(uid: uid)) }
    }

    /// The captured pods by uid.
    public var pods: [String: Pod] { state.withLockedValue { $0.pods } }

    /// The namespace of the pod of workload `uid`, if it is captured in-pod.
    public func namespace(forWorkload uid: String) -> (any NetworkNamespaceHandle)? {
        state.withLockedValue { $0.pods[uid]?.namespace }
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
}

extension PluginContext {
    /// The pods this node captures inside their own network namespaces (in-pod capture),
    /// one registry per node.
    public var pods: CapturedPods {
        facilities.shared(CapturedPods.self) { CapturedPods(readiness: readiness) }
    }
}
