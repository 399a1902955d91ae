/// An address block, `10.0.0.0/8` or `fd00::/8`; a bare address is a /32 or /128.
public struct CIDR: Sendable, Hashable, CustomStringConvertible, Codable {
    /// The block's address (host bits may be set; they are ignored when matching).
    public var address: IPAddress
    /// Prefix length in bits.
    public var prefixLength: Int

    /// Creates a block; the prefix length is clamped to the family's width.
    public init(address: IPAddress, prefixLength: Int) {
        self.address = address
        self.prefixLength = max(0, min(prefixLength, address.isIPv4 ? 32 : 128))
    }

    /// Parses `ip/len` or a bare `ip`.
    public init?(_ text: String) {
        if let slash = text.firstIndex(of: "/") {
            guard let ip = IPAddress(text[..<slash]), let length = Int(text[text.index(after: slash)...]),
                length >= 0, length <= (ip.isIPv4 ? 32 : 128)
            else { return nil }
            self.init(address: ip, prefixLength: length)
        } else {
            guard let ip = IPAddress(text) else { return nil }
            self.init(address: ip, prefixLength: ip.isIPv4 ? 32 : 128)
        }
    }

    /// Whether `ip` lies in this block (never across address families).
    public func contains(_ ip: IPAddress) -> Bool {
        switch (address, ip) {
        case (.v4(let base), .v4(let candidate)):
            guard prefixLength > 0 else { return true }
            let mask = UInt32.max << (32 - prefixLength)
            return base & mask == candidate & mask
        case (.v6(let bh, let bl), .v6(let ch, let cl)):
            func masked(_ value: UInt64, _ bits: Int) -> UInt64 {
                if bits <= 0 { return 0 }
                if bits >= 64 { return value }
                return value & (UInt64.max << (64 - bits))
            }
            return masked(bh, prefixLength) == masked(ch, prefixLength)
                && masked(bl, prefixLength - 64) == masked(cl, prefixLength - 64)
        default:
            return false
        }
    }

    public var description: String { "\(address)/\(prefixLength)" }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = CIDR(text) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "expected an IP address or CIDR block, got \"\(text)\"")
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
