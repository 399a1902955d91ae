import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing

@testable import Kernel
import AmbitRuntime

/// Collects rendered lines in memory.
private final class CapturedLines: Sendable {
    private let lines = NIOLockedValueBox<[String]>([])
    var sink: LogSink { LogSink { line in self.lines.withLockedValue { $0.append(line) } } }
    var all: [String] { lines.withLockedValue { $0 } }
}

private func logger(_ format: LogFormat, control: LogLevelControl, into captured: CapturedLines, label: String = "ambit.test") -> Logger {
    Logger(label: label) { label in
        AmbitLogHandler(label: label, format: format, control: control, sink: captured.sink)
    }
}

private func parseJSON(_ line: String) throws -> [String: Any] {
    let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
    return try #require(object as? [String: Any])
}

@Suite("Logging")
struct LoggingTests {
    @Test("text lines carry time, level, plugin, message and sorted metadata")
    func textLine() throws {
        let captured = CapturedLines()
        var log = logger(.text, control: LogLevelControl(.info), into: captured)
        log[metadataKey: "plugin"] = "capture"
        log.info("connection opened", metadata: ["peer": "10.0.0.1:5000", "bytes": "42"])
        let line = try #require(captured.all.first)
        #expect(captured.all.count == 1)
        #expect(line.hasSuffix("\n"))
        #expect(line.filter { $0 == "\n" }.count == 1)
        let parts = line.dropLast().split(separator: " ", maxSplits: 3).map(String.init)
        #expect(parts.count == 4)
        // 2026-11-26T15:20:01.123Z
        let time = parts[0]
        #expect(time.count == 24)
        #expect(Array(time)[10] == "T" && time.hasSuffix("Z") && Array(time)[19] == ".")
        #expect(parts[1] == "info")
        #expect(parts[2] == "[capture]")
        #expect(parts[3] == "connection opened bytes=42 peer=10.0.0.1:5000")
    }

    @Test("text lines fall back to the label and quote awkward values")
    func textQuoting() throws {
        let captured = CapturedLines()
        let log = logger(.text, control: LogLevelControl(.trace), into: captured, label: "kernel")
        log.warning(
            "two\nlines", metadata: ["quote": "say \"hi\"", "space": "a b", "empty": "", "list": ["x", "y"]])
        let line = try #require(captured.all.first)
        #expect(line.filter { $0 == "\n" }.count == 1, "one event must stay one line: \(line)")
        #expect(line.contains(" warning [kernel] two\\nlines "))
        #expect(line.contains(#"empty="""#))
        #expect(line.contains(#"quote="say \"hi\"""#))
        #expect(line.contains(#"space="a b""#))
        #expect(line.contains(#"list="[\"x\",\"y\"]""#))
    }

    @Test("JSON lines parse and carry every field, escaped")
    func jsonLine() throws {
        let captured = CapturedLines()
        var log = logger(.json, control: LogLevelControl(.info), into: captured, label: "ambit")
        log[metadataKey: "plugin"] = "hbone"
        let tricky = "quote \" backslash \\ newline \n tab \t bell \u{07} unicode é 🚀"
        log.error(
            "\(tricky)",
            metadata: [
                "peer": "1.2.3.4:80", "message": "collides", "nested": ["a": "1", "b": ["x", "y"]],
                "count": .stringConvertible(7),
            ])
        let line = try #require(captured.all.first)
        #expect(line.hasSuffix("}\n"))
        #expect(line.filter { $0 == "\n" }.count == 1)
        let object = try parseJSON(line)
        #expect(object["level"] as? String == "error")
        #expect(object["label"] as? String == "ambit")
        #expect(object["plugin"] as? String == "hbone")
        #expect(object["message"] as? String == tricky)
        #expect(object["peer"] as? String == "1.2.3.4:80")
        #expect(object["metadata.message"] as? String == "collides")
        #expect(object["count"] as? String == "7")
        let nested = try #require(object["nested"] as? [String: Any])
        #expect(nested["a"] as? String == "1")
        #expect(nested["b"] as? [String] == ["x", "y"])
        let time = try #require(object["time"] as? String)
        #expect(time.count == 24 && time.hasSuffix("Z"))
    }

    @Test("an event's error is rendered in both formats")
    func errorField() throws {
        struct Broken: Error, CustomStringConvertible { var description: String { "pipe \"broke\"" } }
        let captured = CapturedLines()
        let control = LogLevelControl(.info)
        logger(.json, control: control, into: captured).error("failed", error: Broken())
        logger(.text, control: control, into: captured).error("failed", error: Broken())
        let lines = captured.all
        #expect(lines.count == 2)
        #expect(try parseJSON(lines[0])["error"] as? String == "pipe \"broke\"")
        #expect(lines[1].hasSuffix(#" failed error="pipe \"broke\"""# + "\n"))
    }

    @Test("changing the control changes every logger at once")
    func levelChanges() throws {
        let captured = CapturedLines()
        let control = LogLevelControl(.info)
        let first = logger(.text, control: control, into: captured, label: "one")
        let second = logger(.json, control: control, into: captured, label: "two")
        first.debug("hidden")
        second.debug("hidden")
        first.info("shown")
        #expect(captured.all.count == 1)
        #expect(first.logLevel == .info)

        control.level = .debug
        #expect(first.logLevel == .debug && second.logLevel == .debug)
        first.debug("now shown")
        second.debug("now shown")
        #expect(captured.all.count == 3)

        #expect(control.set(levelNamed: "warn") == .warning)
        first.notice("hidden again")
        first.warning("shown")
        #expect(captured.all.count == 4)
        #expect(captured.all.last?.contains(" warning [one] shown") == true)

        #expect(control.set(levelNamed: "loud") == nil)
        #expect(control.level == .warning, "a bad name must leave the level alone")
    }

