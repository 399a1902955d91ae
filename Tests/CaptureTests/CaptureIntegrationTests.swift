import Capture
import Foundation
import Kernel
import LocalConfig
import Logging
import NIOPosix
import TestSupport
import Testing
import AmbitRuntime

#if canImport(Glibc)
    import Glibc
#endif

/// An in-process node (local-config + capture) over a mesh file the test controls.
final class CaptureHarness: Sendable {
    let running: RunningNode
    let meshPath: String
    let socks: SocketAddr

    var node: ProxyNode { running.node }
    var dir: TemporaryDirectory { running.directory }

    init(mesh: String) async throws {
        running = try await RunningNode.start(
            manifest: """
                node: {name: node-a, drainDeadline: 1s}
                admin: {address: "127.0.0.1:0", readinessAddress: "127.0.0.1:0"}
                plugins:
                  - id: local-config
                    config: {path: mesh.yaml, pollInterval: 50ms}
                  - id: capture
                    config: {socks5: {address: "127.0.0.1:0"}}
                """,
            files: ["mesh.yaml": mesh],
            registry: PluginRegistry([PluginType(LocalConfigPlugin.self), PluginType(CapturePlugin.self)]),
            logger: Logger(label: "capture-test")
        ) { node in
            node.readiness.isReady && node.plugin(CapturePlugin.self)?.captureAddresses.isEmpty == false
        }
        meshPath = running.directory.path + "/mesh.yaml"
        socks = running.plugin(CapturePlugin.self)!.captureAddresses.first!
    }

    func stop() async throws {
        try await running.stop()
    }

    func exchange(_ address: SOCKS5Address, _ port: UInt16, from source: String = "127.0.0.1", payload: String = "ping")
        async throws -> (reply: SOCKS5Reply, response: String)
    {
        let socks = self.socks
        let (reply, response) = try await offload {
            try SOCKS5Client.exchange(
                proxy: socks, source: IPAddress(source), request: SOCKS5Request(address: address, port: port),
                payload: Array(payload.utf8))
        }
        return (reply, String(decoding: response, as: UTF8.self))
    }
}

func meshYAML(backendA: SocketAddr, backendB: SocketAddr, extra: String = "") -> String {
    """
    workloads:
    - uid: c//v1/Pod/default/client
      name: client
      namespace: default
      workloadIps: ["127.0.0.1"]
      node: node-a
    - uid: c//v1/Pod/default/a
      name: a
      namespace: default
      workloadIps: ["\(backendA.ip)"]
      services: {"default/svc.default.svc.cluster.local": {80: \(backendA.port)}}
    - uid: c//v1/Pod/default/b
      name: b
      namespace: default
      workloadIps: ["\(backendB.ip)"]
      status: Unhealthy
      services: {"default/svc.default.svc.cluster.local": {80: \(backendB.port)}}
    - uid: c//v1/Pod/default/remote-client
      name: remote-client
      namespace: default
      workloadIps: ["127.0.0.3"]
      node: node-b
    - uid: c//v1/Pod/default/meshed
      name: meshed
      namespace: default
      workloadIps: ["127.0.0.4"]
      protocol: HBONE
    \(extra)
    services:
    - name: svc
      namespace: default
      hostname: svc.default.svc.cluster.local
      vips: ["/127.10.0.1"]
      ports: {80: 0}
    - name: empty
      namespace: default
      hostname: empty.default.svc.cluster.local
      vips: ["/127.10.0.2"]
      ports: {80: 80}
    """
}

@Suite("capture: SOCKS5 through the node", .serialized)
struct CaptureIntegrationTests {
    @Test("IPv4, domain (mesh hostname) and IPv6 destinations are relayed byte for byte")
    func addressTypes() async throws {
        try await withCaptureMesh { harness, a, b async throws in

            let byIP = try await harness.exchange(.ip(a.address.ip), a.address.port, payload: "hello")
            #expect(byIP.reply == .succeeded)
            #expect(byIP.response == "a: hello")

            // The service hostname resolves to its VIP; the unhealthy endpoint b is never picked.
            for _ in 0..<5 {
                let byName = try await harness.exchange(.domain("svc.default.svc.cluster.local"), 80, payload: "x")
                #expect(byName.reply == .succeeded)
                #expect(byName.response == "a: x")
            }

            if let v6 = try? await EchoServer.start("[::1]:0", name: "v6", group: MultiThreadedEventLoopGroup.singleton)
            {
                let byV6 = try await harness.exchange(.ip(IPAddress("::1")!), v6.address.port, payload: "six")
                #expect(byV6.reply == .succeeded)
                #expect(byV6.response == "v6: six")
                await v6.close()
            }
        }
    }

