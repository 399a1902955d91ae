public import NIOCore
/// A duration in configuration: `"5s"`, `"500ms"`, `"2m"`, `"1h"`, `"1.5s"`, `"250us"`,
/// `"100ns"`, or a plain number of seconds (`5`, `0.25`). Negative durations are
/// rejected.
public struct ConfigDuration: Sendable, Hashable, Decodable, CustomStringConvertible {
    /// The duration.
    public var duration: Duration

    /// Wraps a duration.
    public init(_ duration: Duration) { self.duration = duration }

    /// The duration as NIO's `TimeAmount` (nanosecond precision).
    public var timeAmount: TimeAmount {
        let (seconds, attoseconds) = duration.components
        return .nanoseconds(seconds * 1_000_000_000 + attoseconds / 1_000_000_000)
    }

    private static let units: [(suffix: String, nanoseconds: Double)] = [
        ("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9),
    ]

    /// Parses the text forms above; nil when it is not one of them.
    public init?(parsing text: String) {
        let trimmed = text.trimmingSpaces
        // Longest suffix first, so "ms" is not read as "m" + "s".
        let ordered = Self.units.sorted { $0.suffix.count > $1.suffix.count }
        var number = trimmed
        var scale = 1e9
        for unit in ordered where trimmed.hasSuffix(unit.suffix) {
            number = String(trimmed.dropLast(unit.suffix.count))
            scale = unit.nanoseconds
            break
        }
        guard !number.isEmpty, number.first != "+", let value = Double(number), value.isFinite, value >= 0 else {
            return nil
        }
        let nanoseconds = value * scale
        guard nanoseconds < Double(Int64.max) else { return nil }
        self.init(.nanoseconds(Int64(nanoseconds.rounded())))
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let parsed = ConfigDuration(parsing: text) else {
            throw DecodingError.dataCorruptedError(
                in: container,
                debugDescription: "expected a duration such as \"5s\", \"500ms\", \"2m\", \"1h\" or a number of seconds, got \"\(text)\"")
        }
        self = parsed
    }

    /// The shortest exact form among h, m, s, ms, us, ns (e.g. `1500ms`).
    public var description: String {
        let (seconds, attoseconds) = duration.components
        let nanoseconds = Int128(seconds) * 1_000_000_000 + Int128(attoseconds / 1_000_000_000)
        for (suffix, scale) in [("h", Int128(3600_000_000_000)), ("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)]
        where nanoseconds != 0 && nanoseconds % scale == 0 {
            return "\(nanoseconds / scale)\(suffix)"
        }
        return nanoseconds == 0 ? "0s" : "\(nanoseconds)ns"
    }
}

extension String {
    /// Without leading and trailing spaces and tabs (no Foundation needed).
    var trimmingSpaces: String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}
