import AmbitCLI
import AmbitTestKit
import Foundation
import Kernel
import Telemetry
import TestSupport
import Testing

/// A policy plugin that misbehaves on purpose, chosen by the source's service account:
/// `hang` never answers (and ignores cancellation), `throw` throws, others are allowed.
final class MisbehavingPolicy: Plugin, ConnectionAuthorizer {
    struct Config: Decodable, Sendable {
        var mode: String? = nil
    }
    static let id = "misbehaving"
    static let summary = "test: hangs or throws on purpose"
    static let provides: Set<PluginRole> = [.policy]

    struct Thrown: Error, CustomStringConvertible {
        var description: String { "backend unreachable" }
    }

    let hung = Hung()

    init(config: Config, context: PluginContext) throws {}

    func authorize(_ connection: ConnectionAttributes) async throws -> AuthorizationDecision {
        switch connection.authenticatedIdentity?.serviceAccount {
        case "hang":
            await hung.wait()
            return .allow(reason: "too late")
        case "throw":
            throw Thrown()
        default:
            return .allow(reason: "well behaved")
        }
    }

    func cleanup() async { hung.releaseAll() }
}

/// Calls that never return until released (cancellation does not end them).
final class Hung: Sendable {
    private let waiting = Mutex<[CheckedContinuation<Void, Never>]>([])
    func wait() async {
        await withCheckedContinuation { continuation in waiting.withLock { $0.append(continuation) } }
    }
    var count: Int { waiting.withLock { $0.count } }
    func releaseAll() {
        for continuation in waiting.withLock({ list in defer { list = [] }; return list }) { continuation.resume() }
    }
}

import Synchronization
import AmbitRuntime

@Suite("policy plugin containment", .timeLimit(.minutes(1)))
struct PolicyContainmentTests {
    @Test("a throwing plugin denies, is counted, and the next decision is normal")
    func throwing() async throws {
        let tester = try await PolicyTester<MisbehavingPolicy>.start()
        let decision = await tester.decide(.mTLS(from: "cluster.local/ns/default/sa/throw"))
        #expect(decision.verdict == .deny)
        #expect(decision.plugin == "misbehaving")
        #expect(decision.reason == "policy plugin misbehaving failed: backend unreachable")
        #expect(tester.policyGuard.count(plugin: "misbehaving", .threw) == 1)
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/default/sa/fine")).verdict == .allow)
        await tester.stop()
    }

    @Test("a hanging plugin denies at the deadline, is counted, and does not hold the chain")
    func hanging() async throws {
        let tester = try await PolicyTester<MisbehavingPolicy>.start(deadline: .milliseconds(100))
        let decision = await tester.decide(.mTLS(from: "cluster.local/ns/default/sa/hang"))
        #expect(decision.verdict == .deny)
        #expect(decision.reason.contains("did not decide within"), "\(decision.reason)")
        #expect(tester.policyGuard.count(plugin: "misbehaving", .timedOut) == 1)
        #expect(tester.plugin.hung.count == 1)  // still stuck, and abandoned
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/default/sa/fine")).verdict == .allow)
        #expect(tester.policyGuard.totalFailures == 1)
        await tester.stop()
    }

    @Test("a later link is not asked after a failed one (fail closed)")
    func failClosed() async throws {
        final class Recorder: ConnectionAuthorizer {
            let asked = Mutex(0)
            func authorize(_ connection: ConnectionAttributes) async -> AuthorizationDecision {
                asked.withLock { $0 += 1 }
                return .allow()
            }
        }
        let recorder = Recorder()
        let tester = try await PolicyTester<MisbehavingPolicy>.start()
        let chain = PolicyChain(
            [.init(id: "misbehaving", authorizer: tester.plugin), .init(id: "recorder", authorizer: recorder)],
            guardrail: tester.policyGuard)
        #expect(await chain.authorize(.mTLS(from: "cluster.local/ns/default/sa/throw")).verdict == .deny)
        #expect(recorder.asked.withLock { $0 } == 0)
        #expect(await chain.authorize(.mTLS(from: "cluster.local/ns/default/sa/ok")).plugin == "recorder")
    }

