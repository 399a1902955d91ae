import AmbitRuntime
import Kernel
import Testing

@Suite("Backoff")
struct BackoffTests {
    @Test("defaults are 500 ms, ×2, ±20 %, cap 150 s")
    func defaults() {
        let backoff = Backoff()
        #expect(backoff.initial == .milliseconds(500))
        #expect(backoff.multiplier == 2)
        #expect(backoff.jitter == 0.2)
        #expect(backoff.cap == .seconds(150))
    }

    @Test("first delay is 500 ms ±20 %, spread across the range")
    func firstDelay() {
        var rng = SplitMix64(seed: 7)
        let samples = (0..<2000).map { _ in Backoff().delay(attempt: 1, using: &rng) }
        for sample in samples {
            #expect(sample >= .milliseconds(400) && sample <= .milliseconds(600), "\(sample)")
        }
        // Jitter actually happens: the samples reach close to both ends.
        #expect(samples.min()! < .milliseconds(420))
        #expect(samples.max()! > .milliseconds(580))
    }

    @Test("without jitter the delay doubles per failure; attempt < 1 counts as 1")
    func doubles() {
        var rng = SplitMix64(seed: 1)
        let backoff = Backoff(jitter: 0)
        let delays = (1...6).map { backoff.delay(attempt: $0, using: &rng) }
        #expect(delays == [.milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(16)])
        #expect(backoff.delay(attempt: 0, using: &rng) == .milliseconds(500))
        #expect(backoff.delay(attempt: -3, using: &rng) == .milliseconds(500))
    }

    @Test("delays are capped at 150 s, jitter included, even for huge attempt numbers")
    func capped() {
        var rng = SplitMix64(seed: 3)
        #expect(Backoff(jitter: 0).delay(attempt: 9, using: &rng) == .seconds(128))
        #expect(Backoff(jitter: 0).delay(attempt: 10, using: &rng) == .seconds(150))
        for attempt in [10, 11, 50, 5000, Int.max] {
            for _ in 0..<200 {
                let delay = Backoff().delay(attempt: attempt, using: &rng)
                #expect(delay <= .seconds(150) && delay >= .seconds(120), "attempt \(attempt): \(delay)")
            }
        }
    }

    @Test("every jittered delay lies within ±20 % of its base, and averages to it")
    func jitterBounds() {
        var rng = SplitMix64(seed: 11)
        let backoff = Backoff()
        for attempt in 1...8 {
            let base = 0.5 * Double(1 << (attempt - 1))
            var sum = 0.0
            let count = 1000
            for _ in 0..<count {
                let seconds = backoff.delay(attempt: attempt, using: &rng).seconds
                #expect(seconds >= base * 0.8 - 1e-9 && seconds <= base * 1.2 + 1e-9, "attempt \(attempt): \(seconds)")
                sum += seconds
            }
            // Uniform ±20 %: the standard error of the mean is ~0.37 % of base here.
            #expect(abs(sum / Double(count) / base - 1) < 0.015, "attempt \(attempt) mean \(sum / Double(count))")
        }
    }

    @Test("same generator state gives the same delays")
    func deterministic() {
        var a = SplitMix64(seed: 99)
        var b = SplitMix64(seed: 99)
        let first = (1...10).map { Backoff().delay(attempt: $0, using: &a) }
        let second = (1...10).map { Backoff().delay(attempt: $0, using: &b) }
        #expect(first == second)
    }
}

extension Duration {
    /// Seconds as a Double, for tolerances in tests.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) * 1e-18
    }
}
