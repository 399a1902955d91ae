#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
public import Logging
import NIOConcurrencyHelpers
import Synchronization
import Kernel

/// Where rendered log lines go. Each call receives one complete line including its
/// trailing newline.
///
/// Threading: `write` is called concurrently from any thread; implementations must be
/// thread-safe and should not block for long.
public struct LogSink: Sendable {
    private let writeLine: @Sendable (String) -> Void

    /// A sink calling `write` for every line.
    public init(_ write: @escaping @Sendable (String) -> Void) {
        writeLine = write
    }

    /// Writes `line`.
    public func write(_ line: String) { writeLine(line) }

    /// Standard error, one `write(2)` per line under a process-wide lock, so lines from
    /// different threads never interleave.
    public static let standardError = LogSink { line in
        StandardErrorWriter.write(line)
    }
}

private enum StandardErrorWriter {
    static let lock = NIOLock()

    static func write(_ line: String) {
        var line = line
        line.withUTF8 { bytes in
            lock.withLock {
                var offset = 0
                while offset < bytes.count {
                    #if canImport(Darwin)
                    let written = Darwin.write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                    #elseif canImport(Musl)
                    let written = Musl.write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                    #else
                    let written = Glibc.write(STDERR_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                    #endif
                    if written > 0 {
                        offset += written
                    } else if written < 0 && errno == EINTR {
                        continue
                    } else {
                        // stderr closed or full: dropping the line beats blocking the proxy.
                        return
                    }
                }
            }
        }
    }
}

/// Ambit's swift-log backend: one line per event, as text or JSON, with the level taken
/// from a shared ``LogLevelControl``.
///
/// Text: `2026-11-26T15:20:01.123Z info [capture] message key=value …`. The bracket holds
/// the `plugin` metadata value when there is one (``PluginContext`` sets it), else the
/// logger's label. Values with spaces, quotes, `=` or control characters are quoted and
/// escaped; control characters in the message are escaped, so an event is always one line.
///
/// JSON: `{"time":…,"level":…,"label":…,"message":…}` followed by the metadata, each key a
/// field of its own (a key that collides with those four or with `error` is written as
/// `metadata.<key>`), then `error` when the event carries one. Nested metadata becomes
/// JSON arrays and objects. Keys are sorted, so equal events render identically.
///
/// Metadata precedence follows swift-log: the handler's own metadata, then the metadata
/// provider's, then the event's.
///
/// Threading: a value type; copies may log concurrently. Rendering happens on the calling
/// thread; the sink serialises output.
public struct AmbitLogHandler: LogHandler {
    /// The logger's label.
    public let label: String
    /// Text or JSON.
    public let format: LogFormat
    /// The shared level.
    public let control: LogLevelControl
    /// Logger-level metadata, set through `logger[metadataKey:]`.
    public var metadata: Logger.Metadata = [:]
    /// Metadata computed per event (e.g. from task-local context).
    public var metadataProvider: Logger.MetadataProvider?
    private let sink: LogSink
    private var levelOverride: Logger.Level?
    /// The level box of this logger's scope (the `plugin` metadata value, else the label).
    private var scope: LogLevelControl.ScopeLevel

    /// Creates a handler. `LoggingSystem` does this through ``AmbitLogging/bootstrap(format:control:sink:)``;
    /// tests may build one directly with their own sink.
    public init(
        label: String, format: LogFormat, control: LogLevelControl, sink: LogSink = .standardError,
        metadataProvider: Logger.MetadataProvider? = nil
    ) {
        self.label = label
        self.format = format
        self.control = control
        self.sink = sink
        self.metadataProvider = metadataProvider
        self.scope = control.scopeLevel(label)
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set {
            metadata[key] = newValue
            if key == "plugin" { scope = control.scopeLevel(Self.scopeName(label: label, plugin: newValue)) }
        }
    }

    /// What the text format shows in brackets and `/logging` calls the scope: the
    /// `plugin` metadata value when there is one, else the label.
    static func scopeName(label: String, plugin: Logger.Metadata.Value?) -> String {
        switch plugin {
        case .string(let name)?: name
        case .stringConvertible(let name)?: name.description
        default: label
        }
    }

    /// The control's level for this logger's scope (see ``LogLevelControl``), unless this
    /// logger was given its own. Setting it pins this logger (and its copies) to that
    /// level, so later changes through the control no longer reach it: change the
    /// control instead to affect the process.
    public var logLevel: Logger.Level {
        get { levelOverride ?? control.level(of: scope) }
        set { levelOverride = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() {
            merged.merge(provided) { _, new in new }
        }
        if let explicit = event.metadata {
            merged.merge(explicit) { _, new in new }
        }
        let time = LogTimestamp.now()
        let errorText = event.error.map { "\($0)" }
        let line: String
        switch format {
        case .text:
            line = LogLineRenderer.text(
                time: time, level: event.level, label: label, message: event.message.description,
                metadata: merged, error: errorText)
        case .json:
            line = LogLineRenderer.json(
                time: time, level: event.level, label: label, message: event.message.description,
                metadata: merged, error: errorText)
        }
        sink.write(line)
    }
}

/// One-time installation of ``AmbitLogHandler`` as the process's swift-log backend.
public enum AmbitLogging {
    private static let bootstrapped = Atomic<Bool>(false)

    /// Installs ``AmbitLogHandler`` for every logger created from now on, all sharing
    /// `control`. swift-log allows one bootstrap per process and crashes on a second; this
    /// guards against that: only the first call installs anything and returns true,
    /// later calls return false and change nothing (set the level through the first
    /// call's control instead). It cannot see a direct `LoggingSystem.bootstrap`
    /// elsewhere, so the application must bootstrap through here only.
    ///
    /// Threading: safe to call from any thread; call it early, before loggers are made.
    @discardableResult
    public static func bootstrap(format: LogFormat, control: LogLevelControl, sink: LogSink = .standardError) -> Bool {
        guard bootstrapped.compareExchange(expected: false, desired: true, ordering: .sequentiallyConsistent).exchanged
        else { return false }
        LoggingSystem.bootstrap(
            { label, provider in
                AmbitLogHandler(label: label, format: format, control: control, sink: sink, metadataProvider: provider)
            },
            metadataProvider: nil)
        return true
    }
}
