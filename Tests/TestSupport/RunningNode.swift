public import AmbitRuntime
import Foundation
public import Kernel
public import Logging

/// A node started in process from manifest YAML, the way `ambit run` starts one: the
/// one harness behind the capture, telemetry, HBONE and CA test nodes.
///
/// ``start(manifest:files:registry:logger:levelFromManifest:directory:timeout:until:)`` writes the given
/// files into a temporary directory (the manifest's base directory, unless one is given),
/// loads the manifest, runs the node and waits until `ready` holds. If it never does,
/// the node is shut down, the directory removed, and ``TestFailure`` thrown. ``stop()``
/// shuts the node down and waits for it.
public final class RunningNode: Sendable {
    /// The node.
    public let node: ProxyNode
    /// The directory the files were written to (removed by ``stop()`` when the node made
    /// it).
    public let directory: TemporaryDirectory
    private let running: Task<Void, any Error>
    private let ownsDirectory: Bool

    private init(node: ProxyNode, directory: TemporaryDirectory, running: Task<Void, any Error>, ownsDirectory: Bool) {
        self.node = node
        self.directory = directory
        self.running = running
        self.ownsDirectory = ownsDirectory
    }

    /// Starts a node.
    /// - Parameters:
    ///   - manifest: the manifest YAML (`file: node.yaml`).
    ///   - files: files to write next to it first (mesh, policies), by name.
    ///   - registry: the plugins the manifest may enable.
    ///   - logger: the node's logger.
    ///   - levelFromManifest: set the logger's level to the manifest's `logging.level`.
    ///   - directory: an existing directory to use as the base directory (kept on stop);
    ///     nil: a fresh one (removed on stop).
    ///   - timeout: how long to wait for `ready`.
    ///   - ready: when the node counts as started (besides running); e.g. readiness and a
    ///     bound listener.
    public static func start(
        manifest: String, files: [String: String] = [:], registry: PluginRegistry, logger: Logger,
        levelFromManifest: Bool = false, directory: TemporaryDirectory? = nil, timeout: Duration = .seconds(10),
        until ready: @escaping @Sendable (ProxyNode) -> Bool = { $0.readiness.isReady }
    ) async throws -> RunningNode {
        let ownsDirectory = directory == nil
        let directory = try directory ?? TemporaryDirectory()
        do {
            for (name, contents) in files.sorted(by: { $0.key < $1.key }) { try directory.write(name, contents) }
            let plan = try ManifestLoader.load(
                yaml: manifest, file: "node.yaml", baseDirectory: directory.path, registry: registry)
            var logger = logger
            if levelFromManifest { logger.logLevel = plan.manifest.logging.level }
            let node = ProxyNode(plan: plan, logger: logger, handleSignals: false)
            let running = Task { try await node.run() }
            let started = RunningNode(node: node, directory: directory, running: running, ownsDirectory: ownsDirectory)
            guard await eventually(timeout: timeout, { ready(node) }) else {
                let pending = node.readiness.pending
                await started.stopQuietly()
                throw TestFailure("node \(plan.manifest.node.name) did not start within \(timeout) (pending: \(pending))")
            }
            return started
        } catch {
            if ownsDirectory { directory.remove() }
            throw error
        }
    }

    /// The enabled plugin of type `P`.
    public func plugin<P: Plugin>(_ type: P.Type) -> P? { node.plugin(type) }

    /// Shuts the node down, waits for it, rethrows what its run threw.
    /// - Parameter keepingFiles: leave the directory for the caller to read (access logs)
    ///   and remove.
    public func stop(keepingFiles: Bool = false) async throws {
        node.shutdown()
        defer { if ownsDirectory && !keepingFiles { directory.remove() } }
        try await running.value
    }

    /// Shuts the node down and waits for it, ignoring how its run ended.
    public func stopQuietly() async {
        node.shutdown()
        _ = try? await running.value
        if ownsDirectory { directory.remove() }
    }
}
