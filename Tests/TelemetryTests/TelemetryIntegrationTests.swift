import Capture
import Foundation
import AmbitRuntime
import Kernel
import NIOPosix
import Prometheus
import Telemetry
import Testing
import TestSupport

@Suite("telemetry: Istio TCP metrics from real traffic through an in-process node", .serialized)
struct TelemetryIntegrationTests {
    static let svc = "svc.default.svc.cluster.local"

    @Test("N bytes each way give source-reporter byte counters of exactly N; opened and closed match; labels are Istio's")
    func exactBytesAndLabels() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start("127.0.0.2:0", group: group)
        let greeter = try await EchoServer.start("127.0.0.5:0", name: "greeter", group: group)
        let harness = try await TelemetryHarness(mesh: telemetryMesh(echo: echo.address, greeter: greeter.address))

        // Three connections to the service by name, 100 000 bytes each way on each.
        let size = 100_000
        for _ in 0..<3 {
            try await offload { [harness] in
                let client = try harness.connect(.domain(Self.svc), 80)
                guard client.reply == .succeeded else { throw TestFailure("reply \(client.reply)") }
                try roundTrip(client, size)
                client.finishSending()
                guard try client.receiveToEnd().isEmpty else { throw TestFailure("extra bytes") }
            }
        }
        // One to the greeter by IP: the response is 9 bytes longer than the request
        // ("greeter: "), which tells the two directions apart.
        try await offload { [harness, greeter] in
            let client = try harness.connect(.ip(greeter.address.ip), greeter.address.port)
            try client.send(Array(repeating: 1, count: 1000))
            client.finishSending()
            guard try client.receiveToEnd().count == 1009 else { throw TestFailure("greeter answer") }
        }
        #expect(await eventually { harness.telemetry.tcpMetrics.openConnections == 0 })

        let scrape = try await harness.scrape()
        let toService = ["reporter": "source", "destination_service": Self.svc]
        #expect(scrape.value(IstioTCPMetrics.Name.received, toService) == Double(3 * size))
        #expect(scrape.value(IstioTCPMetrics.Name.sent, toService) == Double(3 * size))
        #expect(scrape.value(IstioTCPMetrics.Name.opened, toService) == 3)
        #expect(scrape.value(IstioTCPMetrics.Name.closed, toService) == 3)

        let toGreeter = ["reporter": "source", "destination_workload": "greeter-0"]
        #expect(scrape.value(IstioTCPMetrics.Name.received, toGreeter) == 1000)  // client → server
        #expect(scrape.value(IstioTCPMetrics.Name.sent, toGreeter) == 1009)  // server → client
        #expect(scrape.value(IstioTCPMetrics.Name.opened) == 4)
        #expect(scrape.value(IstioTCPMetrics.Name.closed) == 4)

        // Every Istio label on every series, with the values the mesh model gives.
        for name in [IstioTCPMetrics.Name.opened, IstioTCPMetrics.Name.closed, IstioTCPMetrics.Name.sent, IstioTCPMetrics.Name.received] {
            for sample in scrape.samples(name) {
                #expect(Set(sample.labels.keys) == Set(IstioLabels.names), "\(name) \(sample.labels)")
            }
        }
        let series = try #require(scrape.samples(IstioTCPMetrics.Name.opened, toService).first).labels
        let expected: [String: String] = [
            "reporter": "source",
            "source_workload": "client", "source_canonical_service": "client", "source_canonical_revision": "v2",
            "source_workload_namespace": "default", "source_principal": "unknown", "source_app": "client",
            "source_version": "v2", "source_cluster": "Kubernetes",
            "destination_service": Self.svc, "destination_service_namespace": "default",
            "destination_service_name": "svc",
            "destination_workload": "echo", "destination_canonical_service": "echo",
            "destination_canonical_revision": "v1", "destination_workload_namespace": "default",
            "destination_principal": "spiffe://cluster.local/ns/default/sa/echo", "destination_app": "echo",
            "destination_version": "v1", "destination_cluster": "cluster-1",
            "request_protocol": "tcp", "response_flags": "-", "connection_security_policy": "unknown",
            // Locality: the destination's region and zone (the subzone is no label); the client has none.
            "source_region": "unknown", "source_zone": "unknown",
            "destination_region": "us-east1", "destination_zone": "us-east1-b",
        ]
        #expect(series == expected)
        // No workload name: the pod name; no canonical labels: app label, then `latest`.
        let greeterSeries = try #require(scrape.samples(IstioTCPMetrics.Name.opened, toGreeter).first).labels
        #expect(greeterSeries["destination_canonical_service"] == "greeter")
        #expect(greeterSeries["destination_canonical_revision"] == "latest")
        #expect(greeterSeries["destination_service"] == "unknown")

