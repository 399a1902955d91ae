import CoreMetrics
import Kernel
import NIOPosix
import Telemetry
import Testing

@Suite("xds: ztunnel's istio_xds_* metrics through the telemetry plugin")
struct XDSMetricsTests {
    @Test("the istio_xds_ names are the xds plugin's: another plugin is refused them, as any istio_ name")
    func delegatedPrefix() throws {
        let context = PluginContext(
            pluginID: "telemetry", logger: quietLogger(), eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            mesh: MeshStore(), connections: ConnectionRegistry(), readiness: Readiness(), nodeName: "node-a",
            baseDirectory: "", directory: PluginDirectory())
        let telemetry = try TelemetryPlugin(config: TelemetryPlugin.Config(), context: context)
        Counter(label: "istio_xds_message_total", dimensions: [("url", "other")], factory: telemetry.metricsFactory(for: "other"))
            .increment()
        Counter(label: "istio_xds_message_total", dimensions: [("url", "xds")], factory: telemetry.metricsFactory(for: "xds"))
            .increment(by: 2)
        Counter(label: "istio_tcp_connections_opened_total", factory: telemetry.metricsFactory(for: "xds")).increment()
        #expect(telemetry.sampleLines(of: "istio_xds_message_total") == ["istio_xds_message_total{url=\"xds\"} 2"])
        #expect(!telemetry.sampleLines(of: "istio_tcp_connections_opened_total").contains("istio_tcp_connections_opened_total 1"))
    }
}
