public import Kernel
import AmbitRuntime
import ConfigYAML

/// The local mesh file: ztunnel's local-config YAML (`LOCAL_XDS_PATH`), camelCase, unknown
/// fields rejected, turned into the kernel's mesh model. Every field ztunnel's local
/// config has is accepted, so a file ztunnel loads loads here too.
///
/// ```yaml
/// workloads:
/// - uid: cluster1//v1/Pod/default/echo     # default: <clusterId>//v1/Pod/<namespace>/<name>
///   name: echo
///   namespace: default                     # required
///   serviceAccount: echo                   # default: default
///   trustDomain: cluster.local             # default
///   workloadIps: ["127.0.0.2"]
///   protocol: HBONE                        # TCP (default) | HBONE
///   node: node-a
///   network: ""                            # the workload's network; "" is the default one
///   networkMode: Standard                  # Standard | HostNetwork (never looked up by IP)
///   waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}   # or "ns/hostname"
///   networkGateway: {destination: "/10.0.0.8", hboneMtlsPort: 15008}   # reaches it from other networks
///   status: Healthy                        # Healthy | Unhealthy
///   capacity: 1                            # endpoint weight; 0 is never picked
///   services: {"default/echo.default.svc.cluster.local": {80: 8080}}   # "/host" for no namespace
///   canonicalName: echo
///   canonicalRevision: v1
///   workloadName: echo
///   workloadType: deployment               # accepted, not used
///   clusterId: Kubernetes                  # default
///   hostname: ""                           # the workload's DNS name, if any
///   locality: {region: r, zone: z, subzone: s}   # each part optional
///   authorizationPolicies: ["default/allow-echo"]  # WorkloadSelector policies applying here
///   nativeTunnel: false                    # accepted, not used
///   applicationTunnel: {protocol: PROXY, port: 15088}   # NONE | PROXY (a sandwiched waypoint); port optional
///   labels: {app: echo}                    # Ambit: matched by policy `selector`
///   netns: /var/run/netns/echo             # Ambit: the pod's network namespace
/// services:
/// - name: echo
///   namespace: default                     # may be "" (the service is then "/hostname")
///   hostname: echo.default.svc.cluster.local
///   vips: ["/127.10.0.1"]                  # "network/ip"; a bare ip is the default network
///   cidrVips: [{network: "", cidr: 10.97.0.0/16}]   # or "network/cidr"; exact vips win
///   ports: {80: 8080}                      # service port: target port (0 = same port)
///   subjectAltNames: ["spiffe://cluster.local/ns/default/sa/echo"]
///   waypoint: {destination: "/10.0.0.9"}
///   weightedWaypoints: [{destination: {destination: "/10.0.0.9", hboneMtlsPort: 15008}, weight: 90}]
///   loadBalancer: {routingPreferences: [Zone], mode: Failover, healthPolicy: OnlyHealthy}
///   ipFamilies: IPv4                       # Dual | IPv4 | IPv6
///   canonical: true                        # preferred when services share a VIP or hostname
///   visibility: Public                     # Public | Namespace (only the service's namespace)
///   endpoints:                             # ztunnel's endpoint records, by workload uid
///     cluster1//v1/Pod/default/echo: {workloadUid: cluster1//v1/Pod/default/echo, port: {80: 8080}, status: Healthy}
/// policies:
/// - name: allow-echo
///   namespace: default
///   scope: WorkloadSelector                # Global | Namespace | WorkloadSelector
///   selector: {app: echo}                  # Ambit: labels for WorkloadSelector
///   action: Allow                          # Allow | Deny
///   dryRun: false
///   rules: [[[{principals: [{Prefix: "cluster.local/ns/default/"}], destinationPorts: [8080]}]]]
/// ```
///
/// How the fields route (``Forwarding`` in the node proxy has the whole decision):
/// - A workload is found by address in its own `network` when it is local to the node,
///   and in the node's network (manifest `node.network`) otherwise; `HostNetwork`
///   workloads are never found by address, only as service endpoints.
/// - A service endpoint is a workload listing the service in `services` (or named by a
///   service's `endpoints` record; the workload's own entry wins, and an unhealthy record
///   is dropped unless `healthPolicy: AllowAll`; a record naming no workload of the file
///   is ignored). It is picked when healthy (or `AllowAll`), on the client's network,
///   with `capacity` above 0, with an address of a family `ipFamilies` allows, and with
///   the port in its own port map or a non-zero target port on the service.
/// - `loadBalancer`: `Failover` prefers endpoints sharing the longest run of
///   `routingPreferences` (Network, Region, Zone, Subzone, Node, Cluster) with the client;
///   `Strict` takes only those sharing all; `Passthrough` sends to the address asked for.
/// - Services sharing a VIP: the client's namespace first, then `canonical`;
///   `visibility: Namespace` services are invisible to other namespaces; a `cidrVips`
///   block answers when no VIP does.
/// - `weightedWaypoints`: one is picked per connection by weight (all 0: `waypoint`).
/// - `networkGateway`, `applicationTunnel` and `hostname` are kept in the model for the
///   waypoint and multi-network paths; `workloadType` and `nativeTunnel` are accepted only.
///
/// Policy string matches are written `{Exact: x}`, `{Prefix: x}`, `{Suffix: x}`,
/// `{Presence: []}` or bare `Presence` (ztunnel's forms), or as a plain string with
/// Istio's wildcards: `x` exact, `x*` prefix, `*x` suffix, `*` presence.
/// `serviceAccounts` also take ztunnel's `{namespace: ns, serviceAccount: sa}`, matched
/// as `ns/sa`. Principals are written without `spiffe://` (a leading one is dropped).
///
/// Besides type checks, the file is checked for: emptiness, duplicate workload uids, duplicate
/// services (`namespace/hostname`), duplicate policies (`namespace/name`), empty service
/// hostnames, service port 0, and malformed addresses, CIDRs and
/// `namespace/hostname` keys; every error names the file, line and path (e.g.
/// `mesh.yaml:7: services[2].ipFamilies: expected one of Dual, IPv4, IPv6, got "IPv5"`).
/// A workload may name a service that is not defined, and workload namespaces and service
/// names may be empty (as in ztunnel: the keys are required, their values are not).
public enum LocalMeshFile {
    /// Parses the file's text into a snapshot; `file` names it in errors.
    /// An empty file (nothing but whitespace and comments) is an error, not an empty mesh:
    /// it is what a writer that truncated the file leaves, and taking it at its word would
    /// drop every workload. A mesh with nothing in it is written `{}`.
    public static func parse(yaml: String, file: String) throws(ConfigErrors) -> MeshSnapshot {
        let parsed = try resources(yaml: yaml, file: file)
        return MeshSnapshot(workloads: parsed.workloads, services: parsed.services, policies: parsed.policies)
    }

