import AmbitRuntime
import Kernel
import NodeProxy
import Testing

/// Which service the destination reporter names (`destination_service*`).
@Suite("inbound: the reported destination service")
struct InboundServiceTests {
    static func service(_ hostname: String, namespace: String = "default", ports: [UInt16: UInt16]) -> Service {
        Service(
            name: String(hostname.prefix { $0 != "." }), namespace: namespace, hostname: hostname,
            vips: [], ports: ports)
    }

    static let web = service("web.default.svc.cluster.local", ports: [80: 8080])
    static let admin = service("admin.default.svc.cluster.local", ports: [9000: 0])
    static let named = service("named.default.svc.cluster.local", ports: [443: 0])
    static let other = service("other.default.svc.cluster.local", ports: [80: 8080])

    /// Backs web (80 → 8080), admin (9000 → 9000, no target port anywhere) and named
    /// (443 → 8443, the target port only on the workload, as for a named port).
    static let pod = Workload(
        uid: "pod", name: "pod", namespace: "default", workloadIPs: [IPAddress("10.0.0.2")!],
        services: [
            web.namespacedHostname: [80: 0], admin.namespacedHostname: [9000: 0],
            named.namespacedHostname: [443: 8443],
        ])
    static let mesh = MeshSnapshot(workloads: [pod], services: [web, admin, named, other], policies: [])

    static func reported(_ port: UInt16, host: String? = nil) -> String? {
        InboundPath.reportedService(of: pod, port: port, forwardedHost: host, in: mesh)?.hostname
    }

    @Test("forwarded host= picks among the workload's own services, whatever the port")
    func forwardedHost() {
        #expect(Self.reported(8443, host: "web.default.svc.cluster.local") == "web.default.svc.cluster.local")
        #expect(Self.reported(1, host: "admin.default.svc.cluster.local") == "admin.default.svc.cluster.local")
    }

    @Test("a host= the workload does not back, or none, falls back to the target port")
    func fallback() {
        #expect(Self.reported(8080, host: "other.default.svc.cluster.local") == "web.default.svc.cluster.local")
        #expect(Self.reported(8080, host: "evil.example") == "web.default.svc.cluster.local")
        #expect(Self.reported(8080) == "web.default.svc.cluster.local")
        #expect(Self.reported(8443) == "named.default.svc.cluster.local")
        #expect(Self.reported(9000) == "admin.default.svc.cluster.local")
        #expect(Self.reported(80) == nil, "a service port is not a target port")
        #expect(Self.reported(7777) == nil)
    }

    @Test("several services with the destination's target port: the first by namespace/hostname")
    func firstByName() {
        let alpha = Self.service("alpha.default.svc.cluster.local", ports: [81: 8080])
        var pod = Self.pod
        pod.services[alpha.namespacedHostname] = [81: 0]
        let mesh = MeshSnapshot(workloads: [pod], services: [Self.web, alpha], policies: [])
        #expect(InboundPath.reportedService(of: pod, port: 8080, forwardedHost: nil, in: mesh) == alpha)
        #expect(
            InboundPath.reportedService(of: pod, port: 8080, forwardedHost: "web.default.svc.cluster.local", in: mesh)
                == Self.web)
    }
}
