import Foundation
import Kernel

/// Renders the node's state as the JSON `/config_dump` and `/plugins` serve.
enum ConfigDump {
    struct WorkloadView: Encodable {
        var uid, name, namespace, serviceAccount, trustDomain, identity, node, network: String
        var workloadIps: [String]
        var `protocol`: String
        var status: String
        var capacity: UInt32
        var waypoint: GatewayAddress?
        var services: [String: [String: UInt16]]
        var labels: [String: String]
        var canonicalName, canonicalRevision, workloadName, clusterId: String
        var netns: String?
        var networkMode: String
        /// Omitted when every part is unknown, as ztunnel does.
        var locality: Locality?
        var applicationTunnel: ApplicationTunnel?
        var networkGateway: GatewayAddress?
        var hostname: String?
        /// The discovery source whose version is in force.
        var origin: String?

        init(_ w: Workload, origin: String? = nil) {
            self.origin = origin
            uid = w.uid
            name = w.name
            namespace = w.namespace
            serviceAccount = w.serviceAccount
            trustDomain = w.trustDomain
            identity = w.identity.description
            node = w.node
            network = w.network
            workloadIps = w.workloadIPs.map(\.description)
            `protocol` = w.tunnelProtocol.rawValue
            status = w.status.rawValue
            capacity = w.capacity
            waypoint = w.waypoint
            services = Dictionary(
                uniqueKeysWithValues: w.services.map { key, ports in
                    (key.description, Dictionary(uniqueKeysWithValues: ports.map { (String($0.key), $0.value) }))
                })
            labels = w.labels
            canonicalName = w.canonicalName
            canonicalRevision = w.canonicalRevision
            workloadName = w.workloadName
            clusterId = w.clusterID
            netns = w.netns
            networkMode = w.networkMode.rawValue
            locality = w.locality.isEmpty ? nil : w.locality
            applicationTunnel = w.applicationTunnel
            networkGateway = w.networkGateway
            hostname = w.hostname.isEmpty ? nil : w.hostname
        }
    }

    struct ServiceView: Encodable {
        var name, namespace, hostname: String
        var vips: [String]
        var ports: [String: UInt16]
        var subjectAltNames: [String]
        var waypoint: GatewayAddress?
        var cidrVips: [String]?
        var weightedWaypoints: [WeightedWaypoint]?
        var loadBalancer: LoadBalancer?
        var ipFamilies: String?
        var canonical: Bool
        var visibility: String
        var endpoints: [String]
        /// The discovery source whose version is in force.
        var origin: String?

        init(_ s: Service, endpoints: [Workload], origin: String? = nil) {
            self.origin = origin
            name = s.name
            namespace = s.namespace
            hostname = s.hostname
            vips = s.vips.map(\.description)
            ports = Dictionary(uniqueKeysWithValues: s.ports.map { (String($0.key), $0.value) })
            subjectAltNames = s.subjectAltNames
            waypoint = s.waypoint
            cidrVips = s.cidrVIPs.isEmpty ? nil : s.cidrVIPs.map(\.description)
            weightedWaypoints = s.weightedWaypoints.isEmpty ? nil : s.weightedWaypoints
            loadBalancer = s.loadBalancer
            ipFamilies = s.ipFamilies?.rawValue
            canonical = s.canonical
            visibility = s.visibility.rawValue
            self.endpoints = endpoints.map(\.uid)
        }
    }

    struct PluginView: Encodable {
        var id, summary, state: String
        var provides, requires: [String]
        var config: String
    }

    struct ConnectionView: Encodable {
        var id: UInt64
        var direction, source, destination, route: String
        var sourceWorkload, destinationWorkload, peerIdentity: String?
        var bytesSent, bytesReceived: UInt64
        var ageSeconds: Double

        init(_ r: ConnectionRecord) {
            id = r.id
            direction = r.direction.rawValue
            source = r.source.description
            destination = r.destination.description
            route = r.route
            sourceWorkload = r.sourceWorkload?.uid
            destinationWorkload = r.destinationWorkload?.uid
            peerIdentity = r.peerIdentity?.description
            bytesSent = r.bytes.sent
            bytesReceived = r.bytes.received
            let age = r.openedAt.duration(to: .now).components
            ageSeconds = Double(age.seconds) + Double(age.attoseconds) / 1e18
        }
    }

    struct CertificateView: Encodable {
        var identity, state: String
        var priority, serial, notBefore, notAfter, lastError: String?
        var chain: [String]
        var failures: Int

        init(_ c: CertificateStatus) {
            let format = { (date: Date?) in date.map { $0.formatted(.iso8601) } }
            identity = c.identity.description
            state = c.state
            priority = c.priority?.description
            serial = c.serial
            notBefore = format(c.notBefore)
            notAfter = format(c.notAfter)
            lastError = c.lastError
            chain = c.chain
            failures = c.failures
        }
    }

