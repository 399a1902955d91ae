import Capture
import Foundation
import HBONE
import AmbitRuntime
import Kernel
import NIOCore
import NIOPosix
import Telemetry
import Testing
import TestSupport

/// The access log fields of tunnelled connections.
extension HBONENetworkTests {
    @Suite("HBONE telemetry: access log of tunnelled connections", .serialized)
    struct TunnelAccessLogTests {
        @Test("access log of a tunnelled connection: dst.addr is the tunnel's ip:15008 and dst.hbone_addr the CONNECT authority on both nodes, as ztunnel logs them; src.cluster and dst.cluster")
        func accessLogTunnelFields() async throws {
            let nodes = try await TwoNodes()
            let port = nodes.port(TestMesh.serverB)
            let answer = try await nodes.a.exchange(to: TestMesh.serviceVIP, 80, payload: Array("hello".utf8))
            #expect(answer.reply == .succeeded)
            #expect(await eventually { nodes.b.telemetry.closedRecords.count == 1 && nodes.a.telemetry.closedRecords.count == 1 })
            func fields(_ node: MeshNode) throws -> [String: Any] {
                let record = try #require(node.telemetry.closedRecords.first)
                let line = AccessLog.line(for: record, format: .json)
                return try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            }
            let outbound = try fields(nodes.a)
            #expect(outbound["direction"] as? String == "outbound")
            #expect(outbound["dst.addr"] as? String == "\(TestMesh.serverB):15008")
            #expect(outbound["dst.hbone_addr"] as? String == "\(TestMesh.serverB):\(port)")
            #expect(outbound["src.cluster"] as? String == "Kubernetes")
            #expect(outbound["dst.cluster"] as? String == "Kubernetes")
            let inbound = try fields(nodes.b)
            #expect(inbound["direction"] as? String == "inbound")
            #expect(inbound["dst.addr"] as? String == "\(TestMesh.serverB):15008")
            #expect(inbound["dst.hbone_addr"] as? String == "\(TestMesh.serverB):\(port)")
            #expect(inbound["dst.cluster"] as? String == "Kubernetes")
            try await nodes.stop()
        }
    }
}
