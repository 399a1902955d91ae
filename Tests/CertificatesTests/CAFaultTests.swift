import CAServer
import Certificates
import Foundation
import Kernel
import Testing
import TestSupport
import AmbitRuntime

/// Faults of the CA (RELIABILITY.md).
@Suite("Certificates: CA faults")
struct CAFaultTests {
    /// Promise: a node whose CA is down at startup still starts; a connection that needs a
    /// certificate meanwhile fails closed within `fetchTimeout` with an error that names
    /// the CA; once the CA is up the node fetches its identities by itself (backoff
    /// retries) and serves them.
    @Test("CA down at startup: requests fail closed with a clear error, then the node recovers when the CA starts")
    func caDownAtStartup() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let port = freePort()
        _ = try fixture.dir.write("node-mesh.yaml", meshYAML)
        let yaml = """
            node: {name: node-a, drainDeadline: 100ms}
            admin: {address: null, readinessAddress: null}
            plugins:
              - id: local-config
                config: {path: node-mesh.yaml, watch: false}
              - id: certificates
                config:
                  ttl: 1h
                  fetchTimeout: 1s
                  backend:
                    istio: {address: "127.0.0.1:\(port)", rootCertificate: ca/root-cert.pem, tokenFile: token-a, requestTimeout: 1s}
            """
        let plan = try ManifestLoader.load(
            yaml: yaml, file: "node.yaml", baseDirectory: fixture.dir.path, registry: CertificatesPluginTests.registry)
        let node = ProxyNode(plan: plan, logger: quietLogger("node"), handleSignals: false)
        let running = Task { try await node.run() }
        defer { node.shutdown() }
        let plugin = try #require(
            await eventually { node.plugin(CertificatesPlugin.self)?.cache != nil } ? node.plugin(CertificatesPlugin.self) : nil)
        let provider = try #require(node.plugins.compactMap { $0 as? any IdentityProvider }.first)

        // The CA is down: a certificate request fails within the fetch timeout, naming the CA.
        let asked = Date()
        var failure: (any Error)?
        do {
            _ = try await provider.certificate(for: idA, priority: .onDemand)
        } catch {
            failure = error
        }
        let waited = Date().timeIntervalSince(asked)
        let message = failure.map { "\($0)" } ?? ""
        #expect(failure != nil, "a certificate without a CA")
        #expect(waited < 5, "failed closed after \(waited) s")
        #expect(plugin.availableIdentities.isEmpty)

        // The CA starts: the node's own retries fetch the identity, no request needed.
        let started = Date()
        let ca = try await RunningCA.start(fixture, port: port)
        let recovered = await eventually(timeout: .seconds(30)) { plugin.availableIdentities == [idA] }
        let recovery = Date().timeIntervalSince(started)
        #expect(recovered, "the node did not fetch its identity after the CA came up")
        #expect(try await provider.certificate(for: idA, priority: .onDemand).identity == idA)
        print(
            "reliability: CA down at startup: request failed closed after \(String(format: "%.2f", waited)) s (\(message)); "
                + "identity fetched \(String(format: "%.2f", recovery)) s after the CA started")
        node.shutdown()
        try await running.value
        await ca.stop()
    }
}
