import Kernel
import Logging
import NIOConcurrencyHelpers
import Testing

/// A namespace handle for registry tests: two handles are the same namespace when they
/// share an inode number, as the runtime's are when they share an nsfs inode.
private final class TestNamespace: NetworkNamespaceHandle {
    let path: String
    let inode: Int

    init(_ path: String, inode: Int) {
        self.path = path
        self.inode = inode
    }

    func isSame(as other: any NetworkNamespaceHandle) -> Bool {
        (other as? TestNamespace)?.inode == inode
    }

    var description: String { "test netns \(path)" }
}

private func pod(_ uid: String, inode: Int, mark: UInt32? = 0x539) -> CapturedPods.Pod {
    CapturedPods.Pod(uid: uid, namespace: TestNamespace("/run/netns/\(uid)-\(inode)", inode: inode), mark: mark)
}

private func inode(_ pod: CapturedPods.Pod?) -> Int? { (pod?.namespace as? TestNamespace)?.inode }

@Suite("captured pods: sources by origin, snapshots, readiness")
struct CapturedPodsTests {
    @Test("two sources never overwrite each other: the newest entry of a uid is the pod, removing it falls back")
    func originsSideBySide() {
        let pods = CapturedPods(readiness: Readiness())
        let config = pods.feed(origin: "config")
        let admin = pods.feed(origin: "admin")
        config.add(pod("a", inode: 1))
        config.add(pod("b", inode: 2))
        admin.add(pod("a", inode: 3))
        #expect(inode(pods.pods["a"]) == 3)
        #expect(pods.pods["a"]?.origin == "admin")
        #expect(inode(pods.pods["b"]) == 2)
        // Removing a uid the other origin added does nothing to it.
        admin.remove(uid: "b")
        #expect(inode(pods.pods["b"]) == 2)
        admin.remove(uid: "a")
        #expect(inode(pods.pods["a"]) == 1)
        #expect(pods.pods["a"]?.origin == "config")
        #expect(pods.origins == ["config": ["a", "b"]])
        config.remove(uid: "a")
        #expect(pods.pods["a"] == nil)
        #expect(config.uids == ["b"])
    }

    @Test("a snapshot removes what it did not add or keep, of its own origin only")
    func snapshotKeepRemove() {
        let pods = CapturedPods(readiness: Readiness())
        let zds = pods.feed(origin: "zds")
        let config = pods.feed(origin: "config")
        zds.add(pod("a", inode: 1))
        zds.add(pod("b", inode: 2))
        zds.add(pod("c", inode: 3))
        config.add(pod("d", inode: 4))
        zds.beginSnapshot()
        zds.add(pod("e", inode: 5))
        #expect(zds.keep(uid: "a"))
        #expect(!zds.keep(uid: "d"), "another origin's pod is not this origin's to keep")
        #expect(!zds.keep(uid: "x"))
        zds.add(pod("c", inode: 6))
        #expect(zds.endSnapshot() == ["b"])
        #expect(pods.pods.keys.sorted() == ["a", "c", "d", "e"])
        #expect(inode(pods.pods["c"]) == 6)
        // Without an open snapshot, ending one removes nothing.
        #expect(zds.endSnapshot() == [])
        #expect(pods.pods.count == 4)
    }

    @Test("an empty snapshot removes every pod and announcement of the origin")
    func emptySnapshot() {
        let readiness = Readiness()
        let pods = CapturedPods(readiness: readiness)
        let zds = pods.feed(origin: "zds")
        zds.add(pod("a", inode: 1))
        zds.expect(uid: "b")
        #expect(readiness.pending == ["pod b"])
        zds.beginSnapshot()
        #expect(zds.endSnapshot() == ["a", "b"])
        #expect(pods.pods.isEmpty)
        #expect(readiness.isReady)
    }

    @Test("a pod is pending from announcement until every declared server serves it; a new namespace starts over")
    func readiness() {
        let readiness = Readiness()
        let pods = CapturedPods(readiness: readiness)
        pods.declareServer("capture")
        pods.declareServer("hbone")
        let config = pods.feed(origin: "config")
        config.expect(uid: "a")
        #expect(readiness.pending == ["pod a"])
        #expect(pods.isClaimed(uid: "a"))
        #expect(!pods.isClaimed(uid: "z"))
        config.add(pod("a", inode: 1))
        pods.markListening(uid: "a", server: "capture")
        #expect(readiness.pending == ["pod a"])
        pods.markListening(uid: "a", server: "hbone")
        #expect(readiness.isReady)
        // The same namespace again changes nothing.
        config.add(pod("a", inode: 1))
        #expect(readiness.isReady)
        // A recreated pod (another namespace) waits for its servers again.
        config.add(pod("a", inode: 2))
        #expect(readiness.pending == ["pod a"])
        pods.markListening(uid: "a", server: "capture")
        pods.markListening(uid: "a", server: "hbone")
        #expect(readiness.isReady)
        pods.markNotListening(uid: "a", server: "hbone")
        #expect(readiness.pending == ["pod a"])
        config.remove(uid: "a")
        #expect(readiness.isReady)
        // An announcement withdrawn without a pod is not pending either.
        config.expect(uid: "b")
        config.remove(uid: "b")
        #expect(readiness.isReady)
        #expect(!pods.isClaimed(uid: "b"))
        // Reports for pods not in the list are ignored.
        pods.markListening(uid: "nobody", server: "capture")
        #expect(readiness.isReady)
    }

