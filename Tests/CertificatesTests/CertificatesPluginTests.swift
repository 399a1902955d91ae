import CAServer
import Certificates
import Foundation
import Kernel
import LocalConfig
import Testing
import TestSupport
import AmbitRuntime
import ConfigYAML

@Suite("certificates plugin in a node, and the ambit ca CLI", .serialized)
struct CertificatesPluginTests {
    static let registry = PluginRegistry([
        PluginType(LocalConfigPlugin.self), PluginType(CertificatesPlugin.self), PluginType(CAServerPlugin.self),
    ])

    @Test("config: defaults, exactly one backend, strict keys")
    func config() throws {
        let ok = try ConfigDecoder.decode(
            CertificatesPlugin.Config.self, yaml: "backend: {local: {caDirectory: ca}}", file: "t.yaml")
        #expect(ok.trustDomain == "cluster.local" && ok.ttl == .seconds(86400) && ok.maxConcurrentFetches == 8)
        let istio = try ConfigDecoder.decode(
            CertificatesPlugin.Config.self,
            yaml: "ttl: 1h\nbackend: {istio: {address: 'ca.example:15012', rootCertificate: r.pem, tokenFile: t}}",
            file: "t.yaml")
        guard case .istio(let settings) = istio.backend else { Issue.record("expected istio"); return }
        #expect(settings.clusterId == "Kubernetes" && settings.address == "ca.example:15012")
        #expect(throws: ConfigErrors.self) {
            try ConfigDecoder.decode(CertificatesPlugin.Config.self, yaml: "ttl: 1h", file: "t.yaml")
        }
        #expect(throws: ConfigErrors.self) {
            try ConfigDecoder.decode(
                CertificatesPlugin.Config.self, yaml: "backend: {local: {caDirectory: ca, extra: 1}}", file: "t.yaml")
        }
        #expect(throws: ConfigErrors.self) {
            try ConfigDecoder.decode(
                CertificatesPlugin.Config.self,
                yaml: "backend: {local: {caDirectory: ca}, istio: {address: 'a:1', rootCertificate: r, tokenFile: t}}",
                file: "t.yaml")
        }
        #expect(throws: ConfigErrors.self) {
            try ConfigDecoder.decode(CAServerPlugin.Config.self, yaml: "caDirectory: ca", file: "t.yaml")
        }
    }

    @Test("a node prefetches its local HBONE identities through the CA server, lists them in /config_dump, forgets departed ones")
    func nodeWithCAServer() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let ca = try await RunningCA.start(fixture)
        let nodeMesh = try fixture.dir.write("node-mesh.yaml", meshYAML)
        let yaml = """
            node: {name: node-a, drainDeadline: 100ms}
            admin: {address: "127.0.0.1:0", readinessAddress: null}
            plugins:
              - id: local-config
                config: {path: node-mesh.yaml, pollInterval: 50ms}
              - id: certificates
                config:
                  ttl: 1h
                  backend:
                    istio: {address: "127.0.0.1:\(ca.address.port)", rootCertificate: ca/root-cert.pem, tokenFile: token-a}
            """
        let plan = try ManifestLoader.load(yaml: yaml, file: "node.yaml", baseDirectory: fixture.dir.path, registry: Self.registry)
        let node = ProxyNode(plan: plan, logger: quietLogger("node"), handleSignals: false)
        let running = Task { try await node.run() }
        let plugin = try #require(await eventually { node.plugin(CertificatesPlugin.self)?.cache != nil } ? node.plugin(CertificatesPlugin.self) : nil)
        let provider = try #require(node.plugins.compactMap { $0 as? any IdentityProvider }.first)

        // Prefetched: app-a (HBONE on node-a); not app-b (node-b) nor the TCP workload.
        #expect(await eventually { plugin.availableIdentities == [idA] })
        #expect(try await provider.certificate(for: idA, priority: .onDemand).identity == idA)
        // On demand for an identity the CA refuses to this node: a clear error.
        await #expect(throws: PKIError.self) {
            _ = try await provider.certificate(for: idB, priority: .onDemand)
        }

        let admin = try #require(node.adminAddress)
        let dump = try await httpRequest("GET", admin, "/config_dump")
        #expect(dump.status == 200)
        let json = try JSONSerialization.jsonObject(with: Data(dump.body.utf8)) as? [String: Any]
        let certificates = try #require(json?["certificates"] as? [[String: Any]])
        let entry = try #require(certificates.first { $0["identity"] as? String == idA.description })
        // ztunnel's CertsDump: the state, and each certificate base64 PEM with a decimal serial.
        #expect(entry["state"] as? String == "Available")
        #expect(entry["fetchState"] as? String == "available")
        let leaf = try #require((entry["certChain"] as? [[String: String]])?.first)
        #expect(leaf["serialNumber"]?.isEmpty == false && leaf["serialNumber"]?.allSatisfy(\.isNumber) == true)
        #expect(leaf["validFrom"] != nil && leaf["expirationTime"] != nil)
        let pem = Data(base64Encoded: leaf["pem"] ?? "").map { String(decoding: $0, as: UTF8.self) }
        #expect(pem?.contains("BEGIN CERTIFICATE") == true)
        #expect((entry["rootCerts"] as? [[String: String]])?.count == 1)
        #expect(!dump.body.contains("PRIVATE KEY"))

        // app-a leaves node-a: its identity is forgotten.
        try meshYAML.replacingOccurrences(of: "node: node-a\n- uid: Kubernetes//v1/Pod/default/b", with: "node: node-c\n- uid: Kubernetes//v1/Pod/default/b")
            .write(toFile: nodeMesh, atomically: true, encoding: .utf8)
        #expect(await eventually { plugin.cache?.identities.contains(idA) == false })
        #expect(plugin.availableIdentities.isEmpty)

        node.shutdown()
        try await running.value
        await ca.stop()
    }

    @Test("ambit ca init writes the plugged-in CA files and refuses to overwrite; ambit ca serve issues to the istio client")
    func cli() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let initial = try await AmbitProcess.run(["ca", "init", "--out", dir.path + "/ca"])
        #expect(initial.status == 0, "\(initial.stderr)")
        for name in CertificateAuthority.FileName.all {
            #expect(FileManager.default.fileExists(atPath: dir.path + "/ca/" + name))
        }
        let rootText = try opensslText(try String(contentsOfFile: dir.path + "/ca/root-cert.pem", encoding: .utf8), in: dir)
        #expect(rootText.contains("CA:TRUE") && rootText.contains("Certificate Sign"))
        let again = try await AmbitProcess.run(["ca", "init", "--out", dir.path + "/ca"])
        #expect(again.status == 1)
        #expect(again.stderr.contains("refusing to overwrite") && again.stderr.contains("--force"))

        try dir.write("mesh.yaml", meshYAML)
        try dir.write("token-a", "token-a")
        let port = freePort()
        try dir.write(
            "ca.yaml",
            """
            node: {name: ca, drainDeadline: 1s}
            admin: {address: null, readinessAddress: null}
            plugins:
              - id: local-config
                config: {path: mesh.yaml}
              - id: ca-server
                config: {listen: "127.0.0.1:\(port)", caDirectory: ca, tokens: {token-a: node-a}}
            """)
        let server = try AmbitProcess(["ca", "serve", "--manifest", dir.path + "/ca.yaml"])
        defer { server.signal(SIGKILL) }
        let roots = try PEMFiles.certificates(atPath: dir.path + "/ca/root-cert.pem", what: "root")
        let client = IstioCAClient(host: "127.0.0.1", port: Int(port), roots: roots, tokenFile: dir.path + "/token-a")
        var chain: [String] = []
        let served = await eventually(timeout: .seconds(20), interval: .milliseconds(100)) {
            chain = (try? await client.requestChain(csrPEM: try WorkloadKey(identity: idA).csrPEM, identity: idA, lifetime: .seconds(60))) ?? []
            return !chain.isEmpty
        }
        #expect(served, "ambit ca serve did not issue: \(server.stderr)")
        if served {
            let verified = try opensslVerify(chain: chain, roots: [try String(contentsOfFile: dir.path + "/ca/root-cert.pem", encoding: .utf8)], in: dir)
            #expect(verified.ok, "\(verified.output)")
            #expect(try opensslText(chain[0], in: dir).contains("URI:spiffe://cluster.local/ns/default/sa/app-a"))
        }
        server.signal(SIGTERM)
        #expect(await server.wait(timeout: .seconds(10)) == 0)
    }
}
