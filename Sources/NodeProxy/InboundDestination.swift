public import Kernel

/// Where a tunnelled stream for a local workload goes, decided from its `:authority`
/// (ztunnel's `validate_destination` and `find_inbound_upstream`).
///
/// The stream always goes to the local workload the connection arrived for; the authority
/// only chooses the port, and whether the stream is allowed at all:
/// - `ip:port` where the IP is one of the workload's own: `ip:port`.
/// - `ip:port` for another address (a service VIP or another workload) whose waypoint is
///   this workload: `<arrival ip>:port`. A service's waypoint (or one of its weighted
///   waypoints of non-zero weight, which ztunnel does not check) is this workload when it
///   backs the waypoint service or the waypoint's address is the one the connection
///   arrived on; likewise a workload's waypoint. Any other address is refused as a bad
///   request (HBONE 400).
/// - `hostname:port` naming a service (the one in the workload's namespace first, then a
///   canonical one): the service port mapped to the workload's target port (its own port
///   map, else the service's), on the arrival IP. An unknown hostname or port is refused
///   with ``ConnectionRefusal/Code/unresolvable`` or
///   ``ConnectionRefusal/Code/servicePortUnknown`` (HBONE 503, as ztunnel answers).
/// - A resulting port that is one of the proxy's own is a self call (HBONE 503).
///
/// A workload with an ``Workload/applicationTunnel`` (a sandwiched waypoint) takes the
/// stream on the tunnel's port when it names one. With protocol PROXY it is told where the
/// stream was for in a PROXY protocol header (``proxyProtocolTarget``), so any authority
/// address is taken, as in ztunnel; a tunnel of protocol NONE tells it nothing, so the
/// address rules above still apply to it (ztunnel takes any address there too).
public struct InboundDestination: Sendable, Equatable {
    /// The local workload's address to dial.
    public var upstream: SocketAddr
    /// The service the authority named by hostname; nil for an address authority.
    public var service: Service?
    /// When the workload's application tunnel takes PROXY: the header's destination, the
    /// authority's address (for a hostname, the service's VIP on the workload's network,
    /// IPv4 first, with the authority's port). Nil writes no header.
    public var proxyProtocolTarget: SocketAddr?

    /// Creates a destination.
    public init(upstream: SocketAddr, service: Service? = nil, proxyProtocolTarget: SocketAddr? = nil) {
        self.upstream = upstream
        self.service = service
        self.proxyProtocolTarget = proxyProtocolTarget
    }

    /// Decides where a stream with `authority`, arriving on `arrival` for the local
    /// `workload`, goes in `mesh`; throws the refusal when it may not go anywhere.
    public static func resolve(
        _ authority: TunnelAuthority, arrivedOn arrival: IPAddress, workload: Workload, in mesh: MeshSnapshot
    ) throws(ConnectionRefusal) -> InboundDestination {
        let proxyTunnel = workload.applicationTunnel?.protocol == .proxy
        var destination: InboundDestination
        switch authority {
        case .address(let target):
            if workload.workloadIPs.contains(target.ip) {
                destination = InboundDestination(upstream: target)
            } else if proxyTunnel || isWaypoint(workload, arrivedOn: arrival, of: target.ip, in: mesh) {
                destination = InboundDestination(upstream: SocketAddr(ip: arrival, port: target.port))
            } else {
                let ips = workload.workloadIPs.map { "\($0)" }.joined(separator: ",")
                throw ConnectionRefusal(
                    .badRequest,
                    "authority IP \(target.ip) is not the destination workload's (\(ips)), nor an address whose waypoint it is")
            }
        case .hostname(let hostname, let port):
            destination = try toService(hostname, port: port, arrivedOn: arrival, workload: workload, in: mesh)
        }
        guard !ProxyPorts.own.contains(destination.upstream.port) else {
            throw ConnectionRefusal(.selfCall, "port \(destination.upstream.port) is one of the proxy's own ports")
        }
        guard let tunnel = workload.applicationTunnel else { return destination }
        if tunnel.protocol == .proxy {
            destination.proxyProtocolTarget = try proxyProtocolTarget(
                authority, service: destination.service, network: workload.network)
        }
        if let port = tunnel.port {
            guard !ProxyPorts.own.contains(port) else {
                throw ConnectionRefusal(.selfCall, "application tunnel port \(port) is one of the proxy's own ports")
            }
            destination.upstream.port = port
        }
        return destination
    }

