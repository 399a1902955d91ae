import AmbitRuntime
import Kernel
import Testing
import NodeProxy

/// A small seeded generator so endpoint selection is reproducible (SplitMix64).
struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

private func id(_ sa: String, ns: String = "default") -> SpiffeID {
    SpiffeID(trustDomain: "cluster.local", namespace: ns, serviceAccount: sa)
}

private func workload(
    _ uid: String, _ ips: [String], sa: String = "default", protocol tunnel: TunnelProtocol = .hbone,
    network: String = "", waypoint: GatewayAddress? = nil, status: HealthStatus = .healthy,
    capacity: UInt32 = 1, services: [String: [UInt16: UInt16]] = [:]
) -> Workload {
    Workload(
        uid: uid, name: uid, namespace: "default", serviceAccount: sa, workloadIPs: ips.map(ip),
        tunnelProtocol: tunnel, network: network, waypoint: waypoint, status: status, capacity: capacity,
        services: Dictionary(uniqueKeysWithValues: services.map { (name($0.key), $0.value) }))
}

private func service(
    _ hostname: String, vips: [String], ports: [UInt16: UInt16], sans: [String] = [],
    waypoint: GatewayAddress? = nil
) -> Service {
    Service(
        name: hostname, namespace: "default", hostname: hostname,
        vips: vips.map { NetworkAddress(ip: ip($0)) }, ports: ports, subjectAltNames: sans, waypoint: waypoint)
}

private func waypointAt(_ address: String, port: UInt16 = 15008) -> GatewayAddress {
    GatewayAddress(destination: .address(NetworkAddress(ip: ip(address))), hboneMtlsPort: port)
}

private func waypointNamed(_ text: String, port: UInt16 = 15008) -> GatewayAddress {
    GatewayAddress(destination: .hostname(name(text)), hboneMtlsPort: port)
}

private let client = workload("client", ["10.0.0.1"], sa: "client")

/// Decides for a connection from `source`, made from `sourceIP` (the source's first address
/// unless given; nil for none known).
private func decide(
    _ destination: String, from source: Workload? = client, sourceIP: String?? = .none, workloads: [Workload] = [],
    services: [Service] = [], seed: UInt64 = 1, network: String = ""
) -> ForwardingDecision {
    let mesh = MeshSnapshot(
        workloads: (source.map { [$0] } ?? []) + workloads, services: services, policies: [])
    var rng = SplitMix64(seed: seed)
    let from: IPAddress? = sourceIP.map { $0.map(ip) } ?? source?.workloadIPs.first
    return Forwarding.decide(
        OutboundRequest(
            source: source, sourceAddress: from.map { SocketAddr(ip: $0, port: 40000) }, destination: addr(destination),
            network: network),
        in: mesh, using: &rng)
}

private func hbone(_ decision: ForwardingDecision) -> HBONETarget? {
    if case .hbone(let target) = decision { return target }
    return nil
}

private func refusal(_ decision: ForwardingDecision) -> ConnectionRefusal.Code? {
    if case .refuse(let refusal) = decision { return refusal.code }
    return nil
}

/// The chosen workload's uid, whatever the transport.
private func chosenUID(_ decision: ForwardingDecision) -> String? {
    switch decision {
    case .hbone(let target): return target.destinationWorkload?.uid
    case .plaintext(_, let workload, _): return workload.uid
    default: return nil
    }
}

@Suite("Forwarding decision")
struct ForwardingDecisionTests {
    // MARK: 1. self calls

    @Test("loopback destination on a proxy port is a self call", arguments: [
        "127.0.0.1:15001", "127.0.0.1:15006", "127.0.0.1:15008", "127.0.0.1:15080", "127.1.2.3:15008",
        "[::1]:15001", "0.0.0.0:15006",
    ])
    func loopbackProxyPortRefused(destination: String) {
        #expect(refusal(decide(destination)) == .selfCall)
        #expect(refusal(decide(destination, from: nil)) == .selfCall)
    }

    @Test("the source's own address on a proxy port is a self call; other ports are not")
    func ownAddressProxyPortRefused() {
        #expect(refusal(decide("10.0.0.1:15008")) == .selfCall)
        #expect(refusal(decide("10.0.0.1:15001")) == .selfCall)
        // The app calling itself on an ordinary port is normal traffic.
        guard let target = hbone(decide("10.0.0.1:8080")) else {
            Issue.record("expected HBONE to the source itself")
            return
        }
        #expect(target.authority == "10.0.0.1:8080")
        // Loopback on an application port is not ours to refuse.
        #expect(decide("127.0.0.1:8080") == .passthrough(destination: addr("127.0.0.1:8080")))
        #expect(Forwarding.proxyPorts == [15001, 15006, 15008, 15080])
    }

    // MARK: 2. service waypoint

