import Capture
import Telemetry
import Foundation
import Kernel
import LocalConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The demo's built-in mesh, its backends and its scripted connections.
enum DemoMesh {
    /// The local config the demo node reads, in ztunnel's local-config format.
    static let meshYAML = """
        # The demo mesh: one client, a service with three endpoints (one unhealthy),
        # an HBONE workload, and a service with no endpoints. All on loopback.
        workloads:
        - uid: demo//v1/Pod/default/sleep
          name: sleep
          namespace: default
          serviceAccount: sleep
          workloadIps: ["127.0.0.10"]
          node: demo-node
        - uid: demo//v1/Pod/default/echo-v1
          name: echo-v1
          namespace: default
          serviceAccount: echo
          workloadIps: ["127.0.0.11"]
          node: demo-node
          services: {"default/echo.default.svc.cluster.local": {80: 9080}}
        - uid: demo//v1/Pod/default/echo-v2
          name: echo-v2
          namespace: default
          serviceAccount: echo
          workloadIps: ["127.0.0.12"]
          node: demo-node
          services: {"default/echo.default.svc.cluster.local": {80: 9080}}
        - uid: demo//v1/Pod/default/echo-v3
          name: echo-v3
          namespace: default
          serviceAccount: echo
          workloadIps: ["127.0.0.13"]
          node: demo-node
          status: Unhealthy
          services: {"default/echo.default.svc.cluster.local": {80: 9080}}
        - uid: demo//v1/Pod/default/reviews
          name: reviews
          namespace: default
          serviceAccount: reviews
          workloadIps: ["127.0.0.14"]
          protocol: HBONE
          node: demo-node
        services:
        - name: echo
          namespace: default
          hostname: echo.default.svc.cluster.local
          vips: ["/127.10.0.1"]
          ports: {80: 9080}
        - name: drained
          namespace: default
          hostname: drained.default.svc.cluster.local
          vips: ["/127.10.0.2"]
          ports: {80: 8080}
        """

    static func manifestYAML(meshPath: String) -> String {
        """
        node:
          name: demo-node
          threads: 2
          drainDeadline: 2s
        admin:
          address: 127.0.0.1:0
          readinessAddress: 127.0.0.1:0
        plugins:
          - id: local-config
            config:
              path: \(meshPath)
          - id: capture
            config:
              socks5:
                address: 127.0.0.1:0
          - id: telemetry
            config:
              address: 127.0.0.1:0
          - id: demo-recorder
        """
    }

    /// One scripted connection and what should happen to it.
    struct Scenario {
        var title: String
        var target: SOCKS5Request
        var expectation: Expectation

        enum Expectation {
            case served(by: Set<String>, route: String)
            case refused(SOCKS5Reply)
        }
    }

    static let scenarios: [Scenario] = [
        .init(title: "service by name", target: .init(address: .domain("echo.default.svc.cluster.local"), port: 80),
              expectation: .served(by: ["echo-v1", "echo-v2"], route: "direct")),
        .init(title: "service by name", target: .init(address: .domain("echo.default.svc.cluster.local"), port: 80),
              expectation: .served(by: ["echo-v1", "echo-v2"], route: "direct")),
        .init(title: "service VIP", target: .init(address: .ip(IPAddress("127.10.0.1")!), port: 80),
              expectation: .served(by: ["echo-v1", "echo-v2"], route: "direct")),
        .init(title: "service VIP", target: .init(address: .ip(IPAddress("127.10.0.1")!), port: 80),
              expectation: .served(by: ["echo-v1", "echo-v2"], route: "direct")),
        .init(title: "pod IP", target: .init(address: .ip(IPAddress("127.0.0.12")!), port: 9080),
              expectation: .served(by: ["echo-v2"], route: "direct")),
        .init(title: "outside the mesh", target: .init(address: .ip(IPAddress("127.0.0.50")!), port: 8000),
              expectation: .served(by: ["legacy"], route: "passthrough")),
        .init(title: "HBONE workload", target: .init(address: .ip(IPAddress("127.0.0.14")!), port: 9080),
              expectation: .refused(.notAllowed)),
        .init(title: "no healthy endpoint", target: .init(address: .ip(IPAddress("127.10.0.2")!), port: 80),
              expectation: .refused(.hostUnreachable)),
        .init(title: "self-call", target: .init(address: .ip(IPAddress("127.0.0.1")!), port: 15008),
              expectation: .refused(.notAllowed)),
    ]

    struct Row {
        var index: Int
        var title: String
        var request: String
        var outcome: String
        var route: String
        var bytes: String
    }

    struct Outcome {
        var rows: [Row]
        var failures: [String]
        /// Condensed Istio metric lines scraped from the node after the traffic.
        var metrics: [String] = []

