import AmbitTestKit
import ExamplePolicies
import Foundation
import Kernel
import MetricsTestKit
import Testing

@Suite("connection-rate-limit")
struct ConnectionRateLimitTests {
    func tester(_ yaml: String, _ clock: ManualClock, metrics: TestMetrics? = nil) async throws
        -> PolicyTester<ConnectionRateLimitPlugin>
    {
        try await PolicyTester<ConnectionRateLimitPlugin>.start(config: yaml, metrics: metrics) { config, context in
            ConnectionRateLimitPlugin(config: config, context: context, now: clock.now)
        }
    }

    @Test("denials are counted in connection_rate_limit_denied_total")
    func metrics() async throws {
        let metrics = TestMetrics()
        let tester = try await tester("{connectionsPerSecond: 0.001, burst: 1}", ManualClock(), metrics: metrics)
        let alice = ConnectionAttributes.mTLS(from: "cluster.local/ns/a/sa/alice")
        #expect(await tester.decide(alice).verdict == .allow)
        for _ in 0..<2 { #expect(await tester.decide(alice).verdict == .deny) }
        #expect(try metrics.expectCounter("connection_rate_limit_denied_total").totalValue == 2)
    }

    @Test("a burst, then the sustained rate, per identity")
    func tokenBucket() async throws {
        let clock = ManualClock()
        let tester = try await tester("{connectionsPerSecond: 2, burst: 3}", clock)
        let alice = ConnectionAttributes.mTLS(from: "cluster.local/ns/a/sa/alice")
        let bob = ConnectionAttributes.mTLS(from: "cluster.local/ns/a/sa/bob")
        for _ in 0..<3 { #expect(await tester.decide(alice).verdict == .allow) }
        let over = await tester.decide(alice)
        #expect(over.verdict == .deny)
        #expect(over.reason.contains("cluster.local/ns/a/sa/alice exceeded"))
        #expect(await tester.decide(bob).verdict == .allow)  // bob has his own bucket

        clock.advance(by: 0.5)  // one token back
        #expect(await tester.decide(alice).verdict == .allow)
        #expect(await tester.decide(alice).verdict == .deny)
        clock.advance(by: 60)  // refills to the burst, not beyond
        for _ in 0..<3 { #expect(await tester.decide(alice).verdict == .allow) }
        #expect(await tester.decide(alice).verdict == .deny)
    }

    @Test("plaintext is limited per source IP, and spoofed identities on plaintext do not count")
    func plaintext() async throws {
        let tester = try await tester("{connectionsPerSecond: 0.001, burst: 1}", ManualClock())
        #expect(await tester.decide(.plaintext(from: "10.0.0.7")).verdict == .allow)
        #expect(await tester.decide(.plaintext(from: "10.0.0.7")).verdict == .deny)
        #expect(await tester.decide(.plaintext(from: "10.0.0.8")).verdict == .allow)
        // A plaintext connection claiming an identity is still counted by its address.
        var claimed = ConnectionAttributes.mTLS(from: "cluster.local/ns/a/sa/fresh", sourceIP: "10.0.0.7")
        claimed.isMutualTLS = false
        let spoofed = await tester.decide(claimed)
        #expect(spoofed.verdict == .deny)
        #expect(spoofed.reason.contains("ip:10.0.0.7"))
    }

    @Test("the number of tracked sources stays bounded")
    func bounded() async throws {
        let tester = try await tester("{connectionsPerSecond: 1, burst: 1, maxSources: 3}", ManualClock())
        for index in 0..<10 { _ = await tester.decide(.mTLS(from: "cluster.local/ns/a/sa/s\(index)")) }
        #expect(tester.plugin.trackedSources <= 3)
    }

    @Test("config errors name path and line")
    func configErrors() throws {
        for (yaml, path) in [("connectionsPerSecond: 0", "config.connectionsPerSecond"), ("burst: 0", "config.burst"), ("rate: 3", "config.rate")] {
            do {
                _ = try PolicyTester<ConnectionRateLimitPlugin>.decodeConfig(yaml)
                Issue.record("accepted \(yaml)")
            } catch {
                #expect(error.description.contains("manifest.yaml:1: \(path)"), "\(error)")
            }
        }
    }
}
