public import Kernel

/// A PROXY protocol version 2 header (haproxy's proxy-protocol.txt, section 2.2): what the
/// node proxy writes first on a connection to a workload whose application tunnel takes
/// PROXY (a sandwiched waypoint), so it learns the tunnel's source, its target and the
/// source's identity although the connection comes from the node proxy.
///
/// Command PROXY over STREAM (TCP); the address block is IPv4 when both addresses are,
/// else IPv6 with an IPv4 address written IPv4-mapped. One TLV of type
/// ``identityType`` (0xD0, ztunnel's) carries the peer's SPIFFE identity when it has one.
public struct ProxyProtocolHeader: Sendable, Equatable {
    /// The TLV type of the source's SPIFFE identity (UTF-8 `spiffe://…`).
    public static let identityType: UInt8 = 0xD0
    /// The twelve bytes every version 2 header starts with.
    public static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    /// The tunnel's source: the HBONE connection's peer.
    public var source: SocketAddr
    /// What the tunnel was for: the authority's address (a service VIP for a hostname).
    public var destination: SocketAddr
    /// The peer's identity, written as the 0xD0 TLV; nil writes none.
    public var identity: SpiffeID?

    /// Creates a header.
    public init(source: SocketAddr, destination: SocketAddr, identity: SpiffeID?) {
        self.source = source
        self.destination = destination
        self.identity = identity
    }

    /// The header's bytes.
    public var bytes: [UInt8] {
        let v4 = source.ip.isIPv4 && destination.ip.isIPv4
        var addresses: [UInt8] = []
        addresses += Self.addressBytes(source.ip, v4: v4)
        addresses += Self.addressBytes(destination.ip, v4: v4)
        addresses += [UInt8(source.port >> 8), UInt8(source.port & 0xFF)]
        addresses += [UInt8(destination.port >> 8), UInt8(destination.port & 0xFF)]
        var tlvs: [UInt8] = []
        if let identity {
            let value = Array(identity.description.utf8)
            tlvs += [Self.identityType, UInt8(value.count >> 8), UInt8(value.count & 0xFF)] + value
        }
        let length = addresses.count + tlvs.count
        // Version 2, command PROXY; address family INET or INET6, transport STREAM.
        return Self.signature + [0x21, v4 ? 0x11 : 0x21, UInt8(length >> 8), UInt8(length & 0xFF)] + addresses + tlvs
    }

    private static func addressBytes(_ ip: IPAddress, v4: Bool) -> [UInt8] {
        if v4 || !ip.isIPv4 { return ip.bytes }
        return Array(repeating: 0, count: 10) + [0xFF, 0xFF] + ip.bytes
    }
}
