public import Foundation
import NIOConcurrencyHelpers

/// A wall clock that only moves when the test moves it, for plugins that decide by time
/// (time windows, rate limits). Give the plugin ``now`` as its clock:
///
/// ```swift
/// let clock = ManualClock(Date(timeIntervalSince1970: 0))
/// let tester = try await PolicyTester<RateLimitPlugin>.start(config: "...") { config, context in
///     try RateLimitPlugin(config: config, context: context, now: clock.now)
/// }
/// clock.advance(by: 1.5)
/// ```
public final class ManualClock: Sendable {
    private let current: NIOLockedValueBox<Date>

    /// A clock showing `start`.
    public init(_ start: Date = Date(timeIntervalSince1970: 1_700_000_000)) {
        current = NIOLockedValueBox(start)
    }

    /// The time it shows.
    public var date: Date { current.withLockedValue { $0 } }

    /// The clock as a function, the shape plugins take a clock in.
    public var now: @Sendable () -> Date { { [current] in current.withLockedValue { $0 } } }

    /// Moves the clock forward (or back, with a negative interval).
    public func advance(by seconds: TimeInterval) {
        current.withLockedValue { $0 = $0.addingTimeInterval(seconds) }
    }

    /// Sets the clock.
    public func set(_ date: Date) {
        current.withLockedValue { $0 = date }
    }
}
