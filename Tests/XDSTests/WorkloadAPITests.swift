import Foundation
import IstioXDSAPI
import Kernel
import LocalConfig
import SwiftProtobuf
import Testing
import XDS

/// Bytes of an IP literal.
func ipBytes(_ text: String) -> Data { Data(IPAddress(text)!.bytes) }

func networkAddress(_ ip: String, network: String = "", length: UInt32? = nil) -> Istio_Workload_NetworkAddress {
    var address = Istio_Workload_NetworkAddress()
    address.network = network
    address.address = ipBytes(ip)
    if let length { address.length = length }
    return address
}

func gatewayAddress(ip: String, network: String = "", port: UInt32 = 15008) -> Istio_Workload_GatewayAddress {
    var gateway = Istio_Workload_GatewayAddress()
    gateway.address = networkAddress(ip, network: network)
    gateway.hboneMtlsPort = port
    return gateway
}

func gatewayHostname(_ namespace: String, _ hostname: String, port: UInt32 = 15008) -> Istio_Workload_GatewayAddress {
    var gateway = Istio_Workload_GatewayAddress()
    var name = Istio_Workload_NamespacedHostname()
    name.namespace = namespace
    name.hostname = hostname
    gateway.hostname = name
    gateway.hboneMtlsPort = port
    return gateway
}

func portList(_ pairs: [(UInt32, UInt32)]) -> [Istio_Workload_Port] {
    pairs.map { pair in
        var port = Istio_Workload_Port()
        port.servicePort = pair.0
        port.targetPort = pair.1
        return port
    }
}

/// A workload with every field the Workload API has set.
func fullWorkload() -> Istio_Workload_Workload {
    var w = Istio_Workload_Workload()
    w.uid = "cluster1//v1/Pod/default/echo"
    w.name = "echo"
    w.namespace = "default"
    w.addresses = [ipBytes("10.0.0.5"), ipBytes("fd00::5")]
    w.hostname = "echo.example.com"
    w.network = "net1"
    w.tunnelProtocol = .hbone
    w.trustDomain = "td.example"
    w.serviceAccount = "echo-sa"
    w.waypoint = gatewayAddress(ip: "10.0.0.9", network: "net1")
    w.networkGateway = gatewayHostname("istio-system", "eastwest.istio-system.svc.cluster.local", port: 15009)
    w.node = "node-a"
    w.canonicalName = "echo"
    w.canonicalRevision = "v1"
    w.workloadType = .pod
    w.workloadName = "echo-deploy"
    w.nativeTunnel = true
    var tunnel = Istio_Workload_ApplicationTunnel()
    tunnel.protocol = .proxy
    tunnel.port = 15088
    w.applicationTunnel = tunnel
    var ports = Istio_Workload_PortList()
    ports.ports = portList([(80, 8080), (443, 0)])
    w.services = ["default/echo.default.svc.cluster.local": ports]
    w.authorizationPolicies = ["default/allow-echo"]
    w.status = .unhealthy
    w.clusterID = "cluster1"
    var locality = Istio_Workload_Locality()
    locality.region = "r1"
    locality.zone = "z1"
    locality.subzone = "s1"
    w.locality = locality
    w.networkMode = .hostNetwork
    w.capacity = Google_Protobuf_UInt32Value(7)
    return w
}

