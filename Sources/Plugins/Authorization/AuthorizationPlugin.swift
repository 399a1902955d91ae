#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
public import Kernel
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle
import AmbitRuntime

/// Istio L4 authorization: a provider of the ``PluginRole/policy`` role that enforces
/// `AuthorizationPolicy` semantics on inbound connections (see ``PolicyIndex`` for which
/// policies apply and ``PolicyIndex/evaluate(_:mesh:)`` for the order).
///
/// Policies come from two places: the mesh (policies in ztunnel's local-config form,
/// published by a discovery plugin such as `local-config`) and Istio
/// `AuthorizationPolicy` YAML files (``IstioPolicyFile``) named in the config, which are
/// watched and reloaded. A bad edit of a policy file is logged with file, line and path,
/// and the last good set stays in force. After every change (a reloaded file or a new
/// mesh snapshot) the open inbound connections are checked again through the node's
/// ``PolicyChain`` and those now denied are closed.
///
/// Manifest entry:
/// ```yaml
/// - id: authorization
///   config:
///     policies: [policies/authz.yaml]   # Istio AuthorizationPolicy files (default none)
///     rootNamespace: istio-system       # its selector-less policies are mesh-wide
///     meshPolicies: true                # also enforce the mesh's own policies
///     watch: true                       # reload the files on change
///     pollInterval: 1s
/// ```
public final class AuthorizationPlugin: Plugin, ImmediateConnectionAuthorizer {
    /// `config:` of the manifest entry.
    public struct Config: DefaultedConfig, Sendable {
        /// Policy files, as written (relative paths are taken from the manifest's directory).
        public var policies: [String] = []
        /// The namespace whose policies without a selector apply mesh-wide.
        public var rootNamespace = "istio-system"
        /// Whether the mesh's policies (from discovery) are enforced too.
        public var meshPolicies = true
        /// Reload policy files on change.
        public var watch = true
        /// How often the files are checked.
        public var pollInterval: Duration = .seconds(1)

        /// The defaults.
        public init() {}

        public func validate() -> [ConfigProblem] {
            var problems: [ConfigProblem] = []
            if rootNamespace.isEmpty { problems.append(ConfigProblem(at: "rootNamespace", "must not be empty")) }
            if policies.contains(where: \.isEmpty) { problems.append(ConfigProblem(at: "policies", "paths must not be empty")) }
            if pollInterval < .milliseconds(10) {
                problems.append(ConfigProblem(at: "pollInterval", "expected at least 10ms, got \(ConfigDuration(pollInterval))"))
            }
            return problems
        }
    }

    /// What the plugin last loaded, for tests and diagnostics.
    public struct Status: Sendable {
        /// Policies from the files currently in force.
        public var filePolicies: [AuthorizationPolicy] = []
        /// PeerAuthentications from the files currently in force.
        public var peerAuthentications: [PeerAuthentication] = []
        /// Warnings of the set in force.
        public var warnings: [PolicyWarning] = []
        /// How many times the file set was (re)loaded successfully.
        public var loads: Int = 0
        /// The errors of the last failed reload; nil once a load succeeds again.
        public var lastError: ConfigErrors?
        /// Connections closed by re-evaluation so far.
        public var closedByReevaluation: Int = 0
    }

    public static let id = "authorization"
    public static let summary = "Istio AuthorizationPolicy (L4): ALLOW/DENY rules from the mesh and policy files, reloaded on change"
    public static var provides: Set<PluginRole> { [.policy] }
    public static var requires: Set<PluginRole> { [.discovery] }

    /// The decoded config.
    public let config: Config
    /// The policy files, resolved.
    public let paths: [String]
    private let context: PluginContext
    private let state = NIOLockedValueBox(State())

    private struct State {
        var status = Status()
        /// The index in force and the mesh version it was built from.
        var index: PolicyIndex?
        var meshVersion: UInt64 = .max
        /// Per file: the identity seen at the last poll and the one last acted on.
        var seen: [String: FileSignature] = [:]
        var processed: [String: FileSignature] = [:]
        var lastTexts: [String: String] = [:]
    }

    public init(config: Config, context: PluginContext) throws {
        self.config = config
        self.context = context
        self.paths = config.policies.map(context.resolvePath)
    }

    /// What the plugin last loaded.
    public var status: Status { state.withLockedValue { $0.status } }

    /// Loads the policy files; any error fails provisioning with every error found.
    /// The loaded policies' warnings (``PolicyWarning``), for `ambit validate`.
    public func validationWarnings() -> [String] {
        state.withLockedValue { $0.status.warnings.map(\.description) }
    }

