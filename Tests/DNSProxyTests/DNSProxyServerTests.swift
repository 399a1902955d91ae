import AmbitRuntime
import ConfigYAML
import DNSProxy
import Kernel
import Logging
import MetricsTestKit
import NIOCore
import NIOPosix
import TestSupport
import Testing

/// Servers on 127.0.53.0/24 only.
private func ip(_ last: Int) -> IPAddress { IPAddress("127.0.53.\(last)")! }

private let quick = DNSProxyServer.Options(
    upstreamUDPTimeout: .milliseconds(300), upstreamTCPTimeout: .seconds(2), tcpIdleTimeout: .seconds(10))

private func startProxy(
    upstreams: [SocketAddr], metrics: DNSMetrics? = nil, mesh: MeshSnapshot = testMesh(),
    client: DNSClientInfo? = ns1Client, options: DNSProxyServer.Options = quick
) async throws -> DNSProxyServer {
    try await DNSProxyServer.start(
        address: SocketAddr(ip: ip(1), port: 0), placement: .node, group: MultiThreadedEventLoopGroup.singleton,
        mesh: { mesh }, client: { _ in client }, upstreams: upstreams, metrics: metrics,
        logger: Logger(label: "dns-test"), options: options)
}

private func addresses(_ message: DNSMessage) -> [String] {
    message.answers.compactMap {
        switch $0.data {
        case .a(let ip), .aaaa(let ip): "\(ip)"
        default: nil
        }
    }.sorted()
}

/// An upstream answer for `query`: one A record.
private func upstreamAnswer(_ query: DNSMessage, _ address: String = "192.0.2.80") -> DNSMessage {
    var answer = DNSMessage(header: query.header.response(), questions: query.questions, edns: query.edns)
    answer.answers = [DNSResourceRecord(name: query.questions[0].name, ttl: 300, data: .a(IPAddress(address)!))]
    return answer
}

@Suite("DNS proxy on loopback", .serialized, .timeLimit(.minutes(1)))
struct DNSProxyServerTests {
    @Test("mesh names over UDP and TCP (several queries on one connection)")
    func meshAnswers() async throws {
        let proxy = try await startProxy(upstreams: [])
        defer { Task { await proxy.stop() } }
        #expect(proxy.udpAddress == proxy.tcpAddress)

        let udp = try await DNSTestClient.udp(.query(id: 1, name: DNSName("echo")!, type: .a), to: proxy.udpAddress)
        #expect(udp.header.id == 1 && udp.header.authoritative && addresses(udp) == ["10.0.0.10"])

        let answers = try await DNSTestClient.tcp(
            [
                .query(id: 2, name: DNSName("echo.ns1.svc.cluster.local")!, type: .a),
                .query(id: 3, name: DNSName("headless")!, type: .a),
                .query(id: 4, name: DNSName("v4only")!, type: .aaaa),
            ], to: proxy.tcpAddress)
        let byID = Dictionary(uniqueKeysWithValues: answers.map { ($0.header.id, $0) })
        #expect(byID[2].map(addresses) == ["10.0.0.10"])
        #expect(byID[3].map(addresses) == ["10.2.0.1", "10.2.0.2"])
        #expect(byID[4]?.answers.isEmpty == true && byID[4]?.header.responseCode == .noError)
    }

