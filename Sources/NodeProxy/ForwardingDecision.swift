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
    /// Double HBONE: the next hop (the destination workload, or its waypoint) is on another
    /// network and reached through its network gateway. ``gateway``, ``authority`` (the
    /// service's `hostname:port`) and ``expectedIdentities`` then describe the outer tunnel
    /// to the gateway, and this the tunnel opened inside it to the next hop.
    public var inner: InnerTunnel?
    /// The network gateway's workload when ``inner`` is set (for logs).
    public var networkGateway: Workload?

    /// Creates a target.
    public init(
        gateway: SocketAddr, authority: String, expectedIdentities: [SpiffeID],
        destinationWorkload: Workload?, service: Service?, viaWaypoint: Bool, waypoint: Workload? = nil,
        inner: InnerTunnel? = nil, networkGateway: Workload? = nil
    ) {
        self.gateway = gateway
        self.authority = authority
        self.expectedIdentities = expectedIdentities
        self.destinationWorkload = destinationWorkload
        self.service = service
        self.viaWaypoint = viaWaypoint
        self.waypoint = waypoint
        self.inner = inner
        self.networkGateway = networkGateway
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
    ///   port is only refused for services without one. With ``Service/weightedWaypoints``
    ///   one of them is picked per connection by weight (entries of weight 0 never); when
    ///   none has weight, ``Service/waypoint`` is used.
    /// - Networks: the destination (service VIP or workload address) is looked up in the
    ///   node's network (``OutboundRequest/network``). A service's endpoints on the source's
    ///   own network (the node's when the source is unknown) are reached directly; an
    ///   endpoint on another network only through its ``Workload/networkGateway`` (one
    ///   without is never picked), by double HBONE: an outer tunnel to the gateway with
    ///   `:authority <service hostname>:<port>`, the gateway's identity verified, and inside
    ///   it mTLS to the endpoint (its identity or the service's SANs) and a CONNECT with the
    ///   same authority and `x-forwarded-network`. Without a load balancer, endpoints of
    ///   every network are candidates alike (ztunnel's rule); `Failover` over `NETWORK`
    ///   keeps the source's network first and reaches another only when it has no eligible
    ///   endpoint. A service's waypoint on another network is reached the same way. A
    ///   gateway is a workload at its address, or a service (at its address, or by hostname)
    ///   declaring its HBONE port whose endpoint is picked; anything else is refused
    ///   (``ConnectionRefusal/Code/networkGatewayUnresolved``). Workload addresses of other
    ///   networks are never looked up: cross-network traffic is service-addressed.
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
    /// - Waypoints: an address names either a workload (used directly, on the gateway's HBONE
    ///   port) or a service VIP (one of its healthy endpoints is picked); a hostname names a
    ///   service whose healthy endpoint is picked, never its VIP, because the client must know
    ///   which identity the waypoint presents (when no service has the hostname, a workload
    ///   with it, used directly). A waypoint service must declare the HBONE port
    ///   (else it has no endpoint to pick, as in ztunnel, but for an endpoint with an
    ///   application tunnel on a port of its own); the tunnel goes to the endpoint's target
    ///   port for it (its own port map, else the service's). An address the mesh does
    ///   not know is refused (``ConnectionRefusal/Code/waypointUnresolved``): without a
    ///   workload there is no identity to verify.
    /// - Only a workload's waypoint is skipped by its own traffic: when the source is that
    ///   waypoint (one of the workloads it resolves to has the source's identity **and** the
    ///   source address among its IPs; without a source address it is not), the connection
    ///   goes to the workload directly. A service's waypoint is used whoever the source is.
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

        if let waypoint = serviceWaypoint(of: service, using: &rng) {
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

        // An endpoint on another network is reached through its network gateway (its own
        // address does not matter then); nil address marks it.
        let candidates: [(workload: Workload, address: SocketAddr?)] = mesh.endpoints(of: name).compactMap {
            endpoint in
            // An endpoint that does not list the port takes the service's target port; it
            // is left out only when there is none to take (ztunnel's rule).
            let endpointTarget = endpoint.services[name]?[destination.port]
            guard admits(endpoint, service), endpoint.capacity > 0, endpointTarget != nil || serviceTarget != 0
            else { return nil }
            guard endpoint.network == network else {
                return endpoint.networkGateway == nil ? nil : (endpoint, nil)
            }
            guard let ip = preferredIP(of: endpoint, like: destination.ip, families: service.ipFamilies) else { return nil }
            return (endpoint, SocketAddr(ip: ip, port: service.targetPort(destination.port, on: endpoint) ?? destination.port))
        }
        let ranked = preferred(candidates, by: service.loadBalancer, request: request, endpoint: \.workload)
        guard let chosen = pickWeighted(ranked, weight: { $0.workload.capacity }, using: &rng) else {
            return .refuse(
                ConnectionRefusal(
                    .noHealthyEndpoint, "service \(name) has no healthy endpoint for port \(destination.port)"))
        }
        guard let address = chosen.address else {
            return throughNetworkGateway(
                to: chosen.workload, identities: identities(chosen.workload, service), service: service,
                waypoint: nil, request: request, mesh: mesh, rng: &rng)
        }
        return toWorkload(
            chosen.workload, at: address, service: service, request: request, mesh: mesh, rng: &rng)
    }

    /// The last steps, once the destination workload and address are known.
    private static func toWorkload(
        _ workload: Workload, at address: SocketAddr, service: Service?, request: OutboundRequest,
        mesh: MeshSnapshot, rng: inout some RandomNumberGenerator
    ) -> ForwardingDecision {
        // A service's waypoint was already considered; sending service traffic through the
        // workload's waypoint too would traverse L7 policy twice.
        if service == nil, let waypoint = workload.waypoint, !isFromWaypoint(request, waypoint, in: mesh) {
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
        let resolved: (workload: Workload, gateway: SocketAddr, service: Service?)?
        let name: String
        switch waypoint.destination {
        case .address(let address):
            name = address.description
            if let workload = mesh.workload(at: address.ip, network: address.network) {
                resolved = (workload, SocketAddr(ip: address.ip, port: waypoint.hboneMtlsPort), nil)
            } else if let waypointService = mesh.service(at: address.ip, network: address.network) {
                resolved = pickWaypointEndpoint(
                    of: waypointService, port: waypoint.hboneMtlsPort, request: request, network: network,
                    acrossNetworks: service != nil, like: authority.ip, mesh: mesh, rng: &rng)
            } else {
                resolved = nil
            }
        case .hostname(let hostname):
            name = hostname.description
            if let waypointService = mesh.services[hostname] {
                resolved = pickWaypointEndpoint(
                    of: waypointService, port: waypoint.hboneMtlsPort, request: request, network: network,
                    acrossNetworks: service != nil, like: authority.ip, mesh: mesh, rng: &rng)
            } else if let workload = mesh.workload(named: hostname),
                let ip = preferredIP(of: workload, like: authority.ip, families: nil)
            {
                resolved = (workload, SocketAddr(ip: ip, port: waypoint.hboneMtlsPort), nil)
            } else {
                resolved = nil
            }
        }
        guard let resolved else {
            return .refuse(
                ConnectionRefusal(
                    .waypointUnresolved,
                    "waypoint \(name) for \(authority) is not a known workload, or a service declaring port \(waypoint.hboneMtlsPort) with a healthy endpoint"))
        }
        // A service's waypoint on another network: through that network's gateway.
        if let service, resolved.workload.network != network {
            return throughNetworkGateway(
                to: resolved.workload, identities: identities(resolved.workload, resolved.service), service: service,
                waypoint: resolved.workload, request: request, mesh: mesh, rng: &rng)
        }
        return .hbone(
            HBONETarget(
                gateway: resolved.gateway,
                authority: authority.description,
                expectedIdentities: identities(resolved.workload, resolved.service),
                destinationWorkload: destinationWorkload, service: service, viaWaypoint: true,
                waypoint: resolved.workload))
    }

    // MARK: - Helpers

    /// The waypoint this connection to `service` goes through: one of its weighted
    /// waypoints, picked by weight (0 is never picked), else its waypoint; the weighted set
    /// is ignored when no entry has weight (ztunnel's `fetch_service_waypoint`).
    private static func serviceWaypoint(
        of service: Service, using rng: inout some RandomNumberGenerator
    ) -> GatewayAddress? {
        let weighted = service.weightedWaypoints.filter { $0.weight > 0 }
        return pickWeighted(weighted, weight: \.weight, using: &rng)?.destination ?? service.waypoint
    }

    /// The network a service's endpoints must be on to be reached directly: the source's
    /// own, else the node's (other networks need a network gateway).
    private static func endpointNetwork(_ request: OutboundRequest) -> String {
        request.source?.network ?? request.network
    }

    /// Double HBONE to `next` (an endpoint of `service` on another network, or the
    /// service's waypoint there) through `next`'s network gateway: the outer tunnel goes to
    /// the gateway (verified as the gateway's workload, or its service's SANs too) with
    /// `:authority <service hostname>:<port>`; the inner one, with the same authority, must
    /// reach one of `identities` (ztunnel's `build_request_through_gateway`; ztunnel accepts
    /// only the service's SANs inside, Ambit also the endpoint's own identity, as for any
    /// tunnel to it).
    private static func throughNetworkGateway(
        to next: Workload, identities finalIdentities: [SpiffeID], service: Service, waypoint: Workload?,
        request: OutboundRequest, mesh: MeshSnapshot, rng: inout some RandomNumberGenerator
    ) -> ForwardingDecision {
        let destination = request.destination
        guard let networkGateway = next.networkGateway else {
            return .refuse(
                ConnectionRefusal(
                    .networkGatewayUnresolved,
                    "\(next.uid) is on network \(next.network.isEmpty ? "(default)" : next.network) and has no network gateway"))
        }
        let port = networkGateway.hboneMtlsPort
        let resolved: (workload: Workload, address: SocketAddr, service: Service?)?
        let name: String
        switch networkGateway.destination {
        case .address(let address):
            name = address.description
            if let workload = mesh.workload(at: address.ip, network: address.network) {
                resolved = (workload, SocketAddr(ip: address.ip, port: port), nil)
            } else if let gatewayService = mesh.service(at: address.ip, network: address.network) {
                resolved = pickGatewayEndpoint(of: gatewayService, port: port, like: address.ip, mesh: mesh, rng: &rng)
            } else {
                resolved = nil
            }
        case .hostname(let hostname):
            name = hostname.description
            if let gatewayService = mesh.services[hostname] {
                resolved = pickGatewayEndpoint(of: gatewayService, port: port, like: destination.ip, mesh: mesh, rng: &rng)
            } else if let workload = mesh.workload(named: hostname),
                let ip = preferredIP(of: workload, like: destination.ip, families: nil)
            {
                resolved = (workload, SocketAddr(ip: ip, port: port), nil)
            } else {
                resolved = nil
            }
        }
        guard let resolved else {
            return .refuse(
                ConnectionRefusal(
                    .networkGatewayUnresolved,
                    "network gateway \(name) of \(next.uid) is not a known workload, or a service declaring port \(port) with a healthy endpoint"))
        }
        // Both CONNECTs name the service, so the gateway routes without opening the inner one.
        let authority = "\(service.hostname):\(destination.port)"
        return .hbone(
            HBONETarget(
                gateway: resolved.address, authority: authority,
                expectedIdentities: identities(resolved.workload, resolved.service),
                destinationWorkload: waypoint == nil ? next : nil, service: service, viaWaypoint: waypoint != nil,
                waypoint: waypoint,
                inner: InnerTunnel(
                    authority: authority, expectedIdentities: finalIdentities,
                    originNetwork: request.source?.network ?? request.network),
                networkGateway: resolved.workload))
    }

    /// An endpoint of a network gateway's service declaring `port` (health, capacity and
    /// the service's target-port mapping as for any service; on any network, with an
    /// address), and the address to dial.
    private static func pickGatewayEndpoint(
        of service: Service, port: UInt16, like ip: IPAddress, mesh: MeshSnapshot,
        rng: inout some RandomNumberGenerator
    ) -> (workload: Workload, address: SocketAddr, service: Service?)? {
        guard service.ports[port] != nil else { return nil }
        let candidates: [(workload: Workload, address: SocketAddr)] = mesh.endpoints(of: service.namespacedHostname)
            .compactMap { endpoint in
                guard admits(endpoint, service), endpoint.capacity > 0,
                    let address = preferredIP(of: endpoint, like: ip, families: service.ipFamilies)
                else { return nil }
                return (endpoint, SocketAddr(ip: address, port: service.targetPort(port, on: endpoint) ?? port))
            }
        return pickWeighted(candidates, weight: { $0.workload.capacity }, using: &rng).map { ($0.workload, $0.address, service) }
    }

    /// An eligible endpoint of the waypoint service on the caller's network, or with
    /// `acrossNetworks` (service traffic) on another network when it has a network gateway
    /// (health, capacity, address family and load balancing as for any service) and the address to
    /// tunnel to: the service must declare the HBONE `port` (ztunnel's waypoint resolution),
    /// mapped to the endpoint's target port, else the service's (0: the port itself). The
    /// endpoint need not list the port in its own map: a waypoint is not addressed by users.
    /// An endpoint with an application tunnel on a port of its own (a sandwiched waypoint)
    /// is taken on `port` even when the service does not declare it: its node proxy hands
    /// the stream to the tunnel's port.
    private static func pickWaypointEndpoint(
        of service: Service, port: UInt16, request: OutboundRequest, network: String, acrossNetworks: Bool,
        like ip: IPAddress, mesh: MeshSnapshot, rng: inout some RandomNumberGenerator
    ) -> (workload: Workload, gateway: SocketAddr, service: Service?)? {
        let serviceTarget = service.ports[port]
        let candidates: [(workload: Workload, gateway: SocketAddr)] = mesh.endpoints(of: service.namespacedHostname)
            .compactMap { endpoint in
                guard admits(endpoint, service), endpoint.capacity > 0,
                    serviceTarget != nil || endpoint.applicationTunnel?.port != nil
                else { return nil }
                let targetPort = service.targetPort(port, on: endpoint) ?? port
                guard endpoint.network == network else {
                    // Reached through its network gateway: its own address is not dialed.
                    guard acrossNetworks, endpoint.networkGateway != nil else { return nil }
                    let address = preferredIP(of: endpoint, like: ip, families: service.ipFamilies) ?? ip
                    return (endpoint, SocketAddr(ip: address, port: targetPort))
                }
                guard let address = preferredIP(of: endpoint, like: ip, families: service.ipFamilies) else { return nil }
                return (endpoint, SocketAddr(ip: address, port: targetPort))
            }
        let ranked = preferred(candidates, by: service.loadBalancer, request: request, endpoint: \.workload)
        return pickWeighted(ranked, weight: { $0.workload.capacity }, using: &rng)
            .map { ($0.workload, $0.gateway, service) }
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

    /// Whether the connection comes from the waypoint named by `gateway` (ztunnel's
    /// `check_from_waypoint`), so a workload's traffic from its own waypoint is not sent
    /// back to it: one of the workloads the gateway resolves to (the workload at its address,
    /// or any endpoint of its service) has the source's identity and the source address among
    /// its IPs. Fails closed: an unknown source or source address is not the waypoint.
    private static func isFromWaypoint(_ request: OutboundRequest, _ gateway: GatewayAddress, in mesh: MeshSnapshot) -> Bool {
        guard let source = request.source, let sourceIP = request.sourceAddress?.ip else { return false }
        let candidates: [Workload]
        switch gateway.destination {
        case .address(let address):
            if let workload = mesh.workload(at: address.ip, network: address.network) {
                candidates = [workload]
            } else if let service = mesh.service(at: address.ip, network: address.network) {
                candidates = mesh.endpoints(of: service.namespacedHostname)
            } else {
                candidates = []
            }
        case .hostname(let name):
            if mesh.services[name] != nil {
                candidates = mesh.endpoints(of: name)
            } else {
                candidates = mesh.workload(named: name).map { [$0] } ?? []
            }
        }
        return candidates.contains { $0.identity == source.identity && $0.workloadIPs.contains(sourceIP) }
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
