import CAmbitSystem
import Foundation
import IstioXDSAPI
import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SwiftProtobuf
import Testing

#if canImport(Glibc)
import Glibc
#endif
import AmbitRuntime
@testable import Capture
import TestSupport

/// A pod server with a real listener in the pod's namespace (a TCP socket on port 15001
/// inside it), failing for pods whose uid is in `failing`.
final class ListeningServer: PodServer {
    let name = "test-listener"
    let group: any EventLoopGroup
    let failing = NIOLockedValueBox<Set<String>>([])

    init(group: any EventLoopGroup) { self.group = group }

    func start(_ pod: CapturedPods.Pod) async throws -> TCPListener {
        if failing.withLockedValue({ $0.contains(pod.uid) }) {
            throw SocketError(code: .bindFailed, message: "refusing pod \(pod.uid) (test)")
        }
        return try await TCPListener.bind(
            ListenerOptions(address: SocketAddr(ip: .v4(0x7F00_0001), port: 15001), placement: pod.placement), group: group
        ) { channel in channel.close() }
    }

    func stop(_ serving: TCPListener, pod: CapturedPods.Pod, reason: PodStopReason) async {
        await serving.stopAccepting()
    }
}

@Suite("capture: pods from istio-cni over ZDS", .serialized, .timeLimit(.minutes(2)))
struct ZDSPodSourceTests {
    /// Network namespaces for one test, removed at the end, also when it fails.
    final class Namespaces {
        private(set) var names: [String] = []

        func make(_ tag: String) throws -> String {
            let name = "ambit-zds-\(getpid())-\(tag)"
            _ = try? Self.ip("netns", "del", name)
            try Self.ip("netns", "add", name)
            names.append(name)
            try Self.ip("-n", name, "link", "set", "lo", "up")
            return "/var/run/netns/\(name)"
        }

        deinit { for name in names { _ = try? Self.ip("netns", "del", name) } }

        @discardableResult
        static func ip(_ arguments: String...) throws -> String {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["ip"] + arguments
            let output = Pipe()
            process.standardOutput = output
            process.standardError = output
            try process.run()
            process.waitUntilExit()
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            guard process.terminationStatus == 0 else {
                throw SocketError(code: .bindFailed, message: "ip \(arguments.joined(separator: " ")): \(text)")
            }
            return text
        }

        /// Whether something listens on 127.0.0.1:15001 inside `netns`.
        static func listens(_ netns: String) -> Bool {
            let name = (netns as NSString).lastPathComponent
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["ip", "netns", "exec", name, "ss", "-Hltn", "sport = :15001"]
            let output = Pipe()
            process.standardOutput = output
            try? process.run()
            process.waitUntilExit()
            return !String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                .trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
        }
    }

    /// A ZDS source over a registry with one real pod server, all running.
    struct Rig {
        let agent: ZDSAgentStandIn
        let pods: CapturedPods
        let readiness: Readiness
        let server: ListeningServer
        let source: ZDSPodSource
        let tasks: Task<Void, Never>
        let directory: String