    @Test("other names go upstream: the answer comes back with the client's id; metrics counted")
    func forwarding() async throws {
        let upstream = try await StandInDNS.start(on: "127.0.53.2") { query, _ in .answer(upstreamAnswer(query)) }
        defer { Task { await upstream.stop() } }
        let testMetrics = TestMetrics()
        let proxy = try await startProxy(upstreams: [upstream.address], metrics: DNSMetrics(factory: testMetrics))
        defer { Task { await proxy.stop() } }

        let answer = try await DNSTestClient.udp(.query(id: 0x1234, name: DNSName("www.example.org")!, type: .a), to: proxy.udpAddress)
        #expect(answer.header.id == 0x1234 && !answer.header.authoritative)
        #expect(addresses(answer) == ["192.0.2.80"])
        let mx = try await DNSTestClient.tcp([.query(id: 7, name: DNSName("echo")!, type: .mx)], to: proxy.tcpAddress)
        #expect(mx.first.map(addresses) == ["192.0.2.80"])  // forwarded: MX is not the mesh's
        #expect(upstream.queries(.udp) == 2)
        _ = try await DNSTestClient.udp(.query(id: 8, name: DNSName("echo")!, type: .a), to: proxy.udpAddress)

        let udpA: [(String, String)] = [
            ("request_query_type", "a"), ("request_protocol", "udp"),
            ("source_canonical_service", "client"), ("source_canonical_revision", "v1"),
        ]
        #expect(try testMetrics.expectCounter("istio_dns_requests_total", udpA).totalValue == 2)
        #expect(try testMetrics.expectCounter("istio_dns_upstream_requests_total", udpA).totalValue == 1)
        #expect(try testMetrics.expectCounter("istio_dns_upstream_failures_total", udpA).totalValue == 0)
        #expect(try testMetrics.expectTimer("istio_dns_upstream_request_duration_seconds", udpA).values.count == 1)
        let tcpMX: [(String, String)] = [
            ("request_query_type", "mx"), ("request_protocol", "tcp"),
            ("source_canonical_service", "client"), ("source_canonical_revision", "v1"),
        ]
        #expect(try testMetrics.expectCounter("istio_dns_upstream_requests_total", tcpMX).totalValue == 1)
    }

    @Test("a silent upstream is skipped for the next; when all fail, SERVFAIL and a failure counted")
    func upstreamFailure() async throws {
        let silent = try await StandInDNS.start(on: "127.0.53.3") { _, _ in .silent }
        let good = try await StandInDNS.start(on: "127.0.53.4") { query, _ in .answer(upstreamAnswer(query, "192.0.2.4")) }
        defer { Task { await silent.stop(); await good.stop() } }

        let failover = try await startProxy(upstreams: [silent.address, good.address])
        let answer = try await DNSTestClient.udp(.query(id: 1, name: DNSName("a.example.org")!, type: .a), to: failover.udpAddress)
        #expect(addresses(answer) == ["192.0.2.4"])
        #expect(silent.queries(.udp) == 1 && good.queries(.udp) == 1)
        await failover.stop()

        let testMetrics = TestMetrics()
        let failing = try await startProxy(upstreams: [silent.address], metrics: DNSMetrics(factory: testMetrics))
        defer { Task { await failing.stop() } }
        let failed = try await DNSTestClient.udp(.query(id: 2, name: DNSName("b.example.org")!, type: .aaaa), to: failing.udpAddress)
        #expect(failed.header.responseCode == .serverFailure && failed.header.id == 2)
        let tcpFailed = try await DNSTestClient.tcp([.query(id: 3, name: DNSName("b.example.org")!, type: .a)], to: failing.tcpAddress)
        #expect(tcpFailed.first?.header.responseCode == .serverFailure)
        let labels: [(String, String)] = [
            ("request_query_type", "aaaa"), ("request_protocol", "udp"),
            ("source_canonical_service", "client"), ("source_canonical_revision", "v1"),
        ]
        #expect(try testMetrics.expectCounter("istio_dns_upstream_failures_total", labels).totalValue == 1)
    }

    @Test("an upstream's error code is passed on")
    func upstreamRcode() async throws {
        let upstream = try await StandInDNS.start(on: "127.0.53.5") { query, _ in
            .answer(DNSMessage(header: query.header.response(.nameError), questions: query.questions))
        }
        defer { Task { await upstream.stop() } }
        let proxy = try await startProxy(upstreams: [upstream.address])
        defer { Task { await proxy.stop() } }
        let answer = try await DNSTestClient.udp(.query(id: 9, name: DNSName("nope.example.org")!, type: .a), to: proxy.udpAddress)
        #expect(answer.header.responseCode == .nameError && answer.header.id == 9)
    }

