public import Kernel

/// What the outbound path knows about a captured connection when it decides where to send
/// it.
public struct OutboundRequest: Sendable {
    /// The local workload that opened the connection; nil when the proxy could not tell
    /// (e.g. an explicit SOCKS5 client that is not a known workload).
    public var source: Workload?
    /// The application's own address, if known. Not used by the decision today; carried so
    /// that callers hand one value to the decision, telemetry and the dialer.
    public var sourceAddress: SocketAddr?
    /// The address the application asked for (the original destination).
    public var destination: SocketAddr
    /// The network the destination is looked up in: the node's (manifest `node.network`,
    /// ``PluginContext/nodeNetwork``); empty for the default network.
    public var network: String

    /// Creates a request.
    public init(source: Workload?, sourceAddress: SocketAddr? = nil, destination: SocketAddr, network: String = "") {
        self.source = source
        self.sourceAddress = sourceAddress
        self.destination = destination
        self.network = network
    }
}

/// Where and how to open an HBONE (mTLS + HTTP/2 CONNECT) tunnel.
public struct HBONETarget: Sendable, Equatable {
    /// Where to open the mTLS connection: `<workload ip>:15008`, or the waypoint's
    /// `ip:hboneMtlsPort`.
    public var gateway: SocketAddr
    /// The CONNECT `:authority`: `<ip>:<target port>` of the chosen workload, or the
    /// original `VIP:port` when going to a service's waypoint (`[v6]:port` for IPv6).
    public var authority: String
    /// Identities the peer may present; the TLS client accepts any of them. For a
    /// workload: its own identity, then the service's subject alt names. For a waypoint:
    /// the waypoint workload's identity, then its service's subject alt names.
    public var expectedIdentities: [SpiffeID]
    /// The workload the connection is meant for (not the waypoint). Nil when going to a
    /// service's waypoint: the waypoint picks the endpoint.
    public var destinationWorkload: Workload?
    /// The service the application addressed, when it addressed one.
    public var service: Service?
    /// True when ``gateway`` is a waypoint rather than the destination itself.
    public var viaWaypoint: Bool
    /// The waypoint workload chosen when ``viaWaypoint`` is true (for telemetry and logs).
    public var waypoint: Workload?

    /// Creates a target.
    public init(
        gateway: SocketAddr, authority: String, expectedIdentities: [SpiffeID],
        destinationWorkload: Workload?, service: Service?, viaWaypoint: Bool, waypoint: Workload? = nil
    ) {
        self.gateway = gateway
        self.authority = authority
        self.expectedIdentities = expectedIdentities
        self.destinationWorkload = destinationWorkload
        self.service = service
        self.viaWaypoint = viaWaypoint
        self.waypoint = waypoint
    }
}

/// The outcome of the outbound routing decision.
public enum ForwardingDecision: Sendable, Equatable {
    /// Tunnel over HBONE.
    case hbone(HBONETarget)
    /// An in-mesh-known workload that only speaks plain TCP: connect to `destination`
    /// directly.
    case plaintext(destination: SocketAddr, workload: Workload, service: Service?)
    /// An address the mesh does not know: plain TCP to the original destination.
    case passthrough(destination: SocketAddr)
    /// Do not forward; close the connection.
    case refuse(ConnectionRefusal)
}

/// The outbound routing decision (ztunnel's order): service waypoint → service endpoint →
/// pod IP → workload waypoint → HBONE or plain TCP; unknown addresses pass through.
public enum Forwarding {
    /// Ports a node proxy listens on that must never be a loopback destination:
    /// outbound 15001, inbound plaintext 15006, HBONE 15008, SOCKS5 15080.
    public static let proxyPorts: Set<UInt16> = ProxyPorts.own

    /// The port HBONE-capable workloads accept tunnels on.
    public static let hbonePort: UInt16 = ProxyPorts.hbone

