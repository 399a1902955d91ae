import Capture
import Foundation
import Kernel
import NIOCore
import NIOPosix
import Testing
import TestSupport

/// Double HBONE on the wire: a client on network `east` reaches a service endpoint on
/// network `west` through west's network gateway. The gateway is the Python peer's
/// `gateway` stand-in (Istio's east-west gateway is an Envoy istiod configures, which
/// cannot run here): it terminates the outer tunnel and relays its bytes, unread, to the
/// destination node's HBONE port, where the inner tunnel ends.
extension HBONENetworkTests {
    @Suite("HBONE: network gateways and double HBONE", .serialized, .enabled(if: PythonPeer.available))
    struct NetworkGatewayTests {
        static let client = "127.0.8.61"  // node-east, network east
        static let server = "127.0.8.62"  // node-west, network west
        static let gateway = "127.0.8.63"  // west's network gateway (the Python stand-in)
        static let vip = "127.0.9.61"
        static let hostname = "echo-x.default.svc.cluster.local"

        static func mesh(port: UInt16, gatewayKnown: Bool = true) -> String {
            let gatewayWorkload = """
                - uid: c//v1/Pod/istio-system/istio-eastwestgateway
                  name: istio-eastwestgateway
                  namespace: istio-system
                  serviceAccount: istio-eastwestgateway
                  workloadIps: ["\(gateway)"]
                  network: west
                  protocol: TCP
                  node: node-gateway

                """
            return """
                workloads:
                - uid: c//v1/Pod/default/client-e
                  name: client-e
                  namespace: default
                  serviceAccount: client-e
                  workloadIps: ["\(client)"]
                  network: east
                  protocol: HBONE
                  node: node-east
                - uid: c//v1/Pod/default/server-w
                  name: server-w
                  namespace: default
                  serviceAccount: server-w
                  workloadIps: ["\(server)"]
                  network: west
                  protocol: HBONE
                  node: node-west
                  networkGateway: {destination: "west/\(gateway)", hboneMtlsPort: 15008}
                  services: {"default/\(hostname)": {80: \(port)}}
                \(gatewayKnown ? gatewayWorkload : "")services:
                - name: echo-x
                  namespace: default
                  hostname: \(hostname)
                  vips: ["east/\(vip)", "west/\(vip)"]
                  ports: {80: \(port)}
                """
        }

        /// Starts the gateway stand-in with the gateway's certificate, routing the service's
        /// authority to `server:15008`; returns it and the path of its request record.
        static func startGateway(in dir: TemporaryDirectory, identity: SpiffeID) throws -> (process: Process, record: String) {
            let files = try TestCARegistry.mesh.writeFiles(for: identity, prefix: "gateway", in: dir.path)
            let record = dir.path + "/gateway.jsonl"
            let peer = try PythonPeer.start([
                "gateway", "--listen", "\(gateway):15008", "--cert", files.cert, "--key", files.key, "--ca", files.ca,
                "--record", record, "--route", "\(hostname):80=\(server):15008", "--max-seconds", "60",
            ])
            let line = PythonPeer.firstLine(of: peer.output)
            guard line.contains("listening") else {
                PythonPeer.stop(peer.process)
                throw TestFailure("gateway stand-in did not start: \(line)")
            }
            return (peer.process, record)
        }

        static func records(_ path: String) -> [[String: Any]] {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
            return text.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }

        static let gatewayIdentity = SpiffeID(
            trustDomain: "cluster.local", namespace: "istio-system", serviceAccount: "istio-eastwestgateway")