    @Test("a truncated UDP answer: passed on with TC to UDP clients, asked again over TCP for TCP clients")
    func truncation() async throws {
        let upstream = try await StandInDNS.start(on: "127.0.53.6") { query, transport in
            if transport == .udp {
                var cut = DNSMessage(header: query.header.response(), questions: query.questions)
                cut.header.truncated = true
                return .answer(cut)
            }
            return .answer(upstreamAnswer(query, "192.0.2.6"))
        }
        defer { Task { await upstream.stop() } }
        let proxy = try await startProxy(upstreams: [upstream.address])
        defer { Task { await proxy.stop() } }

        let udp = try await DNSTestClient.udp(.query(id: 1, name: DNSName("big.example.org")!, type: .a), to: proxy.udpAddress)
        #expect(udp.header.truncated && udp.answers.isEmpty)
        #expect(upstream.queries(.tcp) == 0)
        let tcp = try await DNSTestClient.tcp([.query(id: 2, name: DNSName("big.example.org")!, type: .a)], to: proxy.tcpAddress)
        #expect(tcp.first.map(addresses) == ["192.0.2.6"] && tcp.first?.header.truncated == false)
        #expect(upstream.queries(.tcp) == 1)
    }

    @Test("UDP answers fit 512 bytes or the client's EDNS size; TCP answers are whole")
    func udpLimit() async throws {
        let vips = (1...60).map { NetworkAddress(ip: IPAddress("10.7.0.\($0)")!) }
        let mesh = MeshSnapshot(
            workloads: [],
            services: [Service(name: "many", namespace: "ns1", hostname: "many.ns1.svc.cluster.local", vips: vips, ports: [80: 80])],
            policies: [])
        let proxy = try await startProxy(upstreams: [], mesh: mesh)
        defer { Task { await proxy.stop() } }
        let name = DNSName("many.ns1.svc.cluster.local")!

        let plain = try await DNSTestClient.udp(.query(id: 1, name: name, type: .a), to: proxy.udpAddress)
        #expect(plain.header.truncated && plain.answers.isEmpty && plain.questions.first?.name == name)
        let large = try await DNSTestClient.udp(
            .query(id: 2, name: name, type: .a, edns: DNSEDNS(udpPayloadSize: 4096)), to: proxy.udpAddress)
        #expect(!large.header.truncated && large.answers.count == 60 && large.edns?.udpPayloadSize == 4096)
        let tcp = try await DNSTestClient.tcp([.query(id: 3, name: name, type: .a)], to: proxy.tcpAddress)
        #expect(tcp.first?.answers.count == 60 && tcp.first?.header.truncated == false)
    }

