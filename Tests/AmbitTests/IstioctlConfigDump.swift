import Foundation

// Swift mirrors of the Go structs `istioctl ztunnel-config` decodes a ztunnel config dump
// into (istio/istio `istioctl/pkg/writer/ztunnel/configdump/api.go` and the `rawDump` of
// `configdump.go`): the same JSON keys (the Go json tags) and value types, decoded
// strictly so that a dump istioctl would misread fails here:
//
// - a key that is neither a Go field nor a field ztunnel itself writes and istioctl
//   ignores (listed per type as `ztunnelOnly`) nor one of Ambit's added keys (`ambitOnly`)
//   is an error;
// - a Go field without `omitempty` is required, unless ztunnel too leaves it out when it
//   has its default (noted per field: istioctl then sees Go's zero value, as it does for
//   ztunnel);
// - an absent key decodes to Go's zero value ("", false, an empty list or map), so two
//   dumps istioctl reads alike compare equal; only Go pointers (`*GatewayAddress`,
//   `*LoadBalancer`, `*uint16`) stay optional.
//
// `workloads`, `services`, `policies` and `certificates` may be lists or maps (istioctl's
// `unmarshalListOrMap`); ztunnel and Ambit write lists.

/// A coding key for any name, to list every key an object has.
struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ name: String) { stringValue = name }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
}

struct StrictDecodingError: Error, CustomStringConvertible {
    var description: String
}

/// A mirrored Go struct: its json tags, and the keys it tolerates besides them.
protocol IstioctlStruct: Decodable, Equatable {
    associatedtype Keys: CodingKey & CaseIterable & RawRepresentable where Keys.RawValue == String
    /// Keys ztunnel writes that istioctl's struct does not have.
    static var ztunnelOnly: Set<String> { get }
    /// Keys Ambit adds.
    static var ambitOnly: Set<String> { get }
}

extension IstioctlStruct {
    static var ztunnelOnly: Set<String> { [] }
    static var ambitOnly: Set<String> { [] }

    /// Opens the object, failing on any key the Go struct, ztunnel and Ambit do not have.
    static func strictContainer(_ decoder: any Decoder) throws -> KeyedDecodingContainer<Keys> {
        let all = try decoder.container(keyedBy: AnyKey.self)
        let allowed = Set(Keys.allCases.map(\.rawValue)).union(ztunnelOnly).union(ambitOnly)
        let unknown = all.allKeys.map(\.stringValue).filter { !allowed.contains($0) }.sorted()
        guard unknown.isEmpty else {
            let path = decoder.codingPath.map(\.stringValue).joined(separator: ".")
            throw StrictDecodingError(description: "\(Self.self) at \(path): unknown keys \(unknown)")
        }
        return try decoder.container(keyedBy: Keys.self)
    }
}

/// A list, or a map whose values are the elements (istioctl's `unmarshalListOrMap`).
struct ListOrMap<Element: Decodable & Equatable>: Decodable, Equatable {
    var elements: [Element]

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        do {
            elements = try container.decode([Element].self)
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.count == decoder.codingPath.count {
            // Not a list at all: a map.
            elements = try container.decode([String: Element].self).sorted { $0.key < $1.key }.map(\.value)
        }
    }
}

/// `Locality`: every field `omitempty`.
struct IstioctlLocality: IstioctlStruct {
    var region = "", zone = "", subzone = ""
    enum Keys: String, CodingKey, CaseIterable { case region, zone, subzone }
    init() {}
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        region = try c.decodeIfPresent(String.self, forKey: .region) ?? ""
        zone = try c.decodeIfPresent(String.self, forKey: .zone) ?? ""
        subzone = try c.decodeIfPresent(String.self, forKey: .subzone) ?? ""
    }
}

/// `GatewayAddress`.
struct IstioctlGatewayAddress: IstioctlStruct {
    var destination: String
    enum Keys: String, CodingKey, CaseIterable { case destination }
    static var ztunnelOnly: Set<String> { ["hboneMtlsPort"] }
    init(from decoder: any Decoder) throws {
        destination = try Self.strictContainer(decoder).decode(String.self, forKey: .destination)
    }
}

/// `ApplicationTunnel`.
struct IstioctlApplicationTunnel: IstioctlStruct {
    var `protocol` = ""
    var port: UInt16?
    enum Keys: String, CodingKey, CaseIterable { case `protocol`, port }
    init() {}
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        `protocol` = try c.decode(String.self, forKey: .protocol)
        port = try c.decodeIfPresent(UInt16.self, forKey: .port)
    }
}

