import AmbitRuntime
import Kernel
import NodeProxy
import Testing

private func workload(
    _ uid: String, _ ips: [String], namespace: String = "default", waypoint: GatewayAddress? = nil,
    services: [String: [UInt16: UInt16]] = [:], tunnel: ApplicationTunnel? = nil
) -> Workload {
    Workload(
        uid: uid, name: uid, namespace: namespace, serviceAccount: uid, workloadIPs: ips.map(ip),
        tunnelProtocol: .hbone, node: "node", waypoint: waypoint,
        services: Dictionary(uniqueKeysWithValues: services.map { (name($0.key), $0.value) }),
        applicationTunnel: tunnel)
}

private func service(
    _ hostname: String, namespace: String = "default", vips: [String] = [], ports: [UInt16: UInt16] = [:],
    waypoint: GatewayAddress? = nil
) -> Service {
    Service(
        name: hostname, namespace: namespace, hostname: hostname, vips: vips.map { NetworkAddress(ip: ip($0)) },
        ports: ports, waypoint: waypoint)
}

private func at(_ address: String) -> GatewayAddress {
    GatewayAddress(destination: .address(NetworkAddress(ip: ip(address))))
}

private func named(_ text: String) -> GatewayAddress {
    GatewayAddress(destination: .hostname(name(text)))
}

/// The local waypoint workload the tests terminate for, reached at 10.0.0.9.
private let waypoint = workload("waypoint", ["10.0.0.9"], services: ["default/waypoint": [15008: 15008]])
private let waypointService = service("waypoint", vips: ["10.96.0.9"], ports: [15008: 15008])

private func resolve(
    _ authority: TunnelAuthority, for local: Workload = waypoint, arrivedOn arrival: String = "10.0.0.9",
    workloads: [Workload] = [], services: [Service] = []
) -> Result<InboundDestination, ConnectionRefusal> {
    let mesh = MeshSnapshot(workloads: [local] + workloads, services: [waypointService] + services, policies: [])
    return Result { () throws(ConnectionRefusal) in
        try InboundDestination.resolve(authority, arrivedOn: ip(arrival), workload: local, in: mesh)
    }
}

private func refusal(_ result: Result<InboundDestination, ConnectionRefusal>) -> ConnectionRefusal.Code? {
    if case .failure(let refusal) = result { return refusal.code }
    return nil
}

@Suite("Inbound destination: what an HBONE authority may name and where the stream goes")
struct InboundDestinationTests {
    @Test("the workload's own address goes to that address")
    func ownAddress() throws {
        let dual = workload("dual", ["10.0.1.1", "fd00::1"])
        #expect(try resolve(.address(addr("10.0.1.1:8080")), for: dual, arrivedOn: "10.0.1.1").get().upstream == addr("10.0.1.1:8080"))
        #expect(try resolve(.address(addr("[fd00::1]:80")), for: dual, arrivedOn: "10.0.1.1").get().upstream == addr("[fd00::1]:80"))
    }

    @Test("another address with no waypoint, or an unknown one, is a bad request (400 IP mismatch)")
    func mismatch() {
        let other = workload("other", ["10.0.1.2"])
        let plainService = service("plain", vips: ["10.96.0.20"], ports: [80: 8080])
        #expect(refusal(resolve(.address(addr("10.0.1.2:80")), workloads: [other])) == .badRequest)
        #expect(refusal(resolve(.address(addr("10.96.0.20:80")), services: [plainService])) == .badRequest)
        #expect(refusal(resolve(.address(addr("10.9.9.9:80")))) == .badRequest)
    }