    @Test("service with a waypoint address: HBONE to the waypoint, authority is the VIP")
    func serviceWaypointByAddress() {
        let waypoint = workload("waypoint", ["10.0.0.9"], sa: "waypoint")
        let endpoint = workload("echo-1", ["10.0.1.1"], services: ["default/echo": [80: 8080]])
        let echo = service(
            "echo", vips: ["10.96.0.10"], ports: [80: 8080], sans: ["spiffe://cluster.local/ns/default/sa/echo"],
            waypoint: waypointAt("10.0.0.9"))
        let decision = decide("10.96.0.10:80", workloads: [waypoint, endpoint], services: [echo])
        #expect(
            decision
                == .hbone(
                    HBONETarget(
                        gateway: addr("10.0.0.9:15008"), authority: "10.96.0.10:80",
                        expectedIdentities: [id("waypoint")], destinationWorkload: nil, service: echo,
                        viaWaypoint: true, waypoint: waypoint)))
    }

    @Test("service waypoint used even for a port the service does not declare")
    func serviceWaypointAnyPort() {
        let waypoint = workload("waypoint", ["10.0.0.9"], sa: "waypoint")
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: waypointAt("10.0.0.9"))
        let target = hbone(decide("10.96.0.10:9999", workloads: [waypoint], services: [echo]))
        #expect(target?.authority == "10.96.0.10:9999")
        #expect(target?.viaWaypoint == true)
    }

    @Test("waypoint by hostname: a healthy endpoint of the waypoint service on its HBONE port")
    func serviceWaypointByHostname() {
        let waypointService = service(
            "waypoint.default.svc.cluster.local", vips: ["10.96.0.9"], ports: [15009: 15009],
            sans: ["spiffe://cluster.local/ns/default/sa/waypoint-extra", "not a spiffe id"])
        let sick = workload(
            "waypoint-a", ["10.0.0.8"], sa: "waypoint", status: .unhealthy,
            services: ["default/waypoint.default.svc.cluster.local": [:]])
        let well = workload(
            "waypoint-b", ["10.0.0.9"], sa: "waypoint",
            services: ["default/waypoint.default.svc.cluster.local": [:]])
        let echo = service(
            "echo", vips: ["10.96.0.10"], ports: [80: 8080],
            waypoint: waypointNamed("default/waypoint.default.svc.cluster.local", port: 15009))
        for seed in 0..<20 as Range<UInt64> {
            let target = hbone(
                decide("10.96.0.10:80", workloads: [sick, well], services: [echo, waypointService], seed: seed))
            #expect(target?.gateway == addr("10.0.0.9:15009"))
            #expect(target?.authority == "10.96.0.10:80")
            #expect(target?.waypoint?.uid == "waypoint-b")
            #expect(target?.expectedIdentities == [id("waypoint"), id("waypoint-extra")])
        }
    }

    @Test("waypoint address that is a service VIP resolves to one of its endpoints")
    func serviceWaypointAddressIsVIP() {
        let waypointService = service("waypoint", vips: ["10.96.0.9"], ports: [15008: 15008])
        let waypoint = workload("waypoint-1", ["10.0.0.9"], sa: "waypoint", services: ["default/waypoint": [:]])
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: waypointAt("10.96.0.9"))
        let target = hbone(decide("10.96.0.10:80", workloads: [waypoint], services: [echo, waypointService]))
        #expect(target?.gateway == addr("10.0.0.9:15008"))
        #expect(target?.expectedIdentities == [id("waypoint")])
    }

    @Test("unresolvable waypoint is refused, never bypassed")
    func waypointUnresolved() {
        let byHostname = service(
            "echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: waypointNamed("default/missing"))
        let byAddress = service("echo2", vips: ["10.96.0.11"], ports: [80: 8080], waypoint: waypointAt("10.0.0.99"))
        let emptyWaypointService = service("waypoint", vips: ["10.96.0.9"], ports: [15008: 15008])
        let down = workload(
            "waypoint-1", ["10.0.0.9"], sa: "waypoint", status: .unhealthy, services: ["default/waypoint": [:]])
        let byDownService = service(
            "echo3", vips: ["10.96.0.12"], ports: [80: 8080], waypoint: waypointNamed("default/waypoint"))
        let endpoint = workload(
            "echo-1", ["10.0.1.1"],
            services: ["default/echo": [80: 8080], "default/echo2": [80: 8080], "default/echo3": [80: 8080]])
        let services = [byHostname, byAddress, emptyWaypointService, byDownService]
        for destination in ["10.96.0.10:80", "10.96.0.11:80", "10.96.0.12:80"] {
            #expect(
                refusal(decide(destination, workloads: [endpoint, down], services: services)) == .waypointUnresolved)
        }
    }

    @Test("a waypoint service must declare the HBONE port; the tunnel goes to its target port")
    func waypointServiceDeclaresHBONEPort() {
        let waypoint = workload("waypoint-1", ["10.0.0.9"], sa: "waypoint", services: ["default/waypoint": [:]])
        let undeclared = service("waypoint", vips: ["10.96.0.9"], ports: [80: 80])
        for gateway in [waypointNamed("default/waypoint"), waypointAt("10.96.0.9")] {
            let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: gateway)
            #expect(
                refusal(decide("10.96.0.10:80", workloads: [waypoint], services: [echo, undeclared])) == .waypointUnresolved)
        }
        // Declared with a target port: the service's mapping, unless the endpoint has its own.
        let mapped = service("waypoint", vips: ["10.96.0.9"], ports: [15008: 15018])
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: waypointNamed("default/waypoint"))
        #expect(hbone(decide("10.96.0.10:80", workloads: [waypoint], services: [echo, mapped]))?.gateway == addr("10.0.0.9:15018"))
        let ownMap = workload("waypoint-1", ["10.0.0.9"], sa: "waypoint", services: ["default/waypoint": [15008: 15028]])
        #expect(hbone(decide("10.96.0.10:80", workloads: [ownMap], services: [echo, mapped]))?.gateway == addr("10.0.0.9:15028"))
        // A sandwiched waypoint (an application tunnel on a port of its own) needs no declared port.
        let sandwich = Workload(
            uid: "waypoint-1", name: "waypoint-1", namespace: "default", serviceAccount: "waypoint",
            workloadIPs: [ip("10.0.0.9")], tunnelProtocol: .hbone, services: [name("default/waypoint"): [:]],
            applicationTunnel: ApplicationTunnel(protocol: .proxy, port: 15088))
        #expect(hbone(decide("10.96.0.10:80", workloads: [sandwich], services: [echo, undeclared]))?.gateway == addr("10.0.0.9:15008"))
        let withoutPort = Workload(
            uid: "waypoint-1", name: "waypoint-1", namespace: "default", serviceAccount: "waypoint",
            workloadIPs: [ip("10.0.0.9")], tunnelProtocol: .hbone, services: [name("default/waypoint"): [:]],
            applicationTunnel: ApplicationTunnel(protocol: .proxy))
        #expect(refusal(decide("10.96.0.10:80", workloads: [withoutPort], services: [echo, undeclared])) == .waypointUnresolved)
        // A waypoint named by a workload's own address needs no service at all.
        let byAddress = service("echo2", vips: ["10.96.0.11"], ports: [80: 8080], waypoint: waypointAt("10.0.0.9"))
        #expect(hbone(decide("10.96.0.11:80", workloads: [waypoint], services: [byAddress, undeclared]))?.gateway == addr("10.0.0.9:15008"))
    }

    @Test("a waypoint hostname no service has names the workload with that hostname")
    func waypointHostnameIsWorkload() {
        let waypoint = Workload(
            uid: "waypoint-1", name: "waypoint-1", namespace: "default", serviceAccount: "waypoint",
            workloadIPs: [ip("10.0.0.9")], tunnelProtocol: .hbone, hostname: "waypoint.example")
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: waypointNamed("default/waypoint.example"))
        let target = hbone(decide("10.96.0.10:80", workloads: [waypoint], services: [echo]))
        #expect(target?.gateway == addr("10.0.0.9:15008"))
        #expect(target?.waypoint?.uid == "waypoint-1")
        #expect(target?.expectedIdentities == [id("waypoint")])
        // Another namespace's workload of that hostname is not it.
        let elsewhere = Workload(
            uid: "waypoint-2", name: "waypoint-2", namespace: "other", serviceAccount: "waypoint",
            workloadIPs: [ip("10.0.0.8")], tunnelProtocol: .hbone, hostname: "waypoint.example")
        #expect(refusal(decide("10.96.0.10:80", workloads: [elsewhere], services: [echo])) == .waypointUnresolved)
        // It is the source's own waypoint when it is that workload (identity and address).
        let server = workload("server", ["10.0.1.1"], sa: "server", waypoint: waypointNamed("default/waypoint.example"))
        #expect(hbone(decide("10.0.1.1:8080", from: waypoint, workloads: [server]))?.viaWaypoint == false)
    }

    @Test("weighted waypoints share the service's connections by weight; weight 0 never, none weighted: the primary")
    func weightedWaypoints() {
        let primary = workload("primary", ["10.0.0.7"], sa: "primary")
        let stable = workload("stable", ["10.0.0.8"], sa: "stable")
        let canary = workload("canary", ["10.0.0.9"], sa: "canary")
        let described = workload("described", ["10.0.0.6"], sa: "described")
        let endpoint = workload("echo-1", ["10.0.1.1"], services: ["default/echo": [80: 8080]])
        let all = [primary, stable, canary, described, endpoint]
        func echo(_ weighted: [(String, UInt32)], primary: GatewayAddress? = waypointAt("10.0.0.7")) -> Service {
            Service(
                name: "echo", namespace: "default", hostname: "echo", vips: [NetworkAddress(ip: ip("10.96.0.10"))],
                ports: [80: 8080], waypoint: primary,
                weightedWaypoints: weighted.map { WeightedWaypoint(destination: waypointAt($0.0), weight: $0.1) })
        }
        var counts: [String: Int] = [:]
        let split = echo([("10.0.0.8", 3), ("10.0.0.9", 1), ("10.0.0.6", 0)])
        for seed in 0..<400 as Range<UInt64> {
            let uid = hbone(decide("10.96.0.10:80", workloads: all, services: [split], seed: seed))?.waypoint?.uid ?? "none"
            counts[uid, default: 0] += 1
        }
        #expect(counts["described"] == nil && counts["primary"] == nil && counts["none"] == nil, "\(counts)")
        #expect((250...350).contains(counts["stable"] ?? 0), "\(counts)")
        #expect((50...150).contains(counts["canary"] ?? 0), "\(counts)")
        // Every entry of weight 0, or none at all: the primary waypoint.
        for service in [echo([("10.0.0.8", 0), ("10.0.0.9", 0)]), echo([])] {
            #expect(hbone(decide("10.96.0.10:80", workloads: all, services: [service]))?.waypoint?.uid == "primary")
        }
        // A weighted set without a primary is still a waypoint; without either, none.
        #expect(
            hbone(decide("10.96.0.10:80", workloads: all, services: [echo([("10.0.0.9", 1)], primary: nil)]))?.waypoint?.uid
                == "canary")
        #expect(
            hbone(decide("10.96.0.10:80", workloads: all, services: [echo([("10.0.0.9", 0)], primary: nil)]))?.viaWaypoint
                == false)
    }

    @Test("a service's waypoint is used even when the source is that waypoint (only a workload waypoint is skipped)")
    func sourceIsServiceWaypoint() {
        let endpoint = workload("echo-1", ["10.0.1.1"], services: ["default/echo": [80: 8080]])
        // By address: the source is the waypoint workload.
        let waypointSource = workload("waypoint", ["10.0.0.9"], sa: "waypoint")
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: waypointAt("10.0.0.9"))
        let direct = hbone(decide("10.96.0.10:80", from: waypointSource, workloads: [endpoint], services: [echo]))
        #expect(direct?.gateway == addr("10.0.0.9:15008"))
        #expect(direct?.authority == "10.96.0.10:80")
        #expect(direct?.viaWaypoint == true)
        // By hostname: the source backs the waypoint service.
        let backing = workload(
            "waypoint-2", ["10.0.0.7"], sa: "waypoint", services: ["default/waypoint": [:]])
        let waypointService = service("waypoint", vips: ["10.96.0.9"], ports: [15008: 15008])
        let echoByName = service(
            "echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: waypointNamed("default/waypoint"))
        let viaItself = hbone(
            decide("10.96.0.10:80", from: backing, workloads: [endpoint], services: [echoByName, waypointService]))
        #expect(viaItself?.gateway == addr("10.0.0.7:15008"))
        #expect(viaItself?.viaWaypoint == true)
    }

    // MARK: 3. service endpoints

    @Test("a port the service does not declare is refused")
    func servicePortUnknown() {
        let endpoint = workload("echo-1", ["10.0.1.1"], services: ["default/echo": [80: 8080]])
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080])
        #expect(refusal(decide("10.96.0.10:81", workloads: [endpoint], services: [echo])) == .servicePortUnknown)
    }

    @Test("service port maps to the endpoint's target, else the service's, else itself")
    func servicePortToTargetPort() {
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080, 90: 0])
        let own = workload("echo-1", ["10.0.1.1"], services: ["default/echo": [80: 9090]])
        let inherit = workload("echo-1", ["10.0.1.1"], services: ["default/echo": [80: 0]])
        let same = workload("echo-1", ["10.0.1.1"], services: ["default/echo": [90: 0]])
        #expect(hbone(decide("10.96.0.10:80", workloads: [own], services: [echo]))?.authority == "10.0.1.1:9090")
        #expect(hbone(decide("10.96.0.10:80", workloads: [inherit], services: [echo]))?.authority == "10.0.1.1:8080")
        #expect(hbone(decide("10.96.0.10:90", workloads: [same], services: [echo]))?.authority == "10.0.1.1:90")
    }

    @Test("service-addressed HBONE carries the service and its SANs")
    func serviceEndpointHBONE() {
        let echo = service(
            "echo", vips: ["10.96.0.10"], ports: [80: 8080],
            sans: [
                "spiffe://cluster.local/ns/default/sa/echo-alt", "spiffe://cluster.local/ns/default/sa/echo",
                "garbage", "spiffe://only/two",
            ])
        let endpoint = workload("echo-1", ["10.0.1.1"], sa: "echo", services: ["default/echo": [80: 8080]])
        #expect(
            decide("10.96.0.10:80", workloads: [endpoint], services: [echo])
                == .hbone(
                    HBONETarget(
                        gateway: addr("10.0.1.1:15008"), authority: "10.0.1.1:8080",
                        expectedIdentities: [id("echo"), id("echo-alt")], destinationWorkload: endpoint,
                        service: echo, viaWaypoint: false)))
    }

    @Test("service endpoint that speaks TCP gets plaintext to ip:target")
    func serviceEndpointPlaintext() {
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080])
        let endpoint = workload("echo-1", ["10.0.1.1"], protocol: .tcp, services: ["default/echo": [80: 8080]])
        #expect(
            decide("10.96.0.10:80", workloads: [endpoint], services: [echo])
                == .plaintext(destination: addr("10.0.1.1:8080"), workload: endpoint, service: echo))
    }

    @Test("unhealthy endpoints are never picked")
    func unhealthySkipped() {
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080])
        let sick = workload("echo-a", ["10.0.1.1"], status: .unhealthy, services: ["default/echo": [80: 8080]])
        let well = workload("echo-b", ["10.0.1.2"], services: ["default/echo": [80: 8080]])
        for seed in 0..<50 as Range<UInt64> {
            #expect(chosenUID(decide("10.96.0.10:80", workloads: [sick, well], services: [echo], seed: seed)) == "echo-b")
        }
    }

    @Test("an endpoint without the port in its own map takes the service's target port; left out only when that is 0")
    func endpointLackingPort() {
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080, 443: 8443, 9000: 0])
        let httpOnly = workload("echo-a", ["10.0.1.1"], services: ["default/echo": [80: 8080]])
        let remote = workload(
            "echo-c", ["10.9.1.3"], network: "other", services: ["default/echo": [80: 8080, 443: 8443]])
        for seed in 0..<20 as Range<UInt64> {
            let decision = decide("10.96.0.10:443", workloads: [httpOnly, remote], services: [echo], seed: seed)
            #expect(hbone(decision)?.authority == "10.0.1.1:8443")
        }
        // No target port on the service: only endpoints that map the port themselves.
        #expect(refusal(decide("10.96.0.10:9000", workloads: [httpOnly], services: [echo])) == .noHealthyEndpoint)
        let mapped = workload("echo-b", ["10.0.1.2"], services: ["default/echo": [9000: 9090]])
        for seed in 0..<20 as Range<UInt64> {
            let decision = decide("10.96.0.10:9000", workloads: [httpOnly, mapped], services: [echo], seed: seed)
            #expect(hbone(decision)?.authority == "10.0.1.2:9090")
        }
    }

    @Test("a service without a healthy endpoint is refused, not passed through")
    func noHealthyEndpoint() {
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080])
        let sick = workload("echo-a", ["10.0.1.1"], status: .unhealthy, services: ["default/echo": [80: 8080]])
        #expect(refusal(decide("10.96.0.10:80", workloads: [sick], services: [echo])) == .noHealthyEndpoint)
        #expect(refusal(decide("10.96.0.10:80", services: [echo])) == .noHealthyEndpoint)
    }

    @Test("weighted selection follows capacity; capacity 0 is never picked beside others")
    func weightedSelection() {
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080])
        let small = workload("echo-a", ["10.0.1.1"], capacity: 1, services: ["default/echo": [80: 8080]])
        let large = workload("echo-b", ["10.0.1.2"], capacity: 3, services: ["default/echo": [80: 8080]])
        let drained = workload("echo-c", ["10.0.1.3"], capacity: 0, services: ["default/echo": [80: 8080]])
        let mesh = MeshSnapshot(workloads: [client, small, large, drained], services: [echo], policies: [])
        var rng = SplitMix64(seed: 42)
        var counts: [String: Int] = [:]
        let draws = 4000
        for _ in 0..<draws {
            let decision = Forwarding.decide(
                OutboundRequest(source: client, destination: addr("10.96.0.10:80")), in: mesh, using: &rng)
            counts[chosenUID(decision) ?? "none", default: 0] += 1
        }
        #expect(counts["echo-c"] == nil)
        #expect(counts["none"] == nil)
        let largeShare = Double(counts["echo-b", default: 0]) / Double(draws)
        // Expected 0.75; 4000 draws put 3 standard deviations at about ±0.02.
        #expect(largeShare > 0.72 && largeShare < 0.78, "share of capacity-3 endpoint: \(largeShare)")
    }

    @Test("capacity 0 is never picked, even when every endpoint has it")
    func allZeroCapacity() {
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080])
        let a = workload("echo-a", ["10.0.1.1"], capacity: 0, services: ["default/echo": [80: 8080]])
        let b = workload("echo-b", ["10.0.1.2"], capacity: 0, services: ["default/echo": [80: 8080]])
        for seed in 0..<16 as Range<UInt64> {
            #expect(refusal(decide("10.96.0.10:80", workloads: [a, b], services: [echo], seed: seed)) == .noHealthyEndpoint)
        }
        #expect(refusal(decide("10.96.0.10:80", workloads: [a], services: [echo])) == .noHealthyEndpoint)
    }

    // MARK: load balancing

    private static func balanced(_ balancer: LoadBalancer, waypoint: GatewayAddress? = nil) -> Service {
        var echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: waypoint)
        echo.loadBalancer = balancer
        return echo
    }

    private static func endpoint(
        _ uid: String, _ address: String, node: String = "node-a", cluster: String = "Kubernetes", region: String = "r1",
        zone: String = "z1", subzone: String = "s1", status: HealthStatus = .healthy
    ) -> Workload {
        var made = workload(uid, [address], status: status, services: ["default/echo": [80: 8080]])
        made.node = node
        made.clusterID = cluster
        made.locality = Locality(region: region, zone: zone, subzone: subzone)
        return made
    }

    private static let localClient: Workload = {
        var source = client
        source.node = "node-a"
        source.locality = Locality(region: "r1", zone: "z1", subzone: "s1")
        return source
    }()

    /// Which endpoints a source picks over many draws.
    private static func picks(_ service: Service, _ endpoints: [Workload], from source: Workload? = localClient) -> Set<String> {
        Set((0..<48 as Range<UInt64>).map { chosenUID(decide("10.96.0.10:80", from: source, workloads: endpoints, services: [service], seed: $0)) ?? "refused" })
    }

    @Test("Failover: the endpoints sharing the longest run of preferences, the others only when none shares more")
    func failover() {
        let echo = Self.balanced(LoadBalancer(routingPreferences: [.region, .zone, .subzone], mode: .failover))
        let sameSubzone = Self.endpoint("same-subzone", "10.0.1.1")
        let sameZone = Self.endpoint("same-zone", "10.0.1.2", subzone: "s2")
        let sameRegion = Self.endpoint("same-region", "10.0.1.3", zone: "z2")
        let elsewhere = Self.endpoint("elsewhere", "10.0.1.4", region: "r2")
        // Same subzone but another region shares nothing: the count stops at the first miss.
        let oddSubzone = Self.endpoint("odd", "10.0.1.5", region: "r2", zone: "z1")
        let all = [sameSubzone, sameZone, sameRegion, elsewhere, oddSubzone]
        #expect(Self.picks(echo, all) == ["same-subzone"])
        #expect(Self.picks(echo, [sameZone, sameRegion, elsewhere]) == ["same-zone"])
        #expect(Self.picks(echo, [sameRegion, elsewhere]) == ["same-region"])
        #expect(Self.picks(echo, [elsewhere, oddSubzone]) == ["elsewhere", "odd"])
        // Unhealthy best-ranked endpoints do not count: fail over to the healthy ones.
        let sick = Self.endpoint("sick", "10.0.1.6", status: .unhealthy)
        #expect(Self.picks(echo, [sick, sameRegion]) == ["same-region"])
    }

    @Test("Strict: only endpoints sharing every preference; internalTrafficPolicy Local is Strict over Node")
    func strict() {
        let local = Self.balanced(LoadBalancer(routingPreferences: [.node], mode: .strict))
        let here = Self.endpoint("here", "10.0.1.1")
        let there = Self.endpoint("there", "10.0.1.2", node: "node-b")
        #expect(Self.picks(local, [here, there]) == ["here"])
        #expect(Self.picks(local, [there]) == ["refused"])
        #expect(refusal(decide("10.96.0.10:80", from: Self.localClient, workloads: [there], services: [local])) == .noHealthyEndpoint)
        let cluster = Self.balanced(LoadBalancer(routingPreferences: [.cluster, .zone], mode: .strict))
        let otherCluster = Self.endpoint("other-cluster", "10.0.1.3", cluster: "east")
        let otherZone = Self.endpoint("other-zone", "10.0.1.4", zone: "z9")
        #expect(Self.picks(cluster, [here, otherCluster, otherZone]) == ["here"])
        #expect(Self.picks(cluster, [otherCluster, otherZone]) == ["refused"])
        // An unknown source shares no locality.
        #expect(Self.picks(local, [here], from: nil) == ["refused"])
        // Network first: the source's network counts for the whole list.
        let network = Self.balanced(LoadBalancer(routingPreferences: [.network, .region], mode: .strict))
        #expect(Self.picks(network, [here, Self.endpoint("far", "10.0.1.5", region: "r2")]) == ["here"])
        // Standard mode ignores the preferences.
        let standard = Self.balanced(LoadBalancer(routingPreferences: [.node], mode: .standard))
        #expect(Self.picks(standard, [here, there]) == ["here", "there"])
    }

    @Test("Passthrough sends service traffic to the original destination, after the service's waypoint")
    func passthroughMode() {
        let echo = Self.balanced(LoadBalancer(mode: .passthrough))
        let here = Self.endpoint("here", "10.0.1.1")
        #expect(decide("10.96.0.10:80", workloads: [here], services: [echo]) == .passthrough(destination: addr("10.96.0.10:80")))
        // Any port: there is no endpoint to map it for.
        #expect(decide("10.96.0.10:9999", services: [echo]) == .passthrough(destination: addr("10.96.0.10:9999")))
        let waypoint = workload("waypoint", ["10.0.9.9"], sa: "waypoint")
        let withWaypoint = Self.balanced(LoadBalancer(mode: .passthrough), waypoint: waypointAt("10.0.9.9"))
        #expect(hbone(decide("10.96.0.10:80", workloads: [here, waypoint], services: [withWaypoint]))?.viaWaypoint == true)
    }

    @Test("health policy AllowAll admits unhealthy endpoints")
    func allowAll() {
        let sick = Self.endpoint("sick", "10.0.1.1", status: .unhealthy)
        let echo = Self.balanced(LoadBalancer(healthPolicy: .allowAll))
        #expect(Self.picks(echo, [sick]) == ["sick"])
        #expect(Self.picks(Self.balanced(LoadBalancer()), [sick]) == ["refused"])
        // With preferences too: health no longer ranks.
        let strict = Self.balanced(LoadBalancer(routingPreferences: [.node], mode: .strict, healthPolicy: .allowAll))
        #expect(Self.picks(strict, [sick, Self.endpoint("there", "10.0.1.2", node: "node-b")]) == ["sick"])
    }

    @Test("same RNG state gives the same decision")
    func deterministic() {
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080])
        let endpoints = (1...8).map { workload("echo-\($0)", ["10.0.1.\($0)"], services: ["default/echo": [80: 8080]]) }
        let picks = (0..<16 as Range<UInt64>).map {
            chosenUID(decide("10.96.0.10:80", workloads: endpoints, services: [echo], seed: $0))
        }
        let again = (0..<16 as Range<UInt64>).map {
            chosenUID(decide("10.96.0.10:80", workloads: endpoints, services: [echo], seed: $0))
        }
        #expect(picks == again)
        #expect(Set(picks).count > 1)
    }

    // MARK: 4. pod IPs

    @Test("pod IP of an HBONE workload: tunnel to ip:15008, authority ip:port")
    func podIPHBONE() {
        let server = workload("server", ["10.0.1.1"], sa: "server")
        #expect(
            decide("10.0.1.1:8080", workloads: [server])
                == .hbone(
                    HBONETarget(
                        gateway: addr("10.0.1.1:15008"), authority: "10.0.1.1:8080",
                        expectedIdentities: [id("server")], destinationWorkload: server, service: nil,
                        viaWaypoint: false)))
    }

    @Test("pod IP of a TCP workload: plaintext to the original destination")
    func podIPPlaintext() {
        let server = workload("server", ["10.0.1.1"], protocol: .tcp)
        #expect(
            decide("10.0.1.1:8080", workloads: [server])
                == .plaintext(destination: addr("10.0.1.1:8080"), workload: server, service: nil))
    }

    @Test("unknown IP passes through, also without a known source")
    func unknownPassthrough() {
        #expect(decide("93.184.216.34:443") == .passthrough(destination: addr("93.184.216.34:443")))
        #expect(decide("93.184.216.34:443", from: nil) == .passthrough(destination: addr("93.184.216.34:443")))
    }

    @Test("destinations are looked up in the node's network; endpoints on the source's")
    func nodeNetwork() {
        let source = workload("client", ["10.0.0.1"], network: "east")
        let server = workload("server", ["10.0.1.1"], network: "west")
        #expect(
            decide("10.0.1.1:80", from: source, workloads: [server], network: "east")
                == .passthrough(destination: addr("10.0.1.1:80")))
        let local = workload("server", ["10.0.1.1"], network: "east")
        #expect(hbone(decide("10.0.1.1:80", from: source, workloads: [local], network: "east"))?.destinationWorkload == local)
        // Without a known source (an explicit client), the node's network still applies.
        #expect(hbone(decide("10.0.1.1:80", from: nil, workloads: [local], network: "east"))?.destinationWorkload == local)
        let echo = Service(
            name: "echo", namespace: "default", hostname: "echo", vips: [NetworkAddress(network: "east", ip: ip("10.96.0.10"))],
            ports: [80: 8080])
        let endpoint = workload("echo-1", ["10.0.1.2"], network: "east", services: ["default/echo": [80: 8080]])
        #expect(chosenUID(decide("10.96.0.10:80", from: nil, workloads: [endpoint], services: [echo], network: "east")) == "echo-1")
        #expect(
            decide("10.96.0.10:80", from: nil, workloads: [endpoint], services: [echo], network: "west")
                == .passthrough(destination: addr("10.96.0.10:80")))
    }

    @Test("host-network workloads are never found by address, but stay service endpoints")
    func hostNetworkNotByAddress() {
        var node = workload("node-agent", ["10.0.1.1"], services: ["default/agent": [80: 8080]])
        node.networkMode = .hostNetwork
        let mesh = MeshSnapshot(workloads: [client, node], services: [], policies: [])
        #expect(mesh.workload(at: ip("10.0.1.1")) == nil)
        #expect(mesh.workloads(at: ip("10.0.1.1")).isEmpty)
        #expect(decide("10.0.1.1:8080", workloads: [node]) == .passthrough(destination: addr("10.0.1.1:8080")))
        // Beside a pod that has the same address, the pod owns it whatever the uids.
        let pod = workload("a-pod", ["10.0.1.1"])
        #expect(chosenUID(decide("10.0.1.1:8080", workloads: [node, pod])) == "a-pod")
        let agent = service("agent", vips: ["10.96.0.20"], ports: [80: 8080])
        #expect(chosenUID(decide("10.96.0.20:80", workloads: [node], services: [agent])) == "node-agent")
    }

    // MARK: 5. workload waypoints

    @Test("pod IP with a workload waypoint: HBONE to the waypoint, authority is the pod address")
    func workloadWaypoint() {
        let waypoint = workload("waypoint", ["10.0.0.9"], sa: "waypoint")
        let server = workload("server", ["10.0.1.1"], protocol: .tcp, waypoint: waypointAt("10.0.0.9"))
        #expect(
            decide("10.0.1.1:8080", workloads: [waypoint, server])
                == .hbone(
                    HBONETarget(
                        gateway: addr("10.0.0.9:15008"), authority: "10.0.1.1:8080",
                        expectedIdentities: [id("waypoint")], destinationWorkload: server, service: nil,
                        viaWaypoint: true, waypoint: waypoint)))
    }

    @Test("workload waypoint ignored when the traffic was service-addressed")
    func workloadWaypointIgnoredForService() {
        let waypoint = workload("waypoint", ["10.0.0.9"], sa: "waypoint")
        let server = workload(
            "server", ["10.0.1.1"], waypoint: waypointAt("10.0.0.9"), services: ["default/echo": [80: 8080]])
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080])
        let target = hbone(decide("10.96.0.10:80", workloads: [waypoint, server], services: [echo]))
        #expect(target?.gateway == addr("10.0.1.1:15008"))
        #expect(target?.viaWaypoint == false)
        #expect(target?.service == echo)
    }

    @Test("the workload's own waypoint sending to it goes direct")
    func sourceIsWorkloadWaypoint() {
        let waypoint = workload("waypoint", ["10.0.0.9"], sa: "waypoint")
        let server = workload("server", ["10.0.1.1"], sa: "server", waypoint: waypointAt("10.0.0.9"))
        let target = hbone(decide("10.0.1.1:8080", from: waypoint, workloads: [server]))
        #expect(target?.gateway == addr("10.0.1.1:15008"))
        #expect(target?.viaWaypoint == false)
        #expect(target?.expectedIdentities == [id("server")])
    }

    @Test("the source is the waypoint only with the waypoint's identity and one of its IPs")
    func sourceIsWorkloadWaypointNeedsIdentityAndIP() {
        let waypoint = workload("waypoint", ["10.0.0.9"], sa: "waypoint")
        let server = workload("server", ["10.0.1.1"], sa: "server", waypoint: waypointAt("10.0.0.9"))
        // The waypoint's identity from another address, or the waypoint's address under
        // another identity, or no known address: through the waypoint.
        let sameIdentity = workload("impostor", ["10.0.0.5"], sa: "waypoint")
        let sameIP = workload("impostor", ["10.0.0.9"], sa: "impostor")
        for (source, sourceIP) in [(sameIdentity, "10.0.0.5"), (sameIP, "10.0.0.9"), (waypoint, "10.0.0.5")] as [(Workload, String)] {
            let target = hbone(decide("10.0.1.1:8080", from: source, sourceIP: sourceIP, workloads: [waypoint, server]))
            #expect(target?.viaWaypoint == true, "\(source.identity) from \(sourceIP)")
            #expect(target?.gateway == addr("10.0.0.9:15008"))
        }
        let unknownAddress = hbone(decide("10.0.1.1:8080", from: waypoint, sourceIP: .some(nil), workloads: [server]))
        #expect(unknownAddress?.viaWaypoint == true)
        // By hostname: an endpoint of the waypoint service, with its identity and address, skips it.
        let waypointService = service("waypoint", vips: ["10.96.0.9"], ports: [15008: 15008])
        let backing = workload("waypoint-2", ["10.0.0.7"], sa: "waypoint", services: ["default/waypoint": [:]])
        let byName = workload("server", ["10.0.1.1"], sa: "server", waypoint: waypointNamed("default/waypoint"))
        #expect(hbone(decide("10.0.1.1:8080", from: backing, workloads: [byName], services: [waypointService]))?.viaWaypoint == false)
        let stranger = workload("stranger", ["10.0.0.6"], sa: "waypoint")
        #expect(
            hbone(decide("10.0.1.1:8080", from: stranger, workloads: [backing, byName], services: [waypointService]))?.viaWaypoint == true)
    }

    @Test("workload waypoint that cannot be resolved is refused")
    func workloadWaypointUnresolved() {
        let server = workload("server", ["10.0.1.1"], waypoint: waypointNamed("default/gone"))
        #expect(refusal(decide("10.0.1.1:8080", workloads: [server])) == .waypointUnresolved)
    }

    // MARK: IPv6

    @Test("IPv6 authorities and gateways use the bracketed form")
    func ipv6Authority() {
        let server = workload("server", ["fd00::2"], sa: "server")
        let target = hbone(decide("[fd00::2]:8080", workloads: [server]))
        #expect(target?.authority == "[fd00::2]:8080")
        #expect(target?.gateway == addr("[fd00::2]:15008"))

        let waypoint = workload("waypoint", ["fd00::9"], sa: "waypoint")
        let echo = service("echo", vips: ["fd00:96::10"], ports: [80: 8080], waypoint: waypointAt("fd00::9"))
        let viaWaypoint = hbone(decide("[fd00:96::10]:80", workloads: [waypoint], services: [echo]))
        #expect(viaWaypoint?.authority == "[fd00:96::10]:80")
        #expect(viaWaypoint?.gateway == addr("[fd00::9]:15008"))
    }

    @Test("a dual-stack endpoint is reached in the family the client used")
    func dualStackFamily() {
        let echo = service("echo", vips: ["10.96.0.10", "fd00:96::10"], ports: [80: 8080])
        let endpoint = workload("echo-1", ["10.0.1.1", "fd00::1"], services: ["default/echo": [80: 8080]])
        #expect(hbone(decide("[fd00:96::10]:80", workloads: [endpoint], services: [echo]))?.authority == "[fd00::1]:8080")
        #expect(hbone(decide("10.96.0.10:80", workloads: [endpoint], services: [echo]))?.authority == "10.0.1.1:8080")
    }

    @Test("a service's ipFamilies picks the endpoint address of the family it allows")
    func ipFamilies() {
        let dualStack = workload("echo-1", ["10.0.1.1", "fd00::1"], services: ["default/echo": [80: 8080]])
        func echo(_ families: IPFamilies?) -> Service {
            var echo = service("echo", vips: ["10.96.0.10", "fd00:96::10"], ports: [80: 8080])
            echo.ipFamilies = families
            return echo
        }
        func authority(_ vip: String, _ families: IPFamilies?, _ endpoints: [Workload] = [dualStack]) -> String? {
            hbone(decide(vip, workloads: endpoints, services: [echo(families)]))?.authority
        }
        #expect(authority("[fd00:96::10]:80", .ipv4) == "10.0.1.1:8080")
        #expect(authority("10.96.0.10:80", .ipv6) == "[fd00::1]:8080")
        #expect(authority("10.96.0.10:80", .dual) == "10.0.1.1:8080")
        #expect(authority("[fd00:96::10]:80", .dual) == "[fd00::1]:8080")
        #expect(authority("[fd00:96::10]:80", nil) == "[fd00::1]:8080")
        // An endpoint without an address of an allowed family is left out.
        let v4Only = workload("echo-2", ["10.0.1.2"], services: ["default/echo": [80: 8080]])
        for seed in 0..<16 as Range<UInt64> {
            let decision = decide("10.96.0.10:80", workloads: [v4Only, dualStack], services: [echo(.ipv6)], seed: seed)
            #expect(hbone(decision)?.authority == "[fd00::1]:8080")
        }
        #expect(refusal(decide("10.96.0.10:80", workloads: [v4Only], services: [echo(.ipv6)])) == .noHealthyEndpoint)
    }

    @Test("services sharing a VIP: the client's namespace first, then the canonical one; visibility hides others' services")
    func sharedVIP() {
        func shared(_ namespace: String, canonical: Bool = false, visibility: ServiceVisibility = .everywhere) -> Service {
            Service(
                name: "echo", namespace: namespace, hostname: "echo.example", vips: [NetworkAddress(ip: ip("10.96.0.10"))],
                ports: [80: 8080], canonical: canonical, visibility: visibility)
        }
        func endpoint(_ namespace: String) -> Workload {
            workload("echo-\(namespace)", ["10.0.1.\(namespace.count)"], services: ["\(namespace)/echo.example": [80: 8080]])
        }
        let endpoints = ["default", "zz", "aa-canonical"].map(endpoint)
        let mine = decide("10.96.0.10:80", workloads: endpoints, services: [shared("default"), shared("zz")])
        #expect(hbone(mine)?.service?.namespace == "default")
        let canonical = decide(
            "10.96.0.10:80", workloads: endpoints, services: [shared("aa-canonical", canonical: true), shared("zz")])
        #expect(hbone(canonical)?.service?.namespace == "aa-canonical")
        // Neither in the client's namespace nor canonical: the greatest name, as before.
        #expect(hbone(decide("10.96.0.10:80", workloads: endpoints, services: [shared("aa-canonical"), shared("zz")]))?.service?.namespace == "zz")
        // A namespace-visible service of another namespace is not there for this client.
        let hidden = decide("10.96.0.10:80", workloads: endpoints, services: [shared("zz", visibility: .namespace)])
        #expect(hidden == .passthrough(destination: addr("10.96.0.10:80")))
        let otherHidden = decide(
            "10.96.0.10:80", workloads: endpoints,
            services: [shared("zz", canonical: true, visibility: .namespace), shared("aa-canonical")])
        #expect(hbone(otherHidden)?.service?.namespace == "aa-canonical")
        let ownVisible = decide("10.96.0.10:80", workloads: endpoints, services: [shared("default", visibility: .namespace)])
        #expect(hbone(ownVisible)?.service?.namespace == "default")
    }

    @Test("cidrVips: an address in a service's block reaches it; an exact VIP wins, then namespace, then the longer prefix")
    func cidrVIPs() {
        func block(_ name: String, _ cidr: String, namespace: String = "default", vips: [String] = []) -> Service {
            Service(
                name: name, namespace: namespace, hostname: name, vips: vips.map { NetworkAddress(ip: ip($0)) },
                ports: [80: 8080], cidrVIPs: [NetworkCIDR(cidr: CIDR(cidr)!)])
        }
        let endpoints = ["wide", "narrow", "exact"].enumerated().map { index, name in
            workload("\(name)-1", ["10.0.2.\(index + 1)"], services: ["default/\(name)": [80: 8080], "other/\(name)": [80: 8080]])
        }
        let services = [
            block("wide", "10.97.0.0/16"), block("narrow", "10.97.1.0/24", namespace: "other"),
            block("exact", "10.99.0.0/16", vips: ["10.97.1.5"]),
        ]
        #expect(hbone(decide("10.97.2.3:80", workloads: endpoints, services: services))?.service?.name == "wide")
        #expect(hbone(decide("10.97.1.5:80", workloads: endpoints, services: services))?.service?.name == "exact")
        // The client's namespace beats the more specific block of another namespace.
        #expect(hbone(decide("10.97.1.6:80", workloads: endpoints, services: services))?.service?.name == "wide")
        #expect(hbone(decide("10.97.1.6:80", from: nil, workloads: endpoints, services: services))?.service?.name == "narrow")
        #expect(decide("10.98.0.1:80", workloads: endpoints, services: services) == .passthrough(destination: addr("10.98.0.1:80")))
    }

    @Test("system RNG overload decides the same way for a single endpoint")
    func systemRNG() {
        let server = workload("server", ["10.0.1.1"], protocol: .tcp)
        let mesh = MeshSnapshot(workloads: [client, server], services: [], policies: [])
        #expect(
            Forwarding.decide(OutboundRequest(source: client, destination: addr("10.0.1.1:80")), in: mesh)
                == .plaintext(destination: addr("10.0.1.1:80"), workload: server, service: nil))
    }

    @Test("refusals describe themselves")
    func refusalDescription() {
        guard case .refuse(let refusal) = decide("127.0.0.1:15001") else {
            Issue.record("expected a refusal")
            return
        }
        #expect(refusal.description.hasPrefix("selfCall: "))
        #expect(refusal.description.contains("127.0.0.1:15001"))
    }
}