    /// ``parse(yaml:file:)`` as a discovery source's content, without building a
    /// snapshot's indexes the store would rebuild anyway.
    public static func parseContent(yaml: String, file: String) throws(ConfigErrors) -> MeshContent {
        let parsed = try resources(yaml: yaml, file: file)
        return MeshContent(workloads: parsed.workloads, services: parsed.services, policies: parsed.policies)
    }

    private static func resources(
        yaml: String, file: String
    ) throws(ConfigErrors) -> (workloads: [Workload], services: [Service], policies: [AuthorizationPolicy]) {
        let root = try ConfigNode.parse(yaml: yaml, file: file)
        guard root.value != nil else {
            throw ConfigErrors([
                ConfigError(
                    file: file, line: nil, path: "",
                    message: "the file is empty; write {} for a mesh with nothing in it")
            ])
        }
        let document = try ConfigDecoder.decode(Document.self, from: root)
        var errors: [ConfigError] = []
        var workloads: [Workload] = []
        var firstUID: [String: ConfigLocation] = [:]
        for entry in document.workloads {
            if let first = firstUID[entry.workload.uid] {
                errors.append(ConfigError(
                    at: entry.location, "duplicate workload uid \"\(entry.workload.uid)\", first at \(first.path)\(lineNote(first))"))
            } else {
                firstUID[entry.workload.uid] = entry.location
                workloads.append(entry.workload)
            }
        }
        var services: [Service] = []
        var firstService: [NamespacedHostname: ConfigLocation] = [:]
        for entry in document.services {
            let key = entry.service.namespacedHostname
            if let first = firstService[key] {
                errors.append(ConfigError(at: entry.location, "duplicate service \"\(key)\", first at \(first.path)\(lineNote(first))"))
            } else {
                firstService[key] = entry.location
                services.append(entry.service)
            }
        }
        var policies: [AuthorizationPolicy] = []
        var firstPolicy: [String: ConfigLocation] = [:]
        for entry in document.policies {
            let key = entry.policy.key
            if let first = firstPolicy[key] {
                errors.append(ConfigError(at: entry.location, "duplicate policy \"\(key)\", first at \(first.path)\(lineNote(first))"))
            } else {
                firstPolicy[key] = entry.location
                policies.append(entry.policy)
            }
        }
        if !errors.isEmpty { throw ConfigErrors(errors) }
        mergeEndpoints(of: document.services, into: &workloads)
        return (workloads, services, policies)
    }

