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

/// The destination reporter's `destination_service*`: named by the client's `forwarded: host=`
/// among the destination workload's services, else found by target port.
extension HBONENetworkTests {
    @Suite("HBONE telemetry: the destination reporter's service", .serialized)
    struct DestinationServiceTelemetryTests {
        static let opened = IstioTCPMetrics.Name.opened
        static let closed = IstioTCPMetrics.Name.closed

        @Test("the tunnel names the addressed service in forwarded host=, and only then", .enabled(if: PythonPeer.available))
        func clientSendsForwardedHost() async throws {
            let dir = try TemporaryDirectory()
            let server = try PythonPeer.startWaypoint(in: dir)
            let record = server.record
            defer { PythonPeer.stop(server.process) }
            #expect(server.firstLine.contains("listening"))
            let nodes = try await TwoNodes()
            #expect(try await nodes.a.exchange(to: TestMesh.waypointServiceVIP, 80, payload: Array("svc".utf8)).reply == .succeeded)
            #expect(try await nodes.a.exchange(to: TestMesh.viaWaypoint, 7070, payload: Array("wl".utf8)).reply == .succeeded)

            let lines = try String(contentsOfFile: record, encoding: .utf8).split(separator: "\n")
            let forwarded = try lines.map {
                let request = try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
                return (request?["headers"] as? [String: String])?["forwarded"] ?? ""
            }
            #expect(forwarded.count == 2)
            #expect(forwarded.first?.hasSuffix("\";host=waypointed.default.svc.cluster.local") == true, "\(forwarded)")
            #expect(forwarded.last?.contains("host=") == false, "\(forwarded)")
            try await nodes.stop()
            dir.remove()
        }

        /// A second service backed by server-b on the same target port as `echo`, sorting
        /// before it (`default/alias…` < `default/echo…`).
        static func withAlias(_ mesh: String) -> String {
            guard let range = mesh.range(of: #"\{"default/echo.default.svc.cluster.local": \{80: (\d+)\}\}"#, options: .regularExpression)
            else { preconditionFailure("TestMesh.yaml no longer maps server-b to echo's port 80") }
            let entry = String(mesh[range])
            let port = entry.split(separator: " ").last!.prefix { $0.isNumber }
            let services = String(entry.dropLast()) + #", "default/alias.default.svc.cluster.local": {80: "# + port + "}}"
            return mesh.replacingCharacters(in: range, with: services) + """

                - name: alias
                  namespace: default
                  hostname: alias.default.svc.cluster.local
                  vips: ["/\(aliasVIP)"]
                  ports: {80: \(port)}
                """
        }
        static let aliasVIP = "127.0.9.3"
        static let echo = "echo.default.svc.cluster.local"
        static let alias = "alias.default.svc.cluster.local"

        @Test("destination reporter: the service is the one forwarded host= names among the workload's, else the first whose target port is the destination port")
        func destinationReporterService() async throws {
            let nodes = try await TwoNodes(editMesh: Self.withAlias)
            let port = nodes.port(TestMesh.serverB)
            for target in [TestMesh.serviceVIP, Self.aliasVIP] {
                let answer = try await nodes.a.exchange(to: target, 80, payload: Array("hello".utf8))
                #expect(answer.reply == .succeeded, "\(target)")
            }
            let direct = try await nodes.a.exchange(to: TestMesh.serverB, port, payload: Array("direct".utf8))
            #expect(direct.reply == .succeeded)
            #expect(await eventually { nodes.b.metrics.tcpMetrics.openConnections == 0 && nodes.b.telemetry.closedRecords.count == 3 })

            func destination(_ service: String, _ name: String) -> [String: String] {
                [
                    "reporter": "destination", "destination_workload": "server-b", "destination_service": service,
                    "destination_service_name": name, "destination_service_namespace": "default",
                ]
            }
            // Addressed by service: `echo` although `alias` sorts first and has the same target port.
            #expect(nodes.b.metricValue(Self.opened, destination(Self.echo, "echo")) == 1)
            // By service `alias`: 1; by pod IP (no host=): the first service by namespace/hostname
            // whose target port is the destination port, `alias` again.
            #expect(nodes.b.metricValue(Self.opened, destination(Self.alias, "alias")) == 2)
            #expect(nodes.b.metricValue(Self.closed, destination(Self.alias, "alias")) == 2)
            // The source reporter names what the application addressed: nothing for the pod IP.
            #expect(nodes.a.metricValue(Self.opened, ["reporter": "source", "destination_service": "unknown"]) == 1)
            try await nodes.stop()
        }

        @Test(
            "destination reporter: a forwarded host= that is not one of the destination workload's services is ignored",
            .enabled(if: PythonPeer.available))
        func forwardedHostIsBounded() async throws {
            let nodes = try await TwoNodes(editMesh: Self.withAlias)
            let dir = try TemporaryDirectory()
            let files = try TestCARegistry.mesh.writeFiles(for: TestMesh.identity("python"), prefix: "py", in: dir.path)
            let port = nodes.port(TestMesh.serverB)
            for host in [Self.echo, "waypointed.default.svc.cluster.local", "\"\(Self.echo)\""] {
                let result = try await NIOThreadPool.singleton.runIfActive {
                    try PythonPeer.run([
                        "client", "--connect", "\(TestMesh.serverB):15008", "--authority", "\(TestMesh.serverB):\(port)",
                        "--forwarded", "for=\"\(TestMesh.clientA):40000\";host=\(host)", "--payload", "x",
                        "--cert", files.cert, "--key", files.key, "--ca", files.ca,
                    ])
                }
                #expect(result["status"] as? Int == 200, "\(result)")
            }
            #expect(await eventually { nodes.b.telemetry.closedRecords.count == 3 })
            let services = ["reporter": "destination", "destination_workload": "server-b"]
            // host=echo (bare or quoted) names echo; a service server-b does not back falls back to alias.
            #expect(nodes.b.metricValue(Self.opened, services.merging(["destination_service": Self.echo]) { $1 }) == 2)
            #expect(nodes.b.metricValue(Self.opened, services.merging(["destination_service": Self.alias]) { $1 }) == 1)
            #expect(nodes.b.metrics.sampleLines(of: Self.opened).allSatisfy { !$0.contains("waypointed") })
            try await nodes.stop()
            dir.remove()
        }
    }
}