    public func provision() async throws {
        let signatures = paths.map(FileSignature.init(path:))
        var texts: [String: String] = [:]
        let loaded: LoadedPolicies
        do throws(ConfigErrors) {
            var unreadable: [ConfigError] = []
            for path in paths {
                do throws(ConfigErrors) {
                    texts[path] = try ConfigFile.read(path)
                } catch {
                    unreadable += error.errors
                }
            }
            // Parse what could be read too, so one run reports every problem.
            do throws(ConfigErrors) {
                loaded = try load(texts)
            } catch {
                throw ConfigErrors(unreadable + error.errors)
            }
            if !unreadable.isEmpty { throw ConfigErrors(unreadable) }
        } catch {
            state.withLockedValue { $0.status.lastError = error }
            throw error
        }
        state.withLockedValue { state in
            for (path, signature) in zip(paths, signatures) {
                state.seen[path] = signature
                state.processed[path] = signature
            }
            state.lastTexts = texts
        }
        accept(loaded)
    }

    /// Watches the policy files and the mesh until graceful shutdown; re-evaluates open
    /// connections after every change.
    public func run() async throws {
        let interval = config.pollInterval
        let watchFiles = config.watch && !paths.isEmpty
        await cancelWhenGracefulShutdown { [self] in
            await withTaskGroup(of: Void.self) { group in
                group.addTask { [self] in
                    var first = true
                    for await _ in context.mesh.updates() {
                        // The first element is the snapshot in force at subscription.
                        if first {
                            first = false
                            continue
                        }
                        await reevaluate(reason: "mesh changed")
                    }
                }
                if watchFiles {
                    group.addTask { [self] in
                        while !Task.isCancelled {
                            do { try await Task.sleep(for: interval) } catch { return }
                            if checkForChanges() { await reevaluate(reason: "policy files changed") }
                        }
                    }
                }
                await group.next()
                group.cancelAll()
            }
        }
    }

    // MARK: - ConnectionAuthorizer

    public func authorize(_ connection: ConnectionAttributes) async -> AuthorizationDecision {
        decide(connection)
    }

    /// Always answers at once: the evaluation is a lookup in the in-memory index.
    public func authorizeImmediately(_ connection: ConnectionAttributes) -> AuthorizationDecision? {
        decide(connection)
    }

    private func decide(_ connection: ConnectionAttributes) -> AuthorizationDecision {
        let mesh = context.mesh.snapshot
        let evaluation = index(for: mesh).evaluate(connection, mesh: mesh)
        let decision = evaluation.decision
        if !evaluation.dryRunMatches.isEmpty {
            context.logger.info(
                "dry-run policies matched (not enforced)",
                metadata: [
                    "source": "\(connection.sourceAddress)", "destination": "\(connection.destinationAddress)",
                    "matched": "\(evaluation.dryRunMatches.map(\.description).joined(separator: ", "))",
                    "would": "\(evaluation.dryRunDecision.map { "\($0.verdict.rawValue): \($0.reason)" } ?? "-")",
                    "enforced": "\(decision.verdict.rawValue)",
                ])
        }
        if context.logger.logLevel <= .debug {
            context.logger.debug(
                "authorization decision",
                metadata: [
                    "source": "\(connection.sourceAddress)",
                    "identity": "\(connection.authenticatedIdentity?.description ?? "none")",
                    "destination": "\(connection.destinationAddress)", "decision": "\(decision)",
                ])
        }
        return decision
    }

    /// The index for `mesh`, rebuilt when the mesh's policies may have changed. Building
    /// on demand keeps decisions consistent with the snapshot they are made against,
    /// even before the watcher has seen a publish.
    func index(for mesh: MeshSnapshot) -> PolicyIndex {
        state.withLockedValue { state in
            if let index = state.index, state.meshVersion == mesh.version || !config.meshPolicies {
                return index
            }
            let index = buildIndex(
                filePolicies: state.status.filePolicies, peerAuthentications: state.status.peerAuthentications, mesh: mesh)
            state.index = index
            state.meshVersion = mesh.version
            return index
        }
    }

    /// The index in force (mesh policies as of the current snapshot), for diagnostics.
    public var currentIndex: PolicyIndex { index(for: context.mesh.snapshot) }

    private func buildIndex(
        filePolicies: [AuthorizationPolicy], peerAuthentications: [PeerAuthentication], mesh: MeshSnapshot
    ) -> PolicyIndex {
        let meshPolicies = config.meshPolicies ? mesh.policies.values.sorted { $0.key < $1.key } : []
        return PolicyIndex(
            meshPolicies + filePolicies, peerAuthentications: peerAuthentications, rootNamespace: config.rootNamespace)
    }

