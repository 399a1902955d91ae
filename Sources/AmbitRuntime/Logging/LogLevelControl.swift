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

/// The process-wide log level, changeable at run time (the admin server's `/logging`).
///
/// Every ``AmbitLogHandler`` reads its level from one control on each log call, so a
/// change applies to every logger at once, including loggers already created and copied
/// into plugins.
///
/// Thread-safe and lock-free: the level is an atomic, because it is read on every log
/// statement from every event loop.
public final class LogLevelControl: Sendable {
    private let rawLevel: Atomic<UInt8>

    /// Creates a control starting at `level`.
    public init(_ level: Logger.Level = .info) {
        rawLevel = Atomic(Self.encode(level))
    }

    /// The current level: events below it are dropped.
    public var level: Logger.Level {
        get { Self.decode(rawLevel.load(ordering: .relaxed)) }
        set { rawLevel.store(Self.encode(newValue), ordering: .relaxed) }
    }

    /// Sets the level from its name (see ``parse(_:)``) and returns the new level, or nil
    /// (leaving the level unchanged) when the name is not a level.
    @discardableResult
    public func set(levelNamed name: String) -> Logger.Level? {
        guard let parsed = Self.parse(name) else { return nil }
        level = parsed
        return parsed
    }

    /// Parses a level name: `trace`, `debug`, `info`, `notice`, `warning` (or `warn`),
    /// `error`, `critical`, in any letter case, ignoring surrounding spaces.
    public static func parse(_ name: String) -> Logger.Level? {
        var trimmed = Substring(name)
        while trimmed.first?.isWhitespace == true { trimmed.removeFirst() }
        while trimmed.last?.isWhitespace == true { trimmed.removeLast() }
        let lowered = trimmed.lowercased()
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