        func stop() async {
            source.stop()
            tasks.cancel()
            await tasks.value
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    private static func rig(group: any EventLoopGroup) throws -> Rig {
        let directory = NSTemporaryDirectory() + "ambit-zds-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let agent = try ZDSAgentStandIn(directory: directory)
        let readiness = Readiness()
        let pods = CapturedPods(readiness: readiness)
        let logger = Logger(label: "zds-test")
        let server = ListeningServer(group: group)
        let reconciler = PodServerReconciler(server: server, pods: pods, retryInterval: .milliseconds(100), logger: logger)
        let source = ZDSPodSource(
            socketPath: agent.path, mark: 0x539, pods: pods, readiness: readiness, logger: logger, ackTimeout: .seconds(3))
        source.announce()
        let feed = pods.feed(origin: "zds")
        let tasks = Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await reconciler.run() }
                group.addTask { await source.run(feeding: feed) }
                await group.next()
                group.cancelAll()
            }
        }
        return Rig(agent: agent, pods: pods, readiness: readiness, server: server, source: source, tasks: tasks, directory: directory)
    }

    private static func withGroup(_ body: (any EventLoopGroup) async throws -> Void) async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            try await body(group)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try await group.shutdownGracefully()
    }

    @Test("hello V1, snapshot with a namespace per pod (acked once its listener is up), live add and delete, readiness")
    func snapshotAndLiveChanges() async throws {
        try await Self.withGroup { group in
            let namespaces = Namespaces()
            let podA = try namespaces.make("a")
            let podB = try namespaces.make("b")
            let rig = try Self.rig(group: group)
            #expect(rig.readiness.pending.contains("zds"))
            #expect(try await rig.agent.accept() == .v1)
            #expect(try await rig.agent.add(uid: "uid-a", name: "a", serviceAccount: "sa-a", netns: podA) == "")
            #expect(Namespaces.listens(podA), "acked before the pod's listener was up")
            let pod = try #require(rig.pods.pods["uid-a"])
            #expect(pod.origin == "zds")
            #expect(pod.workloadInfo == PodWorkloadInfo(name: "a", namespace: "default", serviceAccount: "sa-a"))
            #expect(rig.readiness.pending.contains("zds"), "ready before the snapshot was in")
            #expect(try await rig.agent.snapshotSent() == "")
            #expect(!rig.readiness.pending.contains("zds"))
            #expect(rig.readiness.isReady)

            // The pod's mesh workload is found by name, namespace and service account on this node.
            let workload = Workload(uid: "Kubernetes//Pod/default/a", name: "a", namespace: "default", serviceAccount: "sa-a", workloadIPs: [], node: "n1")
            let other = Workload(uid: "Kubernetes//Pod/default/a2", name: "a", namespace: "default", serviceAccount: "sa-a", workloadIPs: [], node: "n2")
            let mesh = MeshSnapshot(workloads: [workload, other], services: [], policies: [], version: 1)
            #expect(pod.workload(in: mesh, node: "n1")?.uid == workload.uid)
            #expect(pod.workload(in: MeshSnapshot(workloads: [other], services: [], policies: [], version: 2), node: "n1") == nil)

            #expect(try await rig.agent.add(uid: "uid-b", name: "b", serviceAccount: "sa-b", netns: podB) == "")
            #expect(Namespaces.listens(podB))
            #expect(try await rig.agent.delete("uid-a") == "")
            #expect(rig.pods.pods["uid-a"] == nil)
            // Closed at once: the next registry pass, well within a second.
            var closed = false
            for _ in 0..<100 where !closed {
                closed = !Namespaces.listens(podA)
                if !closed { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(closed, "pod a's listener is still open after DelWorkload")
            #expect(Namespaces.listens(podB), "deleting a disturbed b")
            await rig.stop()
        }
    }

    @Test("a reconnect's snapshot keeps the pods it names (listeners undisturbed) and drains the others; Keep counts as named")
    func reconnectSnapshotDrains() async throws {
        try await Self.withGroup { group in
            let namespaces = Namespaces()
            let podA = try namespaces.make("ra")
            let podB = try namespaces.make("rb")
            let rig = try Self.rig(group: group)
            _ = try await rig.agent.accept()
            #expect(try await rig.agent.add(uid: "uid-a", name: "a", serviceAccount: "a", netns: podA) == "")
            #expect(try await rig.agent.add(uid: "uid-b", name: "b", serviceAccount: "b", netns: podB) == "")
            #expect(try await rig.agent.snapshotSent() == "")
            let servedA = try #require(rig.pods.pods["uid-a"])

            // The agent restarts: the proxy reconnects and is sent a new snapshot.
            rig.agent.disconnect()
            _ = try await rig.agent.accept()
            #expect(rig.readiness.pending.contains("zds"), "ready while the agent is not (yet) back")
            #expect(try await rig.agent.keep("uid-a") == "")
            #expect(try await rig.agent.snapshotSent() == "")
            #expect(rig.pods.pods["uid-b"] == nil, "b was not in the snapshot and stays")
            let keptA = try #require(rig.pods.pods["uid-a"])
            #expect(keptA.namespace.isSame(as: servedA.namespace))
            #expect(Namespaces.listens(podA))
            #expect(rig.readiness.isReady)
            await rig.stop()
        }
    }

    @Test(
        "protocol violations are acked with the error and the proxy reconnects",
        arguments: ["keep after the snapshot", "second snapshot", "add without a namespace", "two descriptors", "descriptor on a delete", "undecodable"]
    )
    func protocolViolations(_ violation: String) async throws {
        try await Self.withGroup { group in
            let namespaces = Namespaces()
            let podA = try namespaces.make("v")
            let rig = try Self.rig(group: group)
            _ = try await rig.agent.accept()
            #expect(try await rig.agent.snapshotSent() == "")
            let fd = open(podA, O_RDONLY | O_CLOEXEC)
            defer { close(fd) }
            let error: String?
            switch violation {
            case "keep after the snapshot": error = try await rig.agent.keep("uid-a")
            case "second snapshot": error = try await rig.agent.snapshotSent()
            case "add without a namespace": error = try await rig.agent.add(uid: "uid-a", name: "a", serviceAccount: "a", netns: nil)
            case "two descriptors":
                var request = Istio_Workload_Zds_WorkloadRequest()
                request.add.uid = "uid-a"
                request.add.workloadInfo.name = "a"
                error = try await rig.agent.exchange(try request.serializedBytes(), fds: [fd, fd])
            case "descriptor on a delete":
                var request = Istio_Workload_Zds_WorkloadRequest()
                request.del.uid = "uid-a"
                error = try await rig.agent.exchange(try request.serializedBytes(), fds: [fd])
            default: error = try await rig.agent.exchange([0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])
            }
            let wanted = [
                "keep after the snapshot": "pod keep received after snapshot",
                "second snapshot": "pod snapshot received already",
                "add without a namespace": "no control message",
                "two descriptors": "2 file descriptors, expected one",
                "descriptor on a delete": "unexpected control message",
                "undecodable": "failure to read message",
            ][violation]!
            #expect(error?.contains(wanted) == true, "acked \(error ?? "nothing")")
            #expect(rig.pods.pods["uid-a"] == nil)
            // The proxy drops the connection and comes back with a hello.
            #expect(try await rig.agent.receive().isEmpty, "the connection stayed open")
            #expect(try await rig.agent.accept() == .v1)
            #expect(rig.readiness.pending.contains("zds"))
            #expect(try await rig.agent.snapshotSent() == "")
            #expect(rig.readiness.isReady)
            await rig.stop()
        }
    }

    @Test("a pod whose listeners fail is acked with the failure, the connection stays, and it is served once the failure clears")
    func failedProxyStart() async throws {
        try await Self.withGroup { group in
            let namespaces = Namespaces()
            let podA = try namespaces.make("f")
            let rig = try Self.rig(group: group)
            rig.server.failing.withLockedValue { $0 = ["uid-a"] }
            _ = try await rig.agent.accept()
            let error = try await rig.agent.add(uid: "uid-a", name: "a", serviceAccount: "a", netns: podA)
            #expect(error?.hasPrefix("failure to start proxy : test-listener: refusing pod uid-a") == true, "acked \(error ?? "nothing")")
            #expect(try await rig.agent.snapshotSent() == "", "the connection did not stay up")
            #expect(rig.readiness.pending.contains(CapturedPods.readinessComponent(uid: "uid-a")))
            rig.server.failing.withLockedValue { $0 = [] }
            var served = false
            for _ in 0..<200 where !served {
                served = Namespaces.listens(podA)
                if !served { try await Task.sleep(for: .milliseconds(10)) }
            }
            #expect(served, "the pod was not retried")
            // The listener is up a moment before the reconciler reports it to the registry.
            #expect(await rig.pods.waitUntilServed(uid: "uid-a", timeout: .seconds(5)) == .served)
            #expect(rig.readiness.isReady)
            await rig.stop()
        }
    }

    @Test("a descriptor that is not a network namespace is refused in the ack; the connection stays")
    func notANamespace() async throws {
        try await Self.withGroup { group in
            let rig = try Self.rig(group: group)
            _ = try await rig.agent.accept()
            let error = try await rig.agent.add(uid: "uid-x", name: "x", serviceAccount: "x", netns: "/proc/self/ns/uts")
            #expect(error?.contains("not a network namespace") == true, "acked \(error ?? "nothing")")
            #expect(rig.pods.pods["uid-x"] == nil)
            #expect(try await rig.agent.snapshotSent() == "")
            await rig.stop()
        }
    }

    @Test("no agent: not ready, and connected as soon as the socket appears (backoff from 10 ms)")
    func agentLate() async throws {
        try await Self.withGroup { group in
            let directory = NSTemporaryDirectory() + "ambit-zds-late-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let readiness = Readiness()
            let pods = CapturedPods(readiness: readiness)
            let source = ZDSPodSource(
                socketPath: directory + "/ztunnel.sock", mark: 0x539, pods: pods, readiness: readiness,
                logger: Logger(label: "zds-test"))
            let task = Task { await source.run(feeding: pods.feed(origin: "zds")) }
            try await Task.sleep(for: .milliseconds(200))
            #expect(readiness.pending == ["zds"])
            #expect(source.status.connected == false)
            #expect(source.status.lastError?.contains("cannot connect") == true)
            let agent = try ZDSAgentStandIn(directory: directory)
            #expect(try await agent.accept(timeout: 20) == .v1)
            #expect(try await agent.snapshotSent() == "")
            #expect(readiness.isReady)
            source.stop()
            task.cancel()
            await task.value
        }
    }
}