        @Test("east → west through the gateway: the outer CONNECT names the service, the bytes arrive, the destination sees the client's identity")
        func doubleHBONE() async throws {
            let backend = try await RecordingServer(ip: Self.server)
            let mesh = Self.mesh(port: backend.address.port)
            let dir = try TemporaryDirectory()
            let gateway = try Self.startGateway(in: dir, identity: Self.gatewayIdentity)
            defer { PythonPeer.stop(gateway.process) }
            let west = try await MeshNode(name: "node-west", mesh: mesh, waitForListeners: [Self.server], network: "west")
            let east = try await MeshNode(name: "node-east", mesh: mesh, waitForListeners: [Self.client], network: "east")

            let payload = Array("across networks".utf8)
            let result = try await east.exchange(to: Self.vip, 80, from: Self.client, payload: payload)
            #expect(result.reply == .succeeded)
            #expect(String(decoding: result.response, as: UTF8.self) == "ok")
            #expect(backend.received == payload)
            // Megabytes too: every byte through both tunnels' flow control, in order.
            let bulk = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) }
            let second = try await east.exchange(to: Self.vip, 80, from: Self.client, payload: bulk)
            #expect(second.reply == .succeeded)
            #expect(String(decoding: second.response, as: UTF8.self) == "ok")
            #expect(backend.received.count == payload.count + bulk.count)
            #expect(Array(backend.received.dropFirst(payload.count)) == bulk)

            // The gateway saw one CONNECT per connection (the outer; the inner is opaque to it), from the
            // client's identity, naming the service and port.
            let seen = Self.records(gateway.record)
            #expect(seen.count == 2, "\(seen)")
            let headers = seen.first?["headers"] as? [String: String]
            #expect(headers?[":authority"] == "\(Self.hostname):80")
            #expect(headers?["x-forwarded-network"] == nil)
            #expect(seen.first?["client_san"] as? String == "spiffe://cluster.local/ns/default/sa/client-e")

            // Source reporter: the path, the gateway as the TCP destination, the endpoint as
            // the destination workload.
            #expect(await eventually { east.telemetry.closedRecords.count >= 2 })
            let outbound = east.telemetry.closedRecords.first
            #expect(outbound?.route == "double-hbone")
            #expect(outbound?.transportDestination == SocketAddr(ip: IPAddress(Self.gateway)!, port: 15008))
            #expect(outbound?.destinationWorkload?.name == "server-w")
            #expect(outbound?.tunnelAuthority == "\(Self.hostname):80")

            // Destination: the inner tunnel's peer is the client (mutual TLS end to end); the
            // gateway's address is not taken for the source workload.
            #expect(await eventually { west.telemetry.closedRecords.count >= 2 })
            let inbound = west.telemetry.closedRecords.first
            #expect(inbound?.peerIdentity == TestMesh.identity("client-e"))
            #expect(inbound?.source.ip == IPAddress(Self.gateway))
            #expect(inbound?.sourceWorkload == nil)
            #expect(inbound?.destinationService?.hostname == Self.hostname)

            try await east.stop()
            try await west.stop()
            await backend.close()
            dir.remove()
        }

        @Test("a gateway presenting another identity, or one the mesh does not know, carries nothing")
        func gatewayVerified() async throws {
            let backend = try await RecordingServer(ip: Self.server)
            let dir = try TemporaryDirectory()
            // The right address, the wrong certificate: the outer TLS fails closed.
            let impostor = try Self.startGateway(in: dir, identity: TestMesh.identity("impostor"))
            defer { PythonPeer.stop(impostor.process) }
            let mesh = Self.mesh(port: backend.address.port)
            let west = try await MeshNode(name: "node-west", mesh: mesh, waitForListeners: [Self.server], network: "west")
            let east = try await MeshNode(name: "node-east", mesh: mesh, waitForListeners: [Self.client], network: "east")
            let refused = try await east.exchange(to: Self.vip, 80, from: Self.client, payload: Array("x".utf8))
            #expect(refused.reply != .succeeded)
            #expect(backend.received.isEmpty)
            #expect(Self.records(impostor.record).isEmpty)
            try await east.stop()

            // The gateway's workload unknown: refused before any connection attempt.
            let blind = try await MeshNode(
                name: "node-east", mesh: Self.mesh(port: backend.address.port, gatewayKnown: false),
                waitForListeners: [Self.client], network: "east")
            let unresolved = try await blind.exchange(to: Self.vip, 80, from: Self.client, payload: Array("x".utf8))
            #expect(unresolved.reply == .networkUnreachable)
            #expect(backend.received.isEmpty)
            try await blind.stop()
            try await west.stop()
            await backend.close()
            dir.remove()
        }
    }
}
