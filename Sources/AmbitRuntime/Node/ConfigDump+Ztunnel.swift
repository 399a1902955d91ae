import Foundation
import Kernel

/// The parts of `/config_dump` in ztunnel's shape, field for field as ztunnel serializes
/// them (camelCase, its enum spellings, `network/ip` addresses, defaults left out where
/// ztunnel leaves them out), so `istioctl ztunnel-config … --file` reads an Ambit dump.
/// Keys ztunnel does not have are Ambit's own and say so in their comments; istioctl
/// ignores them.
extension ConfigDump {
    /// A workload (ztunnel's `Workload`).
    struct WorkloadView: Encodable {
        var workloadIps: [String]
        var waypoint: GatewayAddress?
        var networkGateway: GatewayAddress?
        var `protocol`: String
        var networkMode: String
        var uid: String
        var name: String
        var namespace: String
        var trustDomain: String?
        var serviceAccount: String?
        var network: String?
        var workloadName: String?
        var canonicalName: String?
        var canonicalRevision: String?
        var hostname: String?
        var node: String?
        var applicationTunnel: ApplicationTunnelView?
        var authorizationPolicies: [String]?
        var status: String
        var clusterId: String
        /// Left out when every part is unknown, as ztunnel does.
        var locality: Locality?
        /// The services it backs, `namespace/hostname`; the port maps are on the services'
        /// endpoints, as in ztunnel.
        var services: [String]?
        var capacity: UInt32
        /// Ambit: labels, matched by policy selectors.
        var labels: [String: String]?
        /// Ambit: the pod's network namespace on this node (in-pod capture).
        var netns: String?
        /// Ambit: the discovery source whose version is in force.
        var origin: String?

        init(_ w: Workload, origin: String?) {
            func nonEmpty(_ text: String) -> String? { text.isEmpty ? nil : text }
            workloadIps = w.workloadIPs.map(\.description)
            waypoint = w.waypoint
            networkGateway = w.networkGateway
            `protocol` = w.tunnelProtocol.rawValue
            networkMode = w.networkMode.rawValue
            uid = w.uid
            name = w.name
            namespace = w.namespace
            trustDomain = nonEmpty(w.trustDomain)
            serviceAccount = nonEmpty(w.serviceAccount)
            network = nonEmpty(w.network)
            workloadName = nonEmpty(w.workloadName)
            canonicalName = nonEmpty(w.canonicalName)
            canonicalRevision = nonEmpty(w.canonicalRevision)
            hostname = nonEmpty(w.hostname)
            node = nonEmpty(w.node)
            applicationTunnel = w.applicationTunnel.map(ApplicationTunnelView.init)
            authorizationPolicies = w.authorizationPolicies.isEmpty ? nil : w.authorizationPolicies
            status = w.status.rawValue
            clusterId = w.clusterID
            locality = w.locality.isEmpty ? nil : w.locality
            services = w.services.isEmpty ? nil : w.services.keys.map(\.description).sorted()
            capacity = w.capacity
            labels = w.labels.isEmpty ? nil : w.labels
            netns = w.netns
            self.origin = origin
        }
    }

    /// ztunnel writes an absent port as `null` rather than leaving it out.
    struct ApplicationTunnelView: Encodable {
        var `protocol`: String
        var port: UInt16?

        init(_ tunnel: ApplicationTunnel) {
            `protocol` = tunnel.protocol.rawValue
            port = tunnel.port
        }

