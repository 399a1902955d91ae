/// Exponential backoff with jitter: how long to wait before retrying after a failure.
///
/// The delay after the n-th consecutive failure is `initial × multiplier^(n-1)`, capped at
/// ``cap``, then scaled by a uniform factor in `[1 - jitter, 1 + jitter]` and capped again,
/// so no delay ever exceeds ``cap``. Jitter spreads retries of many keys that failed
/// together (e.g. every certificate after a CA outage) so they do not return in lockstep.
public struct Backoff: Sendable, Hashable {
    /// Delay after the first failure (before jitter).
    public var initial: Duration
    /// Growth factor per consecutive failure.
    public var multiplier: Double
    /// Relative jitter, 0 ... 1: 0.2 means ±20 %.
    public var jitter: Double
    /// Upper bound of any delay.
    public var cap: Duration

    /// Creates a policy; the defaults are ztunnel's certificate-fetch backoff (500 ms, ×2,
    /// ±20 %, at most 150 s).
    public init(
        initial: Duration = .milliseconds(500), multiplier: Double = 2, jitter: Double = 0.2,
        cap: Duration = .seconds(150)
    ) {
        self.initial = initial
        self.multiplier = multiplier
        self.jitter = jitter
        self.cap = cap
    }

    /// The delay before retrying after the `attempt`-th consecutive failure (1 for the
    /// first; smaller values count as 1). Deterministic for a given generator state.
    public func delay(attempt: Int, using rng: inout some RandomNumberGenerator) -> Duration {
        let capSeconds = cap.seconds
        // Also keeps 0 × inf (NaN) out of the arithmetic below.
        guard initial > .zero, capSeconds > 0 else { return .zero }
        // Computed in Double: multiplier^n overflows to +inf for large n, which the cap absorbs.
        let base = min(initial.seconds * Backoff.power(multiplier, max(attempt, 1) - 1), capSeconds)
        let spread = min(max(jitter, 0), 1)
        let factor = spread > 0 ? Double.random(in: (1 - spread)...(1 + spread), using: &rng) : 1
        return .seconds(max(0, min(base * factor, capSeconds)))
    }
}

extension Backoff {
    /// `base^exponent` by squaring: exact for the small integers used here, +inf on
    /// overflow (absorbed by the cap), and no C maths library.
    fileprivate static func power(_ base: Double, _ exponent: Int) -> Double {
        var result = 1.0
        var factor = base
        var remaining = exponent
        while remaining > 0 {
            if remaining & 1 == 1 { result *= factor }
            factor *= factor
            remaining >>= 1
        }
        return result
    }
}

extension Duration {
    /// The duration in seconds as a Double (attosecond precision is not needed for delays).
    fileprivate var seconds: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) * 1e-18
    }
}