    @Test("scopes: a plugin's logger (its `plugin` metadata) or a label takes its scope's level, the rest the default")
    func scopedLevels() throws {
        let captured = CapturedLines()
        let control = LogLevelControl(.info)
        var hbone = logger(.text, control: control, into: captured, label: "ambit")
        hbone[metadataKey: "plugin"] = "hbone"
        var capture = logger(.text, control: control, into: captured, label: "ambit")
        capture[metadataKey: "plugin"] = "capture"
        let socks = logger(.text, control: control, into: captured, label: "capture.socks5")

        #expect(control.apply(directive: "hbone:debug,warn", reset: false) == nil)
        #expect(control.directive == "hbone=debug,warning")
        hbone.debug("shown")
        capture.info("hidden: the default is now warning")
        socks.info("hidden")
        #expect(captured.all.count == 1 && captured.all[0].contains("[hbone] shown"))
        #expect(control.knownScopes.contains("hbone") && control.knownScopes.contains("capture.socks5"))

        // Without reset, a directive changes only what it names; ztunnel's `=` works too.
        #expect(control.apply(directive: "capture.socks5=trace", reset: false) == nil)
        #expect(control.directive == "capture.socks5=trace,hbone=debug,warning")
        socks.trace("shown")
        #expect(captured.all.count == 2)

        // Reset: scope levels gone, the default back to where it started, then the clauses.
        #expect(control.apply(directive: "info", reset: true) == nil)
        #expect(control.directive == "info")
        hbone.debug("hidden again")
        #expect(control.level(forScope: "hbone") == .info)
        #expect(control.apply(directive: "", reset: true) == nil)
        #expect(control.level == .info)

        // `off` is the most severe level; nothing changes unless every clause is valid.
        #expect(control.apply(directive: "hbone:off", reset: false) == nil)
        #expect(control.level(forScope: "hbone") == .critical)
        #expect(control.apply(directive: "debug,hbone:loud", reset: false)?.contains("loud") == true)
        #expect(control.apply(directive: ":debug", reset: false) != nil)
        #expect(control.level == .info && control.level(forScope: "hbone") == .critical)
    }

    @Test("a logger given its own level keeps it")
    func levelOverride() {
        let captured = CapturedLines()
        let control = LogLevelControl(.error)
        var log = logger(.text, control: control, into: captured)
        log.logLevel = .trace
        log.trace("shown")
        control.level = .critical
        log.debug("still shown")
        #expect(captured.all.count == 2)
    }

    @Test("level names parse, including warn, in any case")
    func parsing() {
        #expect(LogLevelControl.parse("trace") == .trace)
        #expect(LogLevelControl.parse("DEBUG") == .debug)
        #expect(LogLevelControl.parse(" info ") == .info)
        #expect(LogLevelControl.parse("notice") == .notice)
        #expect(LogLevelControl.parse("warn") == .warning)
        #expect(LogLevelControl.parse("Warning") == .warning)
        #expect(LogLevelControl.parse("error") == .error)
        #expect(LogLevelControl.parse("critical") == .critical)
        #expect(LogLevelControl.parse("") == nil)
        #expect(LogLevelControl.parse("verbose") == nil)
        for level in Logger.Level.allCases {
            #expect(LogLevelControl(level).level == level)
        }
    }

    @Test("timestamps are RFC 3339 UTC with milliseconds")
    func timestamps() {
        #expect(LogTimestamp(seconds: 0, nanoseconds: 0).iso8601 == "1970-01-01T00:00:00.000Z")
        // 2026-11-26T15:20:01Z
        #expect(LogTimestamp(seconds: 1_795_706_401, nanoseconds: 123_999_999).iso8601 == "2026-11-26T15:20:01.123Z")
        #expect(LogTimestamp(seconds: 951_782_400, nanoseconds: 5_000_000).iso8601 == "2000-02-29T00:00:00.005Z")
    }

    @Test("metadata precedence: handler, then provider, then event")
    func metadataPrecedence() throws {
        let captured = CapturedLines()
        let control = LogLevelControl(.info)
        let provider = Logger.MetadataProvider { ["source": "provider", "request": "r1"] }
        var log = Logger(label: "p") { label in
            AmbitLogHandler(label: label, format: .json, control: control, sink: captured.sink, metadataProvider: provider)
        }
        log[metadataKey: "source"] = "handler"
        log[metadataKey: "request"] = "handler"
        log[metadataKey: "only"] = "handler"
        log.info("m", metadata: ["request": "event"])
        let object = try parseJSON(try #require(captured.all.first))
        #expect(object["only"] as? String == "handler")
        #expect(object["source"] as? String == "provider")
        #expect(object["request"] as? String == "event")
    }

    @Test("bootstrap installs once and refuses a second time")
    func bootstrapOnce() {
        // The process-wide backend: quiet, so other suites' logs do not flood the output.
        let control = LogLevelControl(.critical)
        let discard = LogSink { _ in }
        _ = AmbitLogging.bootstrap(format: .text, control: control, sink: discard)
        #expect(AmbitLogging.bootstrap(format: .json, control: control, sink: discard) == false)
    }
}
