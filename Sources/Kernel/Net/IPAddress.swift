public import NIOCore

/// An IPv4 or IPv6 address, value-typed and hashable, so the mesh model can index
/// workloads and services by address without touching sockets.
public enum IPAddress: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    /// IPv4, in host byte order.
    case v4(UInt32)
    /// IPv6, the 16 bytes in network order split into two big-endian halves.
    case v6(UInt64, UInt64)

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (no zone, no brackets).
    ///
    /// Accepts exactly what POSIX `inet_pton` accepts (the tests compare the two): four
    /// decimal octets without leading zeros; IPv6 with at most one `::` and an optional
    /// dotted-quad tail. Written in Swift so the plugin API needs no C library.
    public init?(_ text: some StringProtocol) {
        let utf8 = Array(String(text).utf8)
        // The longest valid form (IPv4-mapped IPv6) is 45 characters.
        guard utf8.count <= 45 else { return nil }
        if let v4 = IPAddress.parseV4(utf8[...]) {
            self = .v4(v4)
        } else if let v6 = IPAddress.parseV6(utf8) {
            self.init(v6Bytes: v6)
        } else {
            return nil
        }
    }

    /// Four decimal octets, each 0...255 with no leading zero.
    private static func parseV4(_ text: ArraySlice<UInt8>) -> UInt32? {
        var value: UInt32 = 0
        var octets = 0
        var octet: UInt32 = 0
        var digits = 0
        for byte in text {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                if digits > 0 && octet == 0 { return nil }  // a leading zero
                octet = octet * 10 + UInt32(byte - UInt8(ascii: "0"))
                digits += 1
                if octet > 255 { return nil }
            case UInt8(ascii: "."):
                guard digits > 0, octets < 3 else { return nil }
                value = value << 8 | octet
                octets += 1
                octet = 0
                digits = 0
            default:
                return nil
            }
        }
        guard digits > 0, octets == 3 else { return nil }
        return value << 8 | octet
    }

    /// Up to eight hex groups of 1...4 digits, one `::` for a run of zero groups, and
    /// optionally a dotted quad in place of the last two groups.
    private static func parseV6(_ text: [UInt8]) -> [UInt8]? {
        var groups: [UInt16] = []
        groups.reserveCapacity(8)
        var gap: Int? = nil  // index in `groups` where `::` stands
        var index = 0
        let count = text.count
        guard count >= 2 else { return nil }
        if text[0] == UInt8(ascii: ":") {
            guard text[1] == UInt8(ascii: ":") else { return nil }
            gap = 0
            index = 2
        }
        var tailV4: UInt32? = nil
        while index < count {
            // One group: hex digits up to ':' or the end; or a dotted quad that ends the text.
            var end = index
            var value: UInt32 = 0
            while end < count, let digit = text[end].asciiHexValue {
                value = value << 4 | UInt32(digit)
                end += 1
                if end - index > 4 { return nil }
            }
            if end < count, text[end] == UInt8(ascii: ".") {
                guard groups.count <= 6, let v4 = parseV4(text[index...]) else { return nil }
                tailV4 = v4
                index = count
                break
            }
            guard end > index else { return nil }
            groups.append(UInt16(value))
            guard groups.count <= 8 else { return nil }
            if end == count {
                index = end
                break
            }
            guard text[end] == UInt8(ascii: ":") else { return nil }
            if end + 1 < count, text[end + 1] == UInt8(ascii: ":") {
                guard gap == nil else { return nil }
                gap = groups.count
                index = end + 2
            } else {
                guard end + 1 < count else { return nil }  // a trailing single ':'
                index = end + 1
            }
        }
        if let tailV4 {
            groups.append(UInt16(truncatingIfNeeded: tailV4 >> 16))
            groups.append(UInt16(truncatingIfNeeded: tailV4))
        }
        guard groups.count <= 8 else { return nil }
        if let gap {
            guard groups.count < 8 else { return nil }  // `::` stands for at least one group
            groups.insert(contentsOf: repeatElement(0, count: 8 - groups.count), at: gap)
        } else {
            guard groups.count == 8 else { return nil }
        }
        return groups.flatMap { [UInt8(truncatingIfNeeded: $0 >> 8), UInt8(truncatingIfNeeded: $0)] }
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
        case .v6(let high, let low):
            return IPAddress.formatV6(high: high, low: low)
        }
    }

    /// RFC 5952 text, as `inet_ntop` writes it: lowercase hex, the longest run of two or
    /// more zero groups (the first of equals) as `::`, and a dotted-quad tail for
    /// IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) addresses.
    private static func formatV6(high: UInt64, low: UInt64) -> String {
        let groups: [UInt16] = (0..<4).map { UInt16(truncatingIfNeeded: high >> (48 - 16 * $0)) }
            + (0..<4).map { UInt16(truncatingIfNeeded: low >> (48 - 16 * $0)) }
        var bestStart = -1
        var bestLength = 0
        var runStart = -1
        for index in 0...8 {
            if index < 8 && groups[index] == 0 {
                if runStart < 0 { runStart = index }
            } else if runStart >= 0 {
                let length = index - runStart
                if length > bestLength {
                    bestStart = runStart
                    bestLength = length
                }
                runStart = -1
            }
        }
        if bestLength < 2 { bestStart = -1 }
        let v4Tail = bestStart == 0 && (bestLength == 6 || (bestLength == 5 && groups[5] == 0xffff))
        var text = ""
        text.reserveCapacity(39)
        var index = 0
        while index < 8 {
            if index == bestStart {
                text += "::"
                index += bestLength
                continue
            }
            if v4Tail && index == 6 {
                if !text.hasSuffix(":") { text += ":" }
                let v4 = UInt32(groups[6]) << 16 | UInt32(groups[7])
                text += IPAddress.v4(v4).description
                break
            }
            if !text.isEmpty && !text.hasSuffix(":") { text += ":" }
            text += String(groups[index], radix: 16)
            index += 1
        }
        return text
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