    /// Makes each service's own `endpoints` records part of the workloads they name, as
    /// ztunnel does: a workload's own `services` entry for the service wins; an unhealthy
    /// record is dropped unless the service admits unhealthy endpoints; a record naming no
    /// workload in the file is ignored (ztunnel skips endpoints without a workload).
    private static func mergeEndpoints(of services: [LocalService], into workloads: inout [Workload]) {
        let index = Dictionary(workloads.indices.map { (workloads[$0].uid, $0) }, uniquingKeysWith: { first, _ in first })
        for entry in services {
            let name = entry.service.namespacedHostname
            let admitsUnhealthy = entry.service.loadBalancer?.healthPolicy == .allowAll
            for endpoint in entry.endpoints {
                guard let position = index[endpoint.workloadUID], workloads[position].services[name] == nil,
                    endpoint.status == .healthy || admitsUnhealthy
                else { continue }
                workloads[position].services[name] = endpoint.ports
            }
        }
    }

    /// Reads and parses the file at `path`; errors name `path`.
    public static func load(path: String) throws(ConfigErrors) -> MeshSnapshot {
        try parse(yaml: ConfigFile.read(path), file: path)
    }

    private static func lineNote(_ location: ConfigLocation) -> String {
        location.line.map { " (line \($0))" } ?? ""
    }
}

// MARK: - The document

struct Document: Decodable {
    var workloads: [LocalWorkload]
    var services: [LocalService]
    var policies: [LocalPolicy]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case workloads, services, policies
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        // Decode every section before failing, so each reports its errors.
        var failure: (any Error)?
        func section<T: Decodable>(_ key: CodingKeys) -> [T] {
            do {
                return try container.decodeIfPresent([T].self, forKey: key) ?? []
            } catch {
                failure = failure ?? error
                return []
            }
        }
        workloads = section(.workloads)
        services = section(.services)
        policies = section(.policies)
        if let failure { throw failure }
    }
}

/// Rejects empty strings where ztunnel needs a value.
private func nonEmpty<K: CodingKey>(_ value: String, _ key: K, _ container: KeyedDecodingContainer<K>) throws -> String {
    if value.isEmpty {
        throw DecodingError.dataCorruptedError(forKey: key, in: container, debugDescription: "must not be empty")
    }
    return value
}

struct LocalWorkload: Decodable {
    var workload: Workload
    var location: ConfigLocation

    enum CodingKeys: String, CodingKey, CaseIterable {
        case uid, name, namespace, serviceAccount, trustDomain, workloadIps, `protocol`, node, network
        case waypoint, networkGateway, status, capacity, services, canonicalName, canonicalRevision
        case workloadName, workloadType, clusterId, hostname, locality, authorizationPolicies
        case nativeTunnel, applicationTunnel, networkMode, labels, netns
    }

