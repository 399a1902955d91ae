import Foundation
import Kernel
import Logging
import NIOConcurrencyHelpers
import Testing
import TestSupport
import AmbitRuntime

/// A plugin whose provision waits for the test to open a gate, and which records its
/// lifecycle calls.
final class GatedPlugin: Plugin {
    struct Config: Decodable, Sendable {
        var failProvision: Bool = false
        enum CodingKeys: String, CodingKey { case failProvision }
        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            failProvision = try container.decodeIfPresent(Bool.self, forKey: .failProvision) ?? false
        }
    }
    static let id = "gated"
    static let summary = "test: provision waits for a gate"

    static let gate = NIOLockedValueBox(false)
    static let calls = NIOLockedValueBox<[String]>([])
    let config: Config

    init(config: Config, context: PluginContext) { self.config = config }

    func provision() async throws {
        Self.calls.withLockedValue { $0.append("provision") }
        while !Self.gate.withLockedValue({ $0 }) { try await Task.sleep(for: .milliseconds(10)) }
        if config.failProvision { throw PluginError(.unavailable, plugin: Self.id, "told to fail") }
    }

    func cleanup() async { Self.calls.withLockedValue { $0.append("cleanup") } }
}

/// Records cleanup so a later plugin's failure can be seen to clean it up.
final class RecordingPlugin: Plugin {
    struct Config: Decodable, Sendable {}
    static let id = "recording"
    static let summary = "test: records lifecycle calls"
    static let calls = NIOLockedValueBox<[String]>([])
    init(config: Config, context: PluginContext) {}
    func provision() async throws { Self.calls.withLockedValue { $0.append("provision") } }
    func cleanup() async { Self.calls.withLockedValue { $0.append("cleanup") } }
}

@Suite("node lifecycle in process", .serialized)
struct NodeLifecycleInProcessTests {
    func plan(_ yaml: String) throws -> ManifestPlan {
        try ManifestLoader.load(
            yaml: yaml, file: "test.yaml", baseDirectory: "/tmp",
            registry: PluginRegistry([PluginType(GatedPlugin.self), PluginType(RecordingPlugin.self)]))
    }

    @Test("readiness: 500 naming the pending plugin until it provisions, then 200 ready, 500 while draining")
    func readinessTransitions() async throws {
        GatedPlugin.gate.withLockedValue { $0 = false }
        let node = ProxyNode(
            plan: try plan(
                """
                admin: {address: "127.0.0.1:0", readinessAddress: "127.0.0.1:0"}
                plugins: [{id: gated}]
                """),
            logger: Logger(label: "test"), handleSignals: false)
        let running = Task { try await node.run() }
        #expect(await eventually { node.readinessAddress != nil })
        let address = try #require(node.readinessAddress)

        let before = try await httpRequest("GET", address, "/healthz/ready")
        #expect(before.status == 500)
        #expect(before.body.contains("not ready"))
        #expect(before.body.contains("gated"))

        GatedPlugin.gate.withLockedValue { $0 = true }
        #expect(await eventually { (try? await httpRequest("GET", address, "/healthz/ready").status) == 200 })
        #expect(try await httpRequest("GET", address, "/healthz/ready").body.hasPrefix("ready"))

        node.shutdown()
        #expect(node.isDraining)
        try await running.value
    }

    @Test("a plugin failing to provision cleans up the ones before it and the node fails to start")
    func cleanupOnPartialFailure() async throws {
        GatedPlugin.gate.withLockedValue { $0 = true }
        RecordingPlugin.calls.withLockedValue { $0 = [] }
        let node = ProxyNode(
            plan: try plan(
                """
                admin: {address: "127.0.0.1:0", readinessAddress: "127.0.0.1:0"}
                plugins:
                  - id: recording
                  - id: gated
                    config: {failProvision: true}
                """),
            logger: Logger(label: "test"), handleSignals: false)
        await #expect(throws: NodeStartupError.self) { try await node.run() }
        #expect(RecordingPlugin.calls.withLockedValue { $0 } == ["provision", "cleanup"])
    }
}
