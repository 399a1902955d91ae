import Capture
import HBONE
import CAServer
import Certificates
import Telemetry
import Foundation
import Kernel
import LocalConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import AmbitRuntime

/// The demo's built-in mesh, its backends and its scripted connections.
enum DemoMesh {
    /// The local config the demo node reads, in ztunnel's local-config format.
    static let meshYAML = """
        # The demo mesh: a client, a service with three HBONE endpoints on two nodes (one
        # unhealthy), a workload a policy protects, a plain-TCP workload, and a service
        # with no endpoints. All on loopback.
        workloads:
        - {uid: demo//v1/Pod/default/sleep, name: sleep, namespace: default, serviceAccount: sleep,
           workloadIps: ["127.0.0.10"], protocol: HBONE, node: node-a}
        - {uid: demo//v1/Pod/default/echo-v1, name: echo-v1, namespace: default, serviceAccount: echo,
           workloadIps: ["127.0.0.11"], protocol: HBONE, node: node-a,
           services: {"default/echo.default.svc.cluster.local": {80: 9080}}}
        - {uid: demo//v1/Pod/default/echo-v2, name: echo-v2, namespace: default, serviceAccount: echo,
           workloadIps: ["127.0.0.12"], protocol: HBONE, node: node-b,
           services: {"default/echo.default.svc.cluster.local": {80: 9080}}}
        - {uid: demo//v1/Pod/default/echo-v3, name: echo-v3, namespace: default, serviceAccount: echo,
           workloadIps: ["127.0.0.13"], protocol: HBONE, node: node-b, status: Unhealthy,
           services: {"default/echo.default.svc.cluster.local": {80: 9080}}}
        - {uid: demo//v1/Pod/default/reviews, name: reviews, namespace: default, serviceAccount: reviews,
           workloadIps: ["127.0.0.14"], protocol: HBONE, node: node-b, labels: {app: reviews}}
        - {uid: demo//v1/Pod/default/legacy-db, name: legacy-db, namespace: default, serviceAccount: db,
           workloadIps: ["127.0.0.15"], protocol: TCP, node: node-b}
        services:
        - {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["/127.10.0.1"],
           ports: {80: 9080}}
        - {name: drained, namespace: default, hostname: drained.default.svc.cluster.local, vips: ["/127.10.0.2"],
           ports: {80: 8080}}
        policies:
        - name: deny-sleep-to-reviews
          namespace: default
          scope: WorkloadSelector
          selector: {app: reviews}
          action: Deny
          rules: [[[{principals: ["cluster.local/ns/default/sa/sleep"]}]]]
        """

    /// The CA's manifest: the mesh tells it which identities run on which node.
    static let caManifestYAML = """
        node: {name: demo-ca, drainDeadline: 1s}
        admin: {address: "127.0.0.1:0", readinessAddress: "127.0.0.1:0"}
        plugins:
          - id: local-config
            config: {path: mesh.yaml}
          - id: ca-server
            config:
              listen: 127.0.0.1:0
              caDirectory: ca
              tokens: {token-a: node-a, token-b: node-b}
        """

