/// How a workload receives mesh traffic.
public enum TunnelProtocol: String, Sendable, Hashable, Codable {
    /// Plain TCP: the workload is not in the mesh (or cannot terminate HBONE).
    case tcp = "TCP"
    /// HBONE: mTLS HTTP/2 CONNECT to port 15008 of the workload's address.
    case hbone = "HBONE"
}

/// Whether a workload may receive new connections.
public enum HealthStatus: String, Sendable, Hashable, Codable {
    /// Eligible as a service endpoint.
    case healthy = "Healthy"
    /// Never picked as a service endpoint.
    case unhealthy = "Unhealthy"
}

/// `namespace/hostname`: how workloads name the services they back and how a waypoint
/// may be named by hostname.
public struct NamespacedHostname: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    /// The service's namespace.
    public var namespace: String
    /// The service's hostname, e.g. `echo.default.svc.cluster.local`.
    public var hostname: String

    /// Creates a name from its parts.
    public init(namespace: String, hostname: String) {
        self.namespace = namespace
        self.hostname = hostname
    }

    /// Parses `namespace/hostname`; nil when there is no `/` or the hostname is empty. The
    /// namespace may be empty (`/example.com`), as ztunnel allows for hostnames that
    /// belong to no namespace.
    public init?(_ text: String) {
        guard let slash = text.firstIndex(of: "/") else { return nil }
        let namespace = String(text[..<slash])
        let hostname = String(text[text.index(after: slash)...])
        guard !hostname.isEmpty else { return nil }
        self.init(namespace: namespace, hostname: hostname)
    }

    public var description: String { "\(namespace)/\(hostname)" }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.description < rhs.description }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = NamespacedHostname(text) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "expected namespace/hostname, got \"\(text)\"")
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// An IP address within a named network: `network/ip` in config (`/10.0.0.1` for the
/// default network).
public struct NetworkAddress: Sendable, Hashable, CustomStringConvertible, Codable {
    /// The network name; empty for the default network.
    public var network: String
    /// The address.
    public var ip: IPAddress

    /// Creates an address from its parts.
    public init(network: String = "", ip: IPAddress) {
        self.network = network
        self.ip = ip
    }

    /// Parses `network/ip`, `/ip`, or a bare `ip` (default network).
    public init?(_ text: String) {
        if let slash = text.lastIndex(of: "/") {
            guard let ip = IPAddress(text[text.index(after: slash)...]) else { return nil }
            self.init(network: String(text[..<slash]), ip: ip)
        } else {
            guard let ip = IPAddress(text) else { return nil }
            self.init(ip: ip)
        }
    }

    public var description: String { "\(network)/\(ip)" }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = NetworkAddress(text) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "expected network/ip (e.g. \"/10.0.0.1\"), got \"\(text)\"")
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Where a waypoint (or network gateway) is reached: by address or by service hostname,
/// on its HBONE port.
public struct GatewayAddress: Sendable, Hashable, Codable {
    /// The two ways a gateway can be named.
    public enum Destination: Sendable, Hashable {
        /// A fixed address.
        case address(NetworkAddress)
        /// A service, resolved through the mesh's services.
        case hostname(NamespacedHostname)
    }

    /// The gateway itself.
    public var destination: Destination
    /// Its HBONE port, normally 15008.
    public var hboneMtlsPort: UInt16

    /// Creates a gateway address.
    public init(destination: Destination, hboneMtlsPort: UInt16 = 15008) {
        self.destination = destination
        self.hboneMtlsPort = hboneMtlsPort
    }

