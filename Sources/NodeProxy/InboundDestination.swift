public import Kernel

/// Where a tunnelled stream for a local workload goes, decided from its `:authority`
/// (ztunnel's `validate_destination` and `find_inbound_upstream`).
///
/// The stream always goes to the local workload the connection arrived for; the authority
/// only chooses the port, and whether the stream is allowed at all:
/// - `ip:port` where the IP is one of the workload's own: `ip:port`.
/// - `ip:port` for another address (a service VIP or another workload) whose waypoint is
///   this workload (a service waypoint: this workload backs the waypoint service; a
///   workload waypoint: the waypoint's address is the one the connection arrived on):
///   `<arrival ip>:port`. Any other address is refused as a bad request (HBONE 400).
/// - A `hostname:port` authority is not taken (a bad request).
/// - A resulting port that is one of the proxy's own is a self call (HBONE 503).
public struct InboundDestination: Sendable, Equatable {
    /// The local workload's address to dial.
    public var upstream: SocketAddr

    /// Creates a destination.
    public init(upstream: SocketAddr) {
        self.upstream = upstream
    }

    /// Decides where a stream with `authority`, arriving on `arrival` for the local
    /// `workload`, goes in `mesh`; throws the refusal when it may not go anywhere.
    public static func resolve(
        _ authority: TunnelAuthority, arrivedOn arrival: IPAddress, workload: Workload, in mesh: MeshSnapshot
    ) throws(ConnectionRefusal) -> InboundDestination {
        let destination: InboundDestination
        switch authority {
        case .address(let target):
            if workload.workloadIPs.contains(target.ip) {
                destination = InboundDestination(upstream: target)
            } else if isWaypoint(workload, arrivedOn: arrival, of: target.ip, in: mesh) {
                destination = InboundDestination(upstream: SocketAddr(ip: arrival, port: target.port))
            } else {
                let ips = workload.workloadIPs.map { "\($0)" }.joined(separator: ",")
                throw ConnectionRefusal(
                    .badRequest,
                    "authority IP \(target.ip) is not the destination workload's (\(ips)), nor an address whose waypoint it is")
            }
        case .hostname(let hostname, _):
            throw ConnectionRefusal(.badRequest, "authority \(hostname) is a hostname; an address is required")
        }
        guard !ProxyPorts.own.contains(destination.upstream.port) else {
            throw ConnectionRefusal(.selfCall, "port \(destination.upstream.port) is one of the proxy's own ports")
        }
        return destination
    }

    /// Whether `workload` (reached at `arrival`) is the waypoint of whatever owns `target`
    /// on its network: a workload's waypoint or a service's. Fails closed: an address the mesh does not know, or a waypoint
    /// that does not resolve, is not this workload.
    static func isWaypoint(_ workload: Workload, arrivedOn arrival: IPAddress, of target: IPAddress, in mesh: MeshSnapshot) -> Bool {
        let waypoints: [GatewayAddress]
        if let owner = mesh.workload(at: target, network: workload.network) {
            waypoints = owner.waypoint.map { [$0] } ?? []
        } else if let service = mesh.service(at: target, network: workload.network) {
            waypoints = service.waypoint.map { [$0] } ?? []
        } else {
            return false
        }
        return waypoints.contains { names(workload, arrivedOn: arrival, $0, in: mesh) }
    }

    /// Whether the gateway address resolves to `workload`: a waypoint workload whose
    /// addresses include the one the connection arrived on, or a waypoint service it backs.
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
            return mesh.services[name] != nil && workload.services[name] != nil
        }
    }
}