    /// Decides where the connection in `request` goes.
    ///
    /// Pure: the same request, snapshot and RNG state give the same decision. The RNG is
    /// used only to pick among several endpoints (weighted by capacity).
    ///
    /// Choices beyond the ordered rules:
    /// - Self calls: a proxy port on a loopback or unspecified address is refused, and so is
    ///   a proxy port on one of the source workload's own addresses. In in-pod mode the proxy
    ///   listens inside the pod's network namespace, so the pod's own IP on 15001/15006/15008
    ///   reaches the proxy itself just as loopback does (ztunnel's shared mode refuses its
    ///   own IP for the same reason).
    /// - A service's waypoint is used for every port (the waypoint routes), so an unknown
    ///   port is only refused for services without one.
    /// - Networks: the destination (service VIP or workload address) is looked up in the
    ///   node's network (``OutboundRequest/network``); endpoints must be on the source's own
    ///   network (the node's when the source is unknown).
    /// - Shared VIPs: when services in several namespaces have the VIP, the one in the
    ///   source's namespace wins, then a canonical one; a service with namespace visibility
    ///   is invisible to sources in other namespaces. An address in a service's
    ///   ``Service/cidrVIPs`` block reaches it when no VIP matches exactly.
    /// - Address families: an endpoint is reached on an address of a family the service's
    ///   ``Service/ipFamilies`` allows, preferring the family the client used; an endpoint
    ///   without one is left out.
    /// - Load balancing (``Service/loadBalancer``): `Passthrough` sends service traffic to
    ///   the address the client asked for (after the service's waypoint, which still
    ///   applies); `Failover` keeps the endpoints sharing the longest run of routing
    ///   preferences (network, region, zone, subzone, node, cluster) with the source;
    ///   `Strict` keeps only those sharing all of them (`internalTrafficPolicy: Local` is
    ///   Strict over Node), refusing the service when there are none; health policy
    ///   `AllowAll` admits unhealthy endpoints. Waypoint services' endpoints are chosen the
    ///   same way.
    /// - Endpoint selection: healthy endpoints on the source's network, weighted by
    ///   ``Workload/capacity``; capacity 0 is never picked. The target port is the
    ///   endpoint's own mapping of the service port, else the service's target port, else
    ///   the service port itself; an endpoint without its own mapping is left out only when
    ///   the service's target port is 0 (ztunnel's rule).
    /// - Waypoints: an address names either a workload (used directly) or a service VIP (one
    ///   of its healthy endpoints is picked); a hostname names a service whose healthy
    ///   endpoint is picked, never its VIP, because the client must know which identity the
    ///   waypoint presents. An address the mesh does not know is refused
    ///   (``Refusal/Code/waypointUnresolved``): without a workload there is no identity to
    ///   verify.
    /// - Weighted waypoints: a service with ``Service/weightedWaypoints`` picks one per
    ///   connection by weight (a canary); when they are all weight 0, ``Service/waypoint``.
    /// - The source skips a waypoint it is itself: its IPs contain the waypoint address, or it
    ///   backs the waypoint service (for a service, any of its waypoints).
    public static func decide(
        _ request: OutboundRequest, in mesh: MeshSnapshot, using rng: inout some RandomNumberGenerator
    ) -> ForwardingDecision {
        let destination = request.destination
        let source = request.source
        let network = request.network

        if proxyPorts.contains(destination.port),
            destination.ip.isLoopback || destination.ip.isUnspecified
                || source?.workloadIPs.contains(destination.ip) == true
        {
            return .refuse(
                ConnectionRefusal(
                    .selfCall, "\(destination) is this proxy's own port; refusing to connect to itself"))
        }

        if let service = mesh.service(at: destination.ip, network: network, namespace: source?.namespace) {
            return toService(service, request: request, network: endpointNetwork(request), mesh: mesh, rng: &rng)
        }

        guard let workload = mesh.workload(at: destination.ip, network: network) else {
            return .passthrough(destination: destination)
        }
        return toWorkload(
            workload, at: destination, service: nil, request: request, mesh: mesh, rng: &rng)
    }