/// Endpoints on another network: reached only through their network gateway, by double
/// HBONE (ztunnel's `build_request_through_gateway`).
@Suite("Forwarding decision: network gateways")
struct NetworkGatewayDecisionTests {
    static let east = workload("client", ["10.0.0.1"], sa: "client", network: "east")
    /// The west network's east-west gateway, a workload at 10.1.0.1.
    static let gatewayWorkload: Workload = {
        var gateway = workload("ew-gateway", ["10.1.0.1"], sa: "istio-eastwestgateway", protocol: .tcp, network: "west")
        gateway.namespace = "istio-system"
        return gateway
    }()
    static let viaGateway = GatewayAddress(destination: .address(NetworkAddress("west/10.1.0.1")!), hboneMtlsPort: 15008)

    static func echo(_ balancer: LoadBalancer? = nil, waypoint: GatewayAddress? = nil) -> Service {
        var made = Service(
            name: "echo", namespace: "default", hostname: "echo.default.svc.cluster.local",
            vips: [NetworkAddress(network: "east", ip: ip("10.96.0.10"))], ports: [80: 8080],
            subjectAltNames: ["spiffe://cluster.local/ns/default/sa/echo-san"], waypoint: waypoint)
        made.loadBalancer = balancer
        return made
    }

    static func remote(_ uid: String, _ ips: [String] = ["10.2.0.5"], gateway: GatewayAddress? = viaGateway, status: HealthStatus = .healthy) -> Workload {
        var made = workload(uid, ips, sa: uid, network: "west", status: status, services: ["default/echo.default.svc.cluster.local": [80: 8080]])
        made.networkGateway = gateway
        return made
    }