    private enum CodingKeys: String, CodingKey {
        case destination, hboneMtlsPort
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let text = try container.decode(String.self, forKey: .destination)
        if let address = NetworkAddress(text) {
            destination = .address(address)
        } else if let name = NamespacedHostname(text) {
            destination = .hostname(name)
        } else {
            throw DecodingError.dataCorruptedError(
                forKey: .destination, in: container,
                debugDescription: "expected network/ip or namespace/hostname, got \"\(text)\"")
        }
        hboneMtlsPort = try container.decodeIfPresent(UInt16.self, forKey: .hboneMtlsPort) ?? 15008
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch destination {
        case .address(let address): try container.encode(address.description, forKey: .destination)
        case .hostname(let name): try container.encode(name.description, forKey: .destination)
        }
        try container.encode(hboneMtlsPort, forKey: .hboneMtlsPort)
    }
}

/// Where a workload runs, for locality-aware load balancing and telemetry labels. Each part
/// is empty when unknown.
public struct Locality: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The region, e.g. `us-east1` (Kubernetes `topology.kubernetes.io/region`).
    public var region: String
    /// The zone within the region, e.g. `us-east1-b` (`topology.kubernetes.io/zone`).
    public var zone: String
    /// The subzone within the zone (Istio's `topology.istio.io/subzone`).
    public var subzone: String

    /// Creates a locality; parts left out are unknown.
    public init(region: String = "", zone: String = "", subzone: String = "") {
        self.region = region
        self.zone = zone
        self.subzone = subzone
    }

    /// Whether every part is unknown.
    public var isEmpty: Bool { region.isEmpty && zone.isEmpty && subzone.isEmpty }

    /// `region/zone/subzone`, Istio's written form.
    public var description: String { "\(region)/\(zone)/\(subzone)" }
}

/// How a workload's network namespace relates to its node's.
public enum NetworkMode: String, Sendable, Hashable, Codable {
    /// The workload has its own network namespace and addresses.
    case standard = "Standard"
    /// The workload shares the node's network namespace (`hostNetwork: true`): its
    /// addresses are the node's, shared with every other host-network workload there, so
    /// an address never identifies it and it is never looked up by IP.
    case hostNetwork = "HostNetwork"
}

/// How the proxy in front of a workload hands it the traffic it terminated, when the
/// workload wants more than the bare bytes (a sandwiched waypoint: the waypoint pod is
/// itself captured, and learns the original peer through a PROXY protocol header).
public struct ApplicationTunnel: Sendable, Hashable, Codable {
    /// What precedes the application's bytes.
    public enum Kind: String, Sendable, Hashable, Codable {
        /// Nothing: the bytes as they are (ztunnel's `NONE`).
        case plain = "NONE"
        /// A PROXY protocol v2 header naming the client, the target and the source identity
        /// (ztunnel's `PROXY`).
        case proxy = "PROXY"
    }

    /// What precedes the application's bytes.
    public var `protocol`: Kind
    /// The workload port that takes tunnelled traffic, overriding the target port; nil
    /// keeps the connection's own port.
    public var port: UInt16?

    /// Creates an application tunnel.
    public init(protocol: Kind, port: UInt16? = nil) {
        self.protocol = `protocol`
        self.port = port
    }
}

/// A workload (a pod, VM or other endpoint) as the node proxy sees it.
///
/// A value type whose fields live in one shared, copy-on-write box: the mesh keeps each
/// workload in several tables (every source's contribution and the snapshot in force,
/// each shard with spare capacity), and a slot holding a reference costs 8 bytes where
/// the fields in line would cost several hundred.
public struct Workload: Sendable, Hashable, Codable {
    /// The stored fields, compared, hashed and coded as the workload itself.
    struct Fields: Sendable, Hashable, Codable {
        var uid: String
        var name: String
        var namespace: String
        var serviceAccount: String
        var trustDomain: String
        var workloadIPs: [IPAddress]
        var tunnelProtocol: TunnelProtocol
        var node: String
        var network: String
        var waypoint: GatewayAddress?
        var status: HealthStatus
        var capacity: UInt32
        var services: [NamespacedHostname: [UInt16: UInt16]]
        var labels: [String: String]
        var canonicalName: String
        var canonicalRevision: String
        var workloadName: String
        var clusterID: String
        var netns: String?
        var authorizationPolicies: [String]
        var locality: Locality
        var networkMode: NetworkMode
        var applicationTunnel: ApplicationTunnel?
        var networkGateway: GatewayAddress?
        var hostname: String
    }