/// `ZtunnelWorkload`.
struct IstioctlWorkload: IstioctlStruct {
    var uid: String
    var workloadIps: [String]
    var waypoint: IstioctlGatewayAddress?
    var networkGateway: IstioctlGatewayAddress?
    var `protocol`: String
    var name: String
    var namespace: String
    var serviceAccount: String  // required in Go; ztunnel leaves it out when empty
    var workloadName: String  // ditto
    var workloadType: String  // ditto (Ambit does not keep it)
    var canonicalName: String  // ditto
    var canonicalRevision: String  // ditto
    var clusterId: String
    var trustDomain: String
    var locality: IstioctlLocality
    var node: String  // required in Go; ztunnel leaves it out when empty
    var network: String
    var status: String
    var hostname: String  // required in Go; ztunnel leaves it out when empty
    var capacity: UInt32
    var applicationTunnel: IstioctlApplicationTunnel
    var authorizationPolicies: [String]

    enum Keys: String, CodingKey, CaseIterable {
        case uid, workloadIps, waypoint, networkGateway, `protocol`, name, namespace, serviceAccount, workloadName
        case workloadType, canonicalName, canonicalRevision, clusterId, trustDomain, locality, node, network, status
        case hostname, capacity, applicationTunnel, authorizationPolicies
    }
    static var ztunnelOnly: Set<String> { ["networkMode", "nativeTunnel", "services"] }
    static var ambitOnly: Set<String> { ["labels", "netns", "origin"] }

    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        uid = try c.decode(String.self, forKey: .uid)
        workloadIps = try c.decode([String].self, forKey: .workloadIps)
        waypoint = try c.decodeIfPresent(IstioctlGatewayAddress.self, forKey: .waypoint)
        networkGateway = try c.decodeIfPresent(IstioctlGatewayAddress.self, forKey: .networkGateway)
        `protocol` = try c.decode(String.self, forKey: .protocol)
        name = try c.decode(String.self, forKey: .name)
        namespace = try c.decode(String.self, forKey: .namespace)
        serviceAccount = try c.decodeIfPresent(String.self, forKey: .serviceAccount) ?? ""
        workloadName = try c.decodeIfPresent(String.self, forKey: .workloadName) ?? ""
        workloadType = try c.decodeIfPresent(String.self, forKey: .workloadType) ?? ""
        canonicalName = try c.decodeIfPresent(String.self, forKey: .canonicalName) ?? ""
        canonicalRevision = try c.decodeIfPresent(String.self, forKey: .canonicalRevision) ?? ""
        clusterId = try c.decode(String.self, forKey: .clusterId)
        trustDomain = try c.decodeIfPresent(String.self, forKey: .trustDomain) ?? ""
        locality = try c.decodeIfPresent(IstioctlLocality.self, forKey: .locality) ?? IstioctlLocality()
        node = try c.decodeIfPresent(String.self, forKey: .node) ?? ""
        network = try c.decodeIfPresent(String.self, forKey: .network) ?? ""
        status = try c.decode(String.self, forKey: .status)
        hostname = try c.decodeIfPresent(String.self, forKey: .hostname) ?? ""
        capacity = try c.decode(UInt32.self, forKey: .capacity)
        applicationTunnel =
            try c.decodeIfPresent(IstioctlApplicationTunnel.self, forKey: .applicationTunnel) ?? IstioctlApplicationTunnel()
        authorizationPolicies = try c.decodeIfPresent([String].self, forKey: .authorizationPolicies) ?? []
    }
}

/// `LoadBalancer`.
struct IstioctlLoadBalancer: IstioctlStruct {
    var mode: String
    var routingPreferences: [String]
    var healthPolicy: String
    enum Keys: String, CodingKey, CaseIterable { case mode, routingPreferences, healthPolicy }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        mode = try c.decode(String.self, forKey: .mode)
        routingPreferences = try c.decode([String].self, forKey: .routingPreferences)
        healthPolicy = try c.decode(String.self, forKey: .healthPolicy)
    }
}

