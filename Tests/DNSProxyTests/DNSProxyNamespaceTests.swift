#if canImport(Glibc)
import Glibc
#endif
import AmbitRuntime
import DNSProxy
import Foundation
import Kernel
import Logging
import NIOCore
import NIOPosix
import TestSupport
import Testing

/// The in-pod shape: the proxy's servers and its upstream sockets inside a pod's network
/// namespace, marked. Root only (as in CI).
@Suite("DNS proxy inside a network namespace", .serialized, .timeLimit(.minutes(1)), .enabled(if: getuid() == 0))
struct DNSProxyNamespaceTests {
    @Test("servers and upstream sockets are made inside the namespace: clients and the upstream there are reached")
    func inPod() async throws {
        let name = "ambit-dns-\(getpid())"
        try ip("netns", "add", name)
        defer { try? ip("netns", "del", name) }
        try ip("-n", name, "link", "set", "lo", "up")
        let namespace = try NetworkNamespace(path: "/var/run/netns/\(name)", mark: 0x539)
        defer { namespace.close() }
        let pod = SocketPlacement(namespace: namespace, mark: 0x539)

        // The upstream exists only inside the pod's namespace, so an answer proves the
        // forwarder's sockets are there too; it truncates over UDP to exercise TCP as well.
        let upstream = try await StandInDNS.start(on: "127.0.53.2", placement: pod) { query, transport in
            var answer = DNSMessage(header: query.header.response(), questions: query.questions)
            if transport == .udp {
                answer.header.truncated = true
            } else {
                answer.answers = [DNSResourceRecord(name: query.questions[0].name, ttl: 60, data: .a(IPAddress("192.0.2.53")!))]
            }
            return .answer(answer)
        }
        defer { Task { await upstream.stop() } }
        let mesh = testMesh()
        let proxy = try await DNSProxyServer.start(
            address: SocketAddr(ip: IPAddress("127.0.53.1")!, port: 0), placement: pod, group: MultiThreadedEventLoopGroup.singleton,
            mesh: { mesh }, client: { _ in ns1Client }, upstreams: [upstream.address], metrics: nil,
            logger: Logger(label: "dns-netns-test"))
        defer { Task { await proxy.stop() } }

        let meshAnswer = try await DNSTestClient.udp(.query(id: 1, name: DNSName("echo")!, type: .a), to: proxy.udpAddress, placement: pod)
        #expect(meshAnswer.answers.first?.data == .a(IPAddress("10.0.0.10")!))
        let truncated = try await DNSTestClient.udp(
            .query(id: 2, name: DNSName("www.example.org")!, type: .a), to: proxy.udpAddress, placement: pod)
        #expect(truncated.header.truncated && truncated.header.id == 2)
        let whole = try await DNSTestClient.tcp(.query(id: 3, name: DNSName("www.example.org")!, type: .a), to: proxy.tcpAddress, placement: pod)
        #expect(whole.answers.first?.data == .a(IPAddress("192.0.2.53")!) && whole.header.id == 3)
        #expect(upstream.queries(.udp) == 2 && upstream.queries(.tcp) == 1)
    }

    private func ip(_ arguments: String...) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip"] + arguments
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("ip \(arguments.joined(separator: " ")) failed") }
    }
}
