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

/// How tunnel failures are flagged and counted, as ztunnel does it.
extension HBONENetworkTests {
    @Suite("HBONE telemetry: tunnel failures", .serialized)
    struct TunnelFailureTelemetryTests {
        static let opened = IstioTCPMetrics.Name.opened
        static let closed = IstioTCPMetrics.Name.closed

        /// One node (node-a) alone, its HBONE client connecting within `connectTimeout`.
        static func lonelyNode(ca: String = "mesh", connectTimeout: String = "2s") async throws -> MeshNode {
            try await MeshNode(
                name: "node-a", mesh: TestMesh.yaml(ports: [TestMesh.serverB: 7000]), ca: ca,
                hbone: "{client: {connectTimeout: \(connectTimeout)}}", waitForListeners: [TestMesh.clientA])
        }

        /// The Istio series of node's failed tunnel to server-b, by metric.
        static func failure(_ node: MeshNode, flag: String) -> (opened: UInt64?, closed: UInt64?, failed: UInt64?) {
            let labels = ["reporter": "source", "destination_workload": "server-b"]
            return (
                node.metricValue(opened, labels.merging(["response_flags": "-"]) { $1 }),
                node.metricValue(closed, labels.merging(["response_flags": flag]) { $1 }),
                node.metricValue("istio_tcp_connections_failed_total", labels.merging(["response_flags": flag]) { $1 })
            )
        }

        @Test("a tunnel without a workload certificate fails with IDENTITY_ERROR: opened -, closed and failed IDENTITY_ERROR")
        func identityError() async throws {
            let node = try await Self.lonelyNode(ca: "no-such-ca")
            let answer = try await node.exchange(to: TestMesh.serverB, 7000, payload: [1])
            #expect(answer.reply != .succeeded)
            #expect(await eventually { Self.failure(node, flag: "IDENTITY_ERROR").failed == 1 })
            let counted = Self.failure(node, flag: "IDENTITY_ERROR")
            #expect(counted.opened == 1 && counted.closed == 1, "\(counted)")
            #expect(node.metricValue(Self.closed, ["response_flags": "CONNECT"]) == nil)
            try await node.stop()
        }

        @Test("a tunnel whose connect to 15008 times out fails with NETWORK_POLICY; one refused outright with CONNECT")
        func networkPolicyAndConnect() async throws {
            let node = try await Self.lonelyNode(connectTimeout: "400ms")
            // Nothing listens on server-b's 15008 (node-b is not running): refused at once.
            let refused = try await node.exchange(to: TestMesh.serverB, 7000, payload: [1])
            #expect(refused.reply != .succeeded)
            #expect(await eventually { Self.failure(node, flag: "CONNECT").failed == 1 })
            #expect(Self.failure(node, flag: "CONNECT").closed == 1)

            // A listener whose one-slot accept queue is full: Linux drops the SYNs, as a
            // NetworkPolicy blocking 15008 would.
            let group = MultiThreadedEventLoopGroup.singleton
            let silent = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 0)
                .serverChannelOption(.autoRead, value: false)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: TestMesh.serverB, port: 15008).get()
            let filler = TCPDialer(options: DialerOptions(connectTimeout: .milliseconds(300)))
            var fillers: [any Channel] = []
            for _ in 0..<4 {
                guard let channel = try? await filler.connect(to: SocketAddr(silent.localAddress)!, on: group.next()).get()
                else { break }
                fillers.append(channel)
            }
            let timedOut = try await node.exchange(to: TestMesh.serverB, 7000, payload: [1])
            #expect(timedOut.reply != .succeeded)
            #expect(await eventually { Self.failure(node, flag: "NETWORK_POLICY").failed == 1 })
            #expect(Self.failure(node, flag: "NETWORK_POLICY").closed == 1)
            #expect(Self.failure(node, flag: "CONNECT").failed == 1, "the timeout is not also counted as CONNECT")
            #expect(node.metricValue(Self.opened, ["reporter": "source", "response_flags": "-"]) == 2)
            for channel in fillers { try? await channel.close() }
            try await silent.close()
            try await node.stop()
        }
    }
}