    /// A node proxy's manifest; only node-a takes SOCKS5 clients.
    static func nodeManifestYAML(name: String, ca: SocketAddr, socks: Bool) -> String {
        """
        node: {name: \(name), drainDeadline: 2s}
        admin: {address: "127.0.0.1:0", readinessAddress: "127.0.0.1:0"}
        plugins:
          - id: local-config
            config: {path: mesh.yaml}
          - id: certificates
            config:
              backend:
                istio: {address: "\(ca)", rootCertificate: ca/root-cert.pem, tokenFile: \(name).token}
          - id: authorization
          - id: capture
            config: {socks5: {enabled: \(socks), address: "127.0.0.1:0"}}
          - id: hbone
          - id: telemetry
            config: {address: "127.0.0.1:0"}
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
            /// Refused by the destination's policy, which records the denial.
            case denied
        }
    }

    static let scenarios: [Scenario] = [
        .init(title: "service by name", target: .init(address: .domain("echo.default.svc.cluster.local"), port: 80),
              expectation: .served(by: ["echo-v1", "echo-v2"], route: "hbone")),
        .init(title: "service by name", target: .init(address: .domain("echo.default.svc.cluster.local"), port: 80),
              expectation: .served(by: ["echo-v1", "echo-v2"], route: "hbone")),
        .init(title: "service VIP", target: .init(address: .ip(IPAddress("127.10.0.1")!), port: 80),
              expectation: .served(by: ["echo-v1", "echo-v2"], route: "hbone")),
        .init(title: "pod, other node", target: .init(address: .ip(IPAddress("127.0.0.12")!), port: 9080),
              expectation: .served(by: ["echo-v2"], route: "hbone")),
        .init(title: "pod, same node", target: .init(address: .ip(IPAddress("127.0.0.11")!), port: 9080),
              expectation: .served(by: ["echo-v1"], route: "hbone")),
        .init(title: "plain-TCP workload", target: .init(address: .ip(IPAddress("127.0.0.15")!), port: 5432),
              expectation: .served(by: ["legacy-db"], route: "direct")),
        .init(title: "outside the mesh", target: .init(address: .ip(IPAddress("127.0.0.50")!), port: 8000),
              expectation: .served(by: ["legacy"], route: "passthrough")),
        .init(title: "denied by policy", target: .init(address: .ip(IPAddress("127.0.0.14")!), port: 9080),
              expectation: .denied),
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
        var identities: String
        var bytes: String
    }

    struct Outcome {
        var rows: [Row]
        var failures: [String]
        /// Condensed Istio metric lines scraped from the node after the traffic.
        var metrics: [String] = []
        /// Each node's workload certificates: identity, serial, expiry.
        var certificates: [String] = []

        var table: String {
            let header = ["#", "connection", "request", "outcome", "path", "identities (as the destination saw them)", "bytes out/in"]
            let body = rows.map { ["\($0.index)", $0.title, $0.request, $0.outcome, $0.route, $0.identities, $0.bytes] }
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
        try meshYAML.write(toFile: directory.appendingPathComponent("mesh.yaml").path, atomically: true, encoding: .utf8)

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var backends: [any Channel] = []
        for (name, address) in [
            ("echo-v1", "127.0.0.11:9080"), ("echo-v2", "127.0.0.12:9080"), ("echo-v3", "127.0.0.13:9080"),
            ("reviews", "127.0.0.14:9080"), ("legacy-db", "127.0.0.15:5432"), ("legacy", "127.0.0.50:8000"),
        ] {
            backends.append(try await NamedEchoServer.start(name: name, address: SocketAddr(address)!, group: group))
        }
        do {
            let outcome = try await drive(directory: directory.path, logger: logger)
            for backend in backends { try? await backend.close() }
            try? await group.shutdownGracefully()
            return outcome
        } catch {
            for backend in backends { try? await backend.close() }
            try? await group.shutdownGracefully()
            throw error
        }
    }

    /// A node started from a manifest, with its run task.
    struct RunningNode {
        let node: ProxyNode
        let task: Task<Void, any Error>

        func stop() async {
            node.shutdown()
            _ = try? await task.value
        }
    }

    static func start(
        _ yaml: String, name: String, directory: String, registry: PluginRegistry, logger: Logger,
        ready: @escaping @Sendable (ProxyNode) -> Bool
    ) async throws -> RunningNode {
        let plan = try ManifestLoader.load(
            yaml: yaml, file: "\(name).yaml", baseDirectory: directory, registry: registry)
        let node = ProxyNode(plan: plan, logger: logger, handleSignals: false)
        let task = Task { try await node.run() }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(20))
        while !(node.readiness.isReady && ready(node)) {
            if clock.now > deadline {
                node.shutdown()
                throw DemoError("\(name) did not become ready in 20 s (pending: \(node.readiness.pending))")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        return RunningNode(node: node, task: task)
    }

    private static func drive(directory: String, logger: Logger) async throws -> Outcome {
        _ = try CertificateAuthority.write(
            CertificateAuthority.makeRoot(trustDomain: "cluster.local"), to: directory + "/ca", force: true)
        try "token-a\n".write(toFile: directory + "/node-a.token", atomically: true, encoding: .utf8)
        try "token-b\n".write(toFile: directory + "/node-b.token", atomically: true, encoding: .utf8)
        var registry = FirstPartyPlugins.registry
        registry.register(DemoRecorderPlugin.self)

        let ca = try await start(
            caManifestYAML, name: "demo-ca", directory: directory, registry: registry, logger: logger
        ) { $0.plugin(CAServerPlugin.self)?.boundAddress != nil }
        var nodes: [RunningNode] = [ca]
        do {
            let outcome = try await driveNodes(
                ca: ca.node.plugin(CAServerPlugin.self)!.boundAddress!, directory: directory, registry: registry,
                logger: logger, started: &nodes)
            for node in nodes.reversed() { await node.stop() }
            return outcome
        } catch {
            for node in nodes.reversed() { await node.stop() }
            throw error
        }
    }

    private static func driveNodes(
        ca: SocketAddr, directory: String, registry: PluginRegistry, logger: Logger, started: inout [RunningNode]
    ) async throws -> Outcome {
        func hboneReady(_ ips: Set<String>) -> @Sendable (ProxyNode) -> Bool {
            { node in
                let bound = Set(node.plugin(HBONEPlugin.self)?.tunnelAddresses.map { "\($0.ip)" } ?? [])
                return ips.isSubset(of: bound)
            }
        }
        let nodeB = try await start(
            nodeManifestYAML(name: "node-b", ca: ca, socks: false), name: "node-b", directory: directory,
            registry: registry, logger: logger, ready: hboneReady(["127.0.0.12", "127.0.0.13", "127.0.0.14"]))
        started.append(nodeB)
        let sleepReady = hboneReady(["127.0.0.10", "127.0.0.11"])
        let nodeA = try await start(
            nodeManifestYAML(name: "node-a", ca: ca, socks: true), name: "node-a", directory: directory,
            registry: registry, logger: logger
        ) { sleepReady($0) && $0.plugin(CapturePlugin.self)?.captureAddresses.isEmpty == false }
        started.append(nodeA)
        guard let socks = nodeA.node.plugin(CapturePlugin.self)?.captureAddresses.first,
            let recorderA = nodeA.node.plugin(DemoRecorderPlugin.self),
            let recorderB = nodeB.node.plugin(DemoRecorderPlugin.self)
        else { throw DemoError("node-a is not listening for SOCKS5") }

        var rows: [Row] = []
        var failures: [String] = []
        for (offset, scenario) in scenarios.enumerated() {
            let index = offset + 1
            let payload = "hello from sleep #\(index)\n"
            let result: DemoResult
            var client: SocketAddr?
            do {
                let (code, response, local) = try await NIOThreadPool.singleton.runIfActive {
                    let connection = try SOCKS5Client(
                        proxy: socks, source: IPAddress("127.0.0.10"), request: scenario.target)
                    guard connection.reply == .succeeded else { return (connection.reply, [UInt8](), connection.localAddress) }
                    try connection.send(Array(payload.utf8))
                    connection.finishSending()
                    return (connection.reply, try connection.receiveToEnd(), connection.localAddress)
                }
                client = local
                result = .reply(code, response)
            } catch {
                result = .failed("\(error)")
            }
            let source = client
            var row = Row(
                index: index, title: scenario.title, request: scenario.target.demoDescription, outcome: "", route: "-",
                identities: "-", bytes: "-")
            switch result {
            case .reply(let code, let response):
                let served = String(decoding: response, as: UTF8.self).split(separator: ":").first.map(String.init) ?? "?"
                row.outcome = code == .succeeded ? "served by \(served)" : "refused (\(code))"
                let outbound =
                    code == .succeeded
                    ? await recorderA.waitForClosed { $0.direction == .outbound && $0.source == source } : nil
                if let outbound {
                    row.route = outbound.route
                    row.bytes = "\(outbound.bytes.sent)/\(outbound.bytes.received)"
                }
                // The destination proxy's own record: who it authenticated.
                var inbound: ConnectionRecord?
                if let outbound, outbound.route == "hbone" {
                    let destinationNode = outbound.destinationWorkload?.node == "node-a" ? recorderA : recorderB
                    // The destination sees the tunnel's connection (sleep's address, another
                    // port): the first inbound record from sleep made after this outbound one.
                    inbound = await destinationNode.waitForClosed {
                        $0.direction == .inbound && $0.source.ip == source?.ip && $0.id > outbound.id
                    }
                }
                if let inbound {
                    let peer = inbound.peerIdentity.map { "\($0.namespace)/\($0.serviceAccount)" } ?? "none"
                    let destination = inbound.destinationWorkload.map { "\($0.namespace)/\($0.serviceAccount)" } ?? "?"
                    row.identities = "mTLS \(peer) -> \(destination)"
                }
                switch scenario.expectation {
                case .served(let names, let route):
                    if code != .succeeded || !names.contains(served) {
                        failures.append("#\(index) \(scenario.title): expected one of \(names.sorted()), got \(row.outcome)")
                    } else if outbound?.route != route {
                        failures.append("#\(index) \(scenario.title): expected path \(route), got \(row.route)")
                    } else if response != Array("\(served): \(payload)".utf8) {
                        failures.append("#\(index) \(scenario.title): echoed bytes differ")
                    } else if route == "hbone" && inbound?.peerIdentity?.serviceAccount != "sleep" {
                        failures.append("#\(index) \(scenario.title): the destination did not authenticate sleep")
                    }
                case .refused(let expected):
                    if code != expected {
                        failures.append("#\(index) \(scenario.title): expected refusal \(expected), got \(row.outcome)")
                    }
                case .denied:
                    let denial = await recorderB.waitForDenied { $0.source.ip == source?.ip }
                    if code == .succeeded || denial == nil {
                        failures.append("#\(index) \(scenario.title): expected a policy denial, got \(row.outcome)")
                    } else if let denial {
                        row.outcome = "denied by default/deny-sleep-to-reviews"
                        row.route = "hbone"
                        row.identities = "mTLS \(denial.peerIdentity.map { "\($0.namespace)/\($0.serviceAccount)" } ?? "none") -> default/reviews"
                    }
                }
            case .failed(let message):
                row.outcome = "error: \(message)"
                failures.append("#\(index) \(scenario.title): \(message)")
            }
            rows.append(row)
        }

        var metrics: [String] = []
        var certificates: [String] = []
        for node in [nodeA, nodeB] {
            metrics += node.node.plugin(TelemetryPlugin.self).map(condensedMetrics) ?? []
            let name = node.node.plan.manifest.node.name
            for status in node.node.plugin(CertificatesPlugin.self)?.certificateStatuses ?? [] {
                let expiry = status.notAfter.map { "\($0)" } ?? "-"
                certificates.append(
                    "\(name)  \(status.identity)  \(status.state)  serial \(status.serial?.prefix(12) ?? "-")…  expires \(expiry)")
            }
        }
        if metrics.isEmpty { failures.append("the telemetry plugins reported no metrics") }
        if certificates.isEmpty { failures.append("no workload certificates were issued") }
        return Outcome(rows: rows, failures: failures, metrics: metrics, certificates: certificates)
    }

    /// The Istio TCP series the demo's traffic produced, with the few labels a reader
    /// needs (the full series carry 23 labels).
    static func condensedMetrics(_ telemetry: TelemetryPlugin) -> [String] {
        let shown = ["reporter", "destination_workload", "destination_service", "response_flags"]
        var lines: [String] = []
        for name in [IstioTCPMetrics.Name.closed] {
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