    static func local(_ uid: String, status: HealthStatus = .healthy) -> Workload {
        workload(uid, ["10.0.1.5"], sa: uid, network: "east", status: status, services: ["default/echo.default.svc.cluster.local": [80: 8080]])
    }

    static func decideEcho(_ workloads: [Workload], _ service: Service = echo(), seed: UInt64 = 1, extra: [Service] = []) -> ForwardingDecision {
        decide("10.96.0.10:80", from: east, workloads: workloads + [gatewayWorkload], services: [service] + extra, seed: seed, network: "east")
    }

    @Test("an endpoint on another network: outer tunnel to its gateway, inner tunnel to it, both naming the service")
    func doubleHBONE() {
        let server = Self.remote("server-west")
        let decision = Self.decideEcho([server])
        #expect(
            decision
                == .hbone(
                    HBONETarget(
                        gateway: addr("10.1.0.1:15008"), authority: "echo.default.svc.cluster.local:80",
                        expectedIdentities: [id("istio-eastwestgateway", ns: "istio-system")],
                        destinationWorkload: server, service: Self.echo(), viaWaypoint: false,
                        inner: InnerTunnel(
                            authority: "echo.default.svc.cluster.local:80",
                            expectedIdentities: [id("server-west"), id("echo-san")], originNetwork: "east"),
                        networkGateway: Self.gatewayWorkload)))
        // An endpoint there without addresses of its own is reachable all the same.
        let addressless = Self.remote("server-west", [])
        #expect(hbone(Self.decideEcho([addressless]))?.inner != nil)
    }

    @Test("an endpoint on another network without a network gateway is never picked")
    func noGatewayNeverPicked() {
        let stranded = Self.remote("stranded", gateway: nil)
        #expect(refusal(Self.decideEcho([stranded])) == .noHealthyEndpoint)
        let here = Self.local("here")
        for seed in 0..<30 as Range<UInt64> {
            #expect(chosenUID(Self.decideEcho([stranded, here], seed: seed)) == "here")
        }
    }

    @Test("without a load balancer every network's endpoints are candidates; Failover over NETWORK keeps the local one first")
    func failoverAcrossNetworks() {
        let here = Self.local("here")
        let there = Self.remote("there")
        let anyNetwork = Set((0..<48 as Range<UInt64>).map { chosenUID(Self.decideEcho([here, there], seed: $0)) })
        #expect(anyNetwork == ["here", "there"])
        let failover = Self.echo(LoadBalancer(routingPreferences: [.network], mode: .failover))
        for seed in 0..<30 as Range<UInt64> {
            #expect(chosenUID(Self.decideEcho([here, there], failover, seed: seed)) == "here")
            // The local endpoint unhealthy: the remote network takes over, through its gateway.
            let decision = Self.decideEcho([Self.local("here", status: .unhealthy), there], failover, seed: seed)
            #expect(chosenUID(decision) == "there")
            #expect(hbone(decision)?.gateway == addr("10.1.0.1:15008"))
        }
        // Strict over NETWORK never leaves the source's network.
        let strict = Self.echo(LoadBalancer(routingPreferences: [.network], mode: .strict))
        #expect(refusal(Self.decideEcho([there], strict)) == .noHealthyEndpoint)
    }

    @Test("a gateway that is no workload, nor a service declaring its HBONE port with an endpoint, is refused")
    func gatewayUnresolved() {
        let unknown = Self.remote("server-west", gateway: GatewayAddress(destination: .address(NetworkAddress("west/10.1.0.99")!)))
        #expect(refusal(Self.decideEcho([unknown])) == .networkGatewayUnresolved)
        // By hostname: a service whose endpoint is dialed on the service's target port for 15008.
        let gatewayService = Service(
            name: "istio-eastwestgateway", namespace: "istio-system", hostname: "istio-eastwestgateway.istio-system.svc.cluster.local",
            vips: [NetworkAddress(network: "west", ip: ip("10.96.1.1"))], ports: [15008: 15009],
            subjectAltNames: ["spiffe://cluster.local/ns/istio-system/sa/gateway-san"])
        var gatewayPod = Self.gatewayWorkload
        gatewayPod.services = [name("istio-system/istio-eastwestgateway.istio-system.svc.cluster.local"): [:]]
        let byName = Self.remote(
            "server-west", gateway: GatewayAddress(destination: .hostname(name("istio-system/istio-eastwestgateway.istio-system.svc.cluster.local"))))
        let target = hbone(
            decide("10.96.0.10:80", from: Self.east, workloads: [byName, gatewayPod], services: [Self.echo(), gatewayService], network: "east"))
        #expect(target?.gateway == addr("10.1.0.1:15009"))
        #expect(target?.expectedIdentities == [id("istio-eastwestgateway", ns: "istio-system"), id("gateway-san", ns: "istio-system")])
        #expect(target?.inner?.authority == "echo.default.svc.cluster.local:80")
        var portless = gatewayService
        portless.ports = [443: 443]
        #expect(
            refusal(decide("10.96.0.10:80", from: Self.east, workloads: [byName, gatewayPod], services: [Self.echo(), portless], network: "east"))
                == .networkGatewayUnresolved)
    }

    @Test("a service's waypoint on another network is reached through that network's gateway")
    func remoteWaypoint() {
        var waypoint = workload("waypoint", ["10.2.0.9"], sa: "waypoint", network: "west")
        waypoint.networkGateway = Self.viaGateway
        let service = Self.echo(waypoint: GatewayAddress(destination: .address(NetworkAddress("west/10.2.0.9")!)))
        let target = hbone(Self.decideEcho([waypoint, Self.remote("server-west")], service))
        #expect(target?.gateway == addr("10.1.0.1:15008"))
        #expect(target?.authority == "echo.default.svc.cluster.local:80")
        #expect(target?.viaWaypoint == true)
        #expect(target?.waypoint == waypoint)
        #expect(target?.inner?.expectedIdentities == [id("waypoint")])
        // The same waypoint on the source's network is tunnelled to directly.
        var near = waypoint
        near.network = "east"
        let direct = hbone(
            Self.decideEcho([near], Self.echo(waypoint: GatewayAddress(destination: .address(NetworkAddress("east/10.2.0.9")!)))))
        #expect(direct?.gateway == addr("10.2.0.9:15008"))
        #expect(direct?.inner == nil)
    }
}