    /// Decides with the system random number generator. See
    /// ``decide(_:in:using:)`` for the rules.
    public static func decide(_ request: OutboundRequest, in mesh: MeshSnapshot) -> ForwardingDecision {
        var rng = SystemRandomNumberGenerator()
        return decide(request, in: mesh, using: &rng)
    }

    // MARK: - Steps

    private static func toService(
        _ service: Service, request: OutboundRequest, network: String, mesh: MeshSnapshot,
        rng: inout some RandomNumberGenerator
    ) -> ForwardingDecision {
        let destination = request.destination
        let name = service.namespacedHostname

        // A source that is one of the service's waypoints sends on to an endpoint.
        let waypoints = [service.waypoint].compactMap { $0 } + service.weightedWaypoints.map(\.destination)
        if !waypoints.contains(where: { isWaypoint(request.source, $0, in: mesh) }),
            let waypoint = pickWeighted(service.weightedWaypoints, weight: \.weight, using: &rng)?.destination
                ?? service.waypoint
        {
            return viaWaypoint(
                waypoint, authority: destination, destinationWorkload: nil, service: service,
                request: request, mesh: mesh, rng: &rng)
        }

        // Passthrough: the service names addresses, not endpoints to choose from.
        if service.loadBalancer?.mode == .passthrough {
            return .passthrough(destination: destination)
        }

        guard let serviceTarget = service.ports[destination.port] else {
            return .refuse(
                ConnectionRefusal(
                    .servicePortUnknown, "service \(name) (\(destination.ip)) has no port \(destination.port)"))
        }

        let candidates: [(workload: Workload, address: SocketAddr)] = mesh.endpoints(of: name).compactMap {
            endpoint in
            // An endpoint that does not list the port takes the service's target port; it
            // is left out only when there is none to take (ztunnel's rule).
            let endpointTarget = endpoint.services[name]?[destination.port]
            guard admits(endpoint, service), endpoint.network == network, endpoint.capacity > 0,
                endpointTarget != nil || serviceTarget != 0,
                let ip = preferredIP(of: endpoint, like: destination.ip, families: service.ipFamilies)
            else { return nil }
            let target =
                endpointTarget.flatMap { $0 != 0 ? $0 : nil } ?? (serviceTarget != 0 ? serviceTarget : destination.port)
            return (endpoint, SocketAddr(ip: ip, port: target))
        }
        let ranked = preferred(candidates, by: service.loadBalancer, request: request, endpoint: \.workload)
        guard let chosen = pickWeighted(ranked, weight: { $0.workload.capacity }, using: &rng) else {
            return .refuse(
                ConnectionRefusal(
                    .noHealthyEndpoint, "service \(name) has no healthy endpoint for port \(destination.port)"))
        }
        return toWorkload(
            chosen.workload, at: chosen.address, service: service, request: request, mesh: mesh, rng: &rng)
    }

    /// The last steps, once the destination workload and address are known.
    private static func toWorkload(
        _ workload: Workload, at address: SocketAddr, service: Service?, request: OutboundRequest,
        mesh: MeshSnapshot, rng: inout some RandomNumberGenerator
    ) -> ForwardingDecision {
        // A service's waypoint was already considered; sending service traffic through the
        // workload's waypoint too would traverse L7 policy twice.
        if service == nil, let waypoint = workload.waypoint, !isWaypoint(request.source, waypoint, in: mesh) {
            return viaWaypoint(
                waypoint, authority: address, destinationWorkload: workload, service: nil,
                request: request, mesh: mesh, rng: &rng)
        }
        switch workload.tunnelProtocol {
        case .hbone:
            return .hbone(
                HBONETarget(
                    gateway: SocketAddr(ip: address.ip, port: hbonePort),
                    authority: address.description,
                    expectedIdentities: identities(workload, service),
                    destinationWorkload: workload, service: service, viaWaypoint: false))
        case .tcp:
            return .plaintext(destination: address, workload: workload, service: service)
        }
    }