    init(from decoder: any Decoder) throws {
        location = ConfigDecoder.location(of: decoder) ?? ConfigLocation(file: "", line: nil, path: "")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let namespace = try c.decode(String.self, forKey: .namespace)
        let name = try c.decodeIfPresent(String.self, forKey: .name) ?? ""
        let clusterID = try c.decodeIfPresent(String.self, forKey: .clusterId).flatMap { $0.isEmpty ? nil : $0 } ?? "Kubernetes"
        let uid: String
        if let explicit = try c.decodeIfPresent(String.self, forKey: .uid) {
            uid = try nonEmpty(explicit, CodingKeys.uid, c)
        } else if !name.isEmpty {
            uid = "\(clusterID)//v1/Pod/\(namespace)/\(name)"
        } else {
            throw DecodingError.keyNotFound(
                CodingKeys.uid, .init(codingPath: c.codingPath, debugDescription: "a workload needs a uid or a name"))
        }
        // Accepted for compatibility with ztunnel's files; validated, not modelled.
        _ = try c.decodeIfPresent(String.self, forKey: .workloadType)
        _ = try c.decodeIfPresent(Bool.self, forKey: .nativeTunnel)

        let serviceAccount = try c.decodeIfPresent(String.self, forKey: .serviceAccount).flatMap { $0.isEmpty ? nil : $0 }
        let trustDomain = try c.decodeIfPresent(String.self, forKey: .trustDomain).flatMap { $0.isEmpty ? nil : $0 }
        let policies = try c.decodeIfPresent([String].self, forKey: .authorizationPolicies) ?? []
        for policy in policies where NamespacedHostname(policy) == nil {
            throw DecodingError.dataCorruptedError(
                forKey: .authorizationPolicies, in: c, debugDescription: "expected namespace/name policy keys, got \"\(policy)\"")
        }
        workload = Workload(
            uid: uid, name: name, namespace: namespace,
            serviceAccount: serviceAccount ?? "default",
            trustDomain: trustDomain ?? "cluster.local",
            workloadIPs: try c.decodeIfPresent([IPAddress].self, forKey: .workloadIps) ?? [],
            tunnelProtocol: try c.decodeIfPresent(WorkloadProtocol.self, forKey: .protocol)?.value ?? .tcp,
            node: try c.decodeIfPresent(String.self, forKey: .node) ?? "",
            network: try c.decodeIfPresent(String.self, forKey: .network) ?? "",
            waypoint: try c.decodeIfPresent(GatewayAddress.self, forKey: .waypoint),
            status: try c.decodeIfPresent(Status.self, forKey: .status)?.value ?? .healthy,
            capacity: try c.decodeIfPresent(UInt32.self, forKey: .capacity) ?? 1,
            services: try c.decodeIfPresent([NamespacedHostname: [UInt16: UInt16]].self, forKey: .services) ?? [:],
            labels: try c.decodeIfPresent([String: String].self, forKey: .labels) ?? [:],
            canonicalName: try c.decodeIfPresent(String.self, forKey: .canonicalName) ?? "",
            canonicalRevision: try c.decodeIfPresent(String.self, forKey: .canonicalRevision) ?? "",
            workloadName: try c.decodeIfPresent(String.self, forKey: .workloadName) ?? "",
            clusterID: clusterID,
            netns: try c.decodeIfPresent(String.self, forKey: .netns),
            authorizationPolicies: policies,
            locality: try c.decodeIfPresent(LocalLocality.self, forKey: .locality)?.value ?? Locality(),
            networkMode: try c.decodeIfPresent(LocalNetworkMode.self, forKey: .networkMode)?.value ?? .standard,
            applicationTunnel: try c.decodeIfPresent(LocalApplicationTunnel.self, forKey: .applicationTunnel)?.value,
            networkGateway: try c.decodeIfPresent(GatewayAddress.self, forKey: .networkGateway),
            hostname: try c.decodeIfPresent(String.self, forKey: .hostname) ?? "")
    }