    // MARK: - Files

    private func load(_ texts: [String: String]) throws(ConfigErrors) -> LoadedPolicies {
        try IstioPolicyFile.parse(
            files: paths.compactMap { path in texts[path].map { (path, $0) } }, rootNamespace: config.rootNamespace)
    }

    private func accept(_ loaded: LoadedPolicies) {
        let mesh = context.mesh.snapshot
        let index = buildIndex(filePolicies: loaded.policies, peerAuthentications: loaded.peerAuthentications, mesh: mesh)
        state.withLockedValue { state in
            state.status.filePolicies = loaded.policies
            state.status.peerAuthentications = loaded.peerAuthentications
            state.status.warnings = loaded.warnings
            state.status.loads += 1
            state.status.lastError = nil
            state.index = index
            state.meshVersion = mesh.version
        }
        for warning in loaded.warnings {
            context.logger.warning(
                "policy translated with a loss: \(warning.message)",
                metadata: [
                    "policy": "\(warning.policy)", "field": "\(warning.field)", "file": "\(warning.location.file)",
                    "line": "\(warning.location.line.map(String.init) ?? "-")", "path": "\(warning.location.path)",
                ])
        }
    }

    /// Looks at the policy files once and reloads them if one changed; returns whether a
    /// new set took effect. The watch loop calls this every poll interval; tests may call
    /// it directly. A change is acted on once the file has held still for one interval
    /// (a writer that truncates, then writes, is not caught half way).
    @discardableResult
    public func checkForChanges() -> Bool {
        var changed = false
        var settledAll = true
        for path in paths {
            let signature = FileSignature(path: path)
            let (settled, processed) = state.withLockedValue { state -> (Bool, Bool) in
                defer { state.seen[path] = signature }
                return (state.seen[path] == signature, state.processed[path] == signature)
            }
            if !settled { settledAll = false }
            // File times tick coarsely: while a file is young, compare its content too.
            if !processed || signature.isRecent { changed = true }
        }
        guard changed, settledAll else { return false }
        var texts: [String: String] = [:]
        do throws(ConfigErrors) {
            for path in paths { texts[path] = try ConfigFile.read(path) }
        } catch {
            fail(error)
            return false
        }
        let unchanged = state.withLockedValue { state -> Bool in
            for path in paths { state.processed[path] = state.seen[path] }
            defer { state.lastTexts = texts }
            return state.lastTexts == texts
        }
        if unchanged { return false }
        do throws(ConfigErrors) {
            let loaded = try load(texts)
            accept(loaded)
            context.logger.info(
                "policy files reloaded",
                metadata: ["files": "\(paths.count)", "policies": "\(loaded.policies.count)", "warnings": "\(loaded.warnings.count)"])
            return true
        } catch {
            fail(error)
            return false
        }
    }

    private func fail(_ errors: ConfigErrors) {
        // Forget the texts so that restoring the last good content reloads it.
        state.withLockedValue {
            $0.status.lastError = errors
            $0.lastTexts = [:]
        }
        for error in errors.errors {
            context.logger.error(
                "policy file rejected, keeping the last good policies: \(error.message)",
                metadata: ["file": "\(error.file)", "line": "\(error.line.map(String.init) ?? "-")", "path": "\(error.path)"])
        }
    }

    /// Re-evaluates open connections through the whole chain (another plugin may deny
    /// what this one allows, and the chain's first deny is what counts).
    @discardableResult
    public func reevaluate(reason: String) async -> Int {
        let closed = await context.policyChain.reevaluate(context.connections, logger: context.logger)
        if !closed.isEmpty {
            state.withLockedValue { $0.status.closedByReevaluation += closed.count }
            context.logger.info("re-evaluated open connections", metadata: ["reason": "\(reason)", "closed": "\(closed.count)"])
        }
        return closed.count
    }
}

/// A file's identity and shape: any change means "read it again".
struct FileSignature: Equatable, Sendable {
    var device: UInt64 = 0
    var inode: UInt64 = 0
    var size: Int64 = -1
    var modifiedSeconds: Int = 0
    var modifiedNanoseconds: Int = 0
    var missing = true

    /// Modified within the last two seconds: its time may not tell writes apart yet.
    var isRecent: Bool {
        guard !missing else { return false }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int(now.tv_sec) - modifiedSeconds < 2
    }

    init(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return }
        #if canImport(Darwin)
        let modified = info.st_mtimespec
        #else
        let modified = info.st_mtim
        #endif
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        modifiedSeconds = Int(modified.tv_sec)
        modifiedNanoseconds = Int(modified.tv_nsec)
        missing = false
    }
}
