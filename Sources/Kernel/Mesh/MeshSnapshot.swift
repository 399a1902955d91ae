/// An immutable, indexed view of the mesh: workloads, services and policies at one
/// moment. Readers take a snapshot and use it without locks; discovery sources publish
/// a new one through ``MeshStore``.
public struct MeshSnapshot: Sendable {
    /// Workloads by uid.
    public let workloads: [String: Workload]
    /// Services by `namespace/hostname`.
    public let services: [NamespacedHostname: Service]
    /// Authorization policies by `namespace/name`.
    public let policies: [String: AuthorizationPolicy]
    /// A monotonically increasing version, bumped by every publish.
    public let version: UInt64

    private let workloadByIP: [NetworkAddress: String]
    private let serviceByVIP: [NetworkAddress: NamespacedHostname]
    private let servicesByHostname: [String: [NamespacedHostname]]
    private let endpointsByService: [NamespacedHostname: [String]]

    /// The empty mesh.
    public static let empty = MeshSnapshot(workloads: [], services: [], policies: [])

    /// Builds a snapshot and its indexes. Later entries win on duplicate keys.
    public init(workloads: [Workload], services: [Service], policies: [AuthorizationPolicy], version: UInt64 = 0) {
        var byUID: [String: Workload] = [:]
        var byIP: [NetworkAddress: String] = [:]
        var endpoints: [NamespacedHostname: [String]] = [:]
        for workload in workloads {
            byUID[workload.uid] = workload
        }
        for workload in byUID.values.sorted(by: { $0.uid < $1.uid }) {
            for ip in workload.workloadIPs {
                byIP[NetworkAddress(network: workload.network, ip: ip)] = workload.uid
            }
            for service in workload.services.keys {
                endpoints[service, default: []].append(workload.uid)
            }
        }
        var byName: [NamespacedHostname: Service] = [:]
        var byVIP: [NetworkAddress: NamespacedHostname] = [:]
        var byHostname: [String: [NamespacedHostname]] = [:]
        for service in services {
            byName[service.namespacedHostname] = service
        }
        for (name, service) in byName.sorted(by: { $0.key < $1.key }) {
            for vip in service.vips { byVIP[vip] = name }
            byHostname[service.hostname, default: []].append(name)
        }
        var byKey: [String: AuthorizationPolicy] = [:]
        for policy in policies { byKey[policy.key] = policy }
        self.workloads = byUID
        self.services = byName
        self.policies = byKey
        self.version = version
        self.workloadByIP = byIP
        self.serviceByVIP = byVIP
        self.servicesByHostname = byHostname
        self.endpointsByService = endpoints
    }

    /// A copy with another version number.
    public func withVersion(_ version: UInt64) -> MeshSnapshot {
        MeshSnapshot(
            workloads: Array(workloads.values), services: Array(services.values),
            policies: Array(policies.values), version: version)
    }

    /// The workload that owns `ip` on `network` (default network when empty).
    public func workload(at ip: IPAddress, network: String = "") -> Workload? {
        workloadByIP[NetworkAddress(network: network, ip: ip)].flatMap { workloads[$0] }
    }

    /// The service with `ip` among its VIPs.
    public func service(at ip: IPAddress, network: String = "") -> Service? {
        serviceByVIP[NetworkAddress(network: network, ip: ip)].flatMap { services[$0] }
    }

    /// Services with this hostname (one per namespace at most).
    public func services(hostname: String) -> [Service] {
        (servicesByHostname[hostname] ?? []).compactMap { services[$0] }
    }

    /// The workloads that back `service`, in uid order, healthy or not.
    public func endpoints(of service: NamespacedHostname) -> [Workload] {
        (endpointsByService[service] ?? []).compactMap { workloads[$0] }
    }

    /// Workloads scheduled on `node`.
    public func workloads(onNode node: String) -> [Workload] {
        workloads.values.filter { $0.node == node }.sorted { $0.uid < $1.uid }
    }
}
