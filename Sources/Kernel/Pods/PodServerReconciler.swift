public import Logging
import NIOConcurrencyHelpers

/// A server that runs inside every captured pod: the capture plugin's outbound and
/// inbound listeners (with the pod's redirect rules), the `hbone` plugin's 15008.
///
/// ``PodServerReconciler`` calls ``start(_:)`` for each pod in the node's
/// ``CapturedPods`` and ``stop(_:pod:reason:)`` when the pod goes or its namespace
/// changes; a server only says how to serve one pod.
public protocol PodServer: Sendable {
    /// What serving one pod holds (its listeners), handed back to ``stop(_:pod:reason:)``.
    associatedtype Serving: Sendable

    /// The name it reports to ``CapturedPods`` (``CapturedPods/markListening(uid:server:)``)
    /// and in logs: `capture`, `hbone`.
    var name: String { get }

    /// Starts serving `pod` (binds its listeners inside ``CapturedPods/Pod/placement``).
    /// Throwing leaves nothing behind; the reconciler retries later.
    func start(_ pod: CapturedPods.Pod) async throws -> Serving

    /// Stops serving `pod`: closes its listeners (connections already accepted go on).
    func stop(_ serving: Serving, pod: CapturedPods.Pod, reason: PodStopReason) async
}

/// Why a pod server stops serving a pod.
public enum PodStopReason: Sendable, Equatable {
    /// The pod left the registry: undo what was done inside it (rules), if it still exists.
    case removed
    /// The pod's namespace changed (the pod was recreated): the old one is left behind.
    case replaced
    /// The proxy is stopping: leave the pod as it is (its redirect rules stay, so its
    /// traffic cannot bypass the mesh while the proxy restarts).
    case shutdown
}

/// Keeps one ``PodServer`` serving every pod in the node's ``CapturedPods``: starts it for
/// new pods, stops it for pods that left or whose namespace changed, retries failed starts
/// every `retryInterval`, and reports each pod's state to the registry (which holds the
/// pod's readiness). The same reconciler serves in-pod capture and HBONE, whichever source
/// the pods came from.
///
/// Passes run one at a time: ``run()`` runs them on every registry change and retry tick;
/// ``reconcileNow()`` runs one and returns when it is done (an admin request that wants
/// the answer).
///
/// Thread-safe.
public final class PodServerReconciler<Server: PodServer>: Sendable {
    private struct Served: Sendable {
        var pod: CapturedPods.Pod
        var serving: Server.Serving
    }

    private struct State: Sendable {
        var served: [String: Served] = [:]
        /// The last start failure of a pod not served, by uid.
        var failures = PodFailures()
        var stopped = false
    }

    /// The server it keeps running.
    public let server: Server
    private let pods: CapturedPods
    private let retryInterval: Duration
    private let logger: Logger
    private let state = NIOLockedValueBox(State())
    private let passes = SerialAsyncQueue()

    /// A reconciler for `server`, declared to `pods` as one of its servers (call it from
    /// ``Plugin/provision()``).
    public init(server: Server, pods: CapturedPods, retryInterval: Duration = .seconds(2), logger: Logger) {
        self.server = server
        self.pods = pods
        self.retryInterval = max(retryInterval, .milliseconds(10))
        self.logger = logger
        pods.declareServer(server.name)
    }