    @Test("in a node: hanging and throwing decisions refuse their connections, the node keeps serving")
    func inNode() async throws {
        let mesh = try await InProcessMesh.start(
            policies: [PluginType(MisbehavingPolicy.self)], manifest: "- id: misbehaving",
            clients: ["client", "hang", "throw"], policyDeadline: .milliseconds(300))
        defer { Task { await mesh.stop() } }

        let hung = try await mesh.connect(from: "hang")
        #expect(!hung.allowed)
        #expect(hung.decision?.reason.contains("did not decide within 300ms") == true, "\(hung)")
        let thrown = try await mesh.connect(from: "throw")
        #expect(!thrown.allowed)
        #expect(thrown.decision?.reason.contains("backend unreachable") == true, "\(thrown)")
        let fine = try await mesh.connect(from: "client", payload: "still serving")
        #expect(fine.allowed && fine.response == "still serving", "\(fine)")
        #expect(mesh.serverNode.policyGuard.count(plugin: "misbehaving", .timedOut) == 1)
        #expect(mesh.serverNode.policyGuard.count(plugin: "misbehaving", .threw) == 1)

        // Counted where an operator sees it: node-b's Prometheus scrape.
        let metrics = try await scrape(mesh.serverNode)
        #expect(metrics.contains("ambit_policy_failures_total{plugin=\"misbehaving\",reason=\"timed-out\"} 1\n"), "\(metrics)")
        #expect(metrics.contains("ambit_policy_failures_total{plugin=\"misbehaving\",reason=\"threw\"} 1\n"), "\(metrics)")
        #expect(metrics.contains("# HELP ambit_policy_failures_total "))
    }

    @Test("node.policyDeadline is read from the manifest and must be positive")
    func manifestDeadline() throws {
        let registry = PluginRegistry([PluginType(MisbehavingPolicy.self)])
        let plan = try ManifestLoader.load(
            yaml: "node: {policyDeadline: 250ms}\nplugins: [{id: misbehaving}]", file: "m.yaml", baseDirectory: "/",
            registry: registry)
        #expect(plan.manifest.node.policyDeadline == .milliseconds(250))
        #expect(throws: ConfigErrors.self) {
            try ManifestLoader.load(yaml: "node: {policyDeadline: 0s}\nplugins: []", file: "m.yaml", baseDirectory: "/", registry: registry)
        }
    }

    @Test("an invalid plugin config stops the manifest before anything serves, naming path and line")
    func invalidConfig() throws {
        let registry = PluginRegistry([PluginType(MisbehavingPolicy.self)])
        do {
            _ = try ManifestLoader.load(
                yaml: "plugins:\n  - id: misbehaving\n    config: {mode: [1, 2]}\n", file: "m.yaml", baseDirectory: "/",
                registry: registry)
            Issue.record("accepted")
        } catch {
            #expect(error.description.contains("m.yaml:3: plugins[0] (misbehaving).config.mode"), "\(error)")
        }
    }
}

@Suite("composition helpers")
struct CompositionTests {
    @Test("adding plugin types to the first-party registry; id clashes are refused")
    func registry() {
        let added = FirstPartyPlugins.registry.adding([PluginType(MisbehavingPolicy.self)])
        #expect((try? added.get())?.type(id: "misbehaving") != nil)
        #expect((try? added.get())?.type(id: "capture") != nil)
        switch FirstPartyPlugins.registry.adding([PluginType(MisbehavingPolicy.self), PluginType(MisbehavingPolicy.self)]) {
        case .success: Issue.record("a clash was accepted")
        case .failure(let clash): #expect(clash.id == "misbehaving")
        }
    }

    @Test("a manifest naming a plugin that is not compiled in says how to get one")
    func unknownPlugin() {
        do {
            _ = try ManifestLoader.load(
                yaml: "plugins: [{id: time-window}]", file: "m.yaml", baseDirectory: "/", registry: FirstPartyPlugins.registry)
            Issue.record("accepted")
        } catch {
            #expect(error.description.contains("not compiled into this binary"), "\(error)")
            #expect(error.description.contains("SDK/README.md"), "\(error)")
        }
    }
}