    private static func viaWaypoint(
        _ waypoint: GatewayAddress, authority: SocketAddr, destinationWorkload: Workload?, service: Service?,
        request: OutboundRequest, mesh: MeshSnapshot, rng: inout some RandomNumberGenerator
    ) -> ForwardingDecision {
        let network = endpointNetwork(request)
        let resolved: (workload: Workload, ip: IPAddress, service: Service?)?
        let name: String
        switch waypoint.destination {
        case .address(let address):
            name = address.description
            if let workload = mesh.workload(at: address.ip, network: address.network) {
                resolved = (workload, address.ip, nil)
            } else if let waypointService = mesh.service(at: address.ip, network: address.network) {
                resolved = pickWaypointEndpoint(
                    of: waypointService, request: request, network: network, like: authority.ip, mesh: mesh, rng: &rng)
            } else {
                resolved = nil
            }
        case .hostname(let hostname):
            name = hostname.description
            resolved = mesh.services[hostname].flatMap {
                pickWaypointEndpoint(of: $0, request: request, network: network, like: authority.ip, mesh: mesh, rng: &rng)
            }
        }
        guard let resolved else {
            return .refuse(
                ConnectionRefusal(
                    .waypointUnresolved, "waypoint \(name) for \(authority) is not a known workload or has no healthy endpoint"))
        }
        return .hbone(
            HBONETarget(
                gateway: SocketAddr(ip: resolved.ip, port: waypoint.hboneMtlsPort),
                authority: authority.description,
                expectedIdentities: identities(resolved.workload, resolved.service),
                destinationWorkload: destinationWorkload, service: service, viaWaypoint: true,
                waypoint: resolved.workload))
    }

    // MARK: - Helpers

    /// The network a service's endpoints must be on to be reached directly: the source's
    /// own, else the node's (other networks need a network gateway).
    private static func endpointNetwork(_ request: OutboundRequest) -> String {
        request.source?.network ?? request.network
    }

    private static func pickWaypointEndpoint(
        of service: Service, request: OutboundRequest, network: String, like ip: IPAddress, mesh: MeshSnapshot,
        rng: inout some RandomNumberGenerator
    ) -> (workload: Workload, ip: IPAddress, service: Service?)? {
        // A waypoint listens on its HBONE port whatever ports its service declares, so only
        // health and reachability matter here.
        let candidates: [(workload: Workload, ip: IPAddress)] = mesh.endpoints(of: service.namespacedHostname)
            .compactMap { endpoint in
                guard admits(endpoint, service), endpoint.network == network, endpoint.capacity > 0,
                    let address = preferredIP(of: endpoint, like: ip, families: service.ipFamilies)
                else { return nil }
                return (endpoint, address)
            }
        let ranked = preferred(candidates, by: service.loadBalancer, request: request, endpoint: \.workload)
        return pickWeighted(ranked, weight: { $0.workload.capacity }, using: &rng)
            .map { ($0.workload, $0.ip, service) }
    }

    /// Whether `endpoint`'s health lets it serve `service`: healthy, or any health when
    /// the service admits every endpoint (``LoadBalancer/HealthPolicy/allowAll``).
    private static func admits(_ endpoint: Workload, _ service: Service) -> Bool {
        endpoint.status == .healthy || service.loadBalancer?.healthPolicy == .allowAll
    }

