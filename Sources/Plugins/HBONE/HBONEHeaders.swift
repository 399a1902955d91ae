import Kernel
import NIOHPACK

/// The HBONE request and response headers (the facts file's "HBONE" section).
enum HBONEHeaders {
    /// The CONNECT request a client sends for one tunnelled connection; `service` is the
    /// hostname of the service the application addressed, if it addressed one.
    /// `originNetwork` (the inner CONNECT of double HBONE) adds `x-forwarded-network`.
    static func request(
        authority: String, source: SocketAddr, workload: Workload, service: String? = nil, originNetwork: String? = nil
    ) -> HPACKHeaders {
        var headers = HPACKHeaders([
            (":method", "CONNECT"),
            (":authority", authority),
            ("forwarded", forwarded(source: source, service: service)),
            ("baggage", baggage(of: workload)),
            ("traceparent", traceparent()),
        ])
        if let originNetwork { headers.add(name: forwardedNetwork, value: originNetwork) }
        return headers
    }

    /// The header naming the network a double-HBONE connection came from (ztunnel's).
    static let forwardedNetwork = "x-forwarded-network"

    /// `for="<ip:port>"`, then `;host=<hostname>` when the application addressed a service
    /// (the destination reports that service; ztunnel sends the same).
    static func forwarded(source: SocketAddr, service: String?) -> String {
        let forwardedFor = "for=\"\(bracketed(source))\""
        guard let service, !service.isEmpty else { return forwardedFor }
        return forwardedFor + ";host=\(service)"
    }

    /// A response with `status`; 200 carries the destination's baggage.
    static func response(status: Int, destination: Workload?) -> HPACKHeaders {
        var headers = HPACKHeaders([(":status", "\(status)")])
        if status == 200, let destination { headers.add(name: "baggage", value: baggage(of: destination)) }
        return headers
    }

    /// W3C baggage describing a workload: cluster, namespace, owner, canonical service and
    /// revision.
    static func baggage(of workload: Workload) -> String {
        var entries = [
            "k8s.cluster.name=\(workload.clusterID)",
            "k8s.namespace.name=\(workload.namespace)",
        ]
        if !workload.workloadName.isEmpty {
            entries.append("k8s.deployment.name=\(workload.workloadName)")
        } else {
            entries.append("k8s.pod.name=\(workload.name)")
        }
        entries.append("service.name=\(workload.canonicalName.isEmpty ? workload.name : workload.canonicalName)")
        entries.append("service.version=\(workload.canonicalRevision.isEmpty ? "latest" : workload.canonicalRevision)")
        return entries.joined(separator: ",")
    }

    /// A W3C `traceparent` with fresh random trace and span ids.
    static func traceparent() -> String {
        var generator = SystemRandomNumberGenerator()
        func hex(_ value: UInt64) -> String {
            let text = String(value, radix: 16)
            return String(repeating: "0", count: 16 - text.count) + text
        }
        // An all-zero trace or span id is invalid; 1 in 2^64 odds, but cheap to rule out.
        let high = generator.next() as UInt64
        let low = (generator.next() as UInt64) | 1
        let span = (generator.next() as UInt64) | 1
        return "00-\(hex(high))\(hex(low))-\(hex(span))-00"
    }

    /// `ip:port`, with IPv6 in brackets.
    static func bracketed(_ address: SocketAddr) -> String {
        address.ip.isIPv4 ? "\(address.ip):\(address.port)" : "[\(address.ip)]:\(address.port)"
    }

    /// Parses an `ip:port` / `[v6]:port` authority; nil for hostnames or anything else.
    static func parseAuthority(_ text: String) -> SocketAddr? {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard let ip = IPAddress(host), let port = UInt16(portText), port != 0 else { return nil }
        return SocketAddr(ip: ip, port: port)
    }

    /// A CONNECT `:authority`: `ip:port`, `[ipv6]:port`, or `hostname:port` (see
    /// ``HBONEConnectRequest/parse(headers:)`` for what a hostname may be).
    static func parseTunnelAuthority(_ text: String) -> TunnelAuthority? {
        if let address = parseAuthority(text) { return .address(address) }
        guard let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon else { return nil }
        let host = text[..<colon]
        guard let port = UInt16(text[text.index(after: colon)...]), port != 0, isHostname(host) else { return nil }
        return .hostname(String(host), port: port)
    }

    private static func isHostname(_ host: Substring) -> Bool {
        guard !host.isEmpty, host.utf8.count <= 253 else { return false }
        let labels = host.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        for label in labels {
            guard !label.isEmpty, label.count <= 63 else { return false }
            for byte in label {
                switch byte {
                case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                    UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
                    continue
                default:
                    return false
                }
            }
        }
        // A top-level label is never all digits (RFC 3696 §2): `10.0.0.300` is a bad address.
        return !(labels.last?.allSatisfy { UInt8(ascii: "0")...UInt8(ascii: "9") ~= $0 } ?? true)
    }

    /// The address in a `forwarded: for="ip:port"` header, if it has one.
    static func forwardedFor(_ value: String) -> SocketAddr? {
        forwardedParameter("for", in: value).flatMap { parseAuthority(String($0)) }
    }

    /// The hostname in a `forwarded: …;host=<hostname>` header (quoted or not), if it has
    /// a non-empty one; nil for a value that is not ASCII.
    static func forwardedHost(_ value: String) -> String? {
        guard value.utf8.allSatisfy({ $0 < 0x80 }), let host = forwardedParameter("host", in: value), !host.isEmpty
        else { return nil }
        return String(host)
    }

    /// Parameter `name` (case-insensitive) of the first element of a `forwarded` value,
    /// unquoted.
    private static func forwardedParameter(_ name: String, in value: String) -> Substring? {
        let prefix = name + "="
        for element in value.split(separator: ",").first?.split(separator: ";") ?? [] {
            let pair = element.hboneTrimmed
            guard pair.lowercased().hasPrefix(prefix) else { continue }
            var parameter = pair.dropFirst(prefix.count)
            if parameter.hasPrefix("\""), parameter.hasSuffix("\""), parameter.count >= 2 {
                parameter = parameter.dropFirst().dropLast()
            }
            return parameter
        }
        return nil
    }
}

extension StringProtocol {
    fileprivate var hboneTrimmed: Substring {
        let text = Substring(self)
        guard let start = text.firstIndex(where: { $0 != " " }), let end = text.lastIndex(where: { $0 != " " }) else {
            return ""
        }
        return text[start...end]
    }
}