    /// The shared box; replaced by a copy before a write when another value shares it.
    final class Storage: @unchecked Sendable {
        // Never mutated once shared: writes go through `mutableFields`, which copies a
        // box that is not uniquely referenced.
        var fields: Fields
        init(_ fields: Fields) { self.fields = fields }
    }

    private var storage: Storage

    private var mutableFields: Fields {
        get { storage.fields }
        _modify {
            if !isKnownUniquelyReferenced(&storage) { storage = Storage(storage.fields) }
            yield &storage.fields
        }
    }

    public static func == (lhs: Workload, rhs: Workload) -> Bool {
        lhs.storage === rhs.storage || lhs.storage.fields == rhs.storage.fields
    }

    public func hash(into hasher: inout Hasher) { storage.fields.hash(into: &hasher) }

    /// Decodes a workload from the same keys its fields carry.
    public init(from decoder: any Decoder) throws { storage = Storage(try Fields(from: decoder)) }

    /// Encodes a workload as its fields.
    public func encode(to encoder: any Encoder) throws { try storage.fields.encode(to: encoder) }

    /// Unique id, e.g. `cluster1//v1/Pod/default/echo-7d9f`.
    public var uid: String {
        get { storage.fields.uid }
        set { mutableFields.uid = newValue }
    }
    /// Name (pod name).
    public var name: String {
        get { storage.fields.name }
        set { mutableFields.name = newValue }
    }
    /// Namespace.
    public var namespace: String {
        get { storage.fields.namespace }
        set { mutableFields.namespace = newValue }
    }
    /// Service account; with ``trustDomain`` and ``namespace`` forms the identity.
    public var serviceAccount: String {
        get { storage.fields.serviceAccount }
        set { mutableFields.serviceAccount = newValue }
    }
    /// SPIFFE trust domain.
    public var trustDomain: String {
        get { storage.fields.trustDomain }
        set { mutableFields.trustDomain = newValue }
    }
    /// The workload's addresses.
    public var workloadIPs: [IPAddress] {
        get { storage.fields.workloadIPs }
        set { mutableFields.workloadIPs = newValue }
    }
    /// Whether the workload takes HBONE (in mesh) or plain TCP.
    public var tunnelProtocol: TunnelProtocol {
        get { storage.fields.tunnelProtocol }
        set { mutableFields.tunnelProtocol = newValue }
    }
    /// The node the workload runs on.
    public var node: String {
        get { storage.fields.node }
        set { mutableFields.node = newValue }
    }
    /// Network name; empty for the default network.
    public var network: String {
        get { storage.fields.network }
        set { mutableFields.network = newValue }
    }
    /// The waypoint that serves this workload, if any.
    public var waypoint: GatewayAddress? {
        get { storage.fields.waypoint }
        set { mutableFields.waypoint = newValue }
    }
    /// Health; unhealthy workloads are never picked as service endpoints.
    public var status: HealthStatus {
        get { storage.fields.status }
        set { mutableFields.status = newValue }
    }
    /// Relative weight when picked as a service endpoint.
    public var capacity: UInt32 {
        get { storage.fields.capacity }
        set { mutableFields.capacity = newValue }
    }
    /// The services this workload backs: service → (service port → target port).
    public var services: [NamespacedHostname: [UInt16: UInt16]] {
        get { storage.fields.services }
        set { mutableFields.services = newValue }
    }
    /// Labels, matched by policy selectors.
    public var labels: [String: String] {
        get { storage.fields.labels }
        set { mutableFields.labels = newValue }
    }
    /// Canonical service name (telemetry); empty when unknown.
    public var canonicalName: String {
        get { storage.fields.canonicalName }
        set { mutableFields.canonicalName = newValue }
    }
    /// Canonical revision (telemetry); empty when unknown.
    public var canonicalRevision: String {
        get { storage.fields.canonicalRevision }
        set { mutableFields.canonicalRevision = newValue }
    }
    /// Owning workload name, e.g. the Deployment; empty when unknown.
    public var workloadName: String {
        get { storage.fields.workloadName }
        set { mutableFields.workloadName = newValue }
    }
    /// Cluster id.
    public var clusterID: String {
        get { storage.fields.clusterID }
        set { mutableFields.clusterID = newValue }
    }
    /// Path of the workload's network namespace on this node, for in-pod capture.
    public var netns: String? {
        get { storage.fields.netns }
        set { mutableFields.netns = newValue }
    }
    /// Keys (`namespace/name`) of the WorkloadSelector policies that apply to this
    /// workload, as the control plane lists them (ztunnel's `authorizationPolicies`).
    public var authorizationPolicies: [String] {
        get { storage.fields.authorizationPolicies }
        set { mutableFields.authorizationPolicies = newValue }
    }
    /// Where the workload runs (region, zone, subzone); empty parts when unknown.
    public var locality: Locality {
        get { storage.fields.locality }
        set { mutableFields.locality = newValue }
    }
    /// Whether the workload has its own network namespace; host-network workloads are
    /// never looked up by IP (their addresses are the node's).
    public var networkMode: NetworkMode {
        get { storage.fields.networkMode }
        set { mutableFields.networkMode = newValue }
    }
    /// How traffic terminated for this workload is handed to it; nil hands it the bare
    /// bytes.
    public var applicationTunnel: ApplicationTunnel? {
        get { storage.fields.applicationTunnel }
        set { mutableFields.applicationTunnel = newValue }
    }
    /// The gateway that reaches this workload from other networks (an east-west gateway),
    /// if any.
    public var networkGateway: GatewayAddress? {
        get { storage.fields.networkGateway }
        set { mutableFields.networkGateway = newValue }
    }
    /// The workload's DNS hostname, for workloads reached by name rather than address;
    /// empty when it has none.
    public var hostname: String {
        get { storage.fields.hostname }
        set { mutableFields.hostname = newValue }
    }