    enum WorkloadProtocol: String, CaseIterable, Decodable {
        case TCP, HBONE
        init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
        var value: TunnelProtocol { self == .HBONE ? .hbone : .tcp }
    }

    enum Status: String, CaseIterable, Decodable {
        case Healthy, Unhealthy
        init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
        var value: HealthStatus { self == .Healthy ? .healthy : .unhealthy }
    }

    enum LocalNetworkMode: String, CaseIterable, Decodable {
        case Standard, HostNetwork
        init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
        var value: NetworkMode { self == .HostNetwork ? .hostNetwork : .standard }
    }

    struct LocalLocality: Decodable {
        var region: String?
        var zone: String?
        var subzone: String?
        enum CodingKeys: String, CodingKey, CaseIterable { case region, zone, subzone }
        var value: Locality { Locality(region: region ?? "", zone: zone ?? "", subzone: subzone ?? "") }
    }

    struct LocalApplicationTunnel: Decodable {
        enum TunnelKind: String, CaseIterable, Decodable {
            case NONE, PROXY
            init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
        }
        var `protocol`: TunnelKind
        var port: UInt16?
        enum CodingKeys: String, CodingKey, CaseIterable { case `protocol`, port }
        /// Port 0 is "no override", as in the Workload API.
        var value: ApplicationTunnel {
            ApplicationTunnel(protocol: `protocol` == .PROXY ? .proxy : .plain, port: port == 0 ? nil : port)
        }
    }
}

