#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// An IPv4 or IPv6 address, value-typed and hashable, so the mesh model can index
/// workloads and services by address without touching sockets.
public enum IPAddress: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    /// IPv4, in host byte order.
    case v4(UInt32)
    /// IPv6, the 16 bytes in network order split into two big-endian halves.
    case v6(UInt64, UInt64)

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (no zone, no brackets).
    public init?(_ text: some StringProtocol) {
        let string = String(text)
        // inet_pton reads a C string: it would stop at a NUL and accept "10.0.0.1\0junk".
        // The longest valid form (IPv4-mapped IPv6) is 45 characters.
        guard string.utf8.count <= 45, !string.utf8.contains(0) else { return nil }
        var v4 = in_addr()
        if inet_pton(AF_INET, string, &v4) == 1 {
            self = .v4(UInt32(bigEndian: v4.s_addr))
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, string, &v6) == 1 {
            let bytes = withUnsafeBytes(of: &v6) { Array($0) }
            self.init(v6Bytes: bytes)
            return
        }
        return nil
    }

    /// Builds an address from 4 or 16 network-order bytes.
    public init?(bytes: some Collection<UInt8>) {
        let array = Array(bytes)
        switch array.count {
        case 4:
            self = .v4(array.reduce(0) { ($0 << 8) | UInt32($1) })
        case 16:
            self.init(v6Bytes: array)
        default:
            return nil
        }
    }

    private init(v6Bytes bytes: [UInt8]) {
        let high = bytes[0..<8].reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
        let low = bytes[8..<16].reduce(UInt64(0)) { ($0 << 8) | UInt64($1) }
        self = .v6(high, low)
    }

    /// The address in network byte order: 4 or 16 bytes.
    public var bytes: [UInt8] {
        switch self {
        case .v4(let value):
            return (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * $0)) }
        case .v6(let high, let low):
            return (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * $0)) }
                + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * $0)) }
        }
    }

    /// True for IPv4 addresses.
    public var isIPv4: Bool {
        if case .v4 = self { return true }
        return false
    }

    /// True for 127.0.0.0/8, ::1 and IPv4-mapped loopback.
    public var isLoopback: Bool {
        switch self {
        case .v4(let value):
            return value >> 24 == 127
        case .v6(let high, let low):
            if high == 0 && low == 1 { return true }
            // ::ffff:127.x.y.z
            return high == 0 && (low >> 32) == 0xffff && (low >> 24) & 0xff == 127
        }
    }

    /// The unspecified address of this family (0.0.0.0 or ::).
    public var isUnspecified: Bool {
        switch self {
        case .v4(let value): return value == 0
        case .v6(let high, let low): return high == 0 && low == 0
        }
    }

    public var description: String {
        switch self {
        case .v4(let value):
            return "\(value >> 24).\((value >> 16) & 0xff).\((value >> 8) & 0xff).\(value & 0xff)"
        case .v6:
            var raw = in6_addr()
            let bytes = self.bytes
            withUnsafeMutableBytes(of: &raw) { buffer in
                for index in 0..<16 { buffer[index] = bytes[index] }
            }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            _ = inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
            return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        switch (lhs, rhs) {
        case (.v4(let a), .v4(let b)): return a < b
        case (.v4, .v6): return true
        case (.v6, .v4): return false
        case (.v6(let ah, let al), .v6(let bh, let bl)): return (ah, al) < (bh, bl)
        }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let address = IPAddress(text) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "expected an IP address, got \"\(text)\"")
        }
        self = address
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// An IP address and a TCP port: where a connection goes or comes from.
public struct SocketAddr: Sendable, Hashable, CustomStringConvertible, Codable {
    /// The IP address.
    public var ip: IPAddress
    /// The TCP port.
    public var port: UInt16

    /// Creates an address from its parts.
    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// Parses `1.2.3.4:80` or `[::1]:80`.
    public init?(_ text: some StringProtocol) {
        let string = String(text)
        let hostPart: Substring
        let portPart: Substring
        if string.hasPrefix("[") {
            guard let close = string.firstIndex(of: "]") else { return nil }
            hostPart = string[string.index(after: string.startIndex)..<close]
            let rest = string[string.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portPart = rest.dropFirst()
        } else {
            guard let colon = string.lastIndex(of: ":") else { return nil }
            hostPart = string[..<colon]
            portPart = string[string.index(after: colon)...]
            if hostPart.contains(":") { return nil }  // bare IPv6 needs brackets
        }
        guard let ip = IPAddress(hostPart), let port = UInt16(portPart) else { return nil }
        self.init(ip: ip, port: port)
    }

    /// `ip:port`, with brackets around IPv6.
    public var description: String {
        ip.isIPv4 ? "\(ip):\(port)" : "[\(ip)]:\(port)"
    }

    /// The equivalent NIO socket address.
    public func nioAddress() throws -> SocketAddress {
        try SocketAddress(ipAddress: ip.description, port: Int(port))
    }

    /// Converts a NIO socket address; nil for Unix domain sockets.
    public init?(_ address: SocketAddress?) {
        guard let address, let text = address.ipAddress, let port = address.port,
            let ip = IPAddress(text)
        else { return nil }
        self.init(ip: ip, port: UInt16(truncatingIfNeeded: port))
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let address = SocketAddr(text) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "expected host:port, got \"\(text)\"")
        }
        self = address
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
