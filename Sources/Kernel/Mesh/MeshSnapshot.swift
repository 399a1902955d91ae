/// An immutable, indexed view of the mesh: workloads, services, policies and any further
/// resource kinds at one moment. Readers take a snapshot and use it without locks;
/// discovery sources change the mesh through ``MeshStore``, which makes the next snapshot
/// from this one by applying only what changed (``ResourceTable``), indexes included.
public struct MeshSnapshot: Sendable {
    /// Workloads by uid.
    public private(set) var workloads = ResourceTable<String, Workload>()
    /// Services by `namespace/hostname`.
    public private(set) var services = ResourceTable<NamespacedHostname, Service>()
    /// Authorization policies by `namespace/name`.
    public private(set) var policies = ResourceTable<String, AuthorizationPolicy>()
    /// A monotonically increasing version, bumped by every change the store publishes.
    public private(set) var version: UInt64 = 0

    /// Every uid with an address, sorted: the greatest is the address's owner (the same
    /// winner whatever order the workloads arrived in).
    private var ipClaims = ResourceTable<NetworkAddress, [String]>()
    /// Every uid with an address on any network, sorted: for finding a local workload
    /// whose network is not known yet.
    private var addressClaims = ResourceTable<IPAddress, [String]>()
    /// Every service with a VIP, sorted: the greatest owns it.
    private var vipClaims = ResourceTable<NetworkAddress, [NamespacedHostname]>()
    private var servicesByHostname = ResourceTable<String, [NamespacedHostname]>()
    /// The services with address blocks (``Service/cidrVIPs``), sorted; few, so scanned.
    private var cidrServices: [NamespacedHostname] = []
    /// Backing workloads per service, in uid order.
    private var endpointsByService = ResourceTable<NamespacedHostname, [String]>()
    /// Kinds beyond the three built in, by type.
    private var otherKinds: [ObjectIdentifier: any Sendable] = [:]
    /// Which origin's version of each resource is in force, by kind and key.
    private var owners = ResourceTable<ResourceName, String>()

    /// The empty mesh.
    public static let empty = MeshSnapshot()

    private init() {}

    /// Builds a snapshot and its indexes, all from one origin. Later entries win on
    /// duplicate keys.
    public init(workloads: [Workload], services: [Service], policies: [AuthorizationPolicy], version: UInt64 = 0) {
        for workload in workloads { set(Workload.self, key: workload.uid, to: workload, origin: nil) }
        for service in services { set(Service.self, key: service.namespacedHostname, to: service, origin: nil) }
        for policy in policies { set(AuthorizationPolicy.self, key: policy.key, to: policy, origin: nil) }
        self.version = version
    }

    /// A copy with another version number.
    public func withVersion(_ version: UInt64) -> MeshSnapshot {
        var copy = self
        copy.version = version
        return copy
    }

    /// The workload that owns `ip` on `network` (default network when empty). Host-network
    /// workloads (``NetworkMode/hostNetwork``) are never found by address.
    public func workload(at ip: IPAddress, network: String = "") -> Workload? {
        ipClaims[NetworkAddress(network: network, ip: ip)]?.last.flatMap { workloads[$0] }
    }

    /// Every workload with `ip` among its addresses, on any network, in uid order, except
    /// host-network workloads. A local
    /// workload is looked up this way: its network is its own, not necessarily the node's
    /// (see `PluginContext.localWorkload(at:in:)`).
    public func workloads(at ip: IPAddress) -> [Workload] {
        (addressClaims[ip] ?? []).compactMap { workloads[$0] }
    }

    /// The service a client in `namespace` reaches at `ip` on `network` (ztunnel's
    /// choice when services in several namespaces share a VIP). Among the services with
    /// `ip` among their ``Service/vips``, those visible to the client
    /// (``Service/isVisible(to:)``; all of them when `namespace` is nil): the one in the
    /// client's namespace, else a ``Service/canonical`` one, else the greatest
    /// `namespace/hostname`. When no VIP matches, the visible services with a
    /// ``Service/cidrVIPs`` block on `network` containing `ip`, ranked by: in the client's
    /// namespace, then the longest prefix, then canonical.
    public func service(at ip: IPAddress, network: String = "", namespace: String? = nil) -> Service? {
        func visible(_ service: Service) -> Bool { namespace.map(service.isVisible(to:)) ?? true }
        var best: (service: Service, rank: [Int])?
        for name in vipClaims[NetworkAddress(network: network, ip: ip)] ?? [] {
            guard let service = services[name], visible(service) else { continue }
            let rank = [service.namespace == namespace ? 1 : 0, service.canonical ? 1 : 0]
            // Names come in ascending order: on a tie the later (greater) one wins.
            if best.map({ !rank.lexicographicallyPrecedes($0.rank) }) ?? true { best = (service, rank) }
        }
        if let best { return best.service }
        for name in cidrServices {
            guard let service = services[name], visible(service) else { continue }
            for block in service.cidrVIPs where block.network == network && block.cidr.contains(ip) {
                let rank = [service.namespace == namespace ? 1 : 0, block.cidr.prefixLength, service.canonical ? 1 : 0]
                if best.map({ !rank.lexicographicallyPrecedes($0.rank) }) ?? true { best = (service, rank) }
            }
        }
        return best?.service
    }

    /// Services with this hostname (one per namespace at most).
    public func services(hostname: String) -> [Service] {
        (servicesByHostname[hostname] ?? []).compactMap { services[$0] }
    }