/// A service with every field set.
func fullService() -> Istio_Workload_Service {
    var s = Istio_Workload_Service()
    s.name = "echo"
    s.namespace = "default"
    s.hostname = "echo.default.svc.cluster.local"
    s.addresses = [
        networkAddress("10.96.0.10"), networkAddress("fd00::10", network: "net1", length: 128),
        networkAddress("10.97.0.0", length: 16),
    ]
    s.ports = portList([(80, 8080), (443, 0)])
    s.subjectAltNames = ["spiffe://cluster.local/ns/default/sa/echo"]
    s.waypoint = gatewayHostname("default", "waypoint.default.svc.cluster.local")
    var lb = Istio_Workload_LoadBalancing()
    lb.routingPreference = [.network, .region, .zone, .subzone, .node, .cluster]
    lb.mode = .failover
    lb.healthPolicy = .allowAll
    s.loadBalancing = lb
    s.ipFamilies = .ipv4Only
    s.canonical = true
    s.ingressUseWaypoint = true
    var weighted = Istio_Workload_WeightedWaypoint()
    weighted.destination = gatewayAddress(ip: "10.0.0.9")
    weighted.weight = 90
    s.weightedWaypoints = [weighted]
    s.visibility = .namespace
    return s
}

func stringMatch(_ kind: String, _ value: String = "") -> Istio_Security_StringMatch {
    var match = Istio_Security_StringMatch()
    switch kind {
    case "exact": match.exact = value
    case "prefix": match.prefix = value
    case "suffix": match.suffix = value
    default: match.presence = Google_Protobuf_Empty()
    }
    return match
}

func securityAddress(_ ip: String, _ length: UInt32) -> Istio_Security_Address {
    var address = Istio_Security_Address()
    address.address = ipBytes(ip)
    address.length = length
    return address
}

/// A policy with every match field set.
func fullAuthorization() -> Istio_Security_Authorization {
    var a = Istio_Security_Authorization()
    a.name = "allow-echo"
    a.namespace = "default"
    a.scope = .workloadSelector
    a.action = .deny
    a.dryRun = true
    var m = Istio_Security_Match()
    m.namespaces = [stringMatch("exact", "default")]
    m.notNamespaces = [stringMatch("prefix", "kube-")]
    m.principals = [
        stringMatch("exact", "spiffe://cluster.local/ns/default/sa/client"), stringMatch("suffix", "/sa/admin"),
    ]
    m.notPrincipals = [stringMatch("presence")]
    var account = Istio_Security_ServiceAccountMatch()
    account.namespace = "default"
    account.serviceAccount = "client"
    m.serviceAccounts = [account]
    account.serviceAccount = "other"
    m.notServiceAccounts = [account]
    m.sourceIps = [securityAddress("10.0.0.0", 8)]
    m.notSourceIps = [securityAddress("10.1.0.0", 16)]
    m.destinationIps = [securityAddress("fd00::", 8)]
    m.notDestinationIps = [securityAddress("10.0.0.5", 32)]
    m.destinationPorts = [8080]
    m.notDestinationPorts = [9090]
    var clause = Istio_Security_Clause()
    clause.matches = [m, Istio_Security_Match()]
    var rule = Istio_Security_Rule()
    rule.clauses = [clause]
    a.rules = [rule, Istio_Security_Rule()]
    return a
}

func addressResource(_ name: String, workload: Istio_Workload_Workload, version: String = "1")
    -> Envoy_Service_Discovery_V3_Resource
{
    var address = Istio_Workload_Address()
    address.workload = workload
    return resource(name, address, version: version)
}

func addressResource(_ name: String, service: Istio_Workload_Service, version: String = "1")
    -> Envoy_Service_Discovery_V3_Resource
{
    var address = Istio_Workload_Address()
    address.service = service
    return resource(name, address, version: version)
}

func resource(_ name: String, _ message: some SwiftProtobuf.Message, version: String = "1")
    -> Envoy_Service_Discovery_V3_Resource
{
    var resource = Envoy_Service_Discovery_V3_Resource()
    resource.name = name
    resource.version = version
    resource.resource = try! Google_Protobuf_Any(message: message)
    return resource
}

func expectRejected(
    _ body: () throws(XDSResourceError) -> Void, field: String, reasonContains reason: String,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    do {
        try body()
        Issue.record("expected the resource to be rejected at \(field)", sourceLocation: sourceLocation)
    } catch {
        #expect(error.field == field, "\(error)", sourceLocation: sourceLocation)
        #expect(error.reason.contains(reason), "\(error)", sourceLocation: sourceLocation)
    }
}