        var table: String {
            let header = ["#", "connection", "request", "outcome", "route", "bytes out/in"]
            let body = rows.map { ["\($0.index)", $0.title, $0.request, $0.outcome, $0.route, $0.bytes] }
            let widths = header.indices.map { column in
                ([header] + body).map { $0[column].count }.max() ?? 0
            }
            func line(_ cells: [String]) -> String {
                cells.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }
                    .joined(separator: "  ")
            }
            let rule = widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")
            return ([line(header), rule] + body.map(line)).joined(separator: "\n")
        }
    }

    /// Starts backends and a node, drives every scenario, drains the node, returns rows.
    static func run(logger: Logger) async throws -> Outcome {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ambit-demo-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let meshPath = directory.appendingPathComponent("mesh.yaml").path
        try meshYAML.write(toFile: meshPath, atomically: true, encoding: .utf8)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var backends: [any Channel] = []
        for (name, address) in [
            ("echo-v1", "127.0.0.11:9080"), ("echo-v2", "127.0.0.12:9080"), ("echo-v3", "127.0.0.13:9080"),
            ("reviews", "127.0.0.14:9080"), ("legacy", "127.0.0.50:8000"),
        ] {
            backends.append(try await NamedEchoServer.start(name: name, address: SocketAddr(address)!, group: group))
        }
        do {
            let outcome = try await drive(meshPath: meshPath, directory: directory.path, logger: logger)
            for backend in backends { try? await backend.close() }
            try? await group.shutdownGracefully()
            return outcome
        } catch {
            for backend in backends { try? await backend.close() }
            try? await group.shutdownGracefully()
            throw error
        }
    }

    private static func drive(meshPath: String, directory: String, logger: Logger) async throws -> Outcome {

        var registry = FirstPartyPlugins.registry
        registry.register(DemoRecorderPlugin.self)
        let plan = try ManifestLoader.load(
            yaml: manifestYAML(meshPath: meshPath), file: "demo-manifest.yaml",
            baseDirectory: directory, registry: registry)
        let node = ProxyNode(plan: plan, logger: logger, handleSignals: false)
        let running = Task { try await node.run() }

        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(20))
        while !(node.readiness.isReady && node.plugin(CapturePlugin.self)?.captureAddresses.isEmpty == false) {
            if clock.now > deadline { throw DemoError("the demo node did not become ready in 20 s") }
            try await Task.sleep(for: .milliseconds(20))
        }
        guard let socks = node.plugin(CapturePlugin.self)?.captureAddresses.first,
            let recorder = node.plugin(DemoRecorderPlugin.self)
        else { throw DemoError("capture plugin is not listening") }

        var rows: [Row] = []
        var failures: [String] = []
        for (offset, scenario) in scenarios.enumerated() {
            let index = offset + 1
            let payload = "hello from sleep #\(index)\n"
            let closedBefore = recorder.closedCount
            let result: DemoResult
            do {
                let (code, response) = try await NIOThreadPool.singleton.runIfActive {
                    try SOCKS5Client.exchange(
                        proxy: socks, source: IPAddress("127.0.0.10"), request: scenario.target,
                        payload: Array(payload.utf8))
                }
                result = .reply(code, response)
            } catch {
                result = .failed("\(error)")
            }
            var row = Row(
                index: index, title: scenario.title, request: scenario.target.demoDescription, outcome: "", route: "-",
                bytes: "-")
            switch result {
            case .reply(let code, let response):
                let served = String(decoding: response, as: UTF8.self).split(separator: ":").first.map(String.init) ?? "?"
                let record = code == .succeeded ? await recorder.waitForClosed(after: closedBefore) : nil
                row.outcome = code == .succeeded ? "served by \(served)" : "refused (\(code))"
                if let record {
                    row.route = record.route
                    row.bytes = "\(record.bytes.sent)/\(record.bytes.received)"
                }
                switch scenario.expectation {
                case .served(let names, let route):
                    if code != .succeeded || !names.contains(served) {
                        failures.append("#\(index) \(scenario.title): expected one of \(names.sorted()), got \(row.outcome)")
                    } else if record?.route != route {
                        failures.append("#\(index) \(scenario.title): expected route \(route), got \(row.route)")
                    } else if response != Array("\(served): \(payload)".utf8) {
                        failures.append("#\(index) \(scenario.title): echoed bytes differ")
                    }
                case .refused(let expected):
                    if code != expected {
                        failures.append("#\(index) \(scenario.title): expected refusal \(expected), got \(row.outcome)")
                    }
                }
            case .failed(let message):
                row.outcome = "error: \(message)"
                failures.append("#\(index) \(scenario.title): \(message)")
            }
            rows.append(row)
        }

        let metrics = node.plugin(TelemetryPlugin.self).map(condensedMetrics) ?? []
        if metrics.isEmpty { failures.append("the telemetry plugin reported no metrics") }
        node.shutdown()
        try await running.value
        return Outcome(rows: rows, failures: failures, metrics: metrics)
    }

    /// The Istio TCP series the demo's traffic produced, with the few labels a reader
    /// needs (the full series carry 23 labels).
    static func condensedMetrics(_ telemetry: TelemetryPlugin) -> [String] {
        let shown = ["reporter", "destination_workload", "destination_service", "response_flags"]
        var lines: [String] = []
        for name in [IstioTCPMetrics.Name.closed, IstioTCPMetrics.Name.received, IstioTCPMetrics.Name.sent] {
            for line in telemetry.sampleLines(of: name) {
                guard let open = line.firstIndex(of: "{"), let close = line.lastIndex(of: "}") else { continue }
                let body = String(line[line.index(after: open)..<close])
                let labels = body.split(separator: ",").compactMap { (pair: Substring) -> (String, String)? in
                    let parts = pair.split(separator: "=", maxSplits: 1)
                    return parts.count == 2 ? (String(parts[0]), String(parts[1])) : nil
                }
                let kept = labels.filter { shown.contains($0.0) }.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
                lines.append("\(name){\(kept)}\(line[line.index(after: close)...])")
            }
        }
        return lines
    }
}

enum DemoResult {
    case reply(SOCKS5Reply, [UInt8])
    case failed(String)
}

extension SOCKS5Request {
    var demoDescription: String {
        switch address {
        case .ip(let ip): return SocketAddr(ip: ip, port: port).description
        case .domain(let name): return "\(name):\(port)"
        }
    }
}

struct DemoError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