        private enum CodingKeys: String, CodingKey { case `protocol`, port }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(`protocol`, forKey: .protocol)
            try container.encode(port, forKey: .port)
        }
    }

    /// A service (ztunnel's `Service`) with its endpoints by workload uid.
    struct ServiceView: Encodable {
        var name, namespace, hostname: String
        var vips: [String]
        var cidrVips: [CIDRView]?
        var ports: [String: UInt16]
        var endpoints: [String: EndpointView]
        var subjectAltNames: [String]
        var waypoint: GatewayAddress?
        var weightedWaypoints: [WeightedWaypoint]?
        var loadBalancer: LoadBalancer?
        var ipFamilies: String?
        var canonical: Bool
        var visibility: String
        /// Ambit: the discovery source whose version is in force.
        var origin: String?

        init(_ s: Service, endpoints: [Workload], origin: String?) {
            name = s.name
            namespace = s.namespace
            hostname = s.hostname
            vips = s.vips.map(\.description)
            cidrVips = s.cidrVIPs.isEmpty ? nil : s.cidrVIPs.map { CIDRView(network: $0.network, cidr: $0.cidr.description) }
            ports = Self.portMap(s.ports)
            let key = s.namespacedHostname
            self.endpoints = Dictionary(
                endpoints.map { ($0.uid, EndpointView($0, ports: $0.services[key] ?? [:])) },
                uniquingKeysWith: { first, _ in first })
            subjectAltNames = s.subjectAltNames
            waypoint = s.waypoint
            weightedWaypoints = s.weightedWaypoints.isEmpty ? nil : s.weightedWaypoints
            loadBalancer = s.loadBalancer
            ipFamilies = s.ipFamilies?.rawValue
            canonical = s.canonical
            visibility = s.visibility.rawValue
            self.origin = origin
        }

        /// `{80: 8080}` as JSON writes a map keyed by numbers: `{"80": 8080}`.
        static func portMap(_ ports: [UInt16: UInt16]) -> [String: UInt16] {
            Dictionary(uniqueKeysWithValues: ports.map { (String($0.key), $0.value) })
        }
    }

    /// ztunnel's `NetworkCidr`.
    struct CIDRView: Encodable {
        var network: String
        var cidr: String
    }

    /// One endpoint of a service (ztunnel's `Endpoint`): the workload and its port map
    /// for that service.
    struct EndpointView: Encodable {
        var workloadUid: String
        var port: [String: UInt16]
        var status: String

        init(_ workload: Workload, ports: [UInt16: UInt16]) {
            workloadUid = workload.uid
            port = ServiceView.portMap(ports)
            status = workload.status.rawValue
        }
    }

    /// An authorization policy (ztunnel's `Authorization`).
    struct PolicyView: Encodable {
        var name, namespace: String
        /// `Global`, `Namespace` or `WorkloadSelector`.
        var scope: String
        /// `Allow` or `Deny`.
        var action: String
        var rules: [[[MatchView]]]
        var dryRun: Bool
        /// Ambit: the labels a `WorkloadSelector` policy selects (istiod lists the
        /// workloads' policies instead); left out when there are none.
        var selector: [String: String]?

        init(_ p: AuthorizationPolicy) {
            name = p.name
            namespace = p.namespace
            switch p.scope {
            case .global: scope = "Global"
            case .namespace: scope = "Namespace"
            case .workloadSelector(let labels):
                scope = "WorkloadSelector"
                selector = labels.isEmpty ? nil : labels
            }
            action = p.action.rawValue
            rules = p.rules.map { $0.map { $0.map(MatchView.init) } }
            dryRun = p.dryRun
        }
    }

    /// One match of a clause (ztunnel's `RbacMatch`); empty fields are left out.
    struct MatchView: Encodable {
        var namespaces, notNamespaces, principals, notPrincipals: [StringMatchView]?
        var serviceAccounts, notServiceAccounts: [ServiceAccountView]?
        var sourceIps, notSourceIps, destinationIps, notDestinationIps: [String]?
        var destinationPorts, notDestinationPorts: [UInt16]?

        init(_ m: PolicyMatch) {
            func strings(_ list: [StringMatch]) -> [StringMatchView]? { list.isEmpty ? nil : list.map(StringMatchView.init) }
            func accounts(_ list: [StringMatch]) -> [ServiceAccountView]? {
                list.isEmpty ? nil : list.map(ServiceAccountView.init)
            }
            func blocks(_ list: [CIDR]) -> [String]? { list.isEmpty ? nil : list.map(\.description) }
            func ports(_ list: [UInt16]) -> [UInt16]? { list.isEmpty ? nil : list }
            namespaces = strings(m.namespaces)
            notNamespaces = strings(m.notNamespaces)
            principals = strings(m.principals)
            notPrincipals = strings(m.notPrincipals)
            serviceAccounts = accounts(m.serviceAccounts)
            notServiceAccounts = accounts(m.notServiceAccounts)
            sourceIps = blocks(m.sourceIPs)
            notSourceIps = blocks(m.notSourceIPs)
            destinationIps = blocks(m.destinationIPs)
            notDestinationIps = blocks(m.notDestinationIPs)
            destinationPorts = ports(m.destinationPorts)
            notDestinationPorts = ports(m.notDestinationPorts)
        }
    }

    /// ztunnel's `StringMatch`, externally tagged: `{"Exact": "x"}`, `{"Prefix": "x"}`,
    /// `{"Suffix": "x"}`, `{"Presence": []}`.
    struct StringMatchView: Encodable {
        var match: StringMatch

        init(_ match: StringMatch) { self.match = match }

        private struct Tag: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(_ name: String) { stringValue = name }
            init?(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: Tag.self)
            switch match {
            case .exact(let value): try container.encode(value, forKey: Tag("Exact"))
            case .prefix(let value): try container.encode(value, forKey: Tag("Prefix"))
            case .suffix(let value): try container.encode(value, forKey: Tag("Suffix"))
            case .presence: try container.encode([String](), forKey: Tag("Presence"))
            }
        }
    }

    /// ztunnel's `ServiceAccountMatch` (`{"namespace": "ns", "serviceAccount": "sa"}`) for
    /// an exact `ns/sa`; any other form (Ambit's local config also takes prefixes and
    /// suffixes of `ns/sa`) has no ztunnel spelling and is written as a string match.
    struct ServiceAccountView: Encodable {
        var match: StringMatch

        init(_ match: StringMatch) { self.match = match }

        private enum CodingKeys: String, CodingKey { case namespace, serviceAccount }

        func encode(to encoder: any Encoder) throws {
            if case .exact(let text) = match, let slash = text.firstIndex(of: "/") {
                var container = encoder.container(keyedBy: CodingKeys.self)
                try container.encode(String(text[..<slash]), forKey: .namespace)
                try container.encode(String(text[text.index(after: slash)...]), forKey: .serviceAccount)
            } else {
                try StringMatchView(match).encode(to: encoder)
            }
        }
    }

    /// One identity's certificates (ztunnel's `CertsDump`).
    struct CertificatesView: Encodable {
        var identity: String
        /// `Available`, `Initializing` or `Unavailable: <why>`, ztunnel's states.
        var state: String
        /// Leaf first, then intermediates; empty unless available.
        var certChain: [CertificateView]
        var rootCerts: [CertificateView]
        /// Ambit: the fetch state, `pending`, `fetching`, `available`, `failed`, `expired`.
        var fetchState: String
        /// Ambit: the priority of the queued or running fetch.
        var priority: String?
        /// Ambit: consecutive failed fetches.
        var failures: Int
        /// Ambit: the last fetch error, while failing.
        var lastError: String?

        init(_ c: CertificateStatus, now: Date) {
            identity = c.identity.description
            let usable = !c.chainDetails.isEmpty && (c.notBefore.map { $0 <= now } ?? true)
                && (c.notAfter.map { now < $0 } ?? true)
            if usable {
                // A certificate being rotated, or whose renewal is failing, is still served.
                state = "Available"
                certChain = c.chainDetails.map(CertificateView.init)
                rootCerts = c.roots.map(CertificateView.init)
            } else {
                switch c.state {
                case "failed": state = "Unavailable: \(c.lastError ?? "the certificate could not be fetched")"
                case "expired":
                    state = "Unavailable: the certificate expired"
                        + (c.notAfter.map { " at \(ConfigDump.rfc3339($0))" } ?? "")
                default: state = "Initializing"
                }
                certChain = []
                rootCerts = []
            }
            fetchState = c.state
            priority = c.priority?.description
            failures = c.failures
            lastError = c.lastError
        }
    }

    /// One certificate (ztunnel's `CertDump`): the PEM text base64-encoded, as ztunnel
    /// writes it; the serial in decimal; RFC 3339 times to the second.
    struct CertificateView: Encodable {
        var pem: String
        var serialNumber: String
        var validFrom: String
        var expirationTime: String

        init(_ d: CertificateDetails) {
            pem = Data(d.pem.utf8).base64EncodedString()
            serialNumber = d.serialNumber
            validFrom = ConfigDump.rfc3339(d.notBefore)
            expirationTime = ConfigDump.rfc3339(d.notAfter)
        }
    }

    /// A local workload and its open connections (ztunnel's `workloadState` entry, what
    /// `istioctl ztunnel-config connections` reads).
    struct WorkloadStateView: Encodable {
        /// `Up`, or `Pending` while a captured pod's listeners are not all up.
        var state: String
        var connections: WorkloadConnectionsView
        var info: WorkloadInfoView
    }

    struct WorkloadConnectionsView: Encodable {
        var inbound: [InboundConnectionView] = []
        var outbound: [OutboundConnectionView] = []
    }

    struct WorkloadInfoView: Encodable {
        var name, namespace, trustDomain, serviceAccount: String
    }

    /// ztunnel's `InboundConnectionDump`: `originalDst` is the `forwarded: host=` a
    /// waypoint sent, which Ambit does not record, so it is `null` as in ztunnel without one.
    struct InboundConnectionView: Encodable {
        var src: String
        var originalDst: String?
        var actualDst: String
        /// `HBONE` when the peer authenticated, else `TCP`.
        var `protocol`: String

        private enum CodingKeys: String, CodingKey { case src, originalDst, actualDst, `protocol` }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(src, forKey: .src)
            try container.encode(originalDst, forKey: .originalDst)
            try container.encode(actualDst, forKey: .actualDst)
            try container.encode(`protocol`, forKey: .protocol)
        }
    }

    /// ztunnel's `OutboundConnection`: what the application asked for and where the node
    /// actually connected (an HBONE peer's `ip:15008`, the endpoint a service address went
    /// to).
    struct OutboundConnectionView: Encodable {
        var src: String
        var originalDst: String
        var actualDst: String
        /// `HBONE` or `TCP`.
        var `protocol`: String
    }

    /// `workloadState`: every workload local to this node, by uid, with the connections it
    /// originates (outbound) or receives (inbound).
    static func workloadState(node: ProxyNode, mesh: MeshSnapshot) -> [String: WorkloadStateView] {
        let nodeName = node.plan.manifest.node.name
        let pending = Set(node.readiness.pending)
        var states: [String: WorkloadStateView] = [:]
        for workload in mesh.workloads.values
        where nodeName.isEmpty || workload.node.isEmpty || workload.node == nodeName {
            states[workload.uid] = WorkloadStateView(
                state: pending.contains(CapturedPods.readinessComponent(uid: workload.uid)) ? "Pending" : "Up",
                connections: WorkloadConnectionsView(),
                info: WorkloadInfoView(
                    name: workload.name, namespace: workload.namespace, trustDomain: workload.trustDomain,
                    serviceAccount: workload.serviceAccount))
        }
        for record in node.connections.records.sorted(by: { $0.id < $1.id }) {
            switch record.direction {
            case .outbound:
                guard let uid = record.sourceWorkload?.uid, states[uid] != nil else { continue }
                states[uid]!.connections.outbound.append(
                    OutboundConnectionView(
                        src: record.source.description, originalDst: record.destination.description,
                        actualDst: (record.transportDestination ?? record.destination).description,
                        protocol: record.tunnelAuthority != nil ? "HBONE" : "TCP"))
            case .inbound:
                guard let uid = record.destinationWorkload?.uid, states[uid] != nil else { continue }
                states[uid]!.connections.inbound.append(
                    InboundConnectionView(
                        src: record.source.description, originalDst: nil, actualDst: record.destination.description,
                        protocol: record.peerIdentity != nil ? "HBONE" : "TCP"))
            }
        }
        return states
    }

    /// `stagedServices`: endpoints of services the mesh does not have (yet), by
    /// `namespace/hostname` then workload uid, as ztunnel keeps them until the service
    /// arrives.
    static func stagedServices(_ mesh: MeshSnapshot) -> [String: [String: EndpointView]] {
        var staged: [String: [String: EndpointView]] = [:]
        for workload in mesh.workloads.values {
            for (service, ports) in workload.services where mesh.services[service] == nil {
                staged[service.description, default: [:]][workload.uid] = EndpointView(workload, ports: ports)
            }
        }
        return staged
    }

    /// ztunnel's time format: RFC 3339, UTC, whole seconds.
    static func rfc3339(_ date: Date) -> String {
        date.formatted(.iso8601)
    }
}