@Suite("xds: the Workload API into the mesh model")
struct WorkloadAPITests {
    @Test("every Workload field maps onto the model")
    func workloadFields() throws {
        let workload = try WorkloadAPI.workload(fullWorkload(), name: "cluster1//v1/Pod/default/echo")
        let expected = Workload(
            uid: "cluster1//v1/Pod/default/echo", name: "echo", namespace: "default", serviceAccount: "echo-sa",
            trustDomain: "td.example", workloadIPs: [IPAddress("10.0.0.5")!, IPAddress("fd00::5")!],
            tunnelProtocol: .hbone,
            node: "node-a", network: "net1",
            waypoint: GatewayAddress(
                destination: .address(NetworkAddress(network: "net1", ip: IPAddress("10.0.0.9")!))),
            status: .unhealthy, capacity: 7,
            services: [
                NamespacedHostname(namespace: "default", hostname: "echo.default.svc.cluster.local"): [
                    80: 8080, 443: 0,
                ]
            ],
            labels: [:], canonicalName: "echo", canonicalRevision: "v1", workloadName: "echo-deploy",
            clusterID: "cluster1",
            netns: nil, authorizationPolicies: ["default/allow-echo"],
            locality: Locality(region: "r1", zone: "z1", subzone: "s1"),
            networkMode: .hostNetwork, applicationTunnel: ApplicationTunnel(protocol: .proxy, port: 15088),
            networkGateway: GatewayAddress(
                destination: .hostname(
                    NamespacedHostname(namespace: "istio-system", hostname: "eastwest.istio-system.svc.cluster.local")),
                hboneMtlsPort: 15009),
            hostname: "echo.example.com")
        #expect(workload == expected)
    }

    @Test("an empty Workload takes the Workload API's defaults")
    func workloadDefaults() throws {
        var w = Istio_Workload_Workload()
        w.uid = "u1"
        var gateway = gatewayAddress(ip: "10.0.0.9", port: 0)
        gateway.hboneMtlsPort = 0
        w.waypoint = gateway
        var tunnel = Istio_Workload_ApplicationTunnel()
        tunnel.protocol = .none
        w.applicationTunnel = tunnel
        let workload = try WorkloadAPI.workload(w, name: "u1")
        #expect(workload.serviceAccount == "default")
        #expect(workload.trustDomain == "cluster.local")
        #expect(workload.clusterID == "Kubernetes")
        #expect(workload.capacity == 1)
        #expect(workload.tunnelProtocol == .tcp)
        #expect(workload.status == .healthy)
        #expect(workload.networkMode == .standard)
        #expect(workload.locality == Locality())
        #expect(workload.waypoint?.hboneMtlsPort == 15008)
        #expect(workload.applicationTunnel == ApplicationTunnel(protocol: .plain, port: nil))
        #expect(workload.networkGateway == nil)
        #expect(workload.labels.isEmpty)
        w.capacity = Google_Protobuf_UInt32Value(0)
        #expect(try WorkloadAPI.workload(w, name: "u1").capacity == 0)
    }