    /// Creates a workload; only the identifying fields are required.
    public init(
        uid: String, name: String, namespace: String, serviceAccount: String = "default",
        trustDomain: String = "cluster.local", workloadIPs: [IPAddress],
        tunnelProtocol: TunnelProtocol = .tcp, node: String = "", network: String = "",
        waypoint: GatewayAddress? = nil, status: HealthStatus = .healthy, capacity: UInt32 = 1,
        services: [NamespacedHostname: [UInt16: UInt16]] = [:], labels: [String: String] = [:],
        canonicalName: String = "", canonicalRevision: String = "", workloadName: String = "",
        clusterID: String = "Kubernetes", netns: String? = nil, authorizationPolicies: [String] = [],
        locality: Locality = Locality(), networkMode: NetworkMode = .standard,
        applicationTunnel: ApplicationTunnel? = nil, networkGateway: GatewayAddress? = nil, hostname: String = ""
    ) {
        storage = Storage(
            Fields(
                uid: uid,
                name: name,
                namespace: namespace,
                serviceAccount: serviceAccount,
                trustDomain: trustDomain,
                workloadIPs: workloadIPs,
                tunnelProtocol: tunnelProtocol,
                node: node,
                network: network,
                waypoint: waypoint,
                status: status,
                capacity: capacity,
                services: services,
                labels: labels,
                canonicalName: canonicalName,
                canonicalRevision: canonicalRevision,
                workloadName: workloadName,
                clusterID: clusterID,
                netns: netns,
                authorizationPolicies: authorizationPolicies,
                locality: locality,
                networkMode: networkMode,
                applicationTunnel: applicationTunnel,
                networkGateway: networkGateway,
                hostname: hostname
            ))
    }

