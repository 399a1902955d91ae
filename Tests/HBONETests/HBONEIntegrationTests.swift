import Capture
import Crypto
import Foundation
import HBONE
import AmbitRuntime
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import Telemetry
import TestSupport

/// Two in-process node proxies on loopback with real TLS and HTTP/2 between them.
final class TwoNodes: Sendable {
    let a: MeshNode
    let b: MeshNode
    let backends: [String: HashServer]

    /// The pair a test left running when it failed before `stop()`: the next test stops
    /// it first, so one failure does not cascade through every later test's fixed ports.
    private static let leftover = NIOLockedValueBox<TwoNodes?>(nil)

    /// Starts hash backends on server-a, server-b and plain-b, then both nodes.
    /// With `echoOnB`, server-b's backend echoes (``HashServer`` with `echo`) instead of hashing;
    /// `editMesh` changes the mesh file both nodes load (given ``TestMesh/yaml(ports:)``'s).
    init(
        denyPortsOnB: [UInt16] = [], hbone: String = "{}", echoOnB: Bool = false,
        editMesh: (String) -> String = { $0 }
    ) async throws {
        if let previous = Self.leftover.withLockedValue({ $0.take() }) { try? await previous.stop() }
        var backends: [String: HashServer] = [:]
        for ip in [TestMesh.serverA, TestMesh.serverB, TestMesh.plainB] {
            backends[ip] = try await HashServer(ip: ip, echo: echoOnB && ip == TestMesh.serverB)
        }
        self.backends = backends
        let mesh = editMesh(TestMesh.yaml(ports: backends.mapValues(\.address.port)))
        a = try await MeshNode(
            name: "node-a", mesh: mesh, hbone: hbone, waitForListeners: [TestMesh.clientA, TestMesh.serverA])
        do {
            b = try await MeshNode(
                name: "node-b", mesh: mesh, denyPorts: denyPortsOnB, hbone: hbone,
                waitForListeners: [TestMesh.serverB, TestMesh.viaWaypoint])
        } catch {
            try? await a.stop()
            for backend in backends.values { await backend.close() }
            throw error
        }
        Self.leftover.withLockedValue { $0 = self }
    }

    func port(_ ip: String) -> UInt16 { backends[ip]!.address.port }

    func stop() async throws {
        Self.leftover.withLockedValue { if $0 === self { $0 = nil } }
        try await a.stop()
        try await b.stop()
        for backend in backends.values { await backend.close() }
    }
}

func sha256Hex(_ bytes: [UInt8]) -> String {
    SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
}

extension HBONENetworkTests {
    @Suite("HBONE: two node proxies on loopback", .serialized)
    struct HBONEIntegrationTests {
        @Test("cross-node: 64 MiB upload arrives byte-exact (SHA-256), half-close carries the reply back")
        func crossNodeUpload() async throws {
            let nodes = try await TwoNodes()
            let size = 64 * 1024 * 1024
            let target = SOCKS5Request(address: .ip(IPAddress(TestMesh.serverB)!), port: nodes.port(TestMesh.serverB))
            let socks = nodes.a.socks
            let (reply, expected) = try await NIOThreadPool.singleton.runIfActive { () -> (String, String) in
                let client = try SOCKS5Client(proxy: socks, source: IPAddress(TestMesh.clientA), request: target, timeoutSeconds: 60)
                guard client.reply == .succeeded else { throw TestFailure("SOCKS reply \(client.reply)") }
                var hasher = SHA256()
                var offset = 0
                while offset < size {
                    let chunk = HashServer.pattern(offset: offset, count: min(1 << 20, size - offset))
                    hasher.update(data: chunk)
                    try client.send(chunk)
                    offset += chunk.count
                }
                client.finishSending()
                let reply = String(decoding: try client.receiveToEnd(), as: UTF8.self)
                return (reply, "\(size) " + hasher.finalize().map { String(format: "%02x", $0) }.joined())
            }
            #expect(reply == expected)

            // Both ends saw the same connection: mTLS with the client's identity on node-b.
            #expect(await eventually { nodes.b.telemetry.closedRecords.contains { $0.route == "hbone" } })
            let inbound = try #require(nodes.b.telemetry.closedRecords.first { $0.route == "hbone" })
            #expect(inbound.direction == .inbound)
            #expect(inbound.peerIdentity == TestMesh.identity("client-a"))
            #expect(inbound.isMutualTLS)
            #expect(inbound.source.ip == IPAddress(TestMesh.clientA))
            #expect(inbound.destinationWorkload?.name == "server-b")
            #expect(inbound.bytes.sent == UInt64(size))
            #expect(await eventually { nodes.a.telemetry.closedRecords.contains { $0.route == "hbone" } })
            let outbound = try #require(nodes.a.telemetry.closedRecords.first { $0.route == "hbone" })
            #expect(outbound.direction == .outbound)
            #expect(outbound.bytes.sent == UInt64(size))
            #expect(outbound.bytes.received == UInt64(expected.utf8.count))
            // Istio metrics: both reporters count exactly the bytes that crossed, each way.
            let received = IstioTCPMetrics.Name.received
            let sent = IstioTCPMetrics.Name.sent
            let source = ["reporter": "source", "destination_workload": "server-b"]
            let destination = [
                "reporter": "destination", "destination_workload": "server-b", "connection_security_policy": "mutual_tls",
                "source_principal": "\(TestMesh.identity("client-a"))",
            ]
            #expect(nodes.a.metricValue(received, source) == UInt64(size))
            #expect(nodes.b.metricValue(received, destination) == UInt64(size))
            #expect(nodes.a.metricValue(sent, source) == UInt64(expected.utf8.count))
            #expect(nodes.b.metricValue(sent, destination) == UInt64(expected.utf8.count))
            // The policy role saw the peer identity.
            #expect(nodes.b.policy.seen.withLockedValue { $0.last?.sourceIdentity } == TestMesh.identity("client-a"))
            try await nodes.stop()
        }