    @Test("every Service field maps onto the model; a full-length prefix is a VIP, a shorter one a cidrVips block")
    func serviceFields() throws {
        let service = try WorkloadAPI.service(fullService(), name: "default/echo.default.svc.cluster.local")
        let expected = Service(
            name: "echo", namespace: "default", hostname: "echo.default.svc.cluster.local",
            vips: [
                NetworkAddress(ip: IPAddress("10.96.0.10")!),
                NetworkAddress(network: "net1", ip: IPAddress("fd00::10")!),
            ],
            ports: [80: 8080, 443: 0], subjectAltNames: ["spiffe://cluster.local/ns/default/sa/echo"],
            waypoint: GatewayAddress(
                destination: .hostname(
                    NamespacedHostname(namespace: "default", hostname: "waypoint.default.svc.cluster.local"))),
            cidrVIPs: [NetworkCIDR(cidr: CIDR("10.97.0.0/16")!)],
            weightedWaypoints: [
                WeightedWaypoint(
                    destination: GatewayAddress(destination: .address(NetworkAddress(ip: IPAddress("10.0.0.9")!))),
                    weight: 90)
            ],
            loadBalancer: LoadBalancer(
                routingPreferences: [.network, .region, .zone, .subzone, .node, .cluster], mode: .failover,
                healthPolicy: .allowAll),
            ipFamilies: .ipv4, canonical: true, visibility: .namespace)
        #expect(service == expected)

        var plain = Istio_Workload_Service()
        plain.hostname = "h.example"
        let defaults = try WorkloadAPI.service(plain, name: "/h.example")
        #expect(defaults.loadBalancer == nil)
        #expect(defaults.ipFamilies == nil)
        #expect(defaults.visibility == .everywhere)
        #expect(defaults.vips.isEmpty)
        for (families, expected) in [(Istio_Workload_IPFamilies.dual, IPFamilies.dual), (.ipv6Only, .ipv6)] {
            plain.ipFamilies = families
            #expect(try WorkloadAPI.service(plain, name: "/h.example").ipFamilies == expected)
        }
        var lb = Istio_Workload_LoadBalancing()
        for (mode, expected) in [
            (Istio_Workload_LoadBalancing.Mode.unspecifiedMode, LoadBalancer.Mode.standard), (.strict, .strict),
            (.passthrough, .passthrough),
        ] {
            lb.mode = mode
            plain.loadBalancing = lb
            #expect(try WorkloadAPI.service(plain, name: "/h.example").loadBalancer?.mode == expected)
        }
    }

    @Test("every Authorization field maps onto the model; principals drop spiffe://, service accounts become ns/sa")
    func authorizationFields() throws {
        let policy = try WorkloadAPI.authorization(fullAuthorization(), name: "default/allow-echo")
        var match = PolicyMatch()
        match.namespaces = [.exact("default")]
        match.notNamespaces = [.prefix("kube-")]
        match.principals = [.exact("cluster.local/ns/default/sa/client"), .suffix("/sa/admin")]
        match.notPrincipals = [.presence]
        match.serviceAccounts = [.exact("default/client")]
        match.notServiceAccounts = [.exact("default/other")]
        match.sourceIPs = [CIDR("10.0.0.0/8")!]
        match.notSourceIPs = [CIDR("10.1.0.0/16")!]
        match.destinationIPs = [CIDR("fd00::/8")!]
        match.notDestinationIPs = [CIDR("10.0.0.5/32")!]
        match.destinationPorts = [8080]
        match.notDestinationPorts = [9090]
        let expected = AuthorizationPolicy(
            name: "allow-echo", namespace: "default", scope: .workloadSelector([:]), action: .deny, dryRun: true,
            rules: [[[match, PolicyMatch()]], []])
        #expect(policy == expected)
        var other = fullAuthorization()
        other.scope = .global
        other.action = .allow
        #expect(try WorkloadAPI.authorization(other, name: "default/allow-echo").scope == .global)
        #expect(try WorkloadAPI.authorization(other, name: "default/allow-echo").action == .allow)
        other.scope = .namespace
        #expect(try WorkloadAPI.authorization(other, name: "default/allow-echo").scope == .namespace)
    }

