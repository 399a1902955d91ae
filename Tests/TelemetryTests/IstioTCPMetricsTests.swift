import Foundation
import Kernel
import Prometheus
import Telemetry
import Testing
import TestSupport
import AmbitRuntime

/// Records as the HBONE inbound path will produce them, fed to the metrics directly.
@Suite("telemetry: series bookkeeping, reporters, flags and the access log format")
struct IstioTCPMetricsTests {
    static let client = Workload(
        uid: "c//v1/Pod/default/client-0", name: "client-0", namespace: "default", serviceAccount: "sleep",
        workloadIPs: [IPAddress("10.0.0.1")!], tunnelProtocol: .hbone, labels: ["app": "client"],
        workloadName: "client")
    static let server = Workload(
        uid: "c//v1/Pod/prod/server-0", name: "server-0", namespace: "prod", serviceAccount: "server",
        workloadIPs: [IPAddress("10.0.0.2")!], tunnelProtocol: .hbone, labels: ["app": "server", "version": "v3"],
        canonicalName: "server-canonical", clusterID: "east")
    static let service = Service(
        name: "server", namespace: "prod", hostname: "server.prod.svc.cluster.local",
        vips: [NetworkAddress("/10.96.0.2")!], ports: [80: 8080])

    static func inbound(peer: Bool = true) -> ConnectionRecord {
        ConnectionRecord(
            direction: .inbound, source: SocketAddr(ip: IPAddress("10.0.0.1")!, port: 40000),
            destination: SocketAddr(ip: IPAddress("10.0.0.2")!, port: 8080), sourceWorkload: client,
            destinationWorkload: server, destinationService: service, peerIdentity: peer ? client.identity : nil,
            route: "hbone", isMutualTLS: true)
    }

    @Test("inbound (HBONE) records report as destination, with mutual_tls and the peer's principal")
    func inboundReporter() {
        let registry = PrometheusCollectorRegistry()
        let metrics = IstioTCPMetrics(registry: registry, gracePeriod: .seconds(60))
        let record = Self.inbound()
        metrics.opened(record)
        record.bytes.addSent(12_345)  // client → server
        record.bytes.addReceived(678)
        metrics.closed(record)
        let scrape = Scrape(registry.emitToString())
        let labels = try? #require(scrape.samples(IstioTCPMetrics.Name.opened).first?.labels)
        #expect(labels?["reporter"] == "destination")
        #expect(labels?["connection_security_policy"] == "mutual_tls")
        #expect(labels?["source_principal"] == "spiffe://cluster.local/ns/default/sa/sleep")
        #expect(labels?["destination_principal"] == "spiffe://cluster.local/ns/prod/sa/server")
        #expect(labels?["destination_canonical_service"] == "server-canonical")
        #expect(labels?["destination_app"] == "server")
        #expect(labels?["destination_version"] == "v3")
        #expect(labels?["destination_canonical_revision"] == "v3")
        #expect(labels?["destination_cluster"] == "east")
        #expect(labels?["source_workload"] == "client")
        #expect(labels?["destination_workload"] == "server-0")
        #expect(labels?["destination_service"] == "server.prod.svc.cluster.local")
        #expect(scrape.value(IstioTCPMetrics.Name.received) == 12_345)
        #expect(scrape.value(IstioTCPMetrics.Name.sent) == 678)
        #expect(scrape.value(IstioTCPMetrics.Name.closed) == 1)
    }

    @Test("a denied inbound connection is opened with - and closed with DENY")
    func deniedInbound() {
        let registry = PrometheusCollectorRegistry()
        let metrics = IstioTCPMetrics(registry: registry, gracePeriod: .seconds(60))
        let record = Self.inbound()
        record.recordFailure("denied by policy prod/deny-all", flag: .denied)
        metrics.refused(record, fallback: .denied)
        let scrape = Scrape(registry.emitToString())
        #expect(scrape.value(IstioTCPMetrics.Name.closed, ["reporter": "destination", "response_flags": "DENY"]) == 1)
        #expect(scrape.value(IstioTCPMetrics.Name.opened, ["reporter": "destination", "response_flags": "-"]) == 1)
        #expect(scrape.value(IstioTCPMetrics.Name.closed, ["response_flags": "-"]) == 0)
    }

