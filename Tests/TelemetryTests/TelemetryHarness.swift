import Capture
import Foundation
import Kernel
import LocalConfig
import Logging
import NIOPosix
import Telemetry
import Testing
import TestSupport
import AmbitRuntime

/// An in-process node (local-config + capture + telemetry) over a mesh file the test
/// controls, with the metrics server on an ephemeral port.
final class TelemetryHarness: Sendable {
    let running: RunningNode
    let meshPath: String
    let socks: SocketAddr
    let metrics: SocketAddr

    var node: ProxyNode { running.node }
    var dir: TemporaryDirectory { running.directory }

    init(mesh: String, telemetry: String = "{address: \"127.0.0.1:0\", flushInterval: 100ms}") async throws {
        running = try await RunningNode.start(
            manifest: """
                node: {name: node-a, drainDeadline: 1s}
                admin: {address: "127.0.0.1:0", readinessAddress: "127.0.0.1:0"}
                plugins:
                  - id: local-config
                    config: {path: mesh.yaml, pollInterval: 50ms}
                  - id: capture
                    config: {socks5: {address: "127.0.0.1:0"}}
                  - id: telemetry
                    config: \(telemetry)
                """,
            files: ["mesh.yaml": mesh],
            registry: PluginRegistry([
                PluginType(LocalConfigPlugin.self), PluginType(CapturePlugin.self), PluginType(TelemetryPlugin.self),
            ]),
            logger: Logger(label: "telemetry-test")
        ) { node in
            node.readiness.isReady && node.plugin(CapturePlugin.self)?.captureAddresses.isEmpty == false
                && node.plugin(TelemetryPlugin.self)?.metricsAddress != nil
        }
        meshPath = running.directory.path + "/mesh.yaml"
        socks = running.plugin(CapturePlugin.self)!.captureAddresses.first!
        metrics = running.plugin(TelemetryPlugin.self)!.metricsAddress!
    }

    var telemetry: TelemetryPlugin { node.plugin(TelemetryPlugin.self)! }

    /// Stops the node; its directory stays for the test to read (and remove).
    func stop() async throws {
        try await running.stop(keepingFiles: true)
    }

    /// Scrapes `/metrics` over HTTP, as Prometheus would.
    func scrape(path: String = "/metrics") async throws -> Scrape {
        let (status, body) = try await httpRequest("GET", metrics, path)
        guard status == 200 else { throw TestFailure("scrape \(path): status \(status)") }
        return Scrape(body)
    }

    /// A SOCKS5 connection from `source` to `address:port` (blocking calls: use off the
    /// concurrency threads through `offload`).
    func connect(_ address: SOCKS5Address, _ port: UInt16, from source: String = "127.0.0.1") throws -> SOCKS5Client {
        try SOCKS5Client(proxy: socks, source: IPAddress(source), request: SOCKS5Request(address: address, port: port))
    }
}

/// Sends `count` bytes through `client` and reads the echo back, exactly.
func roundTrip(_ client: SOCKS5Client, _ count: Int) throws {
    let payload = (0..<count).map { UInt8(truncatingIfNeeded: $0) }
    try client.send(payload)
    let echoed = try client.receive(exactly: count)
    guard echoed == payload else { throw TestFailure("echo mismatch") }
}

/// One parsed Prometheus text exposition.
struct Scrape: Sendable, CustomStringConvertible {
    struct Sample: Sendable {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    let text: String
    let samples: [Sample]

    init(_ text: String) {
        self.text = text
        samples = text.split(separator: "\n").compactMap(Self.parse)
    }

    var description: String { text }

    /// Samples of `name` whose labels include every pair of `matching`.
    func samples(_ name: String, _ matching: [String: String] = [:]) -> [Sample] {
        samples.filter { sample in
            sample.name == name && matching.allSatisfy { sample.labels[$0.key] == $0.value }
        }
    }

    /// The sum of the matching samples (0 when none).
    func value(_ name: String, _ matching: [String: String] = [:]) -> Double {
        samples(name, matching).reduce(0) { $0 + $1.value }
    }

    /// `name{a="b",c="d\"e"} 12` → a sample; comments and blank lines → nil.
    private static func parse(_ line: Substring) -> Sample? {
        guard !line.hasPrefix("#"), !line.isEmpty else { return nil }
        var labels: [String: String] = [:]
        let name: String
        var rest: Substring
        if let brace = line.firstIndex(of: "{") {
            name = String(line[..<brace])
            rest = line[line.index(after: brace)...]
            while !rest.hasPrefix("}") {
                guard let equals = rest.firstIndex(of: "=") else { return nil }
                let key = String(rest[..<equals])
                rest = rest[rest.index(equals, offsetBy: 2)...]  // skip ="
                var value = ""
                var escaped = false
                while let character = rest.first {
                    rest = rest.dropFirst()
                    if escaped {
                        value.append(character == "n" ? "\n" : character)
                        escaped = false
                    } else if character == "\\" {
                        escaped = true
                    } else if character == "\"" {
                        break
                    } else {
                        value.append(character)
                    }
                }
                labels[key] = value
                if rest.hasPrefix(",") { rest = rest.dropFirst() }
            }
            rest = rest.dropFirst()
        } else {
            guard let space = line.firstIndex(of: " ") else { return nil }
            name = String(line[..<space])
            rest = line[space...]
        }
        guard let value = Double(rest.trimmingCharacters(in: .whitespaces)) else { return nil }
        return Sample(name: name, labels: labels, value: value)
    }
}

/// A mesh: the client (127.0.0.1, node-a, no locality), `echo` (127.0.0.2, in us-east1-b)
/// behind service `svc`, `greeter` (127.0.0.5), and a service `empty` without endpoints.
func telemetryMesh(echo: SocketAddr, greeter: SocketAddr, includeGreeter: Bool = true) -> String {
    let greeterEntry = """
        - uid: Kubernetes//v1/Pod/default/greeter-0
          name: greeter-0
          namespace: default
          serviceAccount: greeter
          workloadIps: ["\(greeter.ip)"]
          labels: {app: greeter}
        """
    return """
        workloads:
        - uid: Kubernetes//v1/Pod/default/client-0
          name: client-0
          namespace: default
          serviceAccount: sleep
          workloadIps: ["127.0.0.1"]
          node: node-a
          workloadName: client
          labels: {app: client, version: v2}
        - uid: Kubernetes//v1/Pod/default/echo-0
          name: echo-0
          namespace: default
          serviceAccount: echo
          workloadIps: ["\(echo.ip)"]
          canonicalName: echo
          canonicalRevision: v1
          workloadName: echo
          clusterId: cluster-1
          locality: {region: us-east1, zone: us-east1-b, subzone: rack-7}
          services: {"default/svc.default.svc.cluster.local": {80: \(echo.port)}}
        \(includeGreeter ? greeterEntry : "")
        services:
        - name: svc
          namespace: default
          hostname: svc.default.svc.cluster.local
          vips: ["/127.10.0.1"]
          ports: {80: 0}
        - name: empty
          namespace: default
          hostname: empty.default.svc.cluster.local
          vips: ["/127.10.0.2"]
          ports: {80: 80}
        """
}