        @Test("same-node: 64 MiB download through the node's own HBONE server is byte-exact")
        func sameNodeDownload() async throws {
            let size = 64 * 1024 * 1024
            let source = try await HashServer(ip: TestMesh.serverA, sourceBytes: size)
            let nodes = try await TwoNodes()
            let target = SOCKS5Request(address: .ip(IPAddress(TestMesh.serverA)!), port: source.address.port)
            let socks = nodes.a.socks
            let digest = try await NIOThreadPool.singleton.runIfActive { () -> (Int, String) in
                let client = try SOCKS5Client(proxy: socks, source: IPAddress(TestMesh.clientA), request: target, timeoutSeconds: 60)
                guard client.reply == .succeeded else { throw TestFailure("SOCKS reply \(client.reply)") }
                client.finishSending()
                var hasher = SHA256()
                var count = 0
                while true {
                    let chunk = try client.receive(maximum: 1 << 20)
                    if chunk.isEmpty { break }
                    hasher.update(data: chunk)
                    count += chunk.count
                }
                return (count, hasher.finalize().map { String(format: "%02x", $0) }.joined())
            }
            #expect(digest.0 == size)
            #expect(digest.1 == sha256Hex(HashServer.pattern(offset: 0, count: size)))
            // Same node, still HBONE: one outbound and one inbound record on node-a, none on node-b.
            #expect(await eventually { nodes.a.telemetry.closedRecords.count == 2 })
            let routes = nodes.a.telemetry.closedRecords.map { "\($0.direction)/\($0.route)" }.sorted()
            #expect(routes == ["inbound/hbone", "outbound/hbone"])
            #expect(nodes.a.telemetry.closedRecords.first { $0.direction == .inbound }?.peerIdentity == TestMesh.identity("client-a"))
            #expect(nodes.b.telemetry.closedRecords.isEmpty)
            try await nodes.stop()
            await source.close()
        }

        @Test("pool reuse: 20 sequential tunnels share one TLS connection per pool key; service VIP routes to the endpoint")
        func poolReuseAndService() async throws {
            let nodes = try await TwoNodes()
            for index in 0..<20 {
                let payload = Array("tunnel \(index)".utf8)
                let viaService = index % 2 == 0
                let result = try await nodes.a.exchange(
                    to: viaService ? TestMesh.serviceVIP : TestMesh.serverB, viaService ? 80 : nodes.port(TestMesh.serverB),
                    payload: payload)
                #expect(result.reply == .succeeded)
                #expect(String(decoding: result.response, as: UTF8.self) == "\(payload.count) \(sha256Hex(payload))")
            }
            // Service-addressed tunnels also accept the service's SANs, so they form their own
            // pool key; each key has at most one connection per event loop (pools are per
            // loop), ten streams per key in all.
            let pool = nodes.a.hbone.poolConnections
            let byKey = Dictionary(grouping: pool, by: \.key)
            #expect(byKey.count == 2, "\(pool)")
            #expect(byKey.values.allSatisfy { $0.count <= System.coreCount }, "\(pool)")
            #expect(byKey.values.map { $0.reduce(0) { $0 + $1.streamsOpened } }.sorted() == [10, 10])
            #expect(pool.contains { $0.key.contains("echo-san") })
            #expect(await eventually { nodes.a.hbone.poolConnections.allSatisfy { $0.activeStreams == 0 } })
            #expect(nodes.b.hbone.serverConnectionCount == pool.count)
            try await nodes.stop()
        }

