import Certificates
import ConfigYAML
import Foundation
import Kernel
import LocalConfig
import Logging
import Testing
import TestSupport

@testable import AmbitRuntime

/// The mesh behind the golden dump: two HBONE workloads on node-a (client, echo-1), one
/// TCP workload and a waypoint on node-b, a service with a waypoint and every optional
/// field, and two policies using each kind of match.
private let goldenMesh = """
    workloads:
    - uid: Kubernetes//v1/Pod/default/client
      name: client
      namespace: default
      serviceAccount: client
      workloadIps: ["127.0.13.2"]
      protocol: HBONE
      node: node-a
      canonicalName: client
      canonicalRevision: v1
      workloadName: client
    - uid: Kubernetes//v1/Pod/default/echo-1
      name: echo-1
      namespace: default
      serviceAccount: echo
      workloadIps: ["127.0.13.3"]
      protocol: HBONE
      node: node-a
      waypoint: {destination: "default/waypoint.default.svc.cluster.local", hboneMtlsPort: 15008}
      services: {"default/echo.default.svc.cluster.local": {80: 8080}}
      locality: {region: r1, zone: z1}
      labels: {app: echo}
      authorizationPolicies: ["default/allow-client"]
    - uid: Kubernetes//v1/Pod/default/echo-2
      name: echo-2
      namespace: default
      serviceAccount: echo
      workloadIps: ["10.13.1.4"]
      protocol: TCP
      node: node-b
      network: net-b
      status: Unhealthy
      capacity: 2
      services: {"default/echo.default.svc.cluster.local": {80: 9090}, "default/later.default.svc.cluster.local": {81: 8181}}
    - uid: Kubernetes//v1/Pod/default/waypoint
      name: waypoint
      namespace: default
      serviceAccount: waypoint
      workloadIps: ["10.13.1.9"]
      protocol: HBONE
      node: node-b
      applicationTunnel: {protocol: PROXY}
      services: {"default/waypoint.default.svc.cluster.local": {15008: 15008}}
    services:
    - name: echo
      namespace: default
      hostname: echo.default.svc.cluster.local
      vips: ["/10.13.0.1"]
      cidrVips: [{network: "", cidr: 10.14.0.0/16}]
      ports: {80: 8080}
      subjectAltNames: ["spiffe://cluster.local/ns/default/sa/echo"]
      waypoint: {destination: "default/waypoint.default.svc.cluster.local", hboneMtlsPort: 15008}
      loadBalancer: {routingPreferences: [Zone], mode: Failover, healthPolicy: OnlyHealthy}
      ipFamilies: IPv4
    - name: waypoint
      namespace: default
      hostname: waypoint.default.svc.cluster.local
      vips: ["/10.13.0.9"]
      ports: {15008: 15008}
    policies:
    - name: allow-client
      namespace: default
      scope: WorkloadSelector
      selector: {app: echo}
      action: Allow
      rules:
      - - - principals: [{Exact: "cluster.local/ns/default/sa/client"}, {Prefix: "cluster.local/ns/team/"}]
            serviceAccounts: [{namespace: default, serviceAccount: client}]
            destinationPorts: [8080]
    - name: deny-outside
      namespace: istio-system
      scope: Global
      action: Deny
      rules:
      - - - namespaces: [{Suffix: "-sandbox"}]
            notSourceIps: ["127.0.13.0/24"]
        - - notPrincipals: ["*"]
    """

private func goldenFixture() throws -> Data {
    let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("Fixtures/istioctl-ztunnel-config-dump.json")
    return try Data(contentsOf: path)
}