/// `ZtunnelEndpoint`: the `port` map is `map[uint16]uint16`, so its keys must be numbers.
struct IstioctlEndpoint: IstioctlStruct {
    var workloadUid: String
    var service: String  // required in Go; ztunnel does not write it
    var address: String
    var port: [UInt16: UInt16]
    enum Keys: String, CodingKey, CaseIterable { case workloadUid, service, address, port }
    static var ztunnelOnly: Set<String> { ["status"] }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        workloadUid = try c.decode(String.self, forKey: .workloadUid)
        service = try c.decodeIfPresent(String.self, forKey: .service) ?? ""
        address = try c.decodeIfPresent(String.self, forKey: .address) ?? ""
        port = try Self.numericMap(c.decode([String: UInt16].self, forKey: .port), in: c)
    }

    static func numericMap(_ raw: [String: UInt16], in c: KeyedDecodingContainer<Keys>) throws -> [UInt16: UInt16] {
        var map: [UInt16: UInt16] = [:]
        for (key, value) in raw {
            guard let port = UInt16(key) else {
                throw DecodingError.dataCorruptedError(forKey: .port, in: c, debugDescription: "port key \(key) is not a uint16")
            }
            map[port] = value
        }
        return map
    }
}

/// `CIDRVIP`: `{"cidr", "network"}` or `"network/cidr"`.
struct IstioctlCIDRVIP: Decodable, Equatable {
    var cidr: String
    var network: String
    enum Keys: String, CodingKey, CaseIterable { case cidr, network }
    init(from decoder: any Decoder) throws {
        if let text = try? decoder.singleValueContainer().decode(String.self) {
            guard let slash = text.firstIndex(of: "/") else { throw StrictDecodingError(description: "invalid cidrVip \(text)") }
            network = String(text[..<slash])
            cidr = String(text[text.index(after: slash)...])
            return
        }
        let all = try decoder.container(keyedBy: AnyKey.self)
        guard Set(all.allKeys.map(\.stringValue)).isSubset(of: ["cidr", "network"]) else {
            throw StrictDecodingError(description: "cidrVip: unknown keys \(all.allKeys.map(\.stringValue))")
        }
        let c = try decoder.container(keyedBy: Keys.self)
        cidr = try c.decode(String.self, forKey: .cidr)
        network = try c.decodeIfPresent(String.self, forKey: .network) ?? ""
    }
}

/// `ZtunnelService`: `ports` is `map[string]int`; `endpoints` by workload uid.
struct IstioctlService: IstioctlStruct {
    var name, namespace, hostname: String
    var vips: [String]
    var cidrVips: [IstioctlCIDRVIP]
    var ports: [String: Int]
    var loadBalancer: IstioctlLoadBalancer?
    var waypoint: IstioctlGatewayAddress?
    var endpoints: [String: IstioctlEndpoint]
    var subjectAltNames: [String]
    var ipFamilies: String  // required in Go; ztunnel leaves it out when automatic
    var canonical: Bool
    var visibility: String
    enum Keys: String, CodingKey, CaseIterable {
        case name, namespace, hostname, vips, cidrVips, ports, loadBalancer, waypoint, endpoints, subjectAltNames
        case ipFamilies, canonical, visibility
    }
    static var ztunnelOnly: Set<String> { ["weightedWaypoints"] }
    static var ambitOnly: Set<String> { ["origin"] }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        name = try c.decode(String.self, forKey: .name)
        namespace = try c.decode(String.self, forKey: .namespace)
        hostname = try c.decode(String.self, forKey: .hostname)
        vips = try c.decode([String].self, forKey: .vips)
        cidrVips = try c.decodeIfPresent([IstioctlCIDRVIP].self, forKey: .cidrVips) ?? []
        ports = try c.decode([String: Int].self, forKey: .ports)
        loadBalancer = try c.decodeIfPresent(IstioctlLoadBalancer.self, forKey: .loadBalancer)
        waypoint = try c.decodeIfPresent(IstioctlGatewayAddress.self, forKey: .waypoint)
        endpoints = try c.decode([String: IstioctlEndpoint].self, forKey: .endpoints)
        subjectAltNames = try c.decodeIfPresent([String].self, forKey: .subjectAltNames) ?? []
        ipFamilies = try c.decodeIfPresent(String.self, forKey: .ipFamilies) ?? ""
        canonical = try c.decodeIfPresent(Bool.self, forKey: .canonical) ?? false
        visibility = try c.decodeIfPresent(String.self, forKey: .visibility) ?? ""
    }
}

