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

/// How an established tunnel's close is flagged and counted when it does not end cleanly,
/// as ztunnel does it: closed by a policy change (`DENY`), reset by the peer mid-transfer
/// (`-` for CANCEL, `CONNECT` for an error code).
extension HBONENetworkTests {
    @Suite("HBONE telemetry: closes of established tunnels", .serialized)
    struct RelayCloseTelemetryTests {
        static let opened = IstioTCPMetrics.Name.opened
        static let closed = IstioTCPMetrics.Name.closed
        static let failed = IstioTCPMetrics.Name.failed

        @Test("a connection closed because a policy change now denies it is closed and failed with DENY, and its access log line says so")
        func policyChangeCloseIsDeny() async throws {
            let nodes = try await TwoNodes(echoOnB: true)
            let port = nodes.port(TestMesh.serverB)
            let socks = nodes.a.socks
            let client = try await offload {
                try SOCKS5Client(
                    proxy: socks, source: IPAddress(TestMesh.clientA),
                    request: SOCKS5Request(address: .ip(IPAddress(TestMesh.serverB)!), port: port))
            }
            defer { client.close() }
            #expect(client.reply == .succeeded)
            let echoed = try await offload { () -> [UInt8] in
                try client.send(Array("hello".utf8))
                return try client.receive(exactly: 5)
            }
            #expect(echoed == Array("hello".utf8))
            #expect(await eventually { nodes.b.node.connections.count == 1 })

            #expect(await nodes.b.policy.deny([port]) == 1)
            let destination = ["reporter": "destination", "destination_workload": "server-b"]
            #expect(await eventually { nodes.b.telemetry.closedRecords.count == 1 })
            #expect(nodes.b.metricValue(Self.opened, destination.merging(["response_flags": "-"]) { $1 }) == 1)
            #expect(nodes.b.metricValue(Self.closed, destination.merging(["response_flags": "DENY"]) { $1 }) == 1)
            #expect(nodes.b.metricValue(Self.failed, destination.merging(["response_flags": "DENY"]) { $1 }) == 1)
            #expect(nodes.b.metricValue(Self.closed, destination.merging(["response_flags": "-"]) { $1 }) == nil)
            let record = try #require(nodes.b.telemetry.closedRecords.first)
            let line = AccessLog.line(for: record, format: .json)
            let fields = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(fields["response_flags"] as? String == "DENY")
            #expect((fields["error"] as? String)?.contains("closed on policy change") == true, "\(fields)")

            // The source node sees the tunnel's stream cancelled: an ordinary end, as in ztunnel.
            let source = ["reporter": "source", "destination_workload": "server-b"]
            #expect(await eventually { nodes.a.telemetry.closedRecords.count == 1 })
            #expect(nodes.a.metricValue(Self.closed, source.merging(["response_flags": "-"]) { $1 }) == 1)
            #expect(nodes.a.metricValue(Self.failed, source) == nil)
            try await nodes.stop()
        }

        /// Runs a waypoint (the Python peer) that resets each stream with HTTP/2 error `code`
        /// once it has echoed its first bytes, sends one connection through it from node-a,
        /// and waits for node-a to count it closed.
        static func resetByWaypoint(code: Int, nodes: TwoNodes, dir: TemporaryDirectory) async throws {
            let server = try PythonPeer.startWaypoint(in: dir, extra: ["--reset-after-data", "\(code)"])
            defer { PythonPeer.stop(server.process) }
            #expect(server.firstLine.contains("listening"))
            let before = nodes.a.telemetry.closedRecords.count
            let socks = nodes.a.socks
            let client = try await offload {
                try SOCKS5Client(
                    proxy: socks, source: IPAddress(TestMesh.clientA),
                    request: SOCKS5Request(address: .ip(IPAddress(TestMesh.waypointServiceVIP)!), port: 80))
            }
            defer { client.close() }
            #expect(client.reply == .succeeded)
            try await offload { try client.send(Array("reset me".utf8)) }
            #expect(await eventually { nodes.a.telemetry.closedRecords.count == before + 1 })
        }

        @Test(
            "a tunnel reset mid-transfer with an error code is closed and failed with CONNECT; one reset with CANCEL ends with -, as in ztunnel",
            .enabled(if: PythonPeer.available))
        func peerResetMidTransfer() async throws {
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            let nodes = try await TwoNodes()
            let source = ["reporter": "source", "destination_workload": "waypoint"]

            try await Self.resetByWaypoint(code: 2, nodes: nodes, dir: dir)  // INTERNAL_ERROR
            #expect(nodes.a.metricValue(Self.closed, source.merging(["response_flags": "CONNECT"]) { $1 }) == 1)
            #expect(nodes.a.metricValue(Self.failed, source.merging(["response_flags": "CONNECT"]) { $1 }) == 1)
            let record = try #require(nodes.a.telemetry.closedRecords.last)
            #expect(record.responseFlag == .connectFailure)
            let line = AccessLog.line(for: record, format: .json)
            let fields = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            #expect(fields["response_flags"] as? String == "CONNECT")

            try await Self.resetByWaypoint(code: 8, nodes: nodes, dir: dir)  // CANCEL
            #expect(nodes.a.metricValue(Self.closed, source.merging(["response_flags": "-"]) { $1 }) == 1)
            #expect(nodes.a.metricValue(Self.failed, source.merging(["response_flags": "CONNECT"]) { $1 }) == 1)
            #expect(nodes.a.metricValue(Self.opened, source.merging(["response_flags": "-"]) { $1 }) == 2)
            try await nodes.stop()
        }
    }
}
