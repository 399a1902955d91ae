import Foundation
import Kernel

/// Allows inbound connections only inside a weekly time window, e.g. a batch service
/// reachable on weekdays from 09:00 to 17:00 Paris time.
///
/// ```yaml
/// - id: time-window
///   config:
///     timeZone: Europe/Paris      # IANA name (default UTC)
///     days: [mon, tue, wed, thu, fri]   # default: every day
///     hours: "09:00-17:00"        # default "00:00-24:00"; "22:00-06:00" spans midnight
/// ```
///
/// The day is the one the window starts on: with `days: [fri]` and `hours: 22:00-06:00`,
/// Saturday 03:00 is inside. Outside the window the connection is denied; inside, this
/// plugin allows and later plugins in the chain still decide.
public final class TimeWindowPlugin: Plugin, ConnectionAuthorizer {
    /// `time-window` configuration, checked while decoding so a mistake is a manifest
    /// error with path and line.
    public struct Config: Decodable, Sendable {
        /// The time zone the window is read in.
        public var timeZone: TimeZone
        /// Days the window opens on (Calendar weekdays: 1 = Sunday … 7 = Saturday).
        public var weekdays: Set<Int>
        /// Opening time, minutes after midnight.
        public var start: Int
        /// Closing time, minutes after midnight (1440 = midnight at the end of the day).
        public var end: Int

        static let dayNames = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]

        enum CodingKeys: String, CodingKey, CaseIterable { case timeZone, days, hours }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            let zoneName = try c.decodeIfPresent(String.self, forKey: .timeZone) ?? "UTC"
            guard let zone = TimeZone(identifier: zoneName) else {
                throw DecodingError.dataCorruptedError(
                    forKey: .timeZone, in: c, debugDescription: "unknown time zone \"\(zoneName)\" (use an IANA name such as Europe/Paris)")
            }
            timeZone = zone
            let days = try c.decodeIfPresent([String].self, forKey: .days) ?? Self.dayNames
            weekdays = []
            for day in days {
                guard let index = Self.dayNames.firstIndex(of: day.lowercased().prefix(3).description), day.count >= 3 else {
                    throw DecodingError.dataCorruptedError(
                        forKey: .days, in: c, debugDescription: "expected days such as mon, tue … sun, got \"\(day)\"")
                }
                weekdays.insert(index + 1)
            }
            let hours = try c.decodeIfPresent(String.self, forKey: .hours) ?? "00:00-24:00"
            guard let (start, end) = Self.parseHours(hours) else {
                throw DecodingError.dataCorruptedError(
                    forKey: .hours, in: c, debugDescription: "expected HH:MM-HH:MM (00:00 to 24:00), got \"\(hours)\"")
            }
            self.start = start
            self.end = end
        }

        static func parseHours(_ text: String) -> (Int, Int)? {
            let parts = text.split(separator: "-").map { $0.trimmingCharacters(in: .whitespaces) }
            guard parts.count == 2, let start = minutes(parts[0]), let end = minutes(parts[1]), start != end,
                start < 1440
            else { return nil }
            return (start, end)
        }

        static func minutes(_ text: String) -> Int? {
            let parts = text.split(separator: ":")
            guard parts.count == 2, parts[1].count == 2, let hour = Int(parts[0]), let minute = Int(parts[1]),
                (0...24).contains(hour), (0..<60).contains(minute), hour * 60 + minute <= 1440
            else { return nil }
            return hour * 60 + minute
        }
    }

    public static let id = "time-window"
    public static let summary = "allow connections only inside a weekly time window"
    public static let provides: Set<PluginRole> = [.policy]

    private let config: Config
    private let now: @Sendable () -> Date
    private let calendar: Calendar

    /// Built by the kernel: the system clock.
    public convenience init(config: Config, context: PluginContext) throws {
        self.init(config: config, now: Date.init)
    }

    /// Built by tests: `now` is the clock (see AmbitTestKit's `ManualClock`).
    public init(config: Config, now: @escaping @Sendable () -> Date) {
        self.config = config
        self.now = now
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = config.timeZone
        self.calendar = calendar
    }

    /// Whether `date` falls inside the window.
    public func isOpen(at date: Date) -> Bool {
        let parts = calendar.dateComponents([.weekday, .hour, .minute], from: date)
        guard let weekday = parts.weekday, let hour = parts.hour, let minute = parts.minute else { return false }
        let time = hour * 60 + minute
        if config.start < config.end {
            return config.weekdays.contains(weekday) && time >= config.start && time < config.end
        }
        // Spans midnight: the evening part belongs to today, the morning part to yesterday.
        let yesterday = weekday == 1 ? 7 : weekday - 1
        return (config.weekdays.contains(weekday) && time >= config.start)
            || (config.weekdays.contains(yesterday) && time < config.end)
    }

    public func authorize(_ connection: ConnectionAttributes) async -> AuthorizationDecision {
        isOpen(at: now())
            ? .allow(reason: "inside the time window")
            : .deny(reason: "outside the time window (\(Self.describe(config)))")
    }

    static func describe(_ config: Config) -> String {
        let days = config.weekdays.sorted().map { Config.dayNames[$0 - 1] }.joined(separator: ",")
        func clock(_ minutes: Int) -> String { String(format: "%02d:%02d", minutes / 60, minutes % 60) }
        return "\(days) \(clock(config.start))-\(clock(config.end)) \(config.timeZone.identifier)"
    }
}
