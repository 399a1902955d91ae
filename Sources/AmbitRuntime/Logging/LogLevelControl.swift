public import Logging
import Synchronization
import Kernel

/// How log lines are written: human-readable text or one JSON object per line.
public enum LogFormat: String, Decodable, Sendable, CaseIterable {
    /// `2026-11-26T15:20:01.123Z info [capture] message key=value …`
    case text
    /// `{"time":"…","level":"info","label":"…","message":"…",…}`
    case json

    /// Strict: anything but `text` or `json` is a config error listing both.
    public init(from decoder: any Decoder) throws {
        self = try ConfigDecoder.decodeCase(from: decoder)
    }
}

/// The process-wide log level and per-scope levels, changeable at run time (the admin
/// server's `/logging`).
///
/// Every ``AmbitLogHandler`` reads its level from one control on each log call, so a
/// change applies to every logger at once, including loggers already created and copied
/// into plugins. A logger's *scope* is what its text lines show in brackets: the
/// `plugin` metadata value a ``PluginContext`` logger carries (`hbone`, `capture`…), else
/// the logger's label (`ambit`, `capture.socks5`…). A scope given a level of its own
/// (`hbone:debug`) uses it; every other scope follows the default level.
///
/// Thread-safe. Reading a level is lock-free (two atomic loads), because it happens on
/// every log statement from every event loop; creating a scope and changing levels take
/// a lock.
public final class LogLevelControl: Sendable {
    /// One scope's own level, shared by every handler of that scope.
    final class ScopeLevel: Sendable {
        /// ``LogLevelControl/unset`` while the scope follows the default.
        let raw = Atomic<UInt8>(LogLevelControl.unset)
    }

    private let rawLevel: Atomic<UInt8>
    private let scopes = Mutex<[String: ScopeLevel]>([:])
    /// The level the control started with: what `reset` returns to.
    public let initialLevel: Logger.Level

    fileprivate static let unset = UInt8.max

    /// Creates a control starting at `level`, with no scope levels.
    public init(_ level: Logger.Level = .info) {
        rawLevel = Atomic(Self.encode(level))
        initialLevel = level
    }

    /// The default level: events below it are dropped in every scope without a level of
    /// its own.
    public var level: Logger.Level {
        get { Self.decode(rawLevel.load(ordering: .relaxed)) }
        set { rawLevel.store(Self.encode(newValue), ordering: .relaxed) }
    }

    /// Sets the default level from its name (see ``parse(_:)``) and returns the new level,
    /// or nil (leaving the level unchanged) when the name is not a level.
    @discardableResult
    public func set(levelNamed name: String) -> Logger.Level? {
        guard let parsed = Self.parse(name) else { return nil }
        level = parsed
        return parsed
    }

    /// The level that applies to `scope`: its own, else the default.
    public func level(forScope scope: String) -> Logger.Level {
        let own = scopes.withLock { $0[scope] }?.raw.load(ordering: .relaxed) ?? Self.unset
        return own == Self.unset ? level : Self.decode(own)
    }

    /// The box a handler of `scope` reads its level from (made on first use, so every
    /// label and plugin id in use is a known scope).
    func scopeLevel(_ scope: String) -> ScopeLevel {
        scopes.withLock { table in
            if let existing = table[scope] { return existing }
            let created = ScopeLevel()
            table[scope] = created
            return created
        }
    }

    /// The level `box` stands for: its own, else the default.
    func level(of box: ScopeLevel) -> Logger.Level {
        let own = box.raw.load(ordering: .relaxed)
        return own == Self.unset ? level : Self.decode(own)
    }

    /// Every scope a logger has used so far, sorted.
    public var knownScopes: [String] { scopes.withLock { $0.keys.sorted() } }

    /// Scopes with a level of their own, by name.
    public var scopeLevels: [String: Logger.Level] {
        scopes.withLock { table in
            table.compactMapValues { box in
                let raw = box.raw.load(ordering: .relaxed)
                return raw == Self.unset ? nil : Self.decode(raw)
            }
        }
    }

    /// The levels in ztunnel's directive form: each scope with its own level as
    /// `scope=level`, sorted, then the default, e.g. `hbone=debug,info`.
    public var directive: String {
        (scopeLevels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value.rawValue)" } + [level.rawValue])
            .joined(separator: ",")
    }

    /// Applies a `/logging?level=` directive as ztunnel and `istioctl ztunnel-config log`
    /// write it: comma-separated clauses, each `<level>` (the default) or
    /// `<scope>:<level>` (also `<scope>=<level>`, ztunnel's own form). With `reset`, scope
    /// levels are cleared and the default returns to ``initialLevel`` first; without it,
    /// the clauses change only what they name. Levels as ``parse(_:)`` reads them, plus
    /// `off` (the most severe level, ``Logger/Level/critical``: swift-log has no off).
    /// Nothing changes unless every clause is valid.
    ///
    /// - Returns: nil on success, else what was wrong with which clause.
    public func apply(directive: String, reset: Bool) -> String? {
        var defaultLevel: Logger.Level?
        var scoped: [(String, Logger.Level)] = []
        for clause in directive.split(separator: ",", omittingEmptySubsequences: true) {
            let text = Self.trimmed(clause)
            if let separator = text.firstIndex(where: { $0 == ":" || $0 == "=" }) {
                let scope = String(text[..<separator])
                let name = String(text[text.index(after: separator)...])
                guard !scope.isEmpty else { return "clause \"\(text)\" has no scope before the level" }
                guard let parsed = Self.parseDirectiveLevel(name) else {
                    return "unknown level \"\(name)\" for scope \(scope)"
                }
                scoped.append((scope, parsed))
            } else {
                guard let parsed = Self.parseDirectiveLevel(text) else {
                    return "unknown level \"\(text)\""
                }
                defaultLevel = parsed
            }
        }
        // Under the scopes' lock, so concurrent changes apply one after the other.
        scopes.withLock { table in
            if reset {
                for box in table.values { box.raw.store(Self.unset, ordering: .relaxed) }
                level = initialLevel
            }
            if let defaultLevel { level = defaultLevel }
            for (scope, own) in scoped {
                let box = table[scope] ?? ScopeLevel()
                table[scope] = box
                box.raw.store(Self.encode(own), ordering: .relaxed)
            }
        }
        return nil
    }

    /// A level name in a directive: ``parse(_:)``'s names and `off`.
    static func parseDirectiveLevel(_ name: String) -> Logger.Level? {
        trimmed(Substring(name)).lowercased() == "off" ? .critical : parse(name)
    }

    private static func trimmed(_ text: Substring) -> String {
        var text = text
        while text.first?.isWhitespace == true { text.removeFirst() }
        while text.last?.isWhitespace == true { text.removeLast() }
        return String(text)
    }

    /// Parses a level name: `trace`, `debug`, `info`, `notice`, `warning` (or `warn`),
    /// `error`, `critical`, in any letter case, ignoring surrounding spaces.
    public static func parse(_ name: String) -> Logger.Level? {
        let lowered = trimmed(Substring(name)).lowercased()
        if lowered == "warn" { return .warning }
        return Logger.Level(rawValue: lowered)
    }

    /// The accepted names, for error messages and the admin index.
    public static let levelNames: [String] = Logger.Level.allCases.map(\.rawValue)

    private static func encode(_ level: Logger.Level) -> UInt8 {
        UInt8(Logger.Level.allCases.firstIndex(of: level) ?? 2)
    }

    private static func decode(_ raw: UInt8) -> Logger.Level {
        let all = Logger.Level.allCases
        return Int(raw) < all.count ? all[Int(raw)] : .info
    }
}