struct LocalService: Decodable {
    var service: Service
    var location: ConfigLocation
    /// The file's own endpoint records (ztunnel's `endpoints`), merged into the workloads
    /// they name once the whole file is read.
    var endpoints: [LocalEndpoint]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, namespace, hostname, vips, cidrVips, ports, subjectAltNames, waypoint, weightedWaypoints
        case loadBalancer, ipFamilies, canonical, visibility, endpoints
    }

    init(from decoder: any Decoder) throws {
        location = ConfigDecoder.location(of: decoder) ?? ConfigLocation(file: "", line: nil, path: "")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let ports = try c.decodeIfPresent([UInt16: UInt16].self, forKey: .ports) ?? [:]
        if ports.keys.contains(0) {
            throw DecodingError.dataCorruptedError(forKey: .ports, in: c, debugDescription: "service port 0 is not a port")
        }
        endpoints = try c.decodeIfPresent(LocalEndpoints.self, forKey: .endpoints)?.list ?? []
        service = Service(
            name: try c.decode(String.self, forKey: .name),
            // ztunnel allows an empty namespace: such a service is named `/hostname`.
            namespace: try c.decode(String.self, forKey: .namespace),
            hostname: try nonEmpty(c.decode(String.self, forKey: .hostname), CodingKeys.hostname, c),
            vips: try c.decodeIfPresent([NetworkAddress].self, forKey: .vips) ?? [],
            ports: ports,
            subjectAltNames: try c.decodeIfPresent([String].self, forKey: .subjectAltNames) ?? [],
            waypoint: try c.decodeIfPresent(GatewayAddress.self, forKey: .waypoint),
            cidrVIPs: try (c.decodeIfPresent([LocalNetworkCIDR].self, forKey: .cidrVips) ?? []).map(\.value),
            weightedWaypoints: try (c.decodeIfPresent([LocalWeightedWaypoint].self, forKey: .weightedWaypoints) ?? []).map(\.value),
            loadBalancer: try c.decodeIfPresent(LocalLoadBalancer.self, forKey: .loadBalancer)?.value,
            ipFamilies: try c.decodeIfPresent(LocalIPFamilies.self, forKey: .ipFamilies)?.value,
            canonical: try c.decodeIfPresent(Bool.self, forKey: .canonical) ?? false,
            visibility: try c.decodeIfPresent(LocalVisibility.self, forKey: .visibility)?.value ?? .everywhere)
    }

    struct LocalLoadBalancer: Decodable {
        enum Scope: String, CaseIterable, Decodable {
            case Region, Zone, Subzone, Node, Cluster, Network
            init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
            var value: LoadBalancer.Scope {
                switch self {
                case .Region: .region
                case .Zone: .zone
                case .Subzone: .subzone
                case .Node: .node
                case .Cluster: .cluster
                case .Network: .network
                }
            }
        }
        enum Mode: String, CaseIterable, Decodable {
            case Standard, Strict, Failover, Passthrough
            init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
            var value: LoadBalancer.Mode {
                switch self {
                case .Standard: .standard
                case .Strict: .strict
                case .Failover: .failover
                case .Passthrough: .passthrough
                }
            }
        }
        enum HealthPolicy: String, CaseIterable, Decodable {
            case OnlyHealthy, AllowAll
            init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
        }
        var routingPreferences: [Scope]?
        var mode: Mode?
        var healthPolicy: HealthPolicy?
        enum CodingKeys: String, CodingKey, CaseIterable { case routingPreferences, mode, healthPolicy }
        var value: LoadBalancer {
            LoadBalancer(
                routingPreferences: (routingPreferences ?? []).map(\.value), mode: mode?.value ?? .standard,
                healthPolicy: healthPolicy == .AllowAll ? .allowAll : .onlyHealthy)
        }
    }

    enum LocalIPFamilies: String, CaseIterable, Decodable {
        case Dual, IPv4, IPv6
        init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
        var value: IPFamilies {
            switch self {
            case .Dual: .dual
            case .IPv4: .ipv4
            case .IPv6: .ipv6
            }
        }
    }

    enum LocalVisibility: String, CaseIterable, Decodable {
        case Public, Namespace
        init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
        var value: ServiceVisibility { self == .Namespace ? .namespace : .everywhere }
    }

    /// ztunnel's `{network: n, cidr: 10.0.0.0/24}`, or the string `n/10.0.0.0/24`.
    struct LocalNetworkCIDR: Decodable {
        var value: NetworkCIDR
        enum CodingKeys: String, CodingKey, CaseIterable { case network, cidr }

        init(from decoder: any Decoder) throws {
            if let text = try? decoder.singleValueContainer().decode(String.self) {
                guard let slash = text.firstIndex(of: "/"), let cidr = CIDR(String(text[text.index(after: slash)...])) else {
                    throw DecodingError.dataCorrupted(.init(
                        codingPath: decoder.codingPath,
                        debugDescription: "expected network/cidr (e.g. \"/10.0.0.0/24\") or {network, cidr}, got \"\(text)\""))
                }
                value = NetworkCIDR(network: String(text[..<slash]), cidr: cidr)
                return
            }
            let c = try decoder.container(keyedBy: CodingKeys.self)
            value = NetworkCIDR(
                network: try c.decodeIfPresent(String.self, forKey: .network) ?? "",
                cidr: try c.decode(CIDR.self, forKey: .cidr))
        }
    }

    /// `{destination: {destination: "/10.0.0.9", hboneMtlsPort: 15008}, weight: 90}`.
    struct LocalWeightedWaypoint: Decodable {
        var value: WeightedWaypoint
        enum CodingKeys: String, CodingKey, CaseIterable { case destination, weight }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            value = WeightedWaypoint(
                destination: try c.decode(GatewayAddress.self, forKey: .destination),
                weight: try c.decode(UInt32.self, forKey: .weight))
        }
    }
}

/// One of a service's `endpoints`: a workload (by uid) backing the service with its own
/// port map, as ztunnel writes them.
struct LocalEndpoint: Decodable {
    var workloadUID: String
    var ports: [UInt16: UInt16]
    var status: HealthStatus
    var location: ConfigLocation

    enum CodingKeys: String, CodingKey, CaseIterable { case workloadUid, port, status }

