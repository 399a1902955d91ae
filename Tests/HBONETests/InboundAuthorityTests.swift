import Foundation
import HBONE
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import TestSupport

/// A backend that keeps every byte it receives and, once the client half-closes, answers
/// `ok` and closes.
final class RecordingServer: Sendable {
    let address: SocketAddr
    private let channel: any Channel
    private let box = NIOLockedValueBox<[UInt8]>([])

    var received: [UInt8] { box.withLockedValue { $0 } }

    private final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let box: NIOLockedValueBox<[UInt8]>
        init(box: NIOLockedValueBox<[UInt8]>) { self.box = box }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let bytes = Array(buffer: unwrapInboundIn(data))
            box.withLockedValue { $0 += bytes }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event {
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "ok"))).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
            }
        }
    }

    init(ip: String) async throws {
        let box = self.box
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Handler(box: box)) }
            }
            .bind(host: ip, port: 0).get()
        address = SocketAddr(channel.localAddress)!
    }

    func close() async {
        try? await channel.close()
    }
}

/// The receiving side of the authorities that do not name the destination workload's own
/// address, on the wire: a waypoint's node proxy takes streams for the services and
/// workloads it is the waypoint of, and any node proxy takes a service hostname; a
/// sandwiched waypoint (an application tunnel of protocol PROXY) gets a PROXY header first.
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

        @Test("an application tunnel of protocol PROXY: the tunnel port, a PROXY v2 header (source, target, TLV 0xD0 identity), then the bytes")
        func proxyApplicationTunnel() async throws {
            let sandwich = "127.0.8.53"
            let backend = try await RecordingServer(ip: sandwich)
            let sandwichWorkload = """
                - uid: c//v1/Pod/default/sandwich
                  name: sandwich
                  namespace: default
                  serviceAccount: sandwich
                  workloadIps: ["\(sandwich)"]
                  protocol: HBONE
                  node: node-b
                  applicationTunnel: {protocol: PROXY, port: \(backend.address.port)}

                """
            // One more workload, at the end of the top-level `workloads:` list.
            let yaml = Self.mesh(port: 9).replacingOccurrences(of: "\nservices:\n", with: "\n" + sandwichWorkload + "services:\n")
            let node = try await MeshNode(name: "node-b", mesh: yaml, waitForListeners: [sandwich])
            let dir = try TemporaryDirectory()
            let files = try HBONEInteropTests.clientFiles(dir, identity: TestMesh.identity("python"))

            // An authority that is neither its address nor one it is the waypoint of: taken,
            // because the header tells the application where the stream was for.
            let ok = try await HBONEInteropTests.python(
                ["client", "--connect", "\(sandwich):15008", "--authority", "\(Self.otherVIP):80", "--payload", "hello"] + files)
            #expect(ok["status"] as? Int == 200, "\(ok)")
            #expect(ok["body"] as? String == "ok")
            let received = backend.received
            let identity = Array("spiffe://cluster.local/ns/default/sa/python".utf8)
            let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
            let headerLength = 16 + 12 + 3 + identity.count
            #expect(received.count == headerLength + 5, "\(received)")
            guard received.count == headerLength + 5 else { return }
            #expect(Array(received[0..<12]) == signature)
            #expect(Array(received[12..<16]) == [0x21, 0x11, 0x00, UInt8(12 + 3 + identity.count)])
            #expect(Array(received[16..<20]) == [127, 0, 0, 1], "the source is the tunnel's TCP peer")
            #expect(Array(received[20..<24]) == IPAddress(Self.otherVIP)!.bytes, "the target is the authority")
            #expect(Array(received[26..<28]) == [0x00, 80])
            #expect(Array(received[28..<31]) == [0xD0, 0x00, UInt8(identity.count)])
            #expect(Array(received[31..<headerLength]) == identity)
            #expect(Array(received[headerLength...]) == Array("hello".utf8))
            try await node.stop()
            await backend.close()
            dir.remove()
        }
    }
}
