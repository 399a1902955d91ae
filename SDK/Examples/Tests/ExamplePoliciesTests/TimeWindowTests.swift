import AmbitTestKit
import ExamplePolicies
import Foundation
import Kernel
import Testing

@Suite("time-window")
struct TimeWindowTests {
    /// 2024-01-01 was a Monday; times are UTC.
    static func utc(day: Int, _ hour: Int, _ minute: Int = 0) -> Date {
        let seconds: Int = (day - 1) * 86_400 + hour * 3600 + minute * 60
        return Date(timeIntervalSince1970: 1_704_067_200 + TimeInterval(seconds))
    }

    func tester(_ yaml: String, _ clock: ManualClock) async throws -> PolicyTester<TimeWindowPlugin> {
        try await PolicyTester<TimeWindowPlugin>.start(config: yaml) { config, _ in
            TimeWindowPlugin(config: config, now: clock.now)
        }
    }

    @Test("weekday office hours, in a time zone")
    func officeHours() async throws {
        let clock = ManualClock(Self.utc(day: 1, 8, 30))  // Monday 09:30 in Paris (UTC+1 in January)
        let tester = try await tester("{timeZone: Europe/Paris, days: [mon, tue, wed, thu, fri], hours: '09:00-17:00'}", clock)
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/a/sa/b")).verdict == .allow)
        clock.set(Self.utc(day: 1, 16, 0))  // 17:00 Paris: closed
        let late = await tester.decide(.mTLS(from: "cluster.local/ns/a/sa/b"))
        #expect(late.verdict == .deny)
        #expect(late.reason.contains("mon,tue,wed,thu,fri 09:00-17:00 Europe/Paris"), "\(late.reason)")
        clock.set(Self.utc(day: 6, 10, 0))  // Saturday
        #expect(await tester.decide(.plaintext()).verdict == .deny)
    }

    @Test("a window across midnight belongs to the day it opens")
    func overnight() async throws {
        let clock = ManualClock(Self.utc(day: 5, 23, 0))  // Friday 23:00
        let tester = try await tester("{days: [fri], hours: '22:00-06:00'}", clock)
        #expect(await tester.decide(.plaintext()).verdict == .allow)
        clock.set(Self.utc(day: 6, 3, 0))  // Saturday 03:00
        #expect(await tester.decide(.plaintext()).verdict == .allow)
        clock.set(Self.utc(day: 6, 23, 0))  // Saturday 23:00
        #expect(await tester.decide(.plaintext()).verdict == .deny)
        clock.set(Self.utc(day: 5, 3, 0))  // Friday 03:00 belongs to Thursday
        #expect(await tester.decide(.plaintext()).verdict == .deny)
    }

    @Test("config errors name path and line")
    func configErrors() throws {
        for (yaml, path) in [
            ("timeZone: Mars/Olympus", "config.timeZone"), ("days: [mon, funday]", "config.days"),
            ("hours: '9-5'", "config.hours"), ("hours: '10:00-10:00'", "config.hours"),
        ] {
            do {
                _ = try PolicyTester<TimeWindowPlugin>.decodeConfig(yaml)
                Issue.record("accepted \(yaml)")
            } catch {
                #expect(error.description.contains("manifest.yaml:1: \(path)"), "\(error)")
            }
        }
    }
}