    @Test("the same content as a local-config file gives the same model")
    func sameModelAsLocalConfig() throws {
        let yaml = """
            workloads:
            - uid: cluster1//v1/Pod/default/echo
              name: echo
              namespace: default
              serviceAccount: echo-sa
              trustDomain: td.example
              workloadIps: ["10.0.0.5", "fd00::5"]
              protocol: HBONE
              node: node-a
              network: net1
              networkMode: HostNetwork
              waypoint: {destination: "net1/10.0.0.9", hboneMtlsPort: 15008}
              networkGateway: {destination: "istio-system/eastwest.istio-system.svc.cluster.local", hboneMtlsPort: 15009}
              status: Unhealthy
              capacity: 7
              services: {"default/echo.default.svc.cluster.local": {80: 8080, 443: 0}}
              canonicalName: echo
              canonicalRevision: v1
              workloadName: echo-deploy
              workloadType: pod
              clusterId: cluster1
              hostname: echo.example.com
              locality: {region: r1, zone: z1, subzone: s1}
              authorizationPolicies: ["default/allow-echo"]
              nativeTunnel: true
              applicationTunnel: {protocol: PROXY, port: 15088}
            - uid: u-defaults
              name: plain
              namespace: default
              workloadIps: ["10.0.0.6"]
            services:
            - name: echo
              namespace: default
              hostname: echo.default.svc.cluster.local
              vips: ["/10.96.0.10", "net1/fd00::10"]
              cidrVips: [{network: "", cidr: 10.97.0.0/16}]
              ports: {80: 8080, 443: 0}
              subjectAltNames: ["spiffe://cluster.local/ns/default/sa/echo"]
              waypoint: {destination: "default/waypoint.default.svc.cluster.local"}
              weightedWaypoints: [{destination: {destination: "/10.0.0.9", hboneMtlsPort: 15008}, weight: 90}]
              loadBalancer: {routingPreferences: [Network, Region, Zone, Subzone, Node, Cluster], mode: Failover, healthPolicy: AllowAll}
              ipFamilies: IPv4
              canonical: true
              visibility: Namespace
            policies:
            - name: allow-echo
              namespace: default
              scope: WorkloadSelector
              action: Deny
              dryRun: true
              rules:
              - - - namespaces: [{Exact: default}]
                    notNamespaces: [{Prefix: kube-}]
                    principals: [{Exact: "spiffe://cluster.local/ns/default/sa/client"}, {Suffix: /sa/admin}]
                    notPrincipals: [Presence]
                    serviceAccounts: [{namespace: default, serviceAccount: client}]
                    notServiceAccounts: [{namespace: default, serviceAccount: other}]
                    sourceIps: [10.0.0.0/8]
                    notSourceIps: [10.1.0.0/16]
                    destinationIps: ["fd00::/8"]
                    notDestinationIps: [10.0.0.5/32]
                    destinationPorts: [8080]
                    notDestinationPorts: [9090]
                  - {}
              - []
            """
        let local = try LocalMeshFile.parse(yaml: yaml, file: "mesh.yaml")
        var plain = Istio_Workload_Workload()
        plain.uid = "u-defaults"
        plain.name = "plain"
        plain.namespace = "default"
        plain.addresses = [ipBytes("10.0.0.6")]
        #expect(try WorkloadAPI.workload(fullWorkload(), name: "w") == local.workloads["cluster1//v1/Pod/default/echo"])
        #expect(try WorkloadAPI.workload(plain, name: "u-defaults") == local.workloads["u-defaults"])
        let key = NamespacedHostname(namespace: "default", hostname: "echo.default.svc.cluster.local")
        #expect(try WorkloadAPI.service(fullService(), name: "s") == local.services[key])
        #expect(try WorkloadAPI.authorization(fullAuthorization(), name: "p") == local.policies["default/allow-echo"])
    }

