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

    /// Parses `namespace/hostname`; nil when there is no `/` or a part is empty.
    public init?(_ text: String) {
        guard let slash = text.firstIndex(of: "/") else { return nil }
        let namespace = String(text[..<slash])
        let hostname = String(text[text.index(after: slash)...])
        guard !namespace.isEmpty, !hostname.isEmpty else { return nil }
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

/// A workload (a pod, VM or other endpoint) as the node proxy sees it.
public struct Workload: Sendable, Hashable, Codable {
    /// Unique id, e.g. `cluster1//v1/Pod/default/echo-7d9f`.
    public var uid: String
    /// Name (pod name).
    public var name: String
    /// Namespace.
    public var namespace: String
    /// Service account; with ``trustDomain`` and ``namespace`` forms the identity.
    public var serviceAccount: String
    /// SPIFFE trust domain.
    public var trustDomain: String
    /// The workload's addresses.
    public var workloadIPs: [IPAddress]
    /// Whether the workload takes HBONE (in mesh) or plain TCP.
    public var tunnelProtocol: TunnelProtocol
    /// The node the workload runs on.
    public var node: String
    /// Network name; empty for the default network.
    public var network: String
    /// The waypoint that serves this workload, if any.
    public var waypoint: GatewayAddress?
    /// Health; unhealthy workloads are never picked as service endpoints.
    public var status: HealthStatus
    /// Relative weight when picked as a service endpoint.
    public var capacity: UInt32
    /// The services this workload backs: service → (service port → target port).
    public var services: [NamespacedHostname: [UInt16: UInt16]]
    /// Labels, matched by policy selectors.
    public var labels: [String: String]
    /// Canonical service name (telemetry); empty when unknown.
    public var canonicalName: String
    /// Canonical revision (telemetry); empty when unknown.
    public var canonicalRevision: String
    /// Owning workload name, e.g. the Deployment; empty when unknown.
    public var workloadName: String
    /// Cluster id.
    public var clusterID: String
    /// Path of the workload's network namespace on this node, for in-pod capture.
    public var netns: String?
    /// Keys (`namespace/name`) of the WorkloadSelector policies that apply to this
    /// workload, as the control plane lists them (ztunnel's `authorizationPolicies`).
    public var authorizationPolicies: [String]

    /// Creates a workload; only the identifying fields are required.
    public init(
        uid: String, name: String, namespace: String, serviceAccount: String = "default",
        trustDomain: String = "cluster.local", workloadIPs: [IPAddress],
        tunnelProtocol: TunnelProtocol = .tcp, node: String = "", network: String = "",
        waypoint: GatewayAddress? = nil, status: HealthStatus = .healthy, capacity: UInt32 = 1,
        services: [NamespacedHostname: [UInt16: UInt16]] = [:], labels: [String: String] = [:],
        canonicalName: String = "", canonicalRevision: String = "", workloadName: String = "",
        clusterID: String = "Kubernetes", netns: String? = nil, authorizationPolicies: [String] = []
    ) {
        self.uid = uid
        self.name = name
        self.namespace = namespace
        self.serviceAccount = serviceAccount
        self.trustDomain = trustDomain
        self.workloadIPs = workloadIPs
        self.tunnelProtocol = tunnelProtocol
        self.node = node
        self.network = network
        self.waypoint = waypoint
        self.status = status
        self.capacity = capacity
        self.services = services
        self.labels = labels
        self.canonicalName = canonicalName
        self.canonicalRevision = canonicalRevision
        self.workloadName = workloadName
        self.clusterID = clusterID
        self.netns = netns
        self.authorizationPolicies = authorizationPolicies
    }

    /// The workload's SPIFFE identity.
    public var identity: SpiffeID {
        SpiffeID(trustDomain: trustDomain, namespace: namespace, serviceAccount: serviceAccount)
    }
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

    /// Creates a service.
    public init(
        name: String, namespace: String, hostname: String, vips: [NetworkAddress],
        ports: [UInt16: UInt16], subjectAltNames: [String] = [], waypoint: GatewayAddress? = nil
    ) {
        self.name = name
        self.namespace = namespace
        self.hostname = hostname
        self.vips = vips
        self.ports = ports
        self.subjectAltNames = subjectAltNames
        self.waypoint = waypoint
    }

    /// `namespace/hostname`, the key workloads use in their ``Workload/services``.
    public var namespacedHostname: NamespacedHostname {
        NamespacedHostname(namespace: namespace, hostname: hostname)
    }
}