/// Checks the volatile fields of each certificate (PEM, serial, validity) and replaces them
/// with the fixture's placeholders.
private func normalizeCertificates(_ dump: inout IstioctlDump) {
    for index in dump.certificates.elements.indices {
        func check(_ certs: [IstioctlCert]) -> [IstioctlCert] {
            certs.map { cert in
                let pem = Data(base64Encoded: cert.pem).map { String(decoding: $0, as: UTF8.self) }
                #expect(pem?.hasPrefix("-----BEGIN CERTIFICATE-----\n") == true, "pem is base64 of the PEM text")
                #expect(pem?.contains("PRIVATE KEY") == false)
                #expect(!cert.serialNumber.isEmpty && cert.serialNumber.allSatisfy(\.isNumber), "decimal serial")
                let from = try? Date(cert.validFrom, strategy: .iso8601)
                let to = try? Date(cert.expirationTime, strategy: .iso8601)
                #expect(from != nil && to != nil && from! < Date() && Date() < to!, "RFC 3339 validity around now")
                var placeholder = cert
                placeholder.pem = "<pem>"
                placeholder.serialNumber = "<serial>"
                placeholder.validFrom = "<time>"
                placeholder.expirationTime = "<time>"
                return placeholder
            }
        }
        dump.certificates.elements[index].certChain = check(dump.certificates.elements[index].certChain)
        dump.certificates.elements[index].rootCerts = check(dump.certificates.elements[index].rootCerts)
    }
}

/// Adds a section to `/config_dump`, as an xDS client would add its connection state.
final class DumpSectionPlugin: Plugin, ConfigDumpSectionProvider {
    struct Config: Decodable, Sendable {}
    struct Section: Encodable, Sendable {
        var address = "istiod.istio-system.svc:15012"
        var state = "connected"
    }
    static let id = "dump-section"
    static let summary = "test: adds a config_dump section"
    init(config: Config, context: PluginContext) {}
    var configDumpKey: String { "xds" }
    func configDumpSection() async -> any Encodable & Sendable { Section() }
}

/// Tries to take over a kernel key, which must not work.
final class ShadowingDumpPlugin: Plugin, ConfigDumpSectionProvider {
    struct Config: Decodable, Sendable {}
    static let id = "shadowing-section"
    static let summary = "test: claims the workloads key"
    init(config: Config, context: PluginContext) {}
    var configDumpKey: String { "workloads" }
    func configDumpSection() async -> any Encodable & Sendable { "not the workloads" }
}

/// `decimal` in lower-case hex without leading zeros, as Go's `%x` of a `big.Int` prints it.
private func hex(fromDecimal decimal: String) -> String {
    var bytes: [UInt8] = [0]  // little-endian base 256
    for digit in decimal.compactMap(\.wholeNumberValue) {
        var carry = digit
        for index in bytes.indices {
            let value = Int(bytes[index]) * 10 + carry
            bytes[index] = UInt8(value & 0xff)
            carry = value >> 8
        }
        while carry > 0 {
            bytes.append(UInt8(carry & 0xff))
            carry >>= 8
        }
    }
    let text = bytes.reversed().map { byte in
        let digits = String(byte, radix: 16)
        return digits.count == 1 ? "0" + digits : digits
    }.joined()
    let trimmed = text.drop { $0 == "0" }
    return trimmed.isEmpty ? "0" : String(trimmed)
}

@Suite("config_dump golden: istioctl ztunnel-config reads it")
struct ConfigDumpGoldenTests {
    static let registry = PluginRegistry([PluginType(LocalConfigPlugin.self), PluginType(CertificatesPlugin.self)])

