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
import ConfigYAML

/// Discovery from a local YAML file in ztunnel's local-config format (see
/// ``LocalMeshFile``): workloads, services and policies, reloaded when the file changes.
///
/// Manifest entry:
/// ```yaml
/// - id: local-config
///   config:
///     path: mesh.yaml        # required; relative to the manifest's directory
///     watch: true            # reload on change (default true)
///     pollInterval: 1s       # how often to look (default 1s)
/// ```
///
/// Watching polls the file's identity (device, inode, size, modification time) and, when
/// that changes and then holds for one more interval, reads its content; a change takes
/// effect after one to two poll intervals. Polling rather than inotify because it also follows editors
/// and tools that replace the file by rename, a deleted and recreated file, and
/// ConfigMap-style symlink swaps, with no extra descriptor per directory; a second's
/// delay is fine for a mesh file.
///
/// A bad edit (syntax, unknown key, missing or unreadable file) is logged at error level
/// with file, path and line, and the last good mesh stays in force; a good edit publishes
/// a new snapshot and logs a one-line summary.
public final class LocalConfigPlugin: Plugin, DiscoverySource {
    /// `config:` of the manifest entry.
    public struct Config: Decodable, Sendable {
        /// The mesh file, as written (resolved against the manifest directory).
        public var path: String
        /// Reload on change.
        public var watch: Bool
        /// How often the file is checked.
        public var pollInterval: Duration

        /// Creates a config.
        public init(path: String, watch: Bool = true, pollInterval: Duration = .seconds(1)) {
            self.path = path
            self.watch = watch
            self.pollInterval = pollInterval
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case path, watch, pollInterval
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            path = try container.decode(String.self, forKey: .path)
            watch = try container.decodeIfPresent(Bool.self, forKey: .watch) ?? true
            pollInterval = try container.decodeIfPresent(ConfigDuration.self, forKey: .pollInterval)?.duration ?? .seconds(1)
            if path.isEmpty {
                throw DecodingError.dataCorruptedError(forKey: .path, in: container, debugDescription: "must not be empty")
            }
            if pollInterval < .milliseconds(10) {
                throw DecodingError.dataCorruptedError(
                    forKey: .pollInterval, in: container, debugDescription: "expected at least 10ms, got \(ConfigDuration(pollInterval))")
            }
        }
    }

    /// What the watcher last did, for tests and `/config_dump`.
    public struct Status: Sendable {
        /// How many times this plugin loaded the file into the mesh.
        public var published: Int = 0
        /// How many resources the last load upserted or removed (the file's diff).
        public var lastChanges: Int = 0
        /// The errors of the last failed load; nil once a load succeeds again.
        public var lastError: ConfigErrors?
    }

    public static let id = "local-config"
    public static let summary = "workloads, services and policies from a local YAML file (ztunnel format), reloaded on change"
    public static var provides: Set<PluginRole> { [.discovery] }

    /// The resolved mesh file path.
    public let path: String
    /// The decoded config.
    public let config: Config
    private let context: PluginContext
    private let state = NIOLockedValueBox(WatchState())

    private struct WatchState {
        var status = Status()
        /// The file identity seen at the previous poll: a change is acted on only once
        /// it has held for a whole poll interval.
        var lastSeen: FileSignature?
        /// The file identity last acted on, so an unchanged file is not re-read.
        var lastProcessed: FileSignature?
        /// The text last loaded (good or bad), so a touched but unchanged file is not
        /// re-parsed or re-logged.
        var lastText: String?
    }

    public init(config: Config, context: PluginContext) throws {
        self.config = config
        self.context = context
        self.path = context.resolvePath(config.path)
    }

    public var discoveryOrigin: String { path }

    /// What the watcher last did.
    public var status: Status { state.withLockedValue { $0.status } }

    /// Parses a mesh file's text; see ``LocalMeshFile``.
    public static func parse(yaml: String, file: String) throws(ConfigErrors) -> MeshSnapshot {
        try LocalMeshFile.parse(yaml: yaml, file: file)
    }

    /// Loads the file once and publishes it; any error fails provisioning with every
    /// error found.
    public func provision() async throws {
        let signature = FileSignature(path: path)
        let text: String
        let content: MeshContent
        do throws(ConfigErrors) {
            text = try ConfigFile.read(path)
            content = try LocalMeshFile.parseContent(yaml: text, file: path)
        } catch {
            state.withLockedValue { $0.status.lastError = error }
            throw error
        }
        let published = publish(content)
        context.logger.info(
            "mesh file loaded",
            metadata: [
                "file": "\(path)", "workloads": "\(published.workloads.count)",
                "services": "\(published.services.count)", "policies": "\(published.policies.count)",
            ])
        state.withLockedValue {
            $0.lastSeen = signature
            $0.lastProcessed = signature
            $0.lastText = text
        }
    }

