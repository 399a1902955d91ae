import FuzzSupport
import Kernel
import LocalConfig
import NodeProxy

/// The local-config mesh file (ztunnel's local-config YAML) over arbitrary text, and the
/// forwarding decision over whatever mesh it yields.
///
/// Invariants: parsing returns a snapshot or throws ``ConfigErrors`` with at least one
/// error; the forwarding decision answers for every workload and service address of the
/// snapshot and every port without crashing, and never tunnels to port 0.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: fuzzBytes(data, size), as: UTF8.self)
    let mesh: MeshSnapshot
    do {
        mesh = try LocalMeshFile.parse(yaml: text, file: "mesh.yaml")
    } catch {
        invariant(!error.errors.isEmpty, "ConfigErrors without an error")
        _ = "\(error)"
        return 0
    }
    var addresses = mesh.workloads.values.flatMap(\.workloadIPs).prefix(16).map { $0 }
    addresses += mesh.services.values.flatMap(\.vips).prefix(16).map(\.ip)
    var ports: Set<UInt16> = [0, 80, 15008, 65535]
    for service in mesh.services.values.prefix(8) { ports.formUnion(service.ports.keys.prefix(8)) }
    let sources: [Workload?] = [nil] + mesh.workloads.values.sorted { $0.uid < $1.uid }.prefix(2).map { $0 }
    var rng = SplitMix64(seed: UInt64(size))
    for source in sources {
        for ip in addresses {
            for port in ports {
                let request = OutboundRequest(source: source, destination: SocketAddr(ip: ip, port: port))
                let decision = Forwarding.decide(request, in: mesh, using: &rng)
                if case .hbone(let target) = decision {
                    invariant(target.gateway.port != 0, "HBONE gateway port 0: \(target)")
                }
                _ = "\(decision)"
            }
        }
    }
    _ = mesh.workloads.values.map(\.identity.description)
    return 0
}