    init(from decoder: any Decoder) throws {
        location = ConfigDecoder.location(of: decoder) ?? ConfigLocation(file: "", line: nil, path: "")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        workloadUID = try nonEmpty(c.decode(String.self, forKey: .workloadUid), CodingKeys.workloadUid, c)
        ports = try c.decodeIfPresent([UInt16: UInt16].self, forKey: .port) ?? [:]
        status = try c.decodeIfPresent(LocalWorkload.Status.self, forKey: .status)?.value ?? .healthy
    }
}

/// ztunnel's endpoint map (`uid: {workloadUid, port, status}`), or a list of the same
/// records.
struct LocalEndpoints: Decodable {
    var list: [LocalEndpoint]

    init(from decoder: any Decoder) throws {
        if let raw = (try? ConfigNode(from: decoder))?.value, case .sequence = raw.content {
            list = try [LocalEndpoint](from: decoder)
        } else {
            list = try [String: LocalEndpoint](from: decoder).sorted { $0.key < $1.key }.map(\.value)
        }
    }
}

struct LocalPolicy: Decodable {
    var policy: AuthorizationPolicy
    var location: ConfigLocation

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, namespace, scope, selector, action, dryRun, rules
    }

    enum Scope: String, CaseIterable, Decodable {
        case Global, Namespace, WorkloadSelector
        init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
    }

    enum Action: String, CaseIterable, Decodable {
        case Allow, Deny
        init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
    }

    init(from decoder: any Decoder) throws {
        location = ConfigDecoder.location(of: decoder) ?? ConfigLocation(file: "", line: nil, path: "")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let name = try nonEmpty(c.decode(String.self, forKey: .name), CodingKeys.name, c)
        let namespace = try nonEmpty(c.decode(String.self, forKey: .namespace), CodingKeys.namespace, c)
        let scope = try c.decode(Scope.self, forKey: .scope)
        let selector = try c.decodeIfPresent([String: String].self, forKey: .selector)
        if selector != nil && scope != .WorkloadSelector {
            throw DecodingError.dataCorruptedError(
                forKey: .selector, in: c, debugDescription: "a selector only applies to scope WorkloadSelector")
        }
        let action = try c.decode(Action.self, forKey: .action)
        let rules = try c.decodeIfPresent([[[LocalMatch]]].self, forKey: .rules) ?? []
        let kernelScope: AuthorizationPolicy.Scope
        switch scope {
        case .Global: kernelScope = .global
        case .Namespace: kernelScope = .namespace
        case .WorkloadSelector: kernelScope = .workloadSelector(selector ?? [:])
        }
        policy = AuthorizationPolicy(
            name: name, namespace: namespace, scope: kernelScope,
            action: action == .Allow ? .allow : .deny,
            dryRun: try c.decodeIfPresent(Bool.self, forKey: .dryRun) ?? false,
            rules: rules.map { $0.map { $0.map(\.match) } })
    }
}

struct LocalMatch: Decodable {
    var match: PolicyMatch

    enum CodingKeys: String, CodingKey, CaseIterable {
        case namespaces, notNamespaces, principals, notPrincipals, serviceAccounts, notServiceAccounts
        case sourceIps, notSourceIps, destinationIps, notDestinationIps, destinationPorts, notDestinationPorts
    }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func strings(_ key: CodingKeys) throws -> [StringMatch] {
            try (c.decodeIfPresent([LocalStringMatch].self, forKey: key) ?? []).map(\.value)
        }
        func principals(_ key: CodingKeys) throws -> [StringMatch] {
            try strings(key).map(\.asPrincipal)
        }
        func accounts(_ key: CodingKeys) throws -> [StringMatch] {
            try (c.decodeIfPresent([LocalServiceAccountMatch].self, forKey: key) ?? []).map(\.value)
        }
        var match = PolicyMatch()
        match.namespaces = try strings(.namespaces)
        match.notNamespaces = try strings(.notNamespaces)
        match.principals = try principals(.principals)
        match.notPrincipals = try principals(.notPrincipals)
        match.serviceAccounts = try accounts(.serviceAccounts)
        match.notServiceAccounts = try accounts(.notServiceAccounts)
        match.sourceIPs = try c.decodeIfPresent([CIDR].self, forKey: .sourceIps) ?? []
        match.notSourceIPs = try c.decodeIfPresent([CIDR].self, forKey: .notSourceIps) ?? []
        match.destinationIPs = try c.decodeIfPresent([CIDR].self, forKey: .destinationIps) ?? []
        match.notDestinationIPs = try c.decodeIfPresent([CIDR].self, forKey: .notDestinationIps) ?? []
        match.destinationPorts = try c.decodeIfPresent([UInt16].self, forKey: .destinationPorts) ?? []
        match.notDestinationPorts = try c.decodeIfPresent([UInt16].self, forKey: .notDestinationPorts) ?? []
        self.match = match
    }
}