    @Test("subscribers hear of changes to the pod list, not of resends")
    func updates() async {
        let pods = CapturedPods(readiness: Readiness())
        let feed = pods.feed(origin: "config")
        var iterator = pods.updates().makeAsyncIterator()
        #expect(await iterator.next()?.isEmpty == true)
        feed.add(pod("a", inode: 1))
        #expect(await iterator.next()?.keys.sorted() == ["a"])
        feed.add(pod("a", inode: 1))
        feed.add(pod("b", inode: 2))
        // The resend of "a" published nothing: the next list is the one with "b".
        #expect(await iterator.next()?.keys.sorted() == ["a", "b"])
    }
}

// MARK: - The shared reconciler

/// A pod server that records what it is asked to do and fails on request.
private final class RecordingServer: PodServer {
    struct Serving: Sendable {
        var inode: Int
    }

    let name: String
    let events = NIOLockedValueBox<[String]>([])
    let failing = NIOLockedValueBox<Set<String>>([])

    init(name: String) {
        self.name = name
    }

    func start(_ pod: CapturedPods.Pod) async throws -> Serving {
        let inode = (pod.namespace as? TestNamespace)?.inode ?? -1
        if failing.withLockedValue({ $0.contains(pod.uid) }) {
            events.withLockedValue { $0.append("fail \(pod.uid)") }
            throw PluginError(.unavailable, plugin: name, "cannot bind in \(pod.uid)")
        }
        events.withLockedValue { $0.append("start \(pod.uid)@\(inode)") }
        return Serving(inode: inode)
    }

    func stop(_ serving: Serving, pod: CapturedPods.Pod, reason: PodStopReason) async {
        events.withLockedValue { $0.append("stop \(pod.uid)@\(serving.inode) \(reason)") }
    }

    func take() -> [String] {
        events.withLockedValue { events in
            defer { events = [] }
            return events
        }
    }
}

@Suite("pod server reconciler: one server kept running in every captured pod")
struct PodServerReconcilerTests {
    private let logger = Logger(label: "pods-test") { _ in SwiftLogNoOpLogHandler() }

    @Test("starts for new pods, stops removed ones, restarts on a new namespace, retries failures, reports readiness")
    func reconciles() async {
        let readiness = Readiness()
        let pods = CapturedPods(readiness: readiness)
        let server = RecordingServer(name: "test")
        let reconciler = PodServerReconciler(server: server, pods: pods, logger: logger)
        let feed = pods.feed(origin: "config")

        feed.add(pod("a", inode: 1))
        feed.add(pod("b", inode: 2))
        #expect(readiness.pending == ["pod a", "pod b"])
        await reconciler.reconcileNow()
        #expect(server.take() == ["start a@1", "start b@2"])
        #expect(readiness.isReady)
        #expect(reconciler.served.keys.sorted() == ["a", "b"])

        // Nothing changed: nothing happens.
        await reconciler.reconcileNow()
        #expect(server.take() == [])

        // b recreated in another namespace, a removed, c failing.
        feed.add(pod("b", inode: 3))
        feed.remove(uid: "a")
        server.failing.withLockedValue { _ = $0.insert("c") }
        feed.add(pod("c", inode: 4))
        await reconciler.reconcileNow()
        #expect(server.take() == ["stop a@1 removed", "stop b@2 replaced", "start b@3", "fail c"])
        #expect(reconciler.failure(uid: "c")?.contains("cannot bind in c") == true)
        #expect(readiness.pending == ["pod c"])

        // The failure is retried on the next pass and clears once it works.
        server.failing.withLockedValue { $0 = [] }
        await reconciler.reconcileNow()
        #expect(server.take() == ["start c@4"])
        #expect(reconciler.failure(uid: "c") == nil)
        #expect(readiness.isReady)

        // Shutdown stops everything and reconciles no more.
        await reconciler.shutdown()
        #expect(server.take() == ["stop b@3 shutdown", "stop c@4 shutdown"])
        feed.add(pod("d", inode: 5))
        await reconciler.reconcileNow()
        #expect(server.take() == [])
    }

    @Test("run() follows the registry on its own and stops serving when cancelled")
    func follows() async throws {
        let pods = CapturedPods(readiness: Readiness())
        let server = RecordingServer(name: "test")
        let reconciler = PodServerReconciler(server: server, pods: pods, retryInterval: .seconds(60), logger: logger)
        let feed = pods.feed(origin: "zds")
        let running = Task { await reconciler.run() }
        feed.add(pod("a", inode: 1))
        try await waitUntil { reconciler.serving(uid: "a") != nil }
        feed.remove(uid: "a")
        try await waitUntil { reconciler.serving(uid: "a") == nil }
        feed.add(pod("b", inode: 2))
        try await waitUntil { reconciler.serving(uid: "b") != nil }
        running.cancel()
        await running.value
        #expect(server.take() == ["start a@1", "stop a@1 removed", "start b@2", "stop b@2 shutdown"])
    }

    @Test("two servers over one registry: the pod is ready only when both serve it")
    func twoServers() async {
        let readiness = Readiness()
        let pods = CapturedPods(readiness: readiness)
        let capture = PodServerReconciler(server: RecordingServer(name: "capture"), pods: pods, logger: logger)
        let hbone = PodServerReconciler(server: RecordingServer(name: "hbone"), pods: pods, logger: logger)
        pods.feed(origin: "admin").add(pod("a", inode: 1))
        await capture.reconcileNow()
        #expect(readiness.pending == ["pod a"])
        await hbone.reconcileNow()
        #expect(readiness.isReady)
    }
}

/// Polls `condition` until it holds (a deadline, not a delay).
private func waitUntil(
    within limit: Duration = .seconds(10), _ condition: @Sendable () -> Bool
) async throws {
    let deadline = ContinuousClock.now + limit
    while !condition() {
        if ContinuousClock.now > deadline {
            Issue.record("condition not met within \(limit)")
            return
        }
        try await Task.sleep(for: .milliseconds(5))
    }
}
