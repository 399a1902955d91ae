import AmbitTestKit
import ExamplePolicies
import Foundation
import Kernel
import Testing

/// Each example plugin decides real connections: client workloads connect through
/// node-a (SOCKS5 capture) and a tunnel to node-b, whose policy chain runs the plugin
/// before it dials the server. See `InProcessMesh`.
@Suite("examples end to end (in-process mesh, real sockets)", .serialized, .timeLimit(.minutes(2)))
struct EndToEndTests {
    @Test("identity-allow-list: a listed identity connects, another is refused, an edit lets it in")
    func allowList() async throws {
        let mesh = try await InProcessMesh.start(
            policies: [PluginType(IdentityAllowListPlugin.self)],
            manifest: "- id: identity-allow-list\n  config: {path: allow.txt, pollInterval: 50ms}",
            files: ["allow.txt": "cluster.local/ns/default/sa/client\n"])
        defer { Task { await mesh.stop() } }

        let allowed = try await mesh.connect(from: "client", payload: "hello")
        #expect(allowed.allowed && allowed.response == "hello", "\(allowed)")
        #expect(allowed.decision?.plugin == "identity-allow-list")
        let denied = try await mesh.connect(from: "other")
        #expect(!denied.allowed, "\(denied)")
        #expect(denied.decision?.verdict == .deny && denied.decision?.plugin == "identity-allow-list")

        try mesh.write("allow.txt", "cluster.local/ns/default/sa/client\ncluster.local/ns/default/sa/other\n")
        var reloaded = false
        for _ in 0..<100 where !reloaded {
            reloaded = try await mesh.connect(from: "other").allowed
            if !reloaded { try await Task.sleep(for: .milliseconds(50)) }
        }
        #expect(reloaded, "the edited allow-list did not take effect")
    }

    @Test("time-window: inside the window connects, outside is refused")
    func timeWindow() async throws {
        // Today and tomorrow (UTC) are inside; the other five days outside, so the test
        // holds even if it runs across midnight.
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let today = calendar.component(.weekday, from: Date())  // 1 = Sunday
        let names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
        let open = [names[today - 1], names[today % 7]]
        let closed = names.filter { !open.contains($0) }

        for (days, expected) in [(open, true), (closed, false)] {
            let mesh = try await InProcessMesh.start(
                policies: [PluginType(TimeWindowPlugin.self)],
                manifest: "- id: time-window\n  config: {timeZone: UTC, days: [\(days.joined(separator: ", "))]}")
            let outcome = try await mesh.connect(from: "client")
            await mesh.stop()
            #expect(outcome.allowed == expected, "days \(days): \(outcome)")
            #expect(outcome.decision?.plugin == "time-window")
        }
    }

    @Test("connection-rate-limit: the burst connects, the next is refused, another identity still connects")
    func rateLimit() async throws {
        let mesh = try await InProcessMesh.start(
            policies: [PluginType(ConnectionRateLimitPlugin.self)],
            manifest: "- id: connection-rate-limit\n  config: {connectionsPerSecond: 0.001, burst: 2}")
        defer { Task { await mesh.stop() } }

        for _ in 0..<2 { #expect(try await mesh.connect(from: "client").allowed) }
        let limited = try await mesh.connect(from: "client")
        #expect(!limited.allowed, "\(limited)")
        #expect(limited.decision?.plugin == "connection-rate-limit")
        #expect(limited.decision?.reason.contains("cluster.local/ns/default/sa/client exceeded") == true)
        #expect(try await mesh.connect(from: "other").allowed)
    }
}