    @Test("refusals: unknown source, source on another node, HBONE without a tunnel, no healthy endpoint, self-call")
    func refusals() async throws {
        let meshed = try await EchoServer.start("127.0.0.4:0", group: MultiThreadedEventLoopGroup.singleton)
        try await withCaptureMesh { harness, a, _ async throws in

            #expect(
                try await harness.exchange(.ip(a.address.ip), a.address.port, from: "127.0.0.99").reply == .notAllowed)
            #expect(
                try await harness.exchange(.ip(a.address.ip), a.address.port, from: "127.0.0.3").reply == .notAllowed)
            #expect(try await harness.exchange(.ip(meshed.address.ip), meshed.address.port).reply == .notAllowed)
            #expect(try await harness.exchange(.ip(IPAddress("127.10.0.2")!), 80).reply == .hostUnreachable)
            #expect(try await harness.exchange(.ip(IPAddress("127.0.0.1")!), 15008).reply == .notAllowed)
            // A workload port nobody listens on: the client learns the connection was refused.
            #expect(try await harness.exchange(.ip(a.address.ip), 1).reply == .connectionRefused)
            #expect(meshed.acceptedCount == 0)
        }
        await meshed.close()
    }

    @Test("malformed SOCKS5 gets an error reply and a close, and the node keeps serving")
    func malformedRequests() async throws {
        try await withCaptureMesh { harness, a, b async throws in

            let cases: [(bytes: [UInt8], reply: [UInt8])] = [
                ([5, 1, 2], [5, 0xff]),  // only username/password offered
                ([5, 1, 0, 5, 3, 0, 1, 127, 0, 0, 2, 0, 80], [5, 0, 5, 7]),  // UDP ASSOCIATE
                ([5, 1, 0, 5, 1, 0, 9, 1, 2, 3, 4, 0, 80], [5, 0, 5, 8]),  // unknown address type
                ([4, 1, 0, 80, 127, 0, 0, 1, 0], []),  // SOCKS4
                (Array(repeating: 0xff, count: 2048), []),  // garbage
            ]
            for (bytes, expected) in cases {
                let received = try await rawExchange(harness.socks, bytes)
                #expect(Array(received.prefix(expected.count)) == expected, "for \(bytes.prefix(8))")
            }
            let ok = try await harness.exchange(.ip(a.address.ip), a.address.port, payload: "still here")
            #expect(ok.response == "a: still here")
        }
    }

    @Test("a backend reset mid-relay ends the client connection and nothing leaks")
    func resetMidRelay() async throws {
        try await withCaptureMesh { harness, a, b async throws in
            let listener = try ResettingServer(ip: "127.0.0.2")
            let target = SOCKS5Request(address: .ip(IPAddress("127.0.0.2")!), port: listener.port)
            let socks = harness.socks
            let client = try await offload {
                try SOCKS5Client(proxy: socks, source: IPAddress("127.0.0.1"), request: target)
            }
            #expect(client.reply == .succeeded)
            try client.send(Array(repeating: 7, count: 1000))
            try await offload { listener.acceptAndReset() }
            let rest = try? await offload { try client.receiveToEnd() }
            #expect(rest?.isEmpty ?? true)
            #expect(await eventually { harness.node.connections.count == 0 })
            let ok = try await harness.exchange(.ip(a.address.ip), a.address.port, payload: "after reset")
            #expect(ok.response == "a: after reset")
        }
    }

    @Test("a mesh config edit changes routing; a bad edit keeps the last good config")
    func reload() async throws {
        try await withCaptureMesh { harness, a, b async throws in
            #expect(try await harness.exchange(.ip(IPAddress("127.10.0.1")!), 80).response == "a: ping")

            // b becomes healthy and a unhealthy: the service now routes to b.
            let swapped = meshYAML(backendA: a.address, backendB: b.address)
                .replacingOccurrences(of: "status: Unhealthy", with: "status: Healthy")
                .replacingOccurrences(
                    of: "workloadIps: [\"\(a.address.ip)\"]",
                    with: "workloadIps: [\"\(a.address.ip)\"]\n  status: Unhealthy")
            try swapped.write(toFile: harness.meshPath, atomically: true, encoding: .utf8)
            #expect(
                await eventually {
                    (try? await harness.exchange(.ip(IPAddress("127.10.0.1")!), 80).response) == "b: ping"
                })

            // A broken edit is rejected; routing stays on b.
            try "workloads: [{uid: x, nme: oops}]".write(toFile: harness.meshPath, atomically: true, encoding: .utf8)
            try await Task.sleep(for: .milliseconds(300))
            #expect(try await harness.exchange(.ip(IPAddress("127.10.0.1")!), 80).response == "b: ping")
        }
    }
}

/// Runs `body` with backends `a` (127.0.0.2, healthy endpoint of svc) and `b`
/// (127.0.0.5, unhealthy endpoint) and a node over ``meshYAML(backendA:backendB:extra:)``;
/// stops everything afterwards, also when `body` throws.
func withCaptureMesh(_ body: (CaptureHarness, EchoServer, EchoServer) async throws -> Void) async throws {
    let group = MultiThreadedEventLoopGroup.singleton
    let a = try await EchoServer.start("127.0.0.2:0", name: "a", group: group)
    let b = try await EchoServer.start("127.0.0.5:0", name: "b", group: group)
    do {
        let harness = try await CaptureHarness(mesh: meshYAML(backendA: a.address, backendB: b.address))
        do {
            try await body(harness, a, b)
        } catch {
            try? await harness.stop()
            throw error
        }
        try await harness.stop()
    } catch {
        await a.close()
        await b.close()
        throw error
    }
    await a.close()
    await b.close()
}

/// Sends raw bytes to the SOCKS5 listener and returns everything it answers before closing.
func rawExchange(_ proxy: SocketAddr, _ bytes: [UInt8]) async throws -> [UInt8] {
    try await offload {
        let socket = try BlockingSocket(connectingTo: proxy)
        try socket.send(bytes)
        return try socket.receiveToEnd()
    }
}

/// A listener that accepts one connection and resets it (SO_LINGER 0).
final class ResettingServer: @unchecked Sendable {
    let fd: Int32
    let port: UInt16

    init(ip: String) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, ip, &address.sin_addr)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 4) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard ok else { throw TestFailure("cannot listen on \(ip)") }
        port = UInt16(bigEndian: address.sin_port)
    }

    func acceptAndReset() {
        let conn = accept(fd, nil, nil)
        var buffer = [UInt8](repeating: 0, count: 100)
        _ = read(conn, &buffer, buffer.count)
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(conn, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(conn)
        close(fd)
    }
}
