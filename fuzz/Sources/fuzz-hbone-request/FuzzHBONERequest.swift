import FuzzSupport
import HBONE
import NodeProxy
import Kernel

private let destinationIPs = [IPAddress("10.0.0.1")!, IPAddress("fd00::1")!]
private let workload = Workload(uid: "w", name: "w", namespace: "default", workloadIPs: destinationIPs)

/// The HBONE server's request validation (`:method`, `:authority`, `forwarded`,
/// `baggage`, pseudo-headers), then the node proxy's authority rule, over arbitrary header
/// lists. The input is one header per line, `name: value`, where a name may start with `:`.
///
/// Invariants: a parsed request targets a non-zero port; one the node proxy accepts (in an
/// empty mesh) is an address authority and goes to one of the destination IPs on a port
/// that is not a proxy port; a rejection is a 400; baggage stays within its limits.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: fuzzBytes(data, size), as: UTF8.self)
    var headers: [(name: String, value: String)] = []
    for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
        let separator = line.dropFirst().firstIndex(of: ":") ?? line.endIndex
        let name = String(line[..<separator])
        let value = separator < line.endIndex ? String(line[line.index(after: separator)...].drop { $0 == " " }) : ""
        headers.append((name, value))
    }
    do {
        let request = try HBONEConnectRequest.parse(headers: headers)
        invariant(request.authority.port != 0, "target port 0")
        if let destination = try? InboundDestination.resolve(
            request.authority, arrivedOn: destinationIPs[0], workload: workload, in: .empty)
        {
            // An empty mesh: no service to name by hostname, no address whose waypoint this is.
            invariant(request.target != nil, "hostname \(request.authority) accepted without a service")
            invariant(destinationIPs.contains(destination.upstream.ip), "upstream \(destination.upstream) is not a destination IP")
            invariant(!ProxyPorts.own.contains(destination.upstream.port), "upstream is a proxy port: \(destination.upstream)")
        }
        invariant(request.baggage.count <= HBONEConnectRequest.maximumBaggageMembers, "too many baggage members")
        if let source = request.forwardedFor { invariant(source.port != 0, "forwarded port 0") }
    } catch {
        invariant(error.status == 400, "rejection with status \(error.status)")
    }
    let baggage = HBONEConnectRequest.parseBaggage(text)
    invariant(baggage.count <= HBONEConnectRequest.maximumBaggageMembers, "too many baggage members")
    invariant(baggage.keys.allSatisfy { !$0.isEmpty }, "empty baggage key")
    return 0
}
