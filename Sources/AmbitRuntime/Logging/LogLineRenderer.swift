#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
public import Logging
import Kernel

/// A wall-clock instant, rendered as RFC 3339 UTC with milliseconds. Written by hand
/// rather than with Foundation's formatters, which are slow and allocate per call.
public struct LogTimestamp: Sendable, Equatable {
    var seconds: Int
    var nanoseconds: Int

    package init(seconds: Int, nanoseconds: Int) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// The current wall-clock time.
    public static func now() -> LogTimestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return LogTimestamp(seconds: Int(spec.tv_sec), nanoseconds: Int(spec.tv_nsec))
    }

    /// `2026-11-26T15:20:01.123Z`
    public var iso8601: String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        var text = ""
        text.reserveCapacity(24)
        Self.append(Int(parts.tm_year) + 1900, width: 4, to: &text)
        text += "-"
        Self.append(Int(parts.tm_mon) + 1, width: 2, to: &text)
        text += "-"
        Self.append(Int(parts.tm_mday), width: 2, to: &text)
        text += "T"
        Self.append(Int(parts.tm_hour), width: 2, to: &text)
        text += ":"
        Self.append(Int(parts.tm_min), width: 2, to: &text)
        text += ":"
        Self.append(Int(parts.tm_sec), width: 2, to: &text)
        text += "."
        Self.append(nanoseconds / 1_000_000, width: 3, to: &text)
        text += "Z"
        return text
    }

    private static func append(_ value: Int, width: Int, to text: inout String) {
        let digits = String(value)
        if digits.count < width { text += String(repeating: "0", count: width - digits.count) }
        text += digits
    }
}

/// Renders one event as one line (trailing newline included) in either format. Public so
/// that plugins writing their own line streams (the telemetry plugin's access log) render
/// exactly like the node's logs.
public enum LogLineRenderer {
    /// JSON field names the renderer writes itself; metadata keys equal to one of them are
    /// renamed so the object never has duplicate keys.
    static let reservedJSONKeys: Set<String> = ["time", "level", "label", "message", "error"]

    /// `time level [label] message key=value … error=…`
    public static func text(
        time: LogTimestamp, level: Logger.Level, label: String, message: String,
        metadata: Logger.Metadata, error: String?
    ) -> String {
        var metadata = metadata
        let origin: String
        if case .string(let plugin)? = metadata["plugin"] {
            origin = plugin
            metadata["plugin"] = nil
        } else if case .stringConvertible(let plugin)? = metadata["plugin"] {
            origin = plugin.description
            metadata["plugin"] = nil
        } else {
            origin = label
        }
        var line = time.iso8601
        line += " "
        line += level.rawValue
        line += " ["
        line += escapedForText(origin)
        line += "] "
        line += escapedForText(message)
        for key in metadata.keys.sorted() {
            line += " "
            line += textToken(key)
            line += "="
            line += textToken(flatText(metadata[key]!))
        }
        if let error {
            line += " error="
            line += textToken(error)
        }
        line += "\n"
        return line
    }

    /// One JSON object: time, level, label, message, the metadata keys, error.
    public static func json(
        time: LogTimestamp, level: Logger.Level, label: String, message: String,
        metadata: Logger.Metadata, error: String?
    ) -> String {
        var line = "{\"time\":\""
        line += time.iso8601
        line += "\",\"level\":\""
        line += level.rawValue
        line += "\",\"label\":"
        appendJSONString(label, to: &line)
        line += ",\"message\":"
        appendJSONString(message, to: &line)
        for key in metadata.keys.sorted() {
            line += ","
            appendJSONString(reservedJSONKeys.contains(key) ? "metadata.\(key)" : key, to: &line)
            line += ":"
            appendJSON(metadata[key]!, to: &line)
        }
        if let error {
            line += ",\"error\":"
            appendJSONString(error, to: &line)
        }
        line += "}\n"
        return line
    }

    // MARK: JSON

    static func appendJSON(_ value: Logger.Metadata.Value, to line: inout String) {
        switch value {
        case .string(let string):
            appendJSONString(string, to: &line)
        case .stringConvertible(let convertible):
            appendJSONString(convertible.description, to: &line)
        case .array(let values):
            line += "["
            for (index, element) in values.enumerated() {
                if index > 0 { line += "," }
                appendJSON(element, to: &line)
            }
            line += "]"
        case .dictionary(let dictionary):
            line += "{"
            for (index, key) in dictionary.keys.sorted().enumerated() {
                if index > 0 { line += "," }
                appendJSONString(key, to: &line)
                line += ":"
                appendJSON(dictionary[key]!, to: &line)
            }
            line += "}"
        }
    }

    /// RFC 8259 string escaping: quote, backslash and every control character. Swift
    /// strings are valid Unicode, so everything else can go through as UTF-8.
    public static func appendJSONString(_ string: String, to line: inout String) {
        line += "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": line += "\\\""
            case "\\": line += "\\\\"
            case "\n": line += "\\n"
            case "\r": line += "\\r"
            case "\t": line += "\\t"
            case "\u{08}": line += "\\b"
            case "\u{0C}": line += "\\f"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F || scalar == "\u{2028}" || scalar == "\u{2029}" {
                    // DEL and the Unicode line separators are legal in JSON but break
                    // line-oriented readers and terminals; escape them too.
                    appendUnicodeEscape(scalar, to: &line)
                } else {
                    line.unicodeScalars.append(scalar)
                }
            }
        }
        line += "\""
    }

    private static func appendUnicodeEscape(_ scalar: Unicode.Scalar, to line: inout String) {
        let hex = String(scalar.value, radix: 16)
        line += "\\u"
        line += String(repeating: "0", count: max(0, 4 - hex.count))
        line += hex
    }

    // MARK: Text

    /// The value as text: strings as they are, nested values in JSON notation.
    static func flatText(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let string): return string
        case .stringConvertible(let convertible): return convertible.description
        case .array, .dictionary:
            var json = ""
            appendJSON(value, to: &json)
            return json
        }
    }

    /// A key or value token: bare when unambiguous, else quoted and escaped like JSON.
    static func textToken(_ string: String) -> String {
        let needsQuotes =
            string.isEmpty
            || string.unicodeScalars.contains { scalar in
                scalar == " " || scalar == "\"" || scalar == "=" || scalar == "\\" || scalar.value < 0x20
                    || scalar.value == 0x7F || scalar == "\u{2028}" || scalar == "\u{2029}"
            }
        guard needsQuotes else { return string }
        var quoted = ""
        appendJSONString(string, to: &quoted)
        return quoted
    }

    /// Free text (the message, the bracket) with control characters escaped so the event
    /// stays on one line; quotes stay as they are for readability.
    static func escapedForText(_ string: String) -> String {
        guard string.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F || $0 == "\u{2028}" || $0 == "\u{2029}" })
        else { return string }
        var escaped = ""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\n": escaped += "\\n"
            case "\r": escaped += "\\r"
            case "\t": escaped += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F || scalar == "\u{2028}" || scalar == "\u{2029}" {
                    appendUnicodeEscape(scalar, to: &escaped)
                } else {
                    escaped.unicodeScalars.append(scalar)
                }
            }
        }
        return escaped
    }
}