    @Test("istio_tcp_connections_failed_total counts denied and failed connections under their flag, with the full label set; a clean close adds nothing")
    func failedCounter() {
        let registry = PrometheusCollectorRegistry()
        let metrics = IstioTCPMetrics(registry: registry, gracePeriod: .seconds(60))
        let denied = Self.inbound()
        denied.recordFailure("denied by policy prod/deny-all", flag: .denied)
        metrics.refused(denied, fallback: .denied)
        let unreachable = Self.inbound()
        unreachable.recordFailure("connect to 10.0.0.2:8080 failed", flag: .connectFailure)
        metrics.refused(unreachable, fallback: .connectFailure)
        let clean = Self.inbound()
        metrics.opened(clean)
        metrics.closed(clean)
        let failed = "istio_tcp_connections_failed_total"
        let scrape = Scrape(registry.emitToString())
        #expect(scrape.value(failed, ["reporter": "destination", "response_flags": "DENY"]) == 1)
        #expect(scrape.value(failed, ["reporter": "destination", "response_flags": "CONNECT"]) == 1)
        #expect(scrape.value(failed) == 2)
        #expect(scrape.value(failed, ["response_flags": "-"]) == 0)
        for sample in scrape.samples(failed) {
            #expect(Set(sample.labels.keys) == Set(IstioLabels.names))
            #expect(sample.labels["destination_workload"] == "server-0")
        }
        #expect(scrape.text.contains("# TYPE \(failed) counter"))
        #expect(scrape.value(IstioTCPMetrics.Name.closed) == 3)
    }

    @Test("locality labels: source_region, source_zone, destination_region, destination_zone from each workload, unknown when not known")
    func localityLabels() {
        var client = Self.client
        client.locality = Locality(region: "eu-west1", zone: "eu-west1-a", subzone: "rack-1")
        var server = Self.server
        server.locality = Locality(region: "us-east1")
        let record = ConnectionRecord(
            direction: .inbound, source: SocketAddr(ip: IPAddress("10.0.0.1")!, port: 40000),
            destination: SocketAddr(ip: IPAddress("10.0.0.2")!, port: 8080), sourceWorkload: client,
            destinationWorkload: server, peerIdentity: client.identity, route: "hbone", isMutualTLS: true)
        let labels = IstioLabels(record)
        #expect(labels["source_region"] == "eu-west1")
        #expect(labels["source_zone"] == "eu-west1-a")
        #expect(labels["destination_region"] == "us-east1")
        #expect(labels["destination_zone"] == "unknown")
        let passthrough = IstioLabels(
            ConnectionRecord(
                direction: .outbound, source: SocketAddr(ip: IPAddress("10.0.0.1")!, port: 1),
                destination: SocketAddr(ip: IPAddress("8.8.8.8")!, port: 53), sourceWorkload: nil,
                destinationWorkload: nil, route: "passthrough"))
        for name in ["source_region", "source_zone", "destination_region", "destination_zone"] {
            #expect(passthrough[name] == "unknown", "\(name)")
        }
        // On every series, a denied one too.
        let registry = PrometheusCollectorRegistry()
        let metrics = IstioTCPMetrics(registry: registry, gracePeriod: .seconds(60))
        record.recordFailure("denied", flag: .denied)
        metrics.refused(record, fallback: .denied)
        let scrape = Scrape(registry.emitToString())
        #expect(scrape.value(IstioTCPMetrics.Name.closed, ["response_flags": "DENY", "source_zone": "eu-west1-a"]) == 1)
        #expect(scrape.value(IstioTCPMetrics.Name.opened, ["destination_region": "us-east1"]) == 1)
    }

    @Test("an outbound record without mTLS claims no source principal; missing values are unknown")
    func outboundPlaintextUnknowns() {
        let record = ConnectionRecord(
            direction: .outbound, source: SocketAddr(ip: IPAddress("10.0.0.1")!, port: 1),
            destination: SocketAddr(ip: IPAddress("8.8.8.8")!, port: 53), sourceWorkload: Self.client,
            destinationWorkload: nil, route: "passthrough")
        let labels = IstioLabels(record)
        #expect(labels.values.count == IstioLabels.names.count)
        #expect(labels["reporter"] == "source")
        #expect(labels["source_principal"] == "unknown")
        #expect(labels["destination_workload"] == "unknown")
        #expect(labels["destination_service"] == "unknown")
        #expect(labels["source_canonical_revision"] == "latest")
        #expect(labels["connection_security_policy"] == "unknown")
        #expect(labels["response_flags"] == "-")
    }