/// `StringMatch`: one of `Exact`, `Suffix`, `Prefix`, `Presence` (any value).
struct IstioctlStringMatch: IstioctlStruct {
    var exact = "", suffix = "", prefix = ""
    var presence = false
    enum Keys: String, CodingKey, CaseIterable {
        case exact = "Exact", suffix = "Suffix", prefix = "Prefix", presence = "Presence"
    }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        exact = try c.decodeIfPresent(String.self, forKey: .exact) ?? ""
        suffix = try c.decodeIfPresent(String.self, forKey: .suffix) ?? ""
        prefix = try c.decodeIfPresent(String.self, forKey: .prefix) ?? ""
        presence = c.contains(.presence)
    }
}

/// `ServiceAccountMatch`.
struct IstioctlServiceAccountMatch: IstioctlStruct {
    var namespace, serviceAccount: String
    enum Keys: String, CodingKey, CaseIterable { case namespace, serviceAccount }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        namespace = try c.decode(String.self, forKey: .namespace)
        serviceAccount = try c.decode(String.self, forKey: .serviceAccount)
    }
}

/// `PolicyMatch`: every field `omitempty`.
struct IstioctlPolicyMatch: IstioctlStruct {
    var namespaces, notNamespaces, principals, notPrincipals: [IstioctlStringMatch]
    var sourceIps, notSourceIps, destinationIps, notDestinationIps: [String]
    var destinationPorts, notDestinationPorts: [UInt16]
    var serviceAccounts, notServiceAccounts: [IstioctlServiceAccountMatch]
    enum Keys: String, CodingKey, CaseIterable {
        case namespaces, notNamespaces, principals, notPrincipals, sourceIps, notSourceIps, destinationIps
        case notDestinationIps, destinationPorts, notDestinationPorts, serviceAccounts, notServiceAccounts
    }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        namespaces = try c.decodeIfPresent([IstioctlStringMatch].self, forKey: .namespaces) ?? []
        notNamespaces = try c.decodeIfPresent([IstioctlStringMatch].self, forKey: .notNamespaces) ?? []
        principals = try c.decodeIfPresent([IstioctlStringMatch].self, forKey: .principals) ?? []
        notPrincipals = try c.decodeIfPresent([IstioctlStringMatch].self, forKey: .notPrincipals) ?? []
        sourceIps = try c.decodeIfPresent([String].self, forKey: .sourceIps) ?? []
        notSourceIps = try c.decodeIfPresent([String].self, forKey: .notSourceIps) ?? []
        destinationIps = try c.decodeIfPresent([String].self, forKey: .destinationIps) ?? []
        notDestinationIps = try c.decodeIfPresent([String].self, forKey: .notDestinationIps) ?? []
        destinationPorts = try c.decodeIfPresent([UInt16].self, forKey: .destinationPorts) ?? []
        notDestinationPorts = try c.decodeIfPresent([UInt16].self, forKey: .notDestinationPorts) ?? []
        serviceAccounts = try c.decodeIfPresent([IstioctlServiceAccountMatch].self, forKey: .serviceAccounts) ?? []
        notServiceAccounts = try c.decodeIfPresent([IstioctlServiceAccountMatch].self, forKey: .notServiceAccounts) ?? []
    }
}

/// `ZtunnelPolicy`: rules → clauses → matches.
struct IstioctlPolicy: IstioctlStruct {
    var name, namespace, scope, action: String
    var rules: [[[IstioctlPolicyMatch]]]
    enum Keys: String, CodingKey, CaseIterable { case name, namespace, scope, action, rules }
    static var ztunnelOnly: Set<String> { ["dryRun"] }
    static var ambitOnly: Set<String> { ["selector"] }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        name = try c.decode(String.self, forKey: .name)
        namespace = try c.decode(String.self, forKey: .namespace)
        scope = try c.decode(String.self, forKey: .scope)
        action = try c.decode(String.self, forKey: .action)
        rules = try c.decode([[[IstioctlPolicyMatch]]].self, forKey: .rules)
    }
}

/// `Cert`.
struct IstioctlCert: IstioctlStruct {
    var pem, serialNumber, validFrom, expirationTime: String
    enum Keys: String, CodingKey, CaseIterable { case pem, serialNumber, validFrom, expirationTime }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        pem = try c.decode(String.self, forKey: .pem)
        serialNumber = try c.decode(String.self, forKey: .serialNumber)
        validFrom = try c.decode(String.self, forKey: .validFrom)
        expirationTime = try c.decode(String.self, forKey: .expirationTime)
    }
}