    /// Watches the file until graceful shutdown (or cancellation).
    public func run() async throws {
        guard config.watch else {
            try? await gracefulShutdown()
            return
        }
        let interval = config.pollInterval
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                do {
                    try await Task.sleep(for: interval)
                } catch {
                    return
                }
                checkForChanges()
            }
        }
    }

    /// Looks at the file once and reloads it if it changed. The watch loop calls this
    /// every poll interval; tests may call it directly.
    public func checkForChanges() {
        let signature = FileSignature(path: path)
        let (settled, processed) = state.withLockedValue { state -> (Bool, Bool) in
            defer { state.lastSeen = signature }
            return (state.lastSeen == signature, state.lastProcessed == signature)
        }
        // Wait until the file has stopped changing for one interval, so a writer that
        // truncates and then writes is not caught half way (a truncated list is often
        // valid YAML, just a smaller mesh).
        if !settled { return }
        // File times tick in jiffies, so two same-size writes close together can share
        // one; while the file is that young, compare the content as well.
        if processed && !signature.isRecent { return }
        state.withLockedValue { $0.lastProcessed = signature }

        let text: String
        do throws(ConfigErrors) {
            text = try ConfigFile.read(path)
        } catch {
            fail(error)
            return
        }
        let sameText = state.withLockedValue { state -> Bool in
            defer { state.lastText = text }
            return state.lastText == text
        }
        if sameText { return }
        do throws(ConfigErrors) {
            let published = publish(try LocalMeshFile.parseContent(yaml: text, file: path))
            context.logger.info(
                "mesh file reloaded",
                metadata: [
                    "file": "\(path)", "workloads": "\(published.workloads.count)",
                    "services": "\(published.services.count)", "policies": "\(published.policies.count)",
                    "version": "\(published.version)",
                ])
        } catch {
            fail(error)
        }
    }

    /// Makes the file's content this source's part of the mesh: the store diffs it
    /// against the previous content and applies only what changed.
    @discardableResult
    private func publish(_ content: MeshContent) -> MeshSnapshot {
        let origin = context.mesh.origin(named: context.pluginID)
        let (published, changes) = context.mesh.replace(with: content, from: origin)
        state.withLockedValue {
            $0.status.published += 1
            $0.status.lastChanges = changes
            $0.status.lastError = nil
        }
        return published
    }

    private func fail(_ errors: ConfigErrors) {
        // The text is forgotten so that restoring the last good content reloads it.
        state.withLockedValue {
            $0.status.lastError = errors
            $0.lastText = nil
        }
        for error in errors.errors {
            context.logger.error(
                "mesh file rejected, keeping the last good mesh: \(error.message)",
                metadata: ["file": "\(error.file)", "line": "\(error.line.map(String.init) ?? "-")", "path": "\(error.path)"])
        }
    }
}

/// A file's identity and shape: any change means "look at the content again".
struct FileSignature: Equatable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var modifiedSeconds: Int
    var modifiedNanoseconds: Int
    /// Set when the file cannot be looked at; the reason is in the read error.
    var missing: Bool

    /// Modified within the last two seconds: its time may not tell writes apart yet.
    var isRecent: Bool {
        guard !missing else { return false }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int(now.tv_sec) - modifiedSeconds < 2
    }

    init(path: String) {
        var info = stat()
        if stat(path, &info) != 0 {
            self.init(device: 0, inode: 0, size: -1, modifiedSeconds: 0, modifiedNanoseconds: 0, missing: true)
            return
        }
        #if canImport(Darwin)
        let modified = info.st_mtimespec
        #else
        let modified = info.st_mtim
        #endif
        self.init(
            device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
            modifiedSeconds: Int(modified.tv_sec), modifiedNanoseconds: Int(modified.tv_nsec), missing: false)
    }

    init(device: UInt64, inode: UInt64, size: Int64, modifiedSeconds: Int, modifiedNanoseconds: Int, missing: Bool) {
        self.device = device
        self.inode = inode
        self.size = size
        self.modifiedSeconds = modifiedSeconds
        self.modifiedNanoseconds = modifiedNanoseconds
        self.missing = missing
    }
}