    @Test("departed workloads' series go after the grace period, not before, and never while in use")
    func sweep() {
        let registry = PrometheusCollectorRegistry()
        let metrics = IstioTCPMetrics(registry: registry, gracePeriod: .seconds(30))
        let both = MeshSnapshot(workloads: [Self.client, Self.server], services: [Self.service], policies: [])
        let clientOnly = MeshSnapshot(workloads: [Self.client], services: [Self.service], policies: [])
        let open = Self.inbound()
        metrics.opened(open)
        let done = Self.inbound(peer: false)  // another label set (no principal)
        metrics.opened(done)
        metrics.closed(done)
        #expect(metrics.seriesCount == 2)

        let start = ContinuousClock.now
        #expect(metrics.sweep(mesh: both, now: start) == 0)
        #expect(metrics.sweep(mesh: clientOnly, now: start) == 0)
        #expect(metrics.sweep(mesh: clientOnly, now: start + .seconds(29)) == 0)
        #expect(metrics.sweep(mesh: clientOnly, now: start + .seconds(30)) == 1)  // the closed one
        #expect(metrics.seriesCount == 1)
        #expect(!registry.emitToString().contains("source_principal=\"unknown\""))

        // The open connection keeps its series however long the workload is gone.
        #expect(metrics.sweep(mesh: clientOnly, now: start + .seconds(300)) == 0)
        metrics.closed(open)
        #expect(metrics.sweep(mesh: clientOnly, now: start + .seconds(301)) == 0)  // grace starts now
        #expect(metrics.sweep(mesh: clientOnly, now: start + .seconds(331)) == 1)
        #expect(metrics.seriesCount == 0)
        #expect(!registry.emitToString().contains("istio_tcp"))

        // A workload that comes back within the grace period resets it.
        let again = Self.inbound()
        metrics.opened(again)
        metrics.closed(again)
        #expect(metrics.sweep(mesh: clientOnly, now: start + .seconds(400)) == 0)
        #expect(metrics.sweep(mesh: both, now: start + .seconds(420)) == 0)
        #expect(metrics.sweep(mesh: clientOnly, now: start + .seconds(440)) == 0)
        #expect(metrics.seriesCount == 1)

        // Relabelling a workload retires the series carrying its old labels.
        #expect(metrics.sweep(mesh: both, now: start + .seconds(460)) == 0)
        var relabelled = Self.server
        relabelled.labels["version"] = "v4"
        let moved = MeshSnapshot(workloads: [Self.client, relabelled], services: [Self.service], policies: [])
        #expect(metrics.sweep(mesh: moved, now: start + .seconds(500)) == 0)
        #expect(metrics.sweep(mesh: moved, now: start + .seconds(530)) == 1)
    }

    @Test("the access log's text line carries the same fields as the JSON one")
    func accessLogText() {
        let record = Self.inbound()
        record.bytes.addSent(100)
        record.bytes.addReceived(2000)
        let line = AccessLog.line(for: record, format: .text, now: record.openedAt + .milliseconds(1500))
        #expect(line.hasSuffix("\n"))
        #expect(line.contains(" info [access] connection complete "))
        for field in [
            "src.addr=10.0.0.1:40000", "src.workload=client-0", "src.namespace=default",
            "src.identity=spiffe://cluster.local/ns/default/sa/sleep", "dst.addr=10.0.0.2:8080",
            "dst.service=server.prod.svc.cluster.local", "dst.workload=server-0", "dst.namespace=prod",
            "dst.identity=spiffe://cluster.local/ns/prod/sa/server", "direction=inbound",
            // Inbound, the local workload is the server: it sent the 2000-byte response.
            "bytes_sent=2000", "bytes_recv=100", "duration=1500ms", "response_flags=-", "route=hbone",
        ] {
            #expect(line.contains(" \(field)"), "\(field) in \(line)")
        }
        #expect(!line.contains("authz="))  // no decision recorded: no field
        record.recordDecision(AuthorizationDecision(verdict: .allow, reason: "listed", plugin: "allow-list"))
        let decided = AccessLog.line(for: record, format: .json)
        #expect(decided.contains(#""authz":"allow by allow-list: listed""#), "\(decided)")
        record.recordFailure("peer reset", flag: .connectFailure)
        let failed = AccessLog.line(for: record, outcome: "connection failed", format: .text)
        #expect(failed.contains(" error [access] connection failed "))
        #expect(failed.contains("error=\"peer reset\""))
        #expect(failed.contains("response_flags=CONNECT"))
    }

    @Test("the plugin's config is strict and has documented defaults")
    func config() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let registry = PluginRegistry([PluginType(TelemetryPlugin.self)])
        let plan = try ManifestLoader.load(
            yaml: "plugins:\n  - id: telemetry\n", file: "node.yaml", baseDirectory: dir.path, registry: registry)
        let config = try #require(plan.entries.first?.config as? TelemetryPlugin.Config)
        #expect(config.address == SocketAddr("0.0.0.0:15020"))
        #expect(config.flushInterval.duration == .seconds(2))
        #expect(config.seriesGracePeriod.duration == .seconds(300))
        #expect(config.accessLog.enabled == false)
        #expect(config.accessLog.format == .text)
        #expect(config.accessLog.path == nil)
        #expect(throws: ConfigErrors.self) {
            try ManifestLoader.load(
                yaml: "plugins:\n  - id: telemetry\n    config: {accessLog: {formt: json}}\n", file: "node.yaml",
                baseDirectory: dir.path, registry: registry)
        }
        #expect(throws: ConfigErrors.self) {
            try ManifestLoader.load(
                yaml: "plugins:\n  - id: telemetry\n    config: {accessLog: {format: yaml}}\n", file: "node.yaml",
                baseDirectory: dir.path, registry: registry)
        }
    }
}