    @Test("bad workloads are rejected naming the resource, the field and why")
    func badWorkloads() {
        let name = "c//v1/Pod/default/bad"
        func check(
            _ change: (inout Istio_Workload_Workload) -> Void, field: String, reason: String,
            sourceLocation: SourceLocation = #_sourceLocation
        ) {
            var w = fullWorkload()
            change(&w)
            expectRejected(
                { () throws(XDSResourceError) in _ = try WorkloadAPI.workload(w, name: name) }, field: field,
                reasonContains: reason, sourceLocation: sourceLocation)
        }
        check(
            { $0.addresses.append(Data([1, 2, 3, 4, 5])) }, field: "workload.addresses[2]",
            reason: "4 or 16 bytes, got 5")
        check({ $0.uid = "" }, field: "workload.uid", reason: "must not be empty")
        check(
            { $0.services["no-slash"] = Istio_Workload_PortList() }, field: "workload.services[\"no-slash\"]",
            reason: "namespace/hostname")
        check({ $0.tunnelProtocol = .legacyIstioMtls }, field: "workload.tunnel_protocol", reason: "LEGACY_ISTIO_MTLS")
        check(
            { $0.tunnelProtocol = .UNRECOGNIZED(9) }, field: "workload.tunnel_protocol",
            reason: "unknown TunnelProtocol value 9")
        check({ $0.status = .UNRECOGNIZED(4) }, field: "workload.status", reason: "unknown WorkloadStatus value 4")
        check(
            { $0.networkMode = .UNRECOGNIZED(3) }, field: "workload.network_mode", reason: "unknown NetworkMode value 3"
        )
        check(
            { $0.waypoint = Istio_Workload_GatewayAddress() }, field: "workload.waypoint.destination",
            reason: "address or a hostname")
        check(
            { $0.waypoint.hboneMtlsPort = 70000 }, field: "workload.waypoint.hbone_mtls_port",
            reason: "70000 is not a port")
        check(
            { $0.networkGateway.address.address = Data([1]) }, field: "workload.network_gateway.address.address",
            reason: "got 1")
        check(
            { $0.applicationTunnel.protocol = .UNRECOGNIZED(5) }, field: "workload.application_tunnel.protocol",
            reason: "unknown")
        check(
            { $0.applicationTunnel.port = 65536 }, field: "workload.application_tunnel.port",
            reason: "65536 is not a port")
        check(
            { $0.authorizationPolicies = ["nopolicy"] }, field: "workload.authorization_policies[0]",
            reason: "namespace/name")
        check(
            { $0.services["default/echo.default.svc.cluster.local"]?.ports[0].targetPort = 99999 },
            field: "workload.services[\"default/echo.default.svc.cluster.local\"].ports[0].target_port", reason: "99999"
        )
    }

    @Test("bad services and addresses are rejected naming the field")
    func badServices() {
        let name = "default/echo.default.svc.cluster.local"
        func check(
            _ change: (inout Istio_Workload_Service) -> Void, field: String, reason: String,
            sourceLocation: SourceLocation = #_sourceLocation
        ) {
            var s = fullService()
            change(&s)
            var address = Istio_Workload_Address()
            address.service = s
            expectRejected(
                { () throws(XDSResourceError) in _ = try WorkloadAPI.address(address, name: name) }, field: field,
                reasonContains: reason, sourceLocation: sourceLocation)
        }
        check({ $0.hostname = "" }, field: "service.hostname", reason: "must not be empty")
        check({ $0.addresses[0].address = Data(count: 5) }, field: "service.addresses[0].address", reason: "got 5")
        check(
            { $0.addresses[2].length = 33 }, field: "service.addresses[2].length",
            reason: "longer than the 32-bit address")
        check({ $0.ports = portList([(0, 80)]) }, field: "service.ports[0].service_port", reason: "0 is not a port")
        check({ $0.ports = portList([(80, 80), (65536, 1)]) }, field: "service.ports[1].service_port", reason: "65536")
        check({ $0.ipFamilies = .UNRECOGNIZED(8) }, field: "service.ip_families", reason: "unknown IPFamilies value 8")
        check({ $0.visibility = .UNRECOGNIZED(2) }, field: "service.visibility", reason: "unknown")
        check(
            { $0.loadBalancing.routingPreference = [.zone, .unspecifiedScope] },
            field: "service.load_balancing.routing_preference[1]", reason: "UNSPECIFIED_SCOPE")
        check(
            { $0.loadBalancing.routingPreference = [.UNRECOGNIZED(12)] },
            field: "service.load_balancing.routing_preference[0]", reason: "unknown")
        check({ $0.loadBalancing.mode = .UNRECOGNIZED(12) }, field: "service.load_balancing.mode", reason: "unknown")
        check(
            { $0.loadBalancing.healthPolicy = .UNRECOGNIZED(12) }, field: "service.load_balancing.health_policy",
            reason: "unknown")
        check(
            { $0.weightedWaypoints[0].clearDestination() }, field: "service.weighted_waypoints[0].destination",
            reason: "must be set")
        check(
            { $0.waypoint.hostname.hostname = "" }, field: "service.waypoint.hostname.hostname",
            reason: "must not be empty")
        expectRejected(
            { () throws(XDSResourceError) in _ = try WorkloadAPI.address(Istio_Workload_Address(), name: "x") },
            field: "", reasonContains: "neither workload nor service")
    }

