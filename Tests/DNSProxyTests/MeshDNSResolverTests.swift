import DNSProxy
import Kernel
import Testing

/// A small mesh: services in two namespaces and networks, IPv4-only, headless,
/// namespace-private, a wildcard ServiceEntry and a plain external host.
func testMesh() -> MeshSnapshot {
    func vip(_ ip: String, _ network: String = "") -> NetworkAddress { NetworkAddress(network: network, ip: IPAddress(ip)!) }
    let services = [
        Service(
            name: "echo", namespace: "ns1", hostname: "echo.ns1.svc.cluster.local",
            vips: [vip("10.0.0.10"), vip("10.9.0.10", "far"), vip("fd00::10")], ports: [80: 8080]),
        Service(
            name: "v4only", namespace: "ns1", hostname: "v4only.ns1.svc.cluster.local", vips: [vip("10.0.0.11"), vip("fd00::11")],
            ports: [80: 80], ipFamilies: .ipv4),
        Service(name: "headless", namespace: "ns1", hostname: "headless.ns1.svc.cluster.local", vips: [], ports: [80: 80]),
        Service(name: "example", namespace: "ns2", hostname: "example.ns2.svc.cluster.local", vips: [vip("10.0.0.20")], ports: [80: 80]),
        Service(
            name: "private", namespace: "ns2", hostname: "private.ns2.svc.cluster.local", vips: [vip("10.0.0.21")], ports: [80: 80],
            visibility: .namespace),
        Service(name: "wild", namespace: "ns1", hostname: "*.wild.example.com", vips: [vip("10.0.0.30")], ports: [443: 443]),
        Service(name: "google", namespace: "ns1", hostname: "www.google.com", vips: [vip("10.0.0.40")], ports: [443: 443]),
        Service(name: "noip", namespace: "ns1", hostname: "noip.example.com", vips: [], ports: [80: 80]),
        // The same hostname in two namespaces: the client's own wins.
        Service(name: "shared", namespace: "ns1", hostname: "shared.example.com", vips: [vip("10.0.1.1")], ports: [80: 80]),
        Service(name: "shared", namespace: "ns2", hostname: "shared.example.com", vips: [vip("10.0.2.1")], ports: [80: 80]),
    ]
    let headless = NamespacedHostname(namespace: "ns1", hostname: "headless.ns1.svc.cluster.local")
    let workloads = [
        Workload(
            uid: "w1", name: "w1", namespace: "ns1", workloadIPs: [IPAddress("10.2.0.1")!, IPAddress("fd00::2:1")!],
            services: [headless: [80: 80]]),
        Workload(uid: "w2", name: "w2", namespace: "ns1", workloadIPs: [IPAddress("10.2.0.2")!], services: [headless: [80: 80]]),
    ]
    return MeshSnapshot(workloads: workloads, services: services, policies: [])
}

let ns1Client = DNSClientInfo(namespace: "ns1", canonicalService: "client", canonicalRevision: "v1")

@Suite("mesh DNS answers")
struct MeshDNSResolverTests {
    let resolver = MeshDNSResolver()

    func resolve(_ name: String, _ type: DNSRecordType = .a, client: DNSClientInfo? = ns1Client) -> DNSLocalOutcome {
        resolver.resolve(DNSMessage.query(id: 42, name: DNSName(name)!, type: type), client: client, mesh: testMesh())
    }

    func answer(_ name: String, _ type: DNSRecordType = .a, client: DNSClientInfo? = ns1Client) throws -> DNSMessage {
        guard case .answer(let message) = resolve(name, type, client: client) else {
            Issue.record("\(name) \(type) was forwarded")
            throw CancellationError()
        }
        return message
    }

    func addresses(_ message: DNSMessage) -> Set<String> {
        Set(message.answers.compactMap {
            switch $0.data {
            case .a(let ip), .aaaa(let ip): "\(ip)"
            default: nil
            }
        })
    }

