import DNSProxy
import FuzzSupport
import Kernel

/// The DNS message parser over arbitrary bytes, then the proxy's local answer path.
///
/// Invariants: parsing never traps; a parsed message written back (with and without
/// compression) parses to the same message; a query the mesh answers yields a response
/// with the query's id that parses again, and fits 512 bytes once fitted for UDP; a
/// message that does not parse but has a header gets a FORMERR that parses.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    let message: DNSMessage
    do {
        message = try DNSMessage(parsing: bytes)
    } catch {
        invariant(error.offset >= 0 && error.offset <= bytes.count, "error offset \(error.offset) of \(bytes.count)")
        if let header = DNSMessage.header(of: bytes) {
            let formErr = MeshDNSResolver.error(.formatError, toHeader: header).serialized()
            invariant((try? DNSMessage(parsing: formErr))?.header.id == header.id, "FORMERR does not parse back")
        }
        return 0
    }
    for compress in [false, true] {
        let again = try? DNSMessage(parsing: message.serialized(compress: compress))
        invariant(again == message, "round trip (compress: \(compress)) changed \(message) into \(String(describing: again))")
    }
    let client: DNSClientInfo? = bytes.count % 5 == 0 ? nil : DNSClientInfo(namespace: "ns1", network: bytes.count % 3 == 0 ? "far" : "")
    if case .answer(let response) = resolver.resolve(message, client: client, mesh: mesh) {
        invariant(response.header.id == message.header.id && response.header.isResponse, "answer header \(response.header)")
        let wire = response.serialized()
        invariant((try? DNSMessage(parsing: wire)) == response, "answer does not parse back")
        let limit = DNSQueryHandler.udpLimit(for: message)
        let fitted = DNSQueryHandler.fitted(response, limit: limit)
        invariant(fitted.count <= limit, "UDP answer of \(fitted.count) bytes over \(limit)")
        invariant((try? DNSMessage(parsing: fitted)) != nil, "fitted answer does not parse")
    }
    return 0
}

private let resolver = MeshDNSResolver()

/// A small mesh: VIPs on two networks, IPv4-only, headless with endpoints, a wildcard,
/// namespace-private, many VIPs (answers over 512 bytes).
private let mesh: MeshSnapshot = {
    func vip(_ ip: String, _ network: String = "") -> NetworkAddress { NetworkAddress(network: network, ip: IPAddress(ip)!) }
    let headless = NamespacedHostname(namespace: "ns1", hostname: "headless.ns1.svc.cluster.local")
    return MeshSnapshot(
        workloads: [
            Workload(uid: "w1", name: "w1", namespace: "ns1", workloadIPs: [IPAddress("10.2.0.1")!, IPAddress("fd00::2:1")!], services: [headless: [80: 80]]),
            Workload(uid: "w2", name: "w2", namespace: "ns1", workloadIPs: [IPAddress("10.2.0.2")!], services: [headless: [80: 80]]),
        ],
        services: [
            Service(name: "echo", namespace: "ns1", hostname: "echo.ns1.svc.cluster.local", vips: [vip("10.0.0.10"), vip("10.9.0.10", "far"), vip("fd00::10")], ports: [80: 80]),
            Service(name: "v4", namespace: "ns1", hostname: "v4.ns1.svc.cluster.local", vips: [vip("10.0.0.11")], ports: [80: 80], ipFamilies: .ipv4),
            Service(name: "headless", namespace: "ns1", hostname: "headless.ns1.svc.cluster.local", vips: [], ports: [80: 80]),
            Service(name: "wild", namespace: "ns1", hostname: "*.example.com", vips: [vip("10.0.0.30")], ports: [443: 443]),
            Service(name: "private", namespace: "ns2", hostname: "private.ns2.svc.cluster.local", vips: [vip("10.0.0.21")], ports: [80: 80], visibility: .namespace),
            Service(name: "many", namespace: "ns1", hostname: "many.ns1.svc.cluster.local", vips: (1...100).map { vip("10.7.0.\($0)") }, ports: [80: 80]),
        ],
        policies: [])
}()