    @Test("bad policies are rejected naming the field")
    func badPolicies() {
        func check(
            _ change: (inout Istio_Security_Authorization) -> Void, field: String, reason: String,
            sourceLocation: SourceLocation = #_sourceLocation
        ) {
            var a = fullAuthorization()
            change(&a)
            expectRejected(
                { () throws(XDSResourceError) in _ = try WorkloadAPI.authorization(a, name: "default/allow-echo") },
                field: field, reasonContains: reason, sourceLocation: sourceLocation)
        }
        let at = "rules[0].clauses[0].matches[0]"
        check({ $0.name = "" }, field: "name", reason: "must not be empty")
        check({ $0.namespace = "" }, field: "namespace", reason: "must not be empty")
        check({ $0.scope = .UNRECOGNIZED(3) }, field: "scope", reason: "unknown Scope value 3")
        check({ $0.action = .UNRECOGNIZED(2) }, field: "action", reason: "unknown Action value 2")
        check(
            { $0.rules[0].clauses[0].matches[0].principals.append(Istio_Security_StringMatch()) },
            field: "\(at).principals[2]", reason: "no exact, prefix")
        check(
            { $0.rules[0].clauses[0].matches[0].sourceIps[0].address = Data(count: 3) },
            field: "\(at).source_ips[0].address", reason: "got 3")
        check(
            { $0.rules[0].clauses[0].matches[0].notDestinationIps[0].length = 40 },
            field: "\(at).not_destination_ips[0].length", reason: "longer")
        check(
            { $0.rules[0].clauses[0].matches[0].destinationPorts = [65536] }, field: "\(at).destination_ports[0]",
            reason: "65536")
    }

    @Test("undecodable resources, wrong types and missing bodies are rejected")
    func undecodable() {
        var garbage = Envoy_Service_Discovery_V3_Resource()
        garbage.name = "garbage"
        garbage.resource = Google_Protobuf_Any()
        garbage.resource.typeURL = WorkloadAPI.addressTypeURL
        garbage.resource.value = Data([0xff, 0xff, 0xff])
        expectRejected(
            { () throws(XDSResourceError) in _ = try WorkloadAPI.address(from: garbage) }, field: "",
            reasonContains: "cannot decode istio.workload.Address")
        let wrongType = resource("p", fullAuthorization())
        expectRejected(
            { () throws(XDSResourceError) in _ = try WorkloadAPI.address(from: wrongType) }, field: "resource",
            reasonContains:
                "expected a type.googleapis.com/istio.workload.Address, got a type.googleapis.com/istio.security.Authorization"
        )
        var empty = Envoy_Service_Discovery_V3_Resource()
        empty.name = "empty"
        expectRejected(
            { () throws(XDSResourceError) in _ = try WorkloadAPI.authorization(from: empty) }, field: "resource",
            reasonContains: "no resource body")
        let error = XDSResourceError(resource: "r", field: "f", reason: "why")
        #expect(error.description == "r: f: why")
    }
}
