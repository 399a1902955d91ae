import Foundation
import Kernel
import Logging
import Synchronization

/// Allows inbound connections only from the identities listed in a file, and re-reads
/// the file when it changes.
///
/// ```yaml
/// - id: identity-allow-list
///   config:
///     path: allowed-identities.txt   # required; relative to the manifest
///     pollInterval: 1s               # how often to look for changes (default 1s)
/// ```
///
/// The file holds one identity a line, as a SPIFFE ID (`spiffe://cluster.local/ns/a/sa/b`)
/// or an Istio principal (`cluster.local/ns/a/sa/b`); a trailing `*` matches a prefix
/// (`cluster.local/ns/batch/*`); `#` starts a comment. Only an authenticated (mTLS)
/// identity can match, so plaintext connections are denied.
///
/// A bad file at start is a startup error naming file and line. A bad edit later is
/// logged and the last good list stays (a typo must not open or close the mesh); a good
/// edit takes effect for new connections and open connections are checked again, so
/// removing an identity closes its connections.
public final class IdentityAllowListPlugin: Plugin, ConnectionAuthorizer {
    /// `identity-allow-list` configuration.
    public struct Config: Decodable, Sendable {
        /// The allow-list file.
        public var path: String
        /// How often the file is checked for changes.
        public var pollInterval: Duration = .seconds(1)

        enum CodingKeys: String, CodingKey, CaseIterable { case path, pollInterval }

        /// A config for `path`.
        public init(path: String, pollInterval: Duration = .seconds(1)) {
            self.path = path
            self.pollInterval = pollInterval
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            path = try c.decode(String.self, forKey: .path)
            pollInterval = try c.decodeIfPresent(ConfigDuration.self, forKey: .pollInterval)?.duration ?? pollInterval
            if path.isEmpty {
                throw DecodingError.dataCorruptedError(forKey: .path, in: c, debugDescription: "must not be empty")
            }
        }
    }

    /// The parsed file: exact principals and prefixes.
    public struct AllowList: Sendable, Equatable {
        /// Principals allowed exactly (`cluster.local/ns/a/sa/b`).
        public var exact: Set<String> = []
        /// Principal prefixes (`cluster.local/ns/batch/`).
        public var prefixes: [String] = []

        /// Whether `identity` is on the list.
        public func contains(_ identity: SpiffeID) -> Bool {
            let principal = identity.principal
            return exact.contains(principal) || prefixes.contains { principal.hasPrefix($0) }
        }

        /// Parses the file's text; errors name `file` and the line.
        public static func parse(_ text: String, file: String) throws(ConfigErrors) -> AllowList {
            var list = AllowList()
            var errors: [ConfigError] = []
            for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let line = rawLine.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false)[0]
                    .trimmingCharacters(in: .whitespaces)
                if line.isEmpty { continue }
                let principal = line.hasPrefix("spiffe://") ? String(line.dropFirst("spiffe://".count)) : line
                if principal.hasSuffix("*") {
                    list.prefixes.append(String(principal.dropLast()))
                } else if (try? SpiffeID(parsing: "spiffe://" + principal)) != nil {
                    list.exact.insert(principal)
                } else {
                    errors.append(
                        ConfigError(
                            file: file, line: index + 1, path: "",
                            message: "expected a SPIFFE ID such as cluster.local/ns/NS/sa/SA, got \"\(line)\""))
                }
            }
            if !errors.isEmpty { throw ConfigErrors(errors) }
            return list
        }
    }

    public static let id = "identity-allow-list"
    public static let summary = "allow only the identities listed in a file (reloaded on change)"
    public static let provides: Set<PluginRole> = [.policy]

    private let config: Config
    private let context: PluginContext
    private let state = Mutex<(text: String, list: AllowList)>(("", AllowList()))

    public init(config: Config, context: PluginContext) throws {
        self.config = config
        self.context = context
    }

    private var file: String { context.resolvePath(config.path) }

    /// The list in force.
    public var allowList: AllowList { state.withLock { $0.list } }

    public func provision() async throws {
        let text = try ConfigFile.read(file)
        let list = try AllowList.parse(text, file: file)
        state.withLock { $0 = (text, list) }
    }

    public func run() async throws {
        await repeatUntilShutdown(every: config.pollInterval) { await self.reloadIfChanged() }
    }

    /// Re-reads the file; applies it when it changed and parses, then checks open
    /// connections again. Returns whether a new list took effect. (`run` calls this
    /// every `pollInterval`; tests may call it directly.)
    @discardableResult
    public func reloadIfChanged() async -> Bool {
        let text: String
        let list: AllowList
        do {
            text = try ConfigFile.read(file)
            if text == state.withLock({ $0.text }) { return false }
            list = try AllowList.parse(text, file: file)
        } catch {
            context.logger.error("allow-list edit rejected; the last good list stays", metadata: ["error": "\(error)"])
            return false
        }
        state.withLock { $0 = (text, list) }
        context.logger.info("allow-list reloaded", metadata: ["entries": "\(list.exact.count + list.prefixes.count)"])
        await context.policyChain.reevaluate(context.connections, logger: context.logger)
        return true
    }

    public func authorize(_ connection: ConnectionAttributes) async -> AuthorizationDecision {
        guard let identity = connection.authenticatedIdentity else {
            return .deny(reason: "no authenticated identity (plaintext)")
        }
        return allowList.contains(identity)
            ? .allow(reason: "\(identity.principal) is on the allow-list")
            : .deny(reason: "\(identity.principal) is not on the allow-list")
    }
}