    @Test(
        "name expansion by label count (ztunnel's table)",
        arguments: [
            ("name", ["name.ns1.svc.cluster.local"]),
            ("name.ns1", ["name.ns1.svc.cluster.local", "name.ns1.ns1.svc.cluster.local"]),
            ("name.ns2", ["name.ns2.svc.cluster.local", "name.ns2.ns1.svc.cluster.local"]),
            ("name.ns2.svc", ["name.ns2.svc.cluster.local", "name.ns2.svc.svc.cluster.local"]),
            ("name.ns2.not-svc", ["name.ns2.not-svc.svc.cluster.local"]),
            ("pod.sub-domain.ns.svc", ["pod.sub-domain.ns.svc.cluster.local"]),
            ("pod.sub-domain.ns.not-svc", []),
            ("name.ns2.svc.cluster", []),
            ("name.ns2.svc.cluster.local", []),
            ("www.google.com", ["www.google.com.svc.cluster.local"]),
        ])
    func expansion(name: String, expected: [String]) {
        #expect(resolver.candidates(for: DNSName(name)!, namespace: "ns1").map(\.description) == expected)
    }

    @Test("a service by its full name: its VIPs of the family on the client's network, authoritative, TTL 30")
    func vip() throws {
        let message = try answer("echo.ns1.svc.cluster.local")
        #expect(message.header.id == 42 && message.header.isResponse && message.header.authoritative)
        #expect(message.header.responseCode == .noError)
        #expect(message.questions.first?.name == DNSName("echo.ns1.svc.cluster.local"))
        #expect(addresses(message) == ["10.0.0.10"])
        #expect(message.answers.allSatisfy { $0.ttl == 30 && $0.name == DNSName("echo.ns1.svc.cluster.local") })
        #expect(addresses(try answer("echo.ns1.svc.cluster.local", .aaaa)) == ["fd00::10"])
        // A client on the other network gets that network's VIP.
        let far = DNSClientInfo(namespace: "ns1", network: "far")
        #expect(addresses(try answer("echo.ns1.svc.cluster.local", client: far)) == ["10.9.0.10"])
    }

    @Test("short names expand with the client's namespace; other namespaces by name.namespace")
    func shortNames() throws {
        #expect(addresses(try answer("echo")) == ["10.0.0.10"])
        #expect(addresses(try answer("echo.ns1")) == ["10.0.0.10"])
        #expect(addresses(try answer("echo.ns1.svc")) == ["10.0.0.10"])
        #expect(addresses(try answer("example.ns2")) == ["10.0.0.20"])
        #expect(addresses(try answer("ECHO.NS1.svc.cluster.local")) == ["10.0.0.10"])
        // A short name of another namespace's service is not the client's.
        #expect(resolve("example") == .forward)
    }

    @Test("a search domain the client appended is stripped: CNAME to the stripped name, addresses on it")
    func searchDomainStripped() throws {
        let message = try answer("www.google.com.ns1.svc.cluster.local")
        #expect(message.answers.first?.data == .cname(DNSName("www.google.com")!))
        #expect(message.answers.first?.name == DNSName("www.google.com.ns1.svc.cluster.local"))
        #expect(message.answers.dropFirst().allSatisfy { $0.name == DNSName("www.google.com") })
        #expect(addresses(message) == ["10.0.0.40"])
        // name.namespace plus the client's search domain.
        let doubled = try answer("example.ns2.ns1.svc.cluster.local")
        #expect(doubled.answers.first?.data == .cname(DNSName("example.ns2")!))
        #expect(addresses(doubled) == ["10.0.0.20"])
    }

    @Test("headless services answer one address per endpoint workload")
    func headless() throws {
        #expect(addresses(try answer("headless.ns1.svc.cluster.local")) == ["10.2.0.1", "10.2.0.2"])
        #expect(addresses(try answer("headless", .aaaa)) == ["fd00::2:1"])
        // No VIPs and not under svc.cluster.local: not the mesh's.
        #expect(resolve("noip.example.com") == .forward)
    }

