import Foundation
import HBONE
import Kernel
import NIOPosix
import Testing
import TestSupport

/// The receiving side of the authorities that do not name the destination workload's own
/// address, on the wire: a waypoint's node proxy takes streams for the services and
/// workloads it is the waypoint of, and any node proxy takes a service hostname.
extension HBONENetworkTests {
    @Suite("HBONE: authorities beyond the workload's own address", .serialized, .enabled(if: PythonPeer.available))
    struct InboundAuthorityTests {
        /// The local workload: a waypoint (it backs the waypoint service) and an endpoint of `echo`.
        static let local = "127.0.8.51"
        /// A workload on another node whose waypoint is `local`.
        static let behind = "127.0.8.52"
        /// A service whose waypoint is the waypoint service.
        static let waypointedVIP = "127.0.9.51"
        static let waypointVIP = "127.0.9.52"
        /// A service with no waypoint that `local` does not back.
        static let otherVIP = "127.0.9.53"

        static func mesh(port: UInt16) -> String {
            """
            workloads:
            - uid: c//v1/Pod/default/local-waypoint
              name: local-waypoint
              namespace: default
              serviceAccount: local-waypoint
              workloadIps: ["\(local)"]
              protocol: HBONE
              node: node-b
              services:
                "default/wp.default.svc.cluster.local": {15008: 15008}
                "default/echo.default.svc.cluster.local": {80: \(port)}
            - uid: c//v1/Pod/default/behind
              name: behind
              namespace: default
              workloadIps: ["\(behind)"]
              protocol: HBONE
              node: node-x
              waypoint: {destination: "/\(local)", hboneMtlsPort: 15008}
            services:
            - name: wp
              namespace: default
              hostname: wp.default.svc.cluster.local
              vips: ["/\(waypointVIP)"]
              ports: {15008: 15008}
            - name: waypointed
              namespace: default
              hostname: waypointed.default.svc.cluster.local
              vips: ["/\(waypointedVIP)"]
              ports: {80: 8080}
              waypoint: {destination: "default/wp.default.svc.cluster.local", hboneMtlsPort: 15008}
            - name: echo
              namespace: default
              hostname: echo.default.svc.cluster.local
              vips: ["/127.0.9.54"]
              ports: {80: 8080}
            - name: other
              namespace: default
              hostname: other.default.svc.cluster.local
              vips: ["/\(otherVIP)"]
              ports: {80: 8080}
            """
        }

        @Test("a waypoint's node proxy takes its service's VIP and its workload's address, to the waypoint's own port; others are 400")
        func waypointAuthority() async throws {
            let backend = try await HashServer(ip: Self.local)
            let port = backend.address.port
            let node = try await MeshNode(name: "node-b", mesh: Self.mesh(port: port), waitForListeners: [Self.local])
            let dir = try TemporaryDirectory()
            let files = try HBONEInteropTests.clientFiles(dir, identity: TestMesh.identity("python"))
            func connect(_ authority: String, _ payload: String) async throws -> PeerOutput {
                try await HBONEInteropTests.python(
                    ["client", "--connect", "\(Self.local):15008", "--authority", authority, "--payload", payload] + files)
            }

            let service = try await connect("\(Self.waypointedVIP):\(port)", "svc")
            #expect(service["status"] as? Int == 200, "\(service)")
            #expect(service["body"] as? String == "3 \(sha256Hex(Array("svc".utf8)))")
            let workload = try await connect("\(Self.behind):\(port)", "wl")
            #expect(workload["status"] as? Int == 200, "\(workload)")
            #expect(workload["body"] as? String == "2 \(sha256Hex(Array("wl".utf8)))")
            // The stream went to the local workload: policy and telemetry saw it there.
            #expect(await eventually { node.telemetry.closedRecords.count >= 2 })
            #expect(node.telemetry.closedRecords.allSatisfy { $0.destination == SocketAddr(ip: IPAddress(Self.local)!, port: port) })

            for authority in ["\(Self.otherVIP):\(port)", "127.0.8.99:\(port)"] {
                let refused = try await connect(authority, "x")
                #expect(refused["status"] as? Int == 400, "\(authority): \(refused)")
            }
            try await node.stop()
            await backend.close()
            dir.remove()
        }

        @Test("a service hostname authority goes to the endpoint's target port (200); an unknown one is 503")
        func hostnameAuthority() async throws {
            let backend = try await HashServer(ip: Self.local)
            let node = try await MeshNode(
                name: "node-b", mesh: Self.mesh(port: backend.address.port), waitForListeners: [Self.local])
            let dir = try TemporaryDirectory()
            let files = try HBONEInteropTests.clientFiles(dir, identity: TestMesh.identity("python"))
            func connect(_ authority: String) async throws -> PeerOutput {
                try await HBONEInteropTests.python(
                    ["client", "--connect", "\(Self.local):15008", "--authority", authority, "--payload", "hello"] + files)
            }

            let ok = try await connect("echo.default.svc.cluster.local:80")
            #expect(ok["status"] as? Int == 200, "\(ok)")
            #expect(ok["body"] as? String == "5 \(sha256Hex(Array("hello".utf8)))")
            // Telemetry reports the service the peer named.
            #expect(await eventually { !node.telemetry.closedRecords.isEmpty })
            #expect(node.telemetry.closedRecords.first?.destinationService?.hostname == "echo.default.svc.cluster.local")
            let unknown = try await connect("missing.default.svc.cluster.local:80")
            #expect(unknown["status"] as? Int == 503, "\(unknown)")
            let noPort = try await connect("echo.default.svc.cluster.local:81")
            #expect(noPort["status"] as? Int == 503, "\(noPort)")
            try await node.stop()
            await backend.close()
            dir.remove()
        }
    }
}
