public import CoreMetrics
public import Foundation
import AmbitRuntime
public import Kernel
import Logging
import NIOPosix
import ConfigYAML

/// Runs one policy plugin the way a node would, without a node or a network: decode
/// its config strictly from YAML, build it with a ``PluginContext`` over a mesh you
/// choose, provision and validate it, then ask it about connections you describe.
///
/// ```swift
/// let tester = try await PolicyTester<TimeWindowPlugin>.start(config: "{days: [mon]}")
/// defer { Task { await tester.stop() } }
/// let decision = await tester.decide(.mTLS(from: "cluster.local/ns/a/sa/b"))
/// #expect(decision.verdict == .deny)
/// ```
///
/// Decisions go through a one-link ``PolicyChain`` held to a ``PolicyGuard``, as on a
/// node, so a plugin that throws or hangs is seen denying, and ``policyGuard`` counts it.
public final class PolicyTester<P: Plugin & ConnectionAuthorizer>: Sendable {
    /// The plugin under test.
    public let plugin: P
    /// The context it was built with.
    public let context: PluginContext
    /// The mesh the plugin sees; publish new snapshots to test reactions to changes.
    public let mesh: MeshStore
    /// Open connections (for plugins that re-evaluate them).
    public let connections: ConnectionRegistry
    /// The deadline and failure counts decisions are held to.
    public let policyGuard: PolicyGuard

    private init(plugin: P, context: PluginContext, mesh: MeshStore, connections: ConnectionRegistry, policyGuard: PolicyGuard) {
        self.plugin = plugin
        self.context = context
        self.mesh = mesh
        self.connections = connections
        self.policyGuard = policyGuard
    }

    /// Decodes `yaml` (what the manifest entry's `config:` would hold) into the plugin's
    /// config with the manifest's strict decoder. Errors name `file`, line and path
    /// (`manifest.yaml:1: config.hours: …`), as `ambit validate` would print them.
    public static func decodeConfig(_ yaml: String, file: String = "manifest.yaml") throws(ConfigErrors) -> P.Config {
        let node = try ConfigNode.parse(yaml: yaml.isEmpty ? "{}" : yaml, file: file, path: "config")
        // An absent `config:` decodes from an empty mapping on a node; do the same.
        if node.value == nil || node.value?.isNull == true {
            return try ConfigDecoder.decode(P.Config.self, from: ConfigNode.parse(yaml: "{}", file: file, path: "config"))
        }
        return try ConfigDecoder.decode(P.Config.self, from: node)
    }

    /// Builds, provisions and validates the plugin from YAML config.
    ///
    /// - Parameters:
    ///   - config: the `config:` mapping as YAML; decoded strictly (a ``ConfigErrors`` on
    ///     unknown keys or bad values).
    ///   - mesh: the mesh snapshot the plugin sees.
    ///   - baseDirectory: where relative paths in the config are resolved.
    ///   - nodeName: the node's name.
    ///   - deadline: the decision deadline.
    ///   - metrics: where the plugin's ``PluginContext/metrics`` record, e.g. a
    ///     `TestMetrics` from swift-metrics' MetricsTestKit to assert on them; default
    ///     a no-op factory (a node without the telemetry plugin).
    ///   - make: builds the plugin; pass one to inject test doubles (a clock), default
    ///     `P(config:context:)` as the kernel does.
    public static func start(
        config yaml: String = "{}", mesh snapshot: MeshSnapshot = .empty,
        baseDirectory: String = FileManager.default.currentDirectoryPath, nodeName: String = "node-a",
        deadline: Duration = PolicyGuard.defaultDeadline, metrics: (any MetricsFactory)? = nil,
        make: (@Sendable (P.Config, PluginContext) throws -> P)? = nil
    ) async throws -> PolicyTester<P> {
        try await start(
            config: decodeConfig(yaml), mesh: snapshot, baseDirectory: baseDirectory, nodeName: nodeName,
            deadline: deadline, metrics: metrics, make: make)
    }

    /// Builds, provisions and validates the plugin from a typed config.
    public static func start(
        config: P.Config, mesh snapshot: MeshSnapshot = .empty,
        baseDirectory: String = FileManager.default.currentDirectoryPath, nodeName: String = "node-a",
        deadline: Duration = PolicyGuard.defaultDeadline, metrics: (any MetricsFactory)? = nil,
        make: (@Sendable (P.Config, PluginContext) throws -> P)? = nil
    ) async throws -> PolicyTester<P> {
        let mesh = MeshStore()
        mesh.publish(snapshot)
        let connections = ConnectionRegistry()
        let directory = PluginDirectory()
        let logger = Logger(label: "test.\(P.id)")
        let policyGuard = PolicyGuard(deadline: deadline, logger: logger)
        let context = PluginContext(
            pluginID: P.id, logger: logger, eventLoopGroup: MultiThreadedEventLoopGroup.singleton, mesh: mesh,
            connections: connections, readiness: Readiness(), nodeName: nodeName, baseDirectory: baseDirectory,
            directory: directory, policyGuard: policyGuard, metrics: metrics ?? NOOPMetricsHandler.instance)
        let plugin = try make?(config, context) ?? P(config: config, context: context)
        directory.set([plugin])
        do {
            try await plugin.provision()
            try plugin.validate()
        } catch {
            await plugin.cleanup()
            throw error
        }
        return PolicyTester(plugin: plugin, context: context, mesh: mesh, connections: connections, policyGuard: policyGuard)
    }

    /// The plugin's decision on `connection`, as the node's policy chain gets it (the
    /// decision names the plugin; a throw or a missed deadline is a deny).
    public func decide(_ connection: ConnectionAttributes) async -> AuthorizationDecision {
        await PolicyChain([.init(id: P.id, authorizer: plugin)], guardrail: policyGuard).authorize(connection)
    }

    /// Runs ``Plugin/cleanup()``.
    public func stop() async {
        await plugin.cleanup()
    }
}
