#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
public import Logging
import NIOCore
public import Kernel

/// The node proxy's manifest: which plugins run, in which order, with what config, plus
/// a few node-wide settings. YAML, decoded strictly (unknown keys are errors naming path
/// and line).
///
/// ```yaml
/// node:                      # optional
///   name: node-a             # default: NODE_NAME, else the host name; workloads whose `node` equals
///                            #   this are local to this proxy
///   network: ""              # the node's network (Istio's NETWORK); peers are looked up
///                            #   in it. Default: "" (the default network)
///   threads: 2               # event-loop threads, default: number of cores
///   drainDeadline: 5s        # how long open connections may finish on shutdown (from the signal)
///   policyDeadline: 1s       # how long a policy plugin may take to decide; then deny
/// logging:                   # optional
///   level: info              # trace, debug, info, notice, warning, error, critical
///   format: text             # text | json
/// admin:                     # optional; absent: no admin or readiness listener
///   address: 127.0.0.1:15000           # /config_dump, /plugins, /logging, /quitquitquit
///   readinessAddress: 0.0.0.0:15021    # /healthz/ready; null turns it off
/// plugins:                   # in order; policy plugins are consulted in this order
///   - id: local-config       # a plugin compiled into the binary (`ambit plugins`)
///     config: {path: mesh.yaml}   # the plugin's own config; absent = all defaults
///   - id: capture
///     config: {...}
/// ```
public struct Manifest: Sendable {
    /// `node:`: who this proxy is and how it runs.
    public struct NodeSettings: Sendable, DefaultedConfig {
        /// The node's name; workloads whose `node` equals it are local. Default: the
        /// host name (the manifest loader uses `NODE_NAME` instead when it is set).
        public var name = Manifest.hostName
        /// The network this node is on (Istio's `NETWORK`, set on every workload in a
        /// multi-network install): destinations and peers are looked up in it, while a
        /// local workload is looked up in its own. Default: the default network, "".
        public var network = ""
        /// Event-loop threads. Default: the number of cores.
        public var threads = System.coreCount
        /// How long open connections may run after shutdown starts. Default: 5s.
        public var drainDeadline: Duration = .seconds(5)
        /// How long one policy plugin may take to decide one connection before the
        /// connection is denied (see ``PolicyGuard``). Default: 1s.
        public var policyDeadline: Duration = PolicyGuard.defaultDeadline

        /// The defaults.
        public init() {}

        public func validate() -> [ConfigProblem] {
            var problems: [ConfigProblem] = []
            if name.isEmpty { problems.append(ConfigProblem(at: "name", "must not be empty")) }
            if threads < 1 || threads > 1024 { problems.append(ConfigProblem(at: "threads", "expected 1…1024 threads, got \(threads)")) }
            if policyDeadline <= .zero { problems.append(ConfigProblem(at: "policyDeadline", "must be longer than 0")) }
            return problems
        }
    }

    /// `logging:`.
    public struct LoggingSettings: Sendable, Decodable {
        /// The minimum level logged. Default: info.
        public var level: Logger.Level
        /// Line format. Default: text.
        public var format: LogFormat

        /// The defaults.
        public init(level: Logger.Level = .info, format: LogFormat = .text) {
            self.level = level
            self.format = format
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case level, format
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            level = try container.decodeIfPresent(LogLevel.self, forKey: .level)?.level ?? .info
            format = try container.decodeIfPresent(LogFormat.self, forKey: .format) ?? .text
        }
    }

    /// `admin:`: the localhost admin server and the readiness endpoint.
    public struct AdminSettings: Sendable, DefaultedConfig {
        /// Admin endpoints (`/config_dump`, `/plugins`, `/logging`, `/quitquitquit`);
        /// nil when turned off with `address: null`. Default: 127.0.0.1:15000.
        public var address: SocketAddr? = SocketAddr(ip: .v4(0x7f00_0001), port: 15000)
        /// Readiness (`/healthz/ready`); nil when turned off with
        /// `readinessAddress: null`. Default: 0.0.0.0:15021 (ztunnel's ports).
        public var readinessAddress: SocketAddr? = SocketAddr(ip: .v4(0), port: 15021)

        /// The defaults. Absent keys take them; an explicit null turns an endpoint off.
        public init() {}
    }

    /// `node:`.
    public var node: NodeSettings
    /// `logging:`.
    public var logging: LoggingSettings
    /// `admin:`; nil when the section is absent (no admin or readiness listener).
    public var admin: AdminSettings?
    /// `plugins:`, in manifest order.
    public var plugins: [PluginEntry]

    /// Creates a manifest.
    public init(
        node: NodeSettings = NodeSettings(), logging: LoggingSettings = LoggingSettings(), admin: AdminSettings? = nil,
        plugins: [PluginEntry] = []
    ) {
        self.node = node
        self.logging = logging
        self.admin = admin
        self.plugins = plugins
    }

    /// This machine's host name, the default node name.
    public static var hostName: String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }
}

/// One `plugins:` entry: the plugin id and its raw `config:`, decoded once the plugin's
/// type is known.
public struct PluginEntry: Sendable {
    /// The plugin id, e.g. `capture`.
    public var id: String
    /// The raw `config:` (absent value when the entry has none), with its path
    /// `plugins[i] (id).config`.
    public var config: ConfigNode
    /// Position in `plugins:`, from 0.
    public var index: Int
    /// The entry's line in the manifest.
    public var line: Int?

    /// Creates an entry.
    public init(id: String, config: ConfigNode, index: Int, line: Int?) {
        self.id = id
        self.config = config
        self.index = index
        self.line = line
    }

    /// How errors name the entry: `plugins[2] (hbone)`.
    public var label: String { "plugins[\(index)] (\(id))" }
}

/// `Logger.Level` with a message listing the levels.
struct LogLevel: Decodable {
    let level: Logger.Level

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let level = Logger.Level(rawValue: text.lowercased()) else {
            let names = Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "expected one of \(names), got \"\(text)\"")
        }
        self.level = level
    }
}