/// A string match in any of the accepted forms (see ``LocalMeshFile``).
struct LocalStringMatch: Decodable {
    var value: StringMatch

    /// The tag keys; ztunnel writes them capitalised, lower case is accepted too.
    enum Tag: String, CodingKey, CaseIterable {
        case Exact, Prefix, Suffix, Presence
        case exact, prefix, suffix, presence
    }

    init(from decoder: any Decoder) throws {
        if let text = try? decoder.singleValueContainer().decode(String.self) {
            value = Self.istio(text)
            return
        }
        // Check the shape on the raw node first, so a misspelt tag gives one clear
        // error rather than an unknown-key error plus a shape error.
        let expected = "expected {Exact: x}, {Prefix: x}, {Suffix: x}, Presence, or a string"
        if let raw = (try? ConfigNode(from: decoder))?.value, case .mapping(let entries) = raw.content {
            guard entries.count == 1 else {
                throw DecodingError.dataCorrupted(.init(
                    codingPath: decoder.codingPath, debugDescription: "\(expected), got \(entries.count) keys"))
            }
            if let key = entries[0].key.scalarText, Tag(stringValue: key) == nil {
                throw DecodingError.dataCorrupted(.init(
                    codingPath: decoder.codingPath, debugDescription: "\(expected), got \"\(key)\""))
            }
        }
        let c = try decoder.container(keyedBy: Tag.self)
        guard let tag = c.allKeys.first, c.allKeys.count == 1 else {
            throw DecodingError.dataCorrupted(.init(codingPath: c.codingPath, debugDescription: expected))
        }
        switch tag {
        case .Exact, .exact: value = .exact(try c.decode(String.self, forKey: tag))
        case .Prefix, .prefix: value = .prefix(try c.decode(String.self, forKey: tag))
        case .Suffix, .suffix: value = .suffix(try c.decode(String.self, forKey: tag))
        case .Presence, .presence: value = .presence
        }
    }

    /// Istio's plain-string form: `*` presence, `x*` prefix, `*x` suffix, else exact.
    /// Bare `Presence` is ztunnel's presence match.
    static func istio(_ text: String) -> StringMatch {
        if text == "*" || text == "Presence" { return .presence }
        if text.hasSuffix("*") { return .prefix(String(text.dropLast())) }
        if text.hasPrefix("*") { return .suffix(String(text.dropFirst())) }
        return .exact(text)
    }
}

/// ztunnel's `{namespace, serviceAccount}` form, or any string-match form of `ns/sa`.
struct LocalServiceAccountMatch: Decodable {
    var value: StringMatch

    enum CodingKeys: String, CodingKey, CaseIterable {
        case namespace, serviceAccount
    }

    init(from decoder: any Decoder) throws {
        // Peek at the raw node: opening a keyed container on a `{Exact: …}` mapping
        // would report its key as unknown.
        let raw = (try? ConfigNode(from: decoder))?.value
        if raw?["namespace"] != nil || raw?["serviceAccount"] != nil {
            let mapping = try decoder.container(keyedBy: CodingKeys.self)
            let namespace = try mapping.decode(String.self, forKey: .namespace)
            let account = try mapping.decode(String.self, forKey: .serviceAccount)
            value = .serviceAccount(namespace: namespace, serviceAccount: account)
            return
        }
        value = try LocalStringMatch(from: decoder).value
    }
}
