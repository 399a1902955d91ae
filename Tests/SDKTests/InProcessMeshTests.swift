import AmbitTestKit
import Foundation
import HBONE
import AmbitRuntime
import Kernel
import Logging
import Testing

@Suite("in-process mesh", .timeLimit(.minutes(1)))
struct InProcessMeshTests {
    @Test("with no policy plugin, a connection goes through both nodes over HBONE and is echoed byte for byte")
    func relays() async throws {
        let mesh = try await InProcessMesh.start(policies: [], manifest: "")
        defer { Task { await mesh.stop() } }
        let payload = String(repeating: "0123456789", count: 10_000)
        let outcome = try await mesh.connect(from: "client", payload: payload)
        #expect(outcome.allowed, "\(outcome.reply) \(outcome.response.count) bytes")
        #expect(outcome.decision?.reason == "no policy plugin enabled")
        #expect(outcome.decision?.verdict == .allow)
        // node-b authenticated the client from its workload certificate over mutual TLS.
        #expect(outcome.attributes?.isMutualTLS == true)
        #expect(outcome.attributes?.authenticatedIdentity?.description == "spiffe://cluster.local/ns/default/sa/client")
        #expect(outcome.attributes?.destinationWorkload?.name == "server")
        #expect(mesh.serverNode.plugin(HBONEPlugin.self)?.serverConnectionCount == 1)
    }

    @Test("each client is authenticated as its own identity; meshes in parallel use their own addresses")
    func identities() async throws {
        async let first = InProcessMesh.start(policies: [], manifest: "", clients: ["a", "b"])
        async let second = InProcessMesh.start(policies: [], manifest: "", clients: ["c"])
        let meshes = try await [first, second]
        defer { Task { for mesh in meshes { await mesh.stop() } } }
        #expect(meshes[0].server.ip != meshes[1].server.ip)
        for (mesh, name) in [(meshes[0], "a"), (meshes[0], "b"), (meshes[1], "c")] {
            let outcome = try await mesh.connect(from: name, payload: name)
            #expect(outcome.allowed && outcome.response == name, "\(name): \(outcome)")
            #expect(outcome.attributes?.authenticatedIdentity?.serviceAccount == name)
            #expect(outcome.attributes?.sourceWorkload?.name == name)
            let address = try #require(mesh.clients.first { $0.name == name }?.address)
            #expect("\(address)".hasPrefix("127.0.2"))
        }
    }
}