    /// The workload's SPIFFE identity.
    public var identity: SpiffeID {
        SpiffeID(trustDomain: trustDomain, namespace: namespace, serviceAccount: serviceAccount)
    }
}

/// A block of addresses within a named network: `network/cidr`. A service with one answers
/// for every address in the block (ztunnel's `cidrVips`).
public struct NetworkCIDR: Sendable, Hashable, CustomStringConvertible, Codable {
    /// The network name; empty for the default network.
    public var network: String
    /// The block.
    public var cidr: CIDR

    /// Creates a block from its parts.
    public init(network: String = "", cidr: CIDR) {
        self.network = network
        self.cidr = cidr
    }

    public var description: String { "\(network)/\(cidr)" }
}

/// One of a service's waypoints with its share of new connections.
public struct WeightedWaypoint: Sendable, Hashable, Codable {
    /// The waypoint.
    public var destination: GatewayAddress
    /// Its relative weight; 0 describes the waypoint without sending it traffic.
    public var weight: UInt32

    /// Creates a weighted waypoint.
    public init(destination: GatewayAddress, weight: UInt32) {
        self.destination = destination
        self.weight = weight
    }
}

/// How a service's endpoint is chosen beyond health and weight (Istio's
/// `trafficDistribution`, `internalTrafficPolicy: Local`, ztunnel's `loadBalancer`).
public struct LoadBalancer: Sendable, Hashable, Codable {
    /// A property an endpoint may share with the client.
    public enum Scope: String, Sendable, Hashable, Codable {
        /// Same ``Locality/region``.
        case region = "Region"
        /// Same ``Locality/zone``.
        case zone = "Zone"
        /// Same ``Locality/subzone``.
        case subzone = "Subzone"
        /// Same node.
        case node = "Node"
        /// Same cluster.
        case cluster = "Cluster"
        /// Same network.
        case network = "Network"
    }

    /// How ``LoadBalancer/routingPreferences`` are applied.
    public enum Mode: String, Sendable, Hashable, Codable {
        /// Preferences are ignored: any eligible endpoint.
        case standard = "Standard"
        /// Only endpoints that share every preference with the client; none is a failure.
        case strict = "Strict"
        /// The endpoints that share the longest run of preferences (in order) with the
        /// client; the others only when none shares more.
        case failover = "Failover"
        /// No endpoint is chosen: the connection goes to the address the client asked for.
        case passthrough = "Passthrough"
    }

    /// Which endpoints are eligible at all.
    public enum HealthPolicy: String, Sendable, Hashable, Codable {
        /// Healthy endpoints only.
        case onlyHealthy = "OnlyHealthy"
        /// Unhealthy endpoints too.
        case allowAll = "AllowAll"
    }

    /// The properties to share with the client, most important first.
    public var routingPreferences: [Scope]
    /// How the preferences are applied.
    public var mode: Mode
    /// Which endpoints are eligible.
    public var healthPolicy: HealthPolicy

    /// Creates a load-balancing policy.
    public init(routingPreferences: [Scope] = [], mode: Mode = .standard, healthPolicy: HealthPolicy = .onlyHealthy) {
        self.routingPreferences = routingPreferences
        self.mode = mode
        self.healthPolicy = healthPolicy
    }
}

/// Which address families a service's endpoints are reached on.
public enum IPFamilies: String, Sendable, Hashable, Codable {
    /// IPv4 and IPv6: the endpoint address of the client's family, else any.
    case dual = "Dual"
    /// IPv4 endpoint addresses only.
    case ipv4 = "IPv4"
    /// IPv6 endpoint addresses only.
    case ipv6 = "IPv6"

