import AmbitTestKit
import CoreMetrics
import Foundation
import Kernel
import MetricsTestKit
import Synchronization
import Telemetry
import TestSupport
import Testing
import AmbitRuntime

/// A policy plugin that counts its decisions through `context.metrics`, and on request
/// also registers metrics the telemetry plugin must refuse (without stopping the node).
final class CountingPolicy: Plugin, ConnectionAuthorizer {
    struct Config: Decodable, Sendable {
        var misbehave: Bool? = nil
    }
    static let id = "counting"
    static let summary = "test: counts decisions in a metric"
    static let provides: Set<PluginRole> = [.policy]

    private let config: Config
    private let context: PluginContext
    private let allowed = Mutex<Counter?>(nil)

    init(config: Config, context: PluginContext) throws {
        self.config = config
        self.context = context
    }

    func provision() async throws {
        let metrics = context.metrics
        allowed.withLock { $0 = Counter(label: "counting_decisions_total", dimensions: [("verdict", "allow")], factory: metrics) }
        if config.misbehave == true {
            // Each of these would stop the process if it reached the Prometheus registry.
            Counter(label: "istio_tcp_connections_opened_total", factory: metrics).increment()
            Gauge(label: "counting_decisions_total", factory: metrics).record(7)
            Counter(label: "counting_decisions_total", factory: metrics).increment()
            Counter(label: "counting decisions", factory: metrics).increment()
        }
    }

    func authorize(_ connection: ConnectionAttributes) async throws -> AuthorizationDecision {
        allowed.withLock { $0?.increment() }
        return .allow(reason: "counted")
    }
}

@Suite("plugin metrics", .timeLimit(.minutes(1)))
struct PluginMetricsTests {
    @Test("PolicyTester: a plugin's context.metrics records into the factory the test gives")
    func testerMetrics() async throws {
        let metrics = TestMetrics()
        let tester = try await PolicyTester<CountingPolicy>.start(metrics: metrics)
        _ = await tester.decide(.mTLS(from: "cluster.local/ns/default/sa/a"))
        _ = await tester.decide(.mTLS(from: "cluster.local/ns/default/sa/b"))
        #expect(try metrics.expectCounter("counting_decisions_total", [("verdict", "allow")]).totalValue == 2)
        await tester.stop()
    }

    @Test("in a node: a plugin's metrics appear on /metrics; clashing ones record nothing and the node keeps serving")
    func nodeMetrics() async throws {
        let mesh = try await InProcessMesh.start(
            policies: [PluginType(CountingPolicy.self)], manifest: "- id: counting\n  config: {misbehave: true}")
        defer { Task { await mesh.stop() } }
        for _ in 0..<3 { #expect(try await mesh.connect(from: "client").allowed) }

        let metrics = try await scrape(mesh.serverNode)
        #expect(metrics.contains("counting_decisions_total{verdict=\"allow\"} 3\n"), "\(metrics)")
        // The refused registrations left no trace: Istio's counter is still the node's own.
        #expect(!metrics.contains("# TYPE counting_decisions_total gauge"))
        #expect(!metrics.contains("counting_decisions_total 1"))
        #expect(!metrics.contains("istio_tcp_connections_opened_total 1"))
        // Every policy plugin has its failure series from the first scrape on.
        #expect(metrics.contains("ambit_policy_failures_total{plugin=\"counting\",reason=\"threw\"} 0\n"), "\(metrics)")
        #expect(metrics.contains("ambit_policy_failures_total{plugin=\"counting\",reason=\"timed-out\"} 0\n"))
    }

    @Test("without a metrics backend, context.metrics is a no-op factory")
    func noBackend() async throws {
        let tester = try await PolicyTester<CountingPolicy>.start(config: "{misbehave: true}")
        #expect(tester.context.metrics is NOOPMetricsHandler)
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/default/sa/a")).verdict == .allow)
        await tester.stop()
    }
}

/// GET /metrics from `node`'s telemetry plugin.
func scrape(_ node: ProxyNode) async throws -> String {
    let address = try #require(node.plugin(TelemetryPlugin.self)?.metricsAddress)
    let (status, body) = try await httpRequest("GET", address, "/metrics")
    #expect(status == 200)
    return body
}