    @Test("malformed queries: FORMERR with the id when a header can be read, else no answer; unknown client: SERVFAIL")
    func malformedAndUnknown() async throws {
        let proxy = try await startProxy(upstreams: [])
        // A header claiming one question, and nothing after it.
        let headerOnly: [UInt8] = [0xAB, 0xCD, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        let formErr = try DNSMessage(parsing: try #require(try await DNSTestClient.udp([headerOnly], to: proxy.udpAddress)))
        #expect(formErr.header.responseCode == .formatError && formErr.header.id == 0xABCD && formErr.header.isResponse)
        // Under 12 bytes: dropped, so the first answer on this socket is the next query's.
        let next = DNSMessage.query(id: 77, name: DNSName("echo")!, type: .a)
        let first = try DNSMessage(parsing: try #require(try await DNSTestClient.udp([[1, 2, 3], next.serialized()], to: proxy.udpAddress)))
        #expect(first.header.id == 77)
        await proxy.stop()

        let anonymous = try await startProxy(upstreams: [], client: nil)
        defer { Task { await anonymous.stop() } }
        let servFail = try await DNSTestClient.udp(.query(id: 5, name: DNSName("echo")!, type: .a), to: anonymous.udpAddress)
        #expect(servFail.header.responseCode == .serverFailure)
    }

    @Test("an idle TCP connection is closed; a stopped server no longer answers")
    func idleAndStop() async throws {
        var options = quick
        options.tcpIdleTimeout = .milliseconds(200)
        let proxy = try await startProxy(upstreams: [], options: options)
        let address = proxy.tcpAddress
        let rest = try await offload {
            let socket = try BlockingSocket(connectingTo: address)
            defer { socket.closeNow() }
            return try socket.receiveToEnd()
        }
        #expect(rest.isEmpty)
        await proxy.stop()
        let none = try await DNSTestClient.udp(
            [DNSMessage.query(id: 1, name: DNSName("echo")!, type: .a).serialized()], to: proxy.udpAddress, timeout: .milliseconds(300))
        #expect(none == nil)
    }
}

@Suite("DNS proxy config and resolv.conf")
struct DNSProxyConfigTests {
    @Test("inPod.dns decodes with defaults and reports bad values with their paths")
    func config() throws {
        let defaults = try ConfigDecoder.decode(DNSProxyConfig.self, yaml: "{}", file: "m.yaml")
        #expect(defaults.enabled && defaults.port == 15053 && defaults.upstreams.isEmpty && defaults.clusterDomain == "cluster.local")
        let set = try ConfigDecoder.decode(
            DNSProxyConfig.self, yaml: "{enabled: true, port: 5353, upstreams: [\"1.2.3.4:53\", \"[fd00::53]:5353\"]}", file: "m.yaml")
        #expect(set.port == 5353 && set.upstreamAddresses == [SocketAddr("1.2.3.4:53")!, SocketAddr("[fd00::53]:5353")!])
        #expect(throws: ConfigErrors.self) {
            try ConfigDecoder.decode(DNSProxyConfig.self, yaml: "{upstreams: [\"1.2.3.4\"], port: 0}", file: "m.yaml")
        }
        do {
            _ = try ConfigDecoder.decode(DNSProxyConfig.self, yaml: "{upstreams: [\"nope\"]}", file: "m.yaml", path: "inPod.dns")
        } catch {
            #expect("\(error)".contains("upstreams[0]"), "\(error)")
        }
        #expect(throws: ConfigErrors.self) { try ConfigDecoder.decode(DNSProxyConfig.self, yaml: "{prot: 1}", file: "m.yaml") }

        let node = try ConfigDecoder.decode(NodeDNSProxyConfig.self, yaml: "{address: \"127.0.0.1:15053\"}", file: "m.yaml")
        #expect(node.socketAddress == SocketAddr("127.0.0.1:15053"))
        #expect(try ConfigDecoder.decode(NodeDNSProxyConfig.self, yaml: "{}", file: "m.yaml").socketAddress == nil)
        #expect(throws: ConfigErrors.self) { try ConfigDecoder.decode(NodeDNSProxyConfig.self, yaml: "{address: x}", file: "m.yaml") }
    }

    @Test("resolv.conf: nameservers in order with port 53, the search list read, the rest skipped")
    func resolvConf() {
        let conf = ResolvConf(parsing: """
            # generated
            search ns1.svc.cluster.local svc.cluster.local cluster.local
            nameserver 10.96.0.10
            nameserver fe80::1%eth0
            options ndots:5
            nameserver bogus
            ; nameserver 9.9.9.9
            nameserver\t2001:db8::53
            """)
        #expect(conf.nameservers == [SocketAddr("10.96.0.10:53")!, SocketAddr("[fe80::1]:53")!, SocketAddr("[2001:db8::53]:53")!])
        #expect(conf.search == ["ns1.svc.cluster.local", "svc.cluster.local", "cluster.local"])
        #expect(ResolvConf.load(path: "/nonexistent/resolv.conf") == nil)
    }
}
