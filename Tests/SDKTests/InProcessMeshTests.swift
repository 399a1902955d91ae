import AmbitTestKit
import Foundation
import Kernel
import Logging
import Testing

@Suite("in-process mesh", .timeLimit(.minutes(1)))
struct InProcessMeshTests {
    @Test("with no policy plugin, a connection goes through both nodes and is echoed byte for byte")
    func relays() async throws {
        let mesh = try await InProcessMesh.start(policies: [], manifest: "", logLevel: .debug)
        defer { Task { await mesh.stop() } }
        let payload = String(repeating: "0123456789", count: 10_000)
        let outcome = try await mesh.connect(from: "client", payload: payload)
        #expect(outcome.allowed, "\(outcome.reply) \(outcome.response.count) bytes")
        #expect(outcome.decision?.reason == "no policy plugin enabled")
        #expect(outcome.decision?.verdict == .allow)
    }
}
