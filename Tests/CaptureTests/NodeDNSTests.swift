import Capture
import DNSProxy
import Foundation
import Kernel
import LocalConfig
import Logging
import TestSupport
import Testing
import AmbitRuntime

#if canImport(Glibc)
import Glibc
#endif

@Suite("capture: the node-level DNS proxy", .timeLimit(.minutes(1)))
struct NodeDNSTests {
    /// One UDP query from `source` to `server`, on a thread of its own; the answer parsed.
    static func ask(_ query: DNSMessage, server: SocketAddr, from source: String) async throws -> DNSMessage {
        let bytes = query.serialized()
        let answer: [UInt8] = try await withCheckedThrowingContinuation { continuation in
            Thread {
                continuation.resume(
                    with: Result { () throws -> [UInt8] in
                        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                        defer { close(fd) }
                        var limit = timeval(tv_sec: 5, tv_usec: 0)
                        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
                        var local = sockaddr_in()
                        local.sin_family = sa_family_t(AF_INET)
                        inet_pton(AF_INET, source, &local.sin_addr)
                        var remote = sockaddr_in()
                        remote.sin_family = sa_family_t(AF_INET)
                        remote.sin_port = server.port.bigEndian
                        inet_pton(AF_INET, "\(server.ip)", &remote.sin_addr)
                        _ = withUnsafePointer(to: &local) {
                            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                        }
                        _ = bytes.withUnsafeBytes { raw in
                            withUnsafePointer(to: &remote) {
                                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                                    sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                                }
                            }
                        }
                        var buffer = [UInt8](repeating: 0, count: 4096)
                        let received = recv(fd, &buffer, buffer.count, 0)
                        guard received > 0 else { throw SocketError(code: .connectFailed, message: "no DNS answer") }
                        return Array(buffer.prefix(received))
                    })
            }.start()
        }
        return try DNSMessage(parsing: answer)
    }

    @Test("capture.dns.address: a local workload's query (found by its source address) gets its service's VIP; others SERVFAIL")
    func answersLocalWorkloads() async throws {
        let running = try await RunningNode.start(
            manifest: """
                node: {name: node-a, drainDeadline: 1s}
                admin: {address: "127.0.0.1:0", readinessAddress: "127.0.0.1:0"}
                plugins:
                  - id: local-config
                    config: {path: mesh.yaml}
                  - id: capture
                    config: {socks5: {enabled: false}, dns: {address: "127.0.53.9:0", upstreams: ["127.0.53.10:53"]}}
                """,
            files: [
                "mesh.yaml": """
                    workloads:
                    - {uid: c//v1/Pod/shop/client, name: client, namespace: shop, serviceAccount: client,
                       workloadIps: ["127.0.53.20"], node: node-a}
                    services:
                    - {name: cart, namespace: shop, hostname: cart.shop.svc.cluster.local, vips: ["10.96.7.7"], ports: {80: 8080}}
                    """
            ],
            registry: PluginRegistry([PluginType(LocalConfigPlugin.self), PluginType(CapturePlugin.self)]),
            logger: Logger(label: "node-dns-test")
        ) { $0.readiness.isReady && $0.plugin(CapturePlugin.self)?.dnsAddress != nil }
        let server = try #require(running.plugin(CapturePlugin.self)?.dnsAddress)
        let query = DNSMessage.query(id: 0x1234, name: try #require(DNSName("cart")), type: .a)
        let answer = try await Self.ask(query, server: server, from: "127.0.53.20")
        #expect(answer.header.id == 0x1234)
        #expect(answer.header.responseCode == DNSResponseCode.noError)
        #expect("\(answer.answers)".contains("10.96.7.7"), "\(answer.answers)")
        let stranger = try await Self.ask(query, server: server, from: "127.0.53.21")
        #expect(stranger.header.responseCode == DNSResponseCode.serverFailure)
        try await running.stop()
    }
}
