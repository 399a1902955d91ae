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

/// What the source reporter names as the destination when a waypoint is in the way.
extension HBONENetworkTests {
    @Suite("HBONE telemetry: through a waypoint", .serialized)
    struct WaypointTelemetryTests {
        static let opened = IstioTCPMetrics.Name.opened
        static let closed = IstioTCPMetrics.Name.closed


        @Test(
            "through a waypoint the source reporter's destination workload and principal are the waypoint's; the service stays the addressed one",
            .enabled(if: PythonPeer.available))
        func sourceReporterNamesTheWaypoint() async throws {
            let dir = try TemporaryDirectory()
            let server = try PythonPeer.startWaypoint(in: dir)
            defer { PythonPeer.stop(server.process) }
            #expect(server.firstLine.contains("listening"))
            let nodes = try await TwoNodes()

            let viaService = try await nodes.a.exchange(to: TestMesh.waypointServiceVIP, 80, payload: Array("svc".utf8))
            #expect(viaService.reply == .succeeded)
            let viaWorkload = try await nodes.a.exchange(to: TestMesh.viaWaypoint, 7070, payload: Array("wl".utf8))
            #expect(viaWorkload.reply == .succeeded)
            #expect(await eventually { nodes.a.metrics.tcpMetrics.openConnections == 0 })

            let waypoint: [String: String] = [
                "reporter": "source", "destination_workload": "waypoint", "destination_workload_namespace": "default",
                "destination_principal": "\(TestMesh.identity("waypoint"))", "destination_canonical_service": "waypoint",
                "connection_security_policy": "mutual_tls",
            ]
            // Service-addressed: the waypoint serves the service the application asked for.
            let service = waypoint.merging(["destination_service": "waypointed.default.svc.cluster.local"]) { $1 }
            #expect(nodes.a.metricValue(Self.opened, service) == 1)
            #expect(nodes.a.metricValue(Self.closed, service.merging(["response_flags": "-"]) { $1 }) == 1)
            // Workload-addressed: no service; the workload behind the waypoint is not named.
            let workload = waypoint.merging(["destination_service": "unknown"]) { $1 }
            #expect(nodes.a.metricValue(Self.opened, workload) == 1)
            #expect(nodes.a.metrics.sampleLines(of: Self.opened).allSatisfy { !$0.contains("behind-waypoint") })
            try await nodes.stop()
            dir.remove()
        }
    }
}