        @Test("passthrough to an out-of-mesh destination and plain TCP to a non-HBONE workload")
        func passthroughAndPlaintext() async throws {
            let outside = try await HashServer(ip: TestMesh.outside)
            let nodes = try await TwoNodes()
            let payload = Array("outside".utf8)
            let passthrough = try await nodes.a.exchange(to: TestMesh.outside, outside.address.port, payload: payload)
            #expect(passthrough.reply == .succeeded)
            #expect(String(decoding: passthrough.response, as: UTF8.self) == "\(payload.count) \(sha256Hex(payload))")
            let plain = try await nodes.a.exchange(to: TestMesh.plainB, nodes.port(TestMesh.plainB), payload: payload)
            #expect(plain.reply == .succeeded)
            #expect(String(decoding: plain.response, as: UTF8.self) == "\(payload.count) \(sha256Hex(payload))")
            #expect(await eventually { nodes.a.telemetry.closedRecords.count == 2 })
            #expect(Set(nodes.a.telemetry.closedRecords.map(\.route)) == ["passthrough", "direct"])
            #expect(nodes.a.hbone.poolConnections.isEmpty)
            try await nodes.stop()
            await outside.close()
        }

        @Test("policy deny on the destination node: the tunnel is refused (401) and nothing reaches the workload")
        func policyDeny() async throws {
            let backend = try await HashServer(ip: TestMesh.serverB)
            let nodes = try await TwoNodes(denyPortsOnB: [backend.address.port])
            let denied = try await nodes.a.exchange(to: TestMesh.serverB, backend.address.port, payload: [1, 2, 3])
            #expect(denied.reply != .succeeded)
            #expect(backend.accepted.withLockedValue { $0 } == 0)
            // Other tunnels on the same pooled connection are unaffected.
            let ok = try await nodes.a.exchange(to: TestMesh.serverB, nodes.port(TestMesh.serverB), payload: [4, 5])
            #expect(ok.reply == .succeeded)
            // The refused stream did not take its connection down: still one per loop at most.
            #expect((1...System.coreCount).contains(nodes.a.hbone.poolConnections.count))
            #expect(nodes.a.hbone.poolConnections.allSatisfy { $0.usable })
            try await nodes.stop()
            await backend.close()
        }

        @Test("1,000 concurrent tunnelled connections over a pooled connection set; every byte accounted for")
        func thousandConcurrent() async throws {
            let nodes = try await TwoNodes()
            let count = 1000
            let target = SocketAddr(ip: IPAddress(TestMesh.serverB)!, port: nodes.port(TestMesh.serverB))
            let results = try await ConcurrentSOCKSClients.run(
                count: count, proxy: nodes.a.socks, source: IPAddress(TestMesh.clientA)!, target: target,
                payloadSize: 2048, group: MultiThreadedEventLoopGroup.singleton)
            #expect(results.failures.isEmpty, "\(results.failures.prefix(5))")
            #expect(results.succeeded == count)
            #expect(await eventually(timeout: .seconds(20)) { nodes.a.node.connections.count == 0 && nodes.b.node.connections.count == 0 })
            let outbound = nodes.a.telemetry.closedRecords.filter { $0.route == "hbone" }
            #expect(outbound.count == count)
            let broken = (nodes.b.telemetry.closedRecords + outbound).filter { $0.bytes.sent != 2048 }
            #expect(broken.isEmpty, "\(broken.prefix(6).map { "\($0.direction) sent \($0.bytes.sent) received \($0.bytes.received): \($0.failure ?? "no failure")" })")
            #expect(outbound.reduce(0) { $0 + $1.bytes.sent } == UInt64(count * 2048))
            let inbound = nodes.b.telemetry.closedRecords.filter { $0.route == "hbone" }
            #expect(inbound.count == count)
            #expect(inbound.reduce(0) { $0 + $1.bytes.sent } == UInt64(count * 2048))
            let pool = nodes.a.hbone.poolConnections
            // At most 100 streams per connection: a burst needs several connections, far fewer than 1,000.
            #expect((1...40).contains(pool.count), "\(pool.count) pooled connections")
            #expect(pool.reduce(0) { $0 + $1.streamsOpened } == count)
            try await nodes.stop()
        }

        @Test("drain: the server sends GOAWAY and the client stops using the connection")
        func drainSendsGoAway() async throws {
            let nodes = try await TwoNodes()
            let payload = Array("before drain".utf8)
            let before = try await nodes.a.exchange(to: TestMesh.serverB, nodes.port(TestMesh.serverB), payload: payload)
            #expect(before.reply == .succeeded)
            #expect(nodes.a.hbone.poolConnections.first?.usable == true)
            nodes.b.node.shutdown()
            // GOAWAY retires the connection (or the close removes it); either way it is not reused.
            #expect(await eventually { nodes.a.hbone.poolConnections.allSatisfy { !$0.usable } })
            try await nodes.stop()
        }
    }
}