    /// The PROXY header's destination: an address authority as it is; for a hostname, the
    /// service's VIP (on `network` first, IPv4 first) with the authority's port.
    private static func proxyProtocolTarget(
        _ authority: TunnelAuthority, service: Service?, network: String
    ) throws(ConnectionRefusal) -> SocketAddr {
        if let address = authority.address { return address }
        let vips = service?.vips ?? []
        func rank(_ vip: NetworkAddress) -> Int { vip.network == network ? (vip.ip.isIPv4 ? 2 : 1) : 0 }
        guard let vip = vips.max(by: { rank($0) < rank($1) }) else {
            throw ConnectionRefusal(
                .unresolvable, "service \(authority) has no VIP to name in the PROXY header of the application tunnel")
        }
        return SocketAddr(ip: vip.ip, port: authority.port)
    }

    private static func toService(
        _ hostname: String, port: UInt16, arrivedOn arrival: IPAddress, workload: Workload, in mesh: MeshSnapshot
    ) throws(ConnectionRefusal) -> InboundDestination {
        let candidates = mesh.services(hostname: hostname)
        guard
            let service = candidates.first(where: { $0.namespace == workload.namespace })
                ?? candidates.first(where: \.canonical) ?? candidates.first
        else {
            throw ConnectionRefusal(.unresolvable, "authority hostname \(hostname) is not a service of the mesh")
        }
        guard let target = service.targetPort(port, on: workload) else {
            throw ConnectionRefusal(
                .servicePortUnknown, "service \(service.namespacedHostname) has no port \(port) for workload \(workload.uid)")
        }
        return InboundDestination(upstream: SocketAddr(ip: arrival, port: target), service: service)
    }

    /// Whether `workload` (reached at `arrival`) is the waypoint of whatever owns `target`
    /// on its network: a workload's waypoint or a service's (its waypoint or a weighted
    /// waypoint of non-zero weight). Fails closed: an address the mesh does not know, or a
    /// waypoint that does not resolve, is not this workload.
    static func isWaypoint(_ workload: Workload, arrivedOn arrival: IPAddress, of target: IPAddress, in mesh: MeshSnapshot) -> Bool {
        let waypoints: [GatewayAddress]
        if let owner = mesh.workload(at: target, network: workload.network) {
            waypoints = owner.waypoint.map { [$0] } ?? []
        } else if let service = mesh.service(at: target, network: workload.network) {
            // A weighted waypoint the sender may pick is as much the service's waypoint.
            waypoints =
                (service.waypoint.map { [$0] } ?? [])
                + service.weightedWaypoints.filter { $0.weight > 0 }.map(\.destination)
        } else {
            return false
        }
        return waypoints.contains { names(workload, arrivedOn: arrival, $0, in: mesh) }
    }

    /// Whether the gateway address resolves to `workload`: a waypoint workload (by address,
    /// or by hostname when no service has it) whose addresses include the one the
    /// connection arrived on, or a waypoint service it backs.
    private static func names(_ workload: Workload, arrivedOn arrival: IPAddress, _ gateway: GatewayAddress, in mesh: MeshSnapshot) -> Bool {
        switch gateway.destination {
        case .address(let address):
            if let waypoint = mesh.workload(at: address.ip, network: address.network) {
                return waypoint.workloadIPs.contains(arrival)
            }
            if let service = mesh.service(at: address.ip, network: address.network) {
                return workload.services[service.namespacedHostname] != nil
            }
            return false
        case .hostname(let name):
            if mesh.services[name] != nil { return workload.services[name] != nil }
            return mesh.workload(named: name)?.workloadIPs.contains(arrival) == true
        }
    }
}