    @Test("the dump decodes strictly into istioctl's configdump structs and equals the fixture")
    func golden() async throws {
        let directory = try TemporaryDirectory()
        let root = try CertificateAuthority.makeRoot(trustDomain: "cluster.local")
        _ = try CertificateAuthority.write(root, to: directory.path + "/ca", force: false)
        let manifest = """
            node: {name: node-a, drainDeadline: 100ms}
            admin: {address: "127.0.0.1:0", readinessAddress: null}
            plugins:
              - id: local-config
                config: {path: mesh.yaml, watch: false}
              - id: certificates
                config: {backend: {local: {caDirectory: ca}}}
            """
        var logger = Logger(label: "golden")
        logger.logLevel = .critical
        let running = try await TestSupport.RunningNode.start(
            manifest: manifest, files: ["mesh.yaml": goldenMesh], registry: Self.registry, logger: logger,
            directory: directory, until: { $0.adminAddress != nil && $0.plugins.count == 2 && $0.readiness.isReady })
        defer { directory.remove() }
        do {
            let node = running.node
            let mesh = node.mesh.snapshot
            let client = try #require(mesh.workloads["Kubernetes//v1/Pod/default/client"])
            let echo = try #require(mesh.workloads["Kubernetes//v1/Pod/default/echo-1"])
            let service = try #require(mesh.services[NamespacedHostname(namespace: "default", hostname: "echo.default.svc.cluster.local")])
            // One connection each way, as the outbound and inbound paths record them.
            let outbound = ConnectionRecord(
                direction: .outbound, source: SocketAddr("127.0.13.2:40000")!, destination: SocketAddr("10.13.0.1:80")!,
                sourceWorkload: client, destinationWorkload: echo, destinationService: service, route: "hbone",
                isMutualTLS: true, tunnelAuthority: "127.0.13.3:8080", transportDestination: SocketAddr("127.0.13.3:15008")!)
            let inbound = ConnectionRecord(
                governed: .inbound, source: SocketAddr("127.0.13.2:40001")!, destination: SocketAddr("127.0.13.3:8080")!,
                sourceWorkload: client, destinationWorkload: echo, peerIdentity: client.identity, route: "hbone",
                isMutualTLS: true, tunnelAuthority: "127.0.13.3:8080")
            node.connections.register(outbound)
            node.connections.register(inbound)
            defer {
                node.connections.unregister(outbound)
                node.connections.unregister(inbound)
            }
            let certificates = try #require(node.plugin(CertificatesPlugin.self))
            #expect(
                await eventually {
                    certificates.certificateStatuses.filter { $0.state == "available" }.count == 2
                }, "both local HBONE identities prefetched")

            let admin = try #require(node.adminAddress)
            let response = try await httpRequest("GET", admin, "/config_dump")
            #expect(response.status == 200)
            var live = try JSONDecoder().decode(IstioctlDump.self, from: Data(response.body.utf8))
            // istioctl prints the decimal serial in hex: it must be the leaf's serial.
            for status in certificates.certificateStatuses {
                let dumped = live.certificates.elements.first { $0.identity == status.identity.description }
                let decimal = try #require(dumped?.certChain.first?.serialNumber)
                #expect(hex(fromDecimal: decimal) == String((status.serial ?? "").drop { $0 == "0" }))
            }
            normalizeCertificates(&live)
            let expected = try JSONDecoder().decode(IstioctlDump.self, from: goldenFixture())
            #expect(live.workloads == expected.workloads)
            #expect(live.services == expected.services)
            #expect(live.policies == expected.policies)
            #expect(live.certificates == expected.certificates)
            #expect(live.workloadState == expected.workloadState)
            #expect(live == expected)

            // Ambit's own keys are there beside ztunnel's, and nothing secret is.
            #expect(!response.body.contains("PRIVATE KEY"))
            let object = try #require(try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any])
            #expect((object["plugins"] as? [[String: Any]])?.compactMap { $0["id"] as? String } == ["local-config", "certificates"])
            #expect((object["connections"] as? [[String: Any]])?.count == 2)
            #expect((object["node"] as? [String: String])?["name"] == "node-a")
            let staged = object["stagedServices"] as? [String: [String: [String: Any]]]
            let stagedEndpoint = staged?["default/later.default.svc.cluster.local"]?["Kubernetes//v1/Pod/default/echo-2"]
            #expect(stagedEndpoint?["port"] as? [String: Int] == ["81": 8181])
            let workloads = try #require(object["workloads"] as? [[String: Any]])
            let echoView = try #require(workloads.first { $0["name"] as? String == "echo-1" })
            #expect(echoView["services"] as? [String] == ["default/echo.default.svc.cluster.local"])
            #expect(echoView["networkMode"] as? String == "Standard")
            #expect(echoView["origin"] as? String == "local-config")
            let waypoint = echoView["waypoint"] as? [String: Any]
            #expect(waypoint?["hboneMtlsPort"] as? Int == 15008)
            let waypointView = try #require(workloads.first { $0["name"] as? String == "waypoint" })
            let tunnel = try #require(waypointView["applicationTunnel"] as? [String: Any])
            #expect(tunnel["port"] is NSNull, "ztunnel writes an absent port as null")
            let policies = try #require(object["policies"] as? [[String: Any]])
            #expect(policies.first?["selector"] as? [String: String] == ["app": "echo"])
            #expect(policies.first?["dryRun"] as? Bool == false)
            let certs = try #require(object["certificates"] as? [[String: Any]])
            #expect(certs.first?["fetchState"] as? String == "available")
        } catch {
            await running.stopQuietly()
            throw error
        }
        try await running.stop()
    }

    @Test("plugins add sections of their own (ConfigDumpSectionProvider) but cannot replace the kernel's")
    func pluginSections() async throws {
        let running = try await TestSupport.RunningNode.start(
            manifest: """
                node: {name: node-a, drainDeadline: 100ms}
                admin: {address: "127.0.0.1:0", readinessAddress: null}
                plugins:
                  - id: dump-section
                  - id: shadowing-section
                """,
            registry: PluginRegistry([PluginType(DumpSectionPlugin.self), PluginType(ShadowingDumpPlugin.self)]),
            logger: Logger(label: "sections") { _ in SwiftLogNoOpLogHandler() },
            until: { $0.adminAddress != nil && $0.plugins.count == 2 && $0.readiness.isReady })
        do {
            let response = try await httpRequest("GET", try #require(running.node.adminAddress), "/config_dump")
            let object = try #require(try JSONSerialization.jsonObject(with: Data(response.body.utf8)) as? [String: Any])
            #expect(object["xds"] as? [String: String] == ["address": "istiod.istio-system.svc:15012", "state": "connected"])
            #expect(object["workloads"] as? [Any] != nil, "the kernel's workloads stay")
        } catch {
            await running.stopQuietly()
            throw error
        }
        try await running.stop()
    }

    @Test("the mirror is strict: unknown keys and missing required keys fail, absent optional ones are Go's zero values")
    func strictMirror() throws {
        let workload = #"{"uid":"u","workloadIps":[],"protocol":"TCP","name":"n","namespace":"ns","clusterId":"c","status":"Healthy","capacity":1"#
        let decoded = try JSONDecoder().decode(IstioctlWorkload.self, from: Data((workload + "}").utf8))
        #expect(decoded.node == "" && decoded.serviceAccount == "" && decoded.waypoint == nil)
        #expect(throws: (any Error).self) {
            try JSONDecoder().decode(IstioctlWorkload.self, from: Data((workload + #","nodeName":"x"}"#).utf8))
        }
        #expect(throws: (any Error).self) {
            try JSONDecoder().decode(IstioctlWorkload.self, from: Data(workload.replacingOccurrences(of: #","capacity":1"#, with: "}").utf8))
        }
        // The fixture itself is in istioctl's shape.
        _ = try JSONDecoder().decode(IstioctlDump.self, from: goldenFixture())
        // istioctl also takes maps where ztunnel writes lists.
        let map = #"{"workloads":{"a":\#(workload)}},"services":[],"policies":[],"certificates":{},"workloadState":{}}"#
        #expect(try JSONDecoder().decode(IstioctlDump.self, from: Data(map.utf8)).workloads.elements.map(\.uid) == ["u"])
    }

    @Test("plugin configs in the dump have token values redacted, token file paths kept")
    func redaction() throws {
        let config = try ConfigNode.parse(
            yaml: "{path: mesh.yaml, tokens: {s3cr3t-a: node-a}, tokenFile: /var/run/token, nested: [{password: hunter2}]}",
            file: "n.yaml")
        let rendered = ConfigDump.encode(ConfigDump.ConfigJSON(config.value))
        #expect(!rendered.contains("s3cr3t") && !rendered.contains("hunter2"))
        #expect(rendered.contains("/var/run/token") && rendered.contains("mesh.yaml"))
    }
}