    /// Whether an endpoint address of this family may be used.
    public func allows(_ ip: IPAddress) -> Bool {
        switch self {
        case .dual: true
        case .ipv4: ip.isIPv4
        case .ipv6: !ip.isIPv4
        }
    }
}

/// Which clients may address a service.
public enum ServiceVisibility: String, Sendable, Hashable, Codable {
    /// Every client.
    case everywhere = "Public"
    /// Only clients in the service's own namespace.
    case namespace = "Namespace"
}

/// A service: virtual IPs and a hostname in front of the workloads that back it.
public struct Service: Sendable, Hashable, Codable {
    /// Name.
    public var name: String
    /// Namespace.
    public var namespace: String
    /// Hostname, e.g. `echo.default.svc.cluster.local`; unique per namespace.
    public var hostname: String
    /// Virtual IPs.
    public var vips: [NetworkAddress]
    /// Service port → target port; a target of 0 means "same as the service port".
    public var ports: [UInt16: UInt16]
    /// Identities the service's endpoints may present, besides their own.
    public var subjectAltNames: [String]
    /// The waypoint that serves this service, if any.
    public var waypoint: GatewayAddress?
    /// Address blocks the service answers for besides its ``vips``; an exact VIP wins
    /// over a block.
    public var cidrVIPs: [NetworkCIDR]
    /// Waypoints sharing the service's connections by weight (a canary); empty uses
    /// ``waypoint``, which stays the primary.
    public var weightedWaypoints: [WeightedWaypoint]
    /// How an endpoint is chosen; nil: any eligible healthy endpoint, by weight.
    public var loadBalancer: LoadBalancer?
    /// Which endpoint address families may be used; nil: any, preferring the client's.
    public var ipFamilies: IPFamilies?
    /// Whether this is the service to prefer when services in several namespaces share
    /// a VIP or hostname (and none is in the client's namespace).
    public var canonical: Bool
    /// Which clients may address the service.
    public var visibility: ServiceVisibility

    /// Creates a service.
    public init(
        name: String, namespace: String, hostname: String, vips: [NetworkAddress],
        ports: [UInt16: UInt16], subjectAltNames: [String] = [], waypoint: GatewayAddress? = nil,
        cidrVIPs: [NetworkCIDR] = [], weightedWaypoints: [WeightedWaypoint] = [], loadBalancer: LoadBalancer? = nil,
        ipFamilies: IPFamilies? = nil, canonical: Bool = false, visibility: ServiceVisibility = .everywhere
    ) {
        self.name = name
        self.namespace = namespace
        self.hostname = hostname
        self.vips = vips
        self.ports = ports
        self.subjectAltNames = subjectAltNames
        self.waypoint = waypoint
        self.cidrVIPs = cidrVIPs
        self.weightedWaypoints = weightedWaypoints
        self.loadBalancer = loadBalancer
        self.ipFamilies = ipFamilies
        self.canonical = canonical
        self.visibility = visibility
    }

    /// Whether a client in `namespace` may address the service.
    public func isVisible(to namespace: String) -> Bool {
        visibility == .everywhere || namespace == self.namespace
    }

    /// `namespace/hostname`, the key workloads use in their ``Workload/services``.
    public var namespacedHostname: NamespacedHostname {
        NamespacedHostname(namespace: namespace, hostname: hostname)
    }

    /// The port `endpoint` takes this service's port `port` on (ztunnel's rule, one for the
    /// outbound choice, the inbound hostname authority and the reported service): the
    /// endpoint's own mapping when it is not 0, else the service's target port when it is
    /// not 0, else `port` itself. Nil when neither the endpoint nor the service declares
    /// `port`.
    public func targetPort(_ port: UInt16, on endpoint: Workload) -> UInt16? {
        let own = endpoint.services[namespacedHostname]?[port]
        let declared = ports[port]
        guard own != nil || declared != nil else { return nil }
        if let own, own != 0 { return own }
        if let declared, declared != 0 { return declared }
        return port
    }
}