    /// Follows the registry until the calling task is cancelled or ``shutdown()`` is
    /// called, then stops serving every pod (``PodStopReason/shutdown``).
    public func run() async {
        let (kicks, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let updates = pods.updates()
        let interval = retryInterval
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await _ in updates { continuation.yield() }
                continuation.finish()
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    continuation.yield()
                }
            }
            for await _ in kicks {
                if Task.isCancelled || state.withLockedValue({ $0.stopped }) { break }
                await reconcileNow()
            }
            group.cancelAll()
        }
        await shutdown()
    }

    /// One pass now, after any pass in progress: stop what left, start what is new.
    public func reconcileNow() async {
        await passes.run { await self.pass() }
    }

    /// Stops serving every pod and reconciles no more (drain, cleanup). Idempotent.
    public func shutdown() async {
        await passes.run {
            let served = self.state.withLockedValue { state -> [String: Served] in
                state.stopped = true
                defer { state.served = [:] }
                return state.served
            }
            for (_, entry) in served.sorted(by: { $0.key < $1.key }) {
                await self.server.stop(entry.serving, pod: entry.pod, reason: .shutdown)
            }
        }
    }

    /// What it holds for pod `uid`, if it serves it.
    public func serving(uid: String) -> Server.Serving? {
        state.withLockedValue { $0.served[uid]?.serving }
    }

    /// The pods it serves, by uid.
    public var served: [String: Server.Serving] {
        state.withLockedValue { $0.served.mapValues(\.serving) }
    }

    /// Why pod `uid` is not served, if its last start failed.
    public func failure(uid: String) -> String? {
        state.withLockedValue { $0.failures[uid: uid] }
    }

    private func pass() async {
        guard !state.withLockedValue({ $0.stopped }) else { return }
        let wanted = pods.pods
        let served = state.withLockedValue { $0.served }
        for (uid, entry) in served.sorted(by: { $0.key < $1.key }) {
            let reason: PodStopReason
            if let pod = wanted[uid] {
                if pod.namespace.isSame(as: entry.pod.namespace) && pod.mark == entry.pod.mark { continue }
                reason = .replaced
            } else {
                reason = .removed
            }
            state.withLockedValue { _ = $0.served.removeValue(forKey: uid) }
            await server.stop(entry.serving, pod: entry.pod, reason: reason)
        }
        state.withLockedValue { state in
            state.failures.keep { wanted[$0] != nil }
        }
        for (uid, pod) in wanted.sorted(by: { $0.key < $1.key }) where state.withLockedValue({ $0.served[uid] == nil }) {
            if state.withLockedValue({ $0.stopped }) { return }
            do {
                let serving = try await server.start(pod)
                state.withLockedValue { state in
                    state.served[uid] = Served(pod: pod, serving: serving)
                    state.failures.clear(uid)
                }
                pods.markListening(uid: uid, server: server.name)
            } catch {
                let message = "\(error)"
                pods.markFailed(uid: uid, server: server.name, reason: message)
                if state.withLockedValue({ $0.failures.record(message, for: uid) }) {
                    logger.error(
                        "cannot serve pod; retrying every \(retryInterval)",
                        metadata: [
                            "server": "\(server.name)", "pod": "\(uid)", "netns": "\(pod.namespace.path)",
                            "error": "\(message)",
                        ])
                }
            }
        }
    }
}

/// Runs async bodies one at a time, in call order (a pass of a reconciler, an admin
/// request's change).
///
/// Thread-safe.
public final class SerialAsyncQueue: Sendable {
    private let state = NIOLockedValueBox<(busy: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    /// An idle queue.
    public init() {}

    /// Runs `body` once every body queued before it has finished.
    public func run<T: Sendable>(_ body: @Sendable () async -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let proceed = state.withLockedValue { state -> Bool in
                if state.busy {
                    state.waiters.append(continuation)
                    return false
                }
                state.busy = true
                return true
            }
            if proceed { continuation.resume() }
        }
        let result = await body()
        let next = state.withLockedValue { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.busy = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
        return result
    }
}

/// The last failure of each pod, so that a pod failing the same way on every retry is
/// logged once, and again only when the failure changes.
public struct PodFailures: Sendable {
    private var last: [String: String] = [:]

    /// No failures.
    public init() {}

    /// The last failure of pod `uid`, if it has one.
    public subscript(uid uid: String) -> String? { last[uid] }

    /// Records `failure` for pod `uid`; true when it differs from the pod's last one (log
    /// it then).
    public mutating func record(_ failure: String, for uid: String) -> Bool {
        defer { last[uid] = failure }
        return last[uid] != failure
    }

    /// Forgets pod `uid`'s failure (it worked).
    public mutating func clear(_ uid: String) {
        last[uid] = nil
    }

    /// Forgets the failures of pods `isWanted` rejects.
    public mutating func keep(where isWanted: (String) -> Bool) {
        last = last.filter { isWanted($0.key) }
    }
}
