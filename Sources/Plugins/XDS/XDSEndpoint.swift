import GRPCCore
import GRPCNIOTransportHTTP2
import Kernel

/// istiod's address: `host:port`, `[v6]:port`, with an optional `https://`.
public struct XDSEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// The host (IPv6 without brackets).
    public var host: String
    /// The port.
    public var port: Int

    /// Parses the address; nil when malformed.
    public init?(_ text: String) {
        var text = Substring(text)
        if text.hasPrefix("https://") { text = text.dropFirst("https://".count) }
        if text.hasSuffix("/") { text = text.dropLast() }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (1...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(" "), !host.contains("/") else { return nil }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    var target: any ResolvableTarget {
        switch IPAddress(host) {
        case .some(let ip) where ip.isIPv4: .ipv4(address: host, port: port)
        case .some: .ipv6(address: host, port: port)
        case nil: .dns(host: host, port: port)
        }
    }
}