    @Test("wildcard hosts match any name below them, without a CNAME")
    func wildcard() throws {
        let message = try answer("api.wild.example.com")
        #expect(addresses(message) == ["10.0.0.30"])
        #expect(message.answers.allSatisfy { $0.type == .a && $0.name == DNSName("api.wild.example.com") })
        #expect(addresses(try answer("a.b.wild.example.com")) == ["10.0.0.30"])
        #expect(resolve("wild.example.com") == .forward)
    }

    @Test("visibility and namespace preference")
    func visibility() throws {
        #expect(resolve("private.ns2.svc.cluster.local") == .forward)
        let ns2 = DNSClientInfo(namespace: "ns2")
        #expect(addresses(try answer("private.ns2.svc.cluster.local", client: ns2)) == ["10.0.0.21"])
        #expect(addresses(try answer("shared.example.com")) == ["10.0.1.1"])
        #expect(addresses(try answer("shared.example.com", client: ns2)) == ["10.0.2.1"])
    }

    @Test("a family the service does not allow, or no address of it: NOERROR, no answers, authoritative")
    func emptyAnswers() throws {
        let v6 = try answer("v4only.ns1.svc.cluster.local", .aaaa)
        #expect(v6.header.responseCode == .noError && v6.header.authoritative && v6.answers.isEmpty)
        #expect(addresses(try answer("v4only", .a)) == ["10.0.0.11"])
        let none = try answer("example.ns2", .aaaa)
        #expect(none.header.responseCode == .noError && none.answers.isEmpty)
        let noIPv6 = MeshDNSResolver(ipv6Enabled: false)
        guard case .answer(let disabled) = noIPv6.resolve(
            DNSMessage.query(id: 1, name: DNSName("echo.ns1.svc.cluster.local")!, type: .aaaa), client: ns1Client, mesh: testMesh())
        else { Issue.record("forwarded"); return }
        #expect(disabled.answers.isEmpty && disabled.header.responseCode == .noError)
    }

    @Test("other types and unknown hosts are forwarded; errors for opcodes, responses and unknown clients")
    func errors() throws {
        #expect(resolve("echo.ns1.svc.cluster.local", .txt) == .forward)
        #expect(resolve("echo.ns1.svc.cluster.local", .srv) == .forward)
        #expect(resolve("www.example.org") == .forward)
        #expect(try answer("echo", client: nil).header.responseCode == .serverFailure)

        var notify = DNSMessage.query(id: 9, name: DNSName("echo")!, type: .a)
        notify.header.opcode = .notify
        guard case .answer(let notImp) = resolver.resolve(notify, client: ns1Client, mesh: testMesh()) else {
            Issue.record("forwarded"); return
        }
        #expect(notImp.header.responseCode == .notImplemented && notImp.header.id == 9)

        var response = DNSMessage.query(id: 10, name: DNSName("echo")!, type: .a)
        response.header.isResponse = true
        guard case .answer(let formErr) = resolver.resolve(response, client: ns1Client, mesh: testMesh()) else {
            Issue.record("forwarded"); return
        }
        #expect(formErr.header.responseCode == .formatError && formErr.header.id == 10)

        let twoQuestions = DNSMessage(
            header: DNSHeader(id: 11), questions: [DNSQuestion(name: .root, type: .a), DNSQuestion(name: .root, type: .a)])
        guard case .answer(let two) = resolver.resolve(twoQuestions, client: ns1Client, mesh: testMesh()) else {
            Issue.record("forwarded"); return
        }
        #expect(two.header.responseCode == .formatError)
    }

    @Test("EDNS is echoed with a payload of at least 512, the DO bit kept")
    func edns() throws {
        let query = DNSMessage.query(
            id: 5, name: DNSName("echo")!, type: .a, edns: DNSEDNS(udpPayloadSize: 256, dnssecOK: true))
        guard case .answer(let message) = resolver.resolve(query, client: ns1Client, mesh: testMesh()) else {
            Issue.record("forwarded"); return
        }
        #expect(message.edns?.udpPayloadSize == 512)
        #expect(message.edns?.dnssecOK == true)
        // And it survives the wire.
        #expect(try DNSMessage(parsing: message.serialized()) == message)
    }
}
