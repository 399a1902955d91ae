public import Kernel

extension InboundPath {
    /// The service an inbound connection to `workload` on `port` reports (Istio's
    /// `destination_service*` labels on the destination reporter), as ztunnel guesses it.
    ///
    /// Only the services `workload` backs are candidates, so a peer cannot make the node
    /// report an arbitrary service:
    /// 1. the candidate whose hostname is `forwardedHost` (the client's `forwarded: host=`,
    ///    naming the service the application addressed);
    /// 2. else the first candidate, by `namespace/hostname`, with a port whose target port
    ///    on this workload is `port` (the workload's own target port for it, else the
    ///    service's, else the service port itself: where the outbound path sends it).
    ///
    /// Nil when no candidate fits. Telemetry only: the choice never affects routing or
    /// policy.
    public static func reportedService(
        of workload: Workload, port: UInt16, forwardedHost: String?, in mesh: MeshSnapshot
    ) -> Service? {
        let candidates = workload.services.keys.sorted().compactMap { name in
            mesh.services[name].map { (name: name, service: $0) }
        }
        if let forwardedHost, let named = candidates.first(where: { $0.service.hostname == forwardedHost }) {
            return named.service
        }
        return candidates.first { candidate in
            workload.services[candidate.name, default: [:]].keys.contains { servicePort in
                candidate.service.ports[servicePort] != nil && candidate.service.targetPort(servicePort, on: workload) == port
            }
        }?.service
    }
}