/// `CertsDump`.
struct IstioctlCertsDump: IstioctlStruct {
    var identity, state: String
    var certChain: [IstioctlCert]
    var rootCerts: [IstioctlCert]
    enum Keys: String, CodingKey, CaseIterable { case identity, state, certChain, rootCerts }
    static var ambitOnly: Set<String> { ["fetchState", "priority", "failures", "lastError"] }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        identity = try c.decode(String.self, forKey: .identity)
        state = try c.decode(String.self, forKey: .state)
        certChain = try c.decode([IstioctlCert].self, forKey: .certChain)
        rootCerts = try c.decode([IstioctlCert].self, forKey: .rootCerts)
    }
}

/// `InboundConnection` / `OutboundConnection` (the same fields). ztunnel writes an
/// inbound `originalDst` it does not know as `null`, which Go reads as "".
struct IstioctlConnection: IstioctlStruct {
    var src: String
    var originalDst: String
    var actualDst: String
    var `protocol`: String
    enum Keys: String, CodingKey, CaseIterable { case src, originalDst, actualDst, `protocol` }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        src = try c.decode(String.self, forKey: .src)
        guard c.contains(.originalDst) else {
            throw DecodingError.keyNotFound(Keys.originalDst, .init(codingPath: c.codingPath, debugDescription: "missing"))
        }
        originalDst = try c.decodeIfPresent(String.self, forKey: .originalDst) ?? ""
        actualDst = try c.decode(String.self, forKey: .actualDst)
        `protocol` = try c.decode(String.self, forKey: .protocol)
    }
}

/// `WorkloadConnections`.
struct IstioctlWorkloadConnections: IstioctlStruct {
    var inbound: [IstioctlConnection] = [], outbound: [IstioctlConnection] = []
    enum Keys: String, CodingKey, CaseIterable { case inbound, outbound }
    init() {}
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        inbound = try c.decode([IstioctlConnection].self, forKey: .inbound)
        outbound = try c.decode([IstioctlConnection].self, forKey: .outbound)
    }
}

/// `WorkloadInfo`.
struct IstioctlWorkloadInfo: IstioctlStruct {
    var name, namespace, trustDomain, serviceAccount: String
    enum Keys: String, CodingKey, CaseIterable { case name, namespace, trustDomain, serviceAccount }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        name = try c.decode(String.self, forKey: .name)
        namespace = try c.decode(String.self, forKey: .namespace)
        trustDomain = try c.decode(String.self, forKey: .trustDomain)
        serviceAccount = try c.decode(String.self, forKey: .serviceAccount)
    }
}

/// `WorkloadState`.
struct IstioctlWorkloadState: IstioctlStruct {
    var state: String
    var connections: IstioctlWorkloadConnections
    var info: IstioctlWorkloadInfo
    enum Keys: String, CodingKey, CaseIterable { case state, connections, info }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        state = try c.decodeIfPresent(String.self, forKey: .state) ?? ""
        connections =
            try c.decodeIfPresent(IstioctlWorkloadConnections.self, forKey: .connections) ?? IstioctlWorkloadConnections()
        info = try c.decode(IstioctlWorkloadInfo.self, forKey: .info)
    }
}

/// `ZtunnelDump`, read as `rawDump` reads it (Go matches `workloadstate` to ztunnel's
/// `workloadState` case-insensitively; the exact spelling is required here).
struct IstioctlDump: IstioctlStruct {
    var workloads: ListOrMap<IstioctlWorkload>
    var services: ListOrMap<IstioctlService>
    var policies: ListOrMap<IstioctlPolicy>
    var certificates: ListOrMap<IstioctlCertsDump>
    var workloadState: [String: IstioctlWorkloadState]
    enum Keys: String, CodingKey, CaseIterable { case workloads, services, policies, certificates, workloadState }
    static var ztunnelOnly: Set<String> { ["stagedServices", "staticConfig", "config", "version"] }
    static var ambitOnly: Set<String> {
        ["node", "meshVersion", "meshOrigins", "meshConflicts", "plugins", "connections"]
    }
    init(from decoder: any Decoder) throws {
        let c = try Self.strictContainer(decoder)
        workloads = try c.decode(ListOrMap<IstioctlWorkload>.self, forKey: .workloads)
        services = try c.decode(ListOrMap<IstioctlService>.self, forKey: .services)
        policies = try c.decode(ListOrMap<IstioctlPolicy>.self, forKey: .policies)
        certificates = try c.decode(ListOrMap<IstioctlCertsDump>.self, forKey: .certificates)
        workloadState = try c.decode([String: IstioctlWorkloadState].self, forKey: .workloadState)
    }
}