    @Test("a service whose waypoint this workload is: to the arrival IP on the authority's port")
    func serviceWaypoint() throws {
        // By hostname and by the waypoint service's VIP: we back the waypoint service.
        for gateway in [named("default/waypoint"), at("10.96.0.9")] {
            let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: gateway)
            #expect(try resolve(.address(addr("10.96.0.10:80")), services: [echo]).get().upstream == addr("10.0.0.9:80"))
        }
        // By the waypoint workload's own address.
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: at("10.0.0.9"))
        #expect(try resolve(.address(addr("10.96.0.10:80")), services: [echo]).get().upstream == addr("10.0.0.9:80"))
    }

    @Test("a weighted waypoint of the service counts too, unless its weight is 0")
    func weightedServiceWaypoint() throws {
        func echo(weight: UInt32) -> Service {
            Service(
                name: "echo", namespace: "default", hostname: "echo", vips: [NetworkAddress(ip: ip("10.96.0.10"))],
                ports: [80: 8080], waypoint: at("10.0.0.8"),
                weightedWaypoints: [WeightedWaypoint(destination: named("default/waypoint"), weight: weight)])
        }
        let stable = workload("stable", ["10.0.0.8"])
        #expect(
            try resolve(.address(addr("10.96.0.10:80")), workloads: [stable], services: [echo(weight: 10)]).get().upstream
                == addr("10.0.0.9:80"))
        #expect(refusal(resolve(.address(addr("10.96.0.10:80")), workloads: [stable], services: [echo(weight: 0)])) == .badRequest)
    }

    @Test("a workload whose waypoint this workload is: to the arrival IP on the authority's port")
    func workloadWaypoint() throws {
        let server = workload("server", ["10.0.1.1"], waypoint: at("10.0.0.9"))
        #expect(try resolve(.address(addr("10.0.1.1:8080")), workloads: [server]).get().upstream == addr("10.0.0.9:8080"))
        let byService = workload("server", ["10.0.1.1"], waypoint: named("default/waypoint"))
        #expect(try resolve(.address(addr("10.0.1.1:8080")), workloads: [byService]).get().upstream == addr("10.0.0.9:8080"))
    }

    @Test("a waypoint hostname no service has names the workload with that hostname")
    func waypointHostnameIsWorkload() throws {
        let byHostname = Workload(
            uid: "waypoint", name: "waypoint", namespace: "default", serviceAccount: "waypoint",
            workloadIPs: [ip("10.0.0.9")], tunnelProtocol: .hbone, node: "node", hostname: "waypoint.example")
        let server = workload("server", ["10.0.1.1"], waypoint: named("default/waypoint.example"))
        #expect(
            try resolve(.address(addr("10.0.1.1:8080")), for: byHostname, workloads: [server]).get().upstream
                == addr("10.0.0.9:8080"))
        let other = workload("server", ["10.0.1.1"], waypoint: named("default/someone-else.example"))
        #expect(refusal(resolve(.address(addr("10.0.1.1:8080")), for: byHostname, workloads: [other])) == .badRequest)
    }

    @Test("a target whose waypoint is another workload or service, or does not resolve, is refused")
    func someoneElsesWaypoint() {
        let elsewhere = workload("other-waypoint", ["10.0.0.8"])
        let otherService = service("other-waypoint", vips: ["10.96.0.8"], ports: [15008: 15008])
        for gateway in [at("10.0.0.8"), at("10.96.0.8"), named("default/other-waypoint"), named("default/gone"), at("10.0.0.99")] {
            let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: gateway)
            let server = workload("server", ["10.0.1.1"], waypoint: gateway)
            let mesh = (workloads: [elsewhere, server], services: [echo, otherService])
            #expect(
                refusal(resolve(.address(addr("10.96.0.10:80")), workloads: mesh.workloads, services: mesh.services))
                    == .badRequest, "\(gateway)")
            #expect(
                refusal(resolve(.address(addr("10.0.1.1:80")), workloads: mesh.workloads, services: mesh.services))
                    == .badRequest, "\(gateway)")
        }
    }

    @Test("a workload waypoint by address must be the address the connection arrived on")
    func workloadWaypointArrival() {
        // The waypoint has two addresses; the stream came in on one that is not its.
        let twoAddresses = workload("waypoint", ["10.0.0.9", "10.0.0.10"])
        let server = workload("server", ["10.0.1.1"], waypoint: at("10.0.0.9"))
        #expect(
            (try? resolve(.address(addr("10.0.1.1:80")), for: twoAddresses, arrivedOn: "10.0.0.10", workloads: [server]).get())
                == InboundDestination(upstream: addr("10.0.0.10:80")))
        #expect(
            refusal(resolve(.address(addr("10.0.1.1:80")), for: twoAddresses, arrivedOn: "10.0.0.11", workloads: [server]))
                == .badRequest)
    }

    @Test("a waypoint-addressed stream to one of the proxy's own ports is a self call")
    func waypointSelfCall() {
        let echo = service("echo", vips: ["10.96.0.10"], ports: [80: 8080], waypoint: at("10.0.0.9"))
        #expect(refusal(resolve(.address(addr("10.96.0.10:15008")), services: [echo])) == .selfCall)
    }

    // MARK: hostname authorities

    @Test("a service hostname maps the service port to the endpoint's target port on the arrival IP")
    func hostname() throws {
        let echo = service("echo.default.svc.cluster.local", vips: ["10.96.0.10"], ports: [80: 8080, 81: 0, 82: 0])
        let server = workload(
            "server", ["10.0.1.1"], services: ["default/echo.default.svc.cluster.local": [80: 9090, 81: 0]])
        func upstream(_ port: UInt16) throws -> SocketAddr {
            try resolve(.hostname("echo.default.svc.cluster.local", port: port), for: server, arrivedOn: "10.0.1.1", services: [echo])
                .get().upstream
        }
        #expect(try upstream(80) == addr("10.0.1.1:9090"), "the endpoint's own target port first")
        #expect(try upstream(81) == addr("10.0.1.1:81"), "0 on both sides is the service port itself")
        #expect(try upstream(82) == addr("10.0.1.1:82"))
        let withoutMap = workload("server", ["10.0.1.1"])
        #expect(
            try resolve(.hostname("echo.default.svc.cluster.local", port: 80), for: withoutMap, arrivedOn: "10.0.1.1", services: [echo])
                .get() == InboundDestination(upstream: addr("10.0.1.1:8080"), service: echo),
            "else the service's target port")
    }

    @Test("a hostname prefers the service in the workload's namespace")
    func hostnameNamespace() throws {
        let mine = service("echo", namespace: "mine", ports: [80: 8081])
        let theirs = service("echo", namespace: "aaa", ports: [80: 8082])
        let server = workload("server", ["10.0.1.1"], namespace: "mine")
        let destination = try resolve(.hostname("echo", port: 80), for: server, arrivedOn: "10.0.1.1", services: [theirs, mine]).get()
        #expect(destination.upstream == addr("10.0.1.1:8081"))
        #expect(destination.service == mine)
    }

    @Test("an unknown hostname or a port the service does not have is refused (HBONE 503)")
    func hostnameRefused() {
        let echo = service("echo", ports: [80: 8080])
        #expect(refusal(resolve(.hostname("missing", port: 80), services: [echo])) == .unresolvable)
        #expect(refusal(resolve(.hostname("echo", port: 81), services: [echo])) == .servicePortUnknown)
        let toProxy = service("proxy", ports: [80: 15008])
        #expect(refusal(resolve(.hostname("proxy", port: 80), services: [toProxy])) == .selfCall)
    }

    // MARK: application tunnels

    @Test("a PROXY application tunnel takes any authority address, on the tunnel's port, naming the authority in the header")
    func proxyTunnel() throws {
        let sandwich = workload("waypoint", ["10.0.0.9"], tunnel: ApplicationTunnel(protocol: .proxy, port: 15088))
        let anywhere = try resolve(.address(addr("10.9.9.9:80")), for: sandwich).get()
        #expect(anywhere == InboundDestination(upstream: addr("10.0.0.9:15088"), proxyProtocolTarget: addr("10.9.9.9:80")))
        let own = try resolve(.address(addr("10.0.0.9:8080")), for: sandwich).get()
        #expect(own == InboundDestination(upstream: addr("10.0.0.9:15088"), proxyProtocolTarget: addr("10.0.0.9:8080")))
        // Without a port of its own the tunnel keeps the stream's port.
        let samePort = workload("waypoint", ["10.0.0.9"], tunnel: ApplicationTunnel(protocol: .proxy))
        #expect(try resolve(.address(addr("10.9.9.9:80")), for: samePort).get().upstream == addr("10.0.0.9:80"))
    }

    @Test("a hostname through a PROXY tunnel names the service's VIP on the workload's network, IPv4 first")
    func proxyTunnelHostname() throws {
        let sandwich = workload("waypoint", ["10.0.0.9"], tunnel: ApplicationTunnel(protocol: .proxy, port: 15088))
        let echo = Service(
            name: "echo", namespace: "default", hostname: "echo",
            vips: [NetworkAddress(network: "other", ip: ip("10.200.0.1")), NetworkAddress(ip: ip("fd00::10")), NetworkAddress(ip: ip("10.96.0.10"))],
            ports: [80: 8080])
        let destination = try resolve(.hostname("echo", port: 80), for: sandwich, services: [echo]).get()
        #expect(destination == InboundDestination(upstream: addr("10.0.0.9:15088"), service: echo, proxyProtocolTarget: addr("10.96.0.10:80")))
        let headless = Service(name: "bare", namespace: "default", hostname: "bare", vips: [], ports: [80: 8080])
        #expect(refusal(resolve(.hostname("bare", port: 80), for: sandwich, services: [headless])) == .unresolvable)
    }

    @Test("a NONE application tunnel moves the port but tells the workload nothing, so the address rules stay")
    func plainTunnel() throws {
        let plain = workload("waypoint", ["10.0.0.9"], tunnel: ApplicationTunnel(protocol: .plain, port: 15088))
        #expect(try resolve(.address(addr("10.0.0.9:8080")), for: plain).get() == InboundDestination(upstream: addr("10.0.0.9:15088")))
        #expect(refusal(resolve(.address(addr("10.9.9.9:80")), for: plain)) == .badRequest)
    }

    @Test("an application tunnel on one of the proxy's own ports is a self call")
    func tunnelSelfCall() {
        let looping = workload("waypoint", ["10.0.0.9"], tunnel: ApplicationTunnel(protocol: .proxy, port: 15008))
        #expect(refusal(resolve(.address(addr("10.0.0.9:80")), for: looping)) == .selfCall)
    }
}