    /// The service a client in `namespace` means by `hostname`: among those visible to it
    /// (all when `namespace` is nil), the one in its namespace, else a canonical one, else
    /// the greatest `namespace/hostname`.
    public func service(hostname: String, namespace: String? = nil) -> Service? {
        var best: (service: Service, rank: [Int])?
        for service in services(hostname: hostname) where namespace.map(service.isVisible(to:)) ?? true {
            let rank = [service.namespace == namespace ? 1 : 0, service.canonical ? 1 : 0]
            if best.map({ !rank.lexicographicallyPrecedes($0.rank) }) ?? true { best = (service, rank) }
        }
        return best?.service
    }

    /// The workloads that back `service`, in uid order, healthy or not.
    public func endpoints(of service: NamespacedHostname) -> [Workload] {
        (endpointsByService[service] ?? []).compactMap { workloads[$0] }
    }

    /// Workloads scheduled on `node`.
    public func workloads(onNode node: String) -> [Workload] {
        workloads.values.filter { $0.node == node }.sorted { $0.uid < $1.uid }
    }

    /// The resources of kind `R`: the built-in kinds' tables, or a later kind's (empty
    /// until a source adds one).
    public func resources<R: MeshResource>(of type: R.Type) -> ResourceTable<R.Key, R> {
        if let table = workloads as? ResourceTable<R.Key, R> { return table }
        if let table = services as? ResourceTable<R.Key, R> { return table }
        if let table = policies as? ResourceTable<R.Key, R> { return table }
        return otherKinds[ObjectIdentifier(type)] as? ResourceTable<R.Key, R> ?? ResourceTable()
    }

    /// The name of the origin (discovery source) whose version of the resource is in
    /// force; nil if there is none or it was built without one.
    public func origin<R: MeshResource>(of type: R.Type, key: R.Key) -> String? {
        owners[ResourceName(kind: R.kind, key: "\(key)")]
    }

    // MARK: Changes (the store's)

    /// Puts `value` in force for `key` (nil removes it), keeping every index in step:
    /// work proportional to the resource's own addresses and memberships, not the mesh.
    mutating func set<R: MeshResource>(_ type: R.Type, key: R.Key, to value: R?, origin: String?) {
        let name = ResourceName(kind: R.kind, key: "\(key)")
        owners[name] = value == nil ? nil : origin
        if R.self == Workload.self {
            setWorkload(key as! String, to: value as! Workload?)
        } else if R.self == Service.self {
            setService(key as! NamespacedHostname, to: value as! Service?)
        } else if R.self == AuthorizationPolicy.self {
            policies[key as! String] = value as! AuthorizationPolicy?
        } else {
            var table = otherKinds[ObjectIdentifier(type)] as? ResourceTable<R.Key, R> ?? ResourceTable()
            otherKinds[ObjectIdentifier(type)] = nil  // keep the table uniquely referenced while it changes
            table[key] = value
            otherKinds[ObjectIdentifier(type)] = table
        }
    }

    private mutating func setWorkload(_ uid: String, to workload: Workload?) {
        let old = workloads[uid]
        if let old {
            for ip in old.workloadIPs where old.networkMode != .hostNetwork {
                Self.withdraw(uid, from: &ipClaims, at: NetworkAddress(network: old.network, ip: ip))
                Self.withdraw(uid, from: &addressClaims, at: ip)
            }
            for service in old.services.keys { Self.withdraw(uid, from: &endpointsByService, at: service) }
        }
        workloads[uid] = workload
        if let workload {
            // A host-network workload's addresses are its node's, shared with every other
            // such workload there: an address never names it.
            for ip in workload.workloadIPs where workload.networkMode != .hostNetwork {
                Self.claim(uid, in: &ipClaims, at: NetworkAddress(network: workload.network, ip: ip))
                Self.claim(uid, in: &addressClaims, at: ip)
            }
            for service in workload.services.keys { Self.claim(uid, in: &endpointsByService, at: service) }
        }
    }

    private mutating func setService(_ name: NamespacedHostname, to service: Service?) {
        if let old = services[name] {
            for vip in old.vips { Self.withdraw(name, from: &vipClaims, at: vip) }
            if !old.cidrVIPs.isEmpty { cidrServices.removeAll { $0 == name } }
            Self.withdraw(name, from: &servicesByHostname, at: old.hostname)
        }
        services[name] = service
        if let service {
            for vip in service.vips { Self.claim(name, in: &vipClaims, at: vip) }
            if !service.cidrVIPs.isEmpty {
                cidrServices.insert(name, at: cidrServices.firstIndex { $0 > name } ?? cidrServices.endIndex)
            }
            Self.claim(name, in: &servicesByHostname, at: service.hostname)
        }
    }

    /// Adds `member` to the sorted list at `key`.
    private static func claim<K, M: Comparable & Sendable>(_ member: M, in table: inout ResourceTable<K, [M]>, at key: K) {
        var list = table[key] ?? []
        table[key] = nil  // uniquely referenced while it changes
        var low = 0
        var high = list.count
        while low < high {
            let middle = (low + high) / 2
            if list[middle] < member { low = middle + 1 } else { high = middle }
        }
        if low == list.count || list[low] != member { list.insert(member, at: low) }
        table[key] = list
    }

    /// Removes `member` from the sorted list at `key` (the key goes with its last member).
    private static func withdraw<K, M: Comparable & Sendable>(_ member: M, from table: inout ResourceTable<K, [M]>, at key: K) {
        guard var list = table[key] else { return }
        table[key] = nil
        if let index = list.firstIndex(of: member) { list.remove(at: index) }
        if !list.isEmpty { table[key] = list }
    }

    mutating func setVersion(_ version: UInt64) { self.version = version }
}

/// A resource's kind and key, as `/config_dump` names it.
struct ResourceName: Hashable, Sendable {
    var kind: String
    var key: String
}