    /// One discovery source of the mesh store, by rank (lower wins conflicts).
    struct OriginView: Encodable {
        var name: String
        var rank: Int
        /// Resources of each kind whose version in force is this source's.
        var inForce: [String: Int]
    }

    struct Dump: Encodable {
        var node: [String: String]
        var meshVersion: UInt64
        var meshOrigins: [OriginView]
        /// Resources more than one source holds: whose version is in force, whose is shadowed.
        var meshConflicts: [MeshStore.Conflict]
        var workloads: [WorkloadView]
        var services: [ServiceView]
        var policies: [AuthorizationPolicy]
        var plugins: [PluginView]
        var connections: [ConnectionView]
        var certificates: [CertificateView]
    }

    static func plugins(node: ProxyNode) -> [PluginView] {
        let states = Dictionary(node.pluginStates.map { ($0.id, $0.state) }, uniquingKeysWith: { a, _ in a })
        return node.plan.entries.map { entry in
            PluginView(
                id: entry.type.id, summary: entry.type.summary,
                state: states[entry.type.id]?.rawValue ?? PluginState.configured.rawValue,
                provides: entry.type.provides.sorted().map { $0.name },
                requires: entry.type.requires.sorted().map { $0.name },
                config: String(describing: entry.config))
        }
    }

    static func origins(_ store: MeshStore, _ mesh: MeshSnapshot) -> [OriginView] {
        // One pass over each kind: resources in force by origin.
        var inForce: [String: [String: Int]] = [:]
        func count<R: MeshResource>(_ type: R.Type) {
            for key in mesh.resources(of: type).keys {
                if let origin = mesh.origin(of: type, key: key) { inForce[origin, default: [:]][R.kind, default: 0] += 1 }
            }
        }
        count(Workload.self)
        count(Service.self)
        count(AuthorizationPolicy.self)
        return store.origins.enumerated().map { rank, name in
            OriginView(
                name: name, rank: rank,
                inForce: [Workload.kind, Service.kind, AuthorizationPolicy.kind].reduce(into: [:]) {
                    $0[$1] = inForce[name]?[$1] ?? 0
                })
        }
    }

    static func render(node: ProxyNode) -> String {
        let mesh = node.mesh.snapshot
        let dump = Dump(
            node: [
                "name": node.plan.manifest.node.name,
                "network": node.plan.manifest.node.network,
                "state": node.isDraining ? "draining" : (node.readiness.isReady ? "ready" : "starting"),
            ],
            meshVersion: mesh.version,
            meshOrigins: origins(node.mesh, mesh),
            meshConflicts: node.mesh.conflicts,
            workloads: mesh.workloads.values.sorted { $0.uid < $1.uid }.map {
                WorkloadView($0, origin: mesh.origin(of: Workload.self, key: $0.uid))
            },
            services: mesh.services.values.sorted { $0.namespacedHostname < $1.namespacedHostname }.map {
                ServiceView(
                    $0, endpoints: mesh.endpoints(of: $0.namespacedHostname),
                    origin: mesh.origin(of: Service.self, key: $0.namespacedHostname))
            },
            policies: mesh.policies.values.sorted { $0.key < $1.key },
            plugins: plugins(node: node),
            connections: node.connections.records.map(ConnectionView.init),
            certificates: node.plugins.compactMap { $0 as? any CertificateStatusReporting }
                .flatMap(\.certificateStatuses).map(CertificateView.init))
        return encode(WithSections(dump: dump, sections: sections(node: node)))
    }

    /// The dump with the plugins' own sections (``ConfigDumpSectionProvider``) as further
    /// top-level keys; a section whose key the dump already has is left out.
    struct WithSections: Encodable {
        var dump: Dump
        var sections: [(key: String, value: any Encodable & Sendable)]

        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: any Encoder) throws {
            try dump.encode(to: encoder)
            var container = encoder.container(keyedBy: Key.self)
            for section in sections { try container.encode(section.value, forKey: Key(stringValue: section.key)) }
        }
    }

    /// The kernel's own top-level keys, which plugin sections may not take.
    static let reservedKeys: Set<String> = [
        "node", "meshVersion", "meshOrigins", "meshConflicts", "workloads", "services", "policies", "plugins",
        "connections", "certificates",
    ]

    static func sections(node: ProxyNode) -> [(key: String, value: any Encodable & Sendable)] {
        var seen = reservedKeys
        return node.plugins.compactMap { $0 as? any ConfigDumpSectionProvider }.compactMap { provider in
            let key = provider.configDumpKey
            guard seen.insert(key).inserted else { return nil }
            return (key, provider.configDumpSection())
        }
    }

    static func renderPlugins(node: ProxyNode) -> String {
        encode(plugins(node: node))
    }

    static func encode(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else { return "{}" }
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