    /// The candidates a service's load balancer prefers for this source (ztunnel's
    /// ranking). In ``LoadBalancer/Mode/failover`` and ``LoadBalancer/Mode/strict``
    /// modes an endpoint's rank is how many of the routing preferences it shares with the
    /// source, counted in order up to the first it does not share; only the best-ranked
    /// are kept, and in strict mode only those sharing every preference. When the first
    /// preference is ``LoadBalancer/Scope/network``, an endpoint on the source's network
    /// outranks every endpoint on another (a mismatch there does not stop the count).
    /// An unknown source shares nothing but its network (the node's). Other modes keep
    /// every candidate.
    private static func preferred<Candidate>(
        _ candidates: [Candidate], by balancer: LoadBalancer?, request: OutboundRequest,
        endpoint: (Candidate) -> Workload
    ) -> [Candidate] {
        guard let balancer, balancer.mode == .failover || balancer.mode == .strict else { return candidates }
        let source = request.source
        let preferences = balancer.routingPreferences
        let networkFirst = preferences.first == .network
        var best: [Candidate] = []
        var bestRank = -1
        for candidate in candidates {
            let workload = endpoint(candidate)
            var rank = 0
            var networkBonus = 0
            for scope in preferences {
                let shared: Bool
                switch scope {
                case .region: shared = source.map { $0.locality.region == workload.locality.region } ?? false
                case .zone: shared = source.map { $0.locality.zone == workload.locality.zone } ?? false
                case .subzone: shared = source.map { $0.locality.subzone == workload.locality.subzone } ?? false
                case .node: shared = source.map { $0.node == workload.node } ?? false
                case .cluster: shared = source.map { $0.clusterID == workload.clusterID } ?? false
                case .network:
                    shared = endpointNetwork(request) == workload.network
                    if networkFirst {
                        guard shared else { continue }
                        networkBonus = preferences.count - 1
                    }
                }
                guard shared else { break }
                rank += 1
            }
            if balancer.mode == .strict && rank != preferences.count { continue }
            rank += networkBonus
            if rank > bestRank {
                best = [candidate]
                bestRank = rank
            } else if rank == bestRank {
                best.append(candidate)
            }
        }
        return best
    }

    /// Whether `source` is the waypoint named by `gateway`, so its traffic must not be sent
    /// back to itself.
    private static func isWaypoint(_ source: Workload?, _ gateway: GatewayAddress, in mesh: MeshSnapshot) -> Bool {
        guard let source else { return false }
        switch gateway.destination {
        case .address(let address):
            if source.network == address.network, source.workloadIPs.contains(address.ip) { return true }
            if let service = mesh.service(at: address.ip, network: address.network) {
                return source.services[service.namespacedHostname] != nil
            }
            return false
        case .hostname(let name):
            return source.services[name] != nil
        }
    }

    /// Among the workload's addresses of a family the service allows (any without a
    /// restriction), the one in the same family as `ip` (so an IPv6 client reaches an IPv6
    /// endpoint), else the first; nil when it has none of an allowed family.
    private static func preferredIP(of workload: Workload, like ip: IPAddress, families: IPFamilies?) -> IPAddress? {
        let usable = workload.workloadIPs.filter { families?.allows($0) ?? true }
        return usable.first { $0.isIPv4 == ip.isIPv4 } ?? usable.first
    }

    /// The workload's identity, then the service's subject alt names that parse as SPIFFE
    /// IDs, without duplicates. Unparsable names are skipped: they could never match a
    /// peer's URI SAN anyway.
    private static func identities(_ workload: Workload, _ service: Service?) -> [SpiffeID] {
        var result = [workload.identity]
        for name in service?.subjectAltNames ?? [] {
            guard let id = try? SpiffeID(parsing: name), !result.contains(id) else { continue }
            result.append(id)
        }
        return result
    }

    /// Picks one element with probability proportional to its weight; nil when empty or
    /// every weight is zero. Consumes no randomness for a single candidate.
    private static func pickWeighted<Element>(
        _ elements: [Element], weight: (Element) -> UInt32, using rng: inout some RandomNumberGenerator
    ) -> Element? {
        guard elements.count > 1 else { return elements.first.flatMap { weight($0) > 0 ? $0 : nil } }
        let total = elements.reduce(UInt64(0)) { $0 + UInt64(weight($1)) }
        guard total > 0 else { return nil }
        var point = rng.next(upperBound: total)
        for element in elements {
            let w = UInt64(weight(element))
            if point < w { return element }
            point -= w
        }
        return elements.last
    }
}