        // The same text on Istio's other path; other paths 404.
        let stats = try await harness.scrape(path: "/stats/prometheus")
        #expect(stats.value(IstioTCPMetrics.Name.received, toService) == Double(3 * size))
        #expect(try await httpRequest("GET", harness.metrics, "/nope").status == 404)
        #expect(scrape.samples("istio_build", ["component": "ambit", "tag": AmbitVersion.current]).count == 1)
        #expect(scrape.value("process_open_fds") > 0)

        try await harness.stop()
        await echo.close()
        await greeter.close()
    }

    @Test("a long-lived connection's byte counters move before it closes, and stay exact at close")
    func longLived() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start("127.0.0.2:0", group: group)
        let greeter = try await EchoServer.start("127.0.0.5:0", name: "greeter", group: group)
        let harness = try await TelemetryHarness(mesh: telemetryMesh(echo: echo.address, greeter: greeter.address))
        let match = ["destination_service": Self.svc]

        let client = try await offload { [harness] in try harness.connect(.domain(Self.svc), 80) }
        try await offload { try roundTrip(client, 1000) }
        // Read through the plugin (the periodic flush), not a scrape, which would flush too.
        #expect(await eventually { Self.value(harness, IstioTCPMetrics.Name.received, match) == 1000 })
        #expect(Self.value(harness, IstioTCPMetrics.Name.closed, match) == 0)
        try await offload { try roundTrip(client, 500) }
        let scrape = try await harness.scrape()
        #expect(scrape.value(IstioTCPMetrics.Name.received, match) == 1500)
        #expect(scrape.value(IstioTCPMetrics.Name.sent, match) == 1500)
        #expect(scrape.value(IstioTCPMetrics.Name.opened, match) == 1)

        try await offload {
            try roundTrip(client, 7)
            client.finishSending()
            _ = try client.receiveToEnd()
            client.close()
        }
        #expect(await eventually { Self.value(harness, IstioTCPMetrics.Name.closed, match) == 1 })
        let final = try await harness.scrape()
        #expect(final.value(IstioTCPMetrics.Name.received, match) == 1507)
        #expect(final.value(IstioTCPMetrics.Name.sent, match) == 1507)
        try await harness.stop()
        await echo.close()
        await greeter.close()
    }

    /// Reads the registry without the scrape's own flush, to see the periodic flush.
    static func value(_ harness: TelemetryHarness, _ name: String, _ matching: [String: String]) -> Double {
        Scrape(harness.telemetry.registry.emitToString()).value(name, matching)
    }

    @Test("refused connections: upstream connect failure is CONNECT; a service without endpoints is refused before any attempt and adds no series, as in ztunnel")
    func refusals() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start("127.0.0.2:0", group: group)
        let greeter = try await EchoServer.start("127.0.0.5:0", name: "greeter", group: group)
        let harness = try await TelemetryHarness(mesh: telemetryMesh(echo: echo.address, greeter: greeter.address))
        let closedPort = freePort()

        let replies = try await offload { [harness] in
            [
                try harness.connect(.ip(IPAddress("127.0.0.5")!), closedPort).reply,
                try harness.connect(.ip(IPAddress("127.10.0.2")!), 80).reply,
            ]
        }
        #expect(replies[0] != .succeeded)
        #expect(replies[1] == .hostUnreachable)
        let scrape = try await harness.scrape()
        let toGreeter = ["destination_workload": "greeter-0"]
        #expect(scrape.value(IstioTCPMetrics.Name.closed, toGreeter.merging(["response_flags": "CONNECT"]) { $1 }) == 1)
        #expect(scrape.value(IstioTCPMetrics.Name.opened, toGreeter.merging(["response_flags": "-"]) { $1 }) == 1)
        #expect(scrape.value("istio_tcp_connections_failed_total", toGreeter.merging(["response_flags": "CONNECT"]) { $1 }) == 1)
        #expect(scrape.value("istio_tcp_connections_failed_total") == 1, "refusals before any attempt are not failures")
        #expect(scrape.value(IstioTCPMetrics.Name.received, toGreeter) == 0)
        let toEmpty = ["destination_service": "empty.default.svc.cluster.local", "destination_service_name": "empty"]
        #expect(scrape.value(IstioTCPMetrics.Name.closed, toEmpty) == 0)
        #expect(scrape.value(IstioTCPMetrics.Name.opened, toEmpty) == 0)
        #expect(!scrape.text.contains("empty.default.svc.cluster.local"), "a refusal before any attempt adds no series")
        #expect(scrape.value(IstioTCPMetrics.Name.opened) == scrape.value(IstioTCPMetrics.Name.closed))
        try await harness.stop()
        await echo.close()
        await greeter.close()
    }

    @Test("a workload removed from the mesh config disappears from the scrape after the grace period")
    func departedWorkload() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start("127.0.0.2:0", group: group)
        let greeter = try await EchoServer.start("127.0.0.5:0", name: "greeter", group: group)
        let harness = try await TelemetryHarness(
            mesh: telemetryMesh(echo: echo.address, greeter: greeter.address),
            telemetry: "{address: \"127.0.0.1:0\", flushInterval: 50ms, seriesGracePeriod: 1s}")
        try await offload { [harness, greeter] in
            let client = try harness.connect(.ip(greeter.address.ip), greeter.address.port)
            client.finishSending()
            _ = try client.receiveToEnd()
        }
        #expect(await eventually { harness.telemetry.tcpMetrics.openConnections == 0 })
        #expect(try await harness.scrape().samples(IstioTCPMetrics.Name.opened, ["destination_workload": "greeter-0"]).count == 1)

        try telemetryMesh(echo: echo.address, greeter: greeter.address, includeGreeter: false)
            .write(toFile: harness.meshPath, atomically: true, encoding: .utf8)
        let removedAt = ContinuousClock.now
        #expect(await eventually {
            (try? await harness.scrape().samples(IstioTCPMetrics.Name.opened, ["destination_workload": "greeter-0"]).isEmpty) == true
        })
        // Not before the grace period (the file change itself takes one poll to settle).
        #expect(removedAt.duration(to: .now) >= .milliseconds(900))
        // Other series stay.
        try await offload { [harness] in
            let client = try harness.connect(.domain(Self.svc), 80)
            client.finishSending()
            _ = try client.receiveToEnd()
        }
        #expect(await eventually { (try? await harness.scrape().value(IstioTCPMetrics.Name.closed)) == 1 })
        try await harness.stop()
        await echo.close()
        await greeter.close()
    }

    @Test("access log: one JSON line per connection with addresses, workloads, bytes, duration and errors")
    func accessLogJSON() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start("127.0.0.2:0", group: group)
        let greeter = try await EchoServer.start("127.0.0.5:0", name: "greeter", group: group)
        let harness = try await TelemetryHarness(
            mesh: telemetryMesh(echo: echo.address, greeter: greeter.address),
            telemetry: "{address: \"127.0.0.1:0\", accessLog: {enabled: true, format: json, path: access.log}}")
        let closedPort = freePort()
        try await offload { [harness] in
            let client = try harness.connect(.domain(Self.svc), 80)
            try roundTrip(client, 4321)
            client.finishSending()
            _ = try client.receiveToEnd()
            _ = try harness.connect(.ip(IPAddress("127.0.0.5")!), closedPort)
        }
        #expect(await eventually { harness.telemetry.tcpMetrics.openConnections == 0 })
        try await harness.stop()  // cleanup writes what is queued

        let text = try String(contentsOfFile: harness.dir.path + "/access.log", encoding: .utf8)
        let lines = text.split(separator: "\n")
        try #require(lines.count == 2, "\(text)")
        let objects = try lines.map { try #require(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        let complete = try #require(objects.first { $0["message"] as? String == "connection complete" })
        #expect(complete["label"] as? String == "access")
        #expect(complete["src.addr"] as? String == "127.0.0.1:\((complete["src.addr"] as? String)?.split(separator: ":").last ?? "")")
        #expect(complete["src.workload"] as? String == "client-0")
        #expect(complete["src.namespace"] as? String == "default")
        // The endpoint the service address was sent to, as ztunnel logs it.
        #expect(complete["dst.addr"] as? String == "\(echo.address)")
        #expect(complete["dst.service"] as? String == Self.svc)
        #expect(complete["dst.workload"] as? String == "echo-0")
        #expect(complete["src.cluster"] as? String == "Kubernetes")
        #expect(complete["dst.cluster"] as? String == "cluster-1")
        #expect(complete["dst.hbone_addr"] == nil, "plain TCP has no tunnel authority")
        #expect(complete["direction"] as? String == "outbound")
        #expect(complete["bytes_sent"] as? String == "4321")
        #expect(complete["bytes_recv"] as? String == "4321")
        #expect((complete["duration"] as? String)?.hasSuffix("ms") == true)
        #expect(complete["response_flags"] as? String == "-")
        #expect(complete["error"] == nil)
        let failed = try #require(objects.first { $0["message"] as? String == "connection failed" })
        #expect(failed["response_flags"] as? String == "CONNECT")
        #expect(failed["level"] as? String == "error")
        #expect((failed["error"] as? String)?.contains("connect to 127.0.0.5:\(closedPort) failed") == true)
        harness.dir.remove()
        await echo.close()
        await greeter.close()
    }

    @Test("the scraped text passes promtool check metrics")
    func promtool() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start("127.0.0.2:0", group: group)
        let greeter = try await EchoServer.start("127.0.0.5:0", name: "greeter", group: group)
        let harness = try await TelemetryHarness(mesh: telemetryMesh(echo: echo.address, greeter: greeter.address))
        let closedPort = freePort()
        try await offload { [harness] in
            let client = try harness.connect(.domain(Self.svc), 80)
            try roundTrip(client, 10)
            client.finishSending()
            _ = try client.receiveToEnd()
            _ = try harness.connect(.ip(IPAddress("127.0.0.5")!), closedPort)
            _ = try harness.connect(.ip(IPAddress("127.10.0.2")!), 80)
        }
        #expect(await eventually { harness.telemetry.tcpMetrics.openConnections == 0 })
        let scrape = try await harness.scrape()
        try await harness.stop()
        await echo.close()
        await greeter.close()

        let (status, output) = try runPromtool(on: scrape.text)
        #expect(status == 0, "promtool check metrics failed:\n\(output)\n--- scraped text ---\n\(scrape.text)")
        // The echo and the failed connect; the refusal (no endpoint) adds no series.
        #expect(scrape.value(IstioTCPMetrics.Name.closed) == 2)
    }
}

/// Runs `promtool check metrics` with `text` on stdin. Fails (never skips) when promtool
/// is missing, since the check is part of the acceptance criteria.
func runPromtool(on text: String) throws -> (status: Int32, output: String) {
    let candidates = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
    guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw TestFailure(
            "promtool not found: install Debian's `prometheus` package (apt-get install -y prometheus); .ci/run should")
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = ["check", "metrics"]
    let input = Pipe()
    let output = Pipe()
    process.standardInput = input
    process.standardOutput = output
    process.standardError = output
    try process.run()
    input.fileHandleForWriting.write(Data(text.utf8))
    try input.fileHandleForWriting.close()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}
