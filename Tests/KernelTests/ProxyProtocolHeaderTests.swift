import Kernel
import NodeProxy
import Testing

@Suite("PROXY protocol v2 header for application tunnels")
struct ProxyProtocolHeaderTests {
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]

    @Test("IPv4: PROXY over TCP, addresses then ports, the identity in TLV 0xD0")
    func ipv4() {
        let identity = SpiffeID(trustDomain: "cluster.local", namespace: "default", serviceAccount: "client")
        let header = ProxyProtocolHeader(
            source: SocketAddr("10.0.0.1:40000")!, destination: SocketAddr("10.96.0.10:80")!, identity: identity)
        let id = Array("spiffe://cluster.local/ns/default/sa/client".utf8)
        let expected: [UInt8] =
            Self.signature + [0x21, 0x11, 0x00, UInt8(12 + 3 + id.count)]
            + [10, 0, 0, 1] + [10, 96, 0, 10] + [0x9C, 0x40] + [0x00, 0x50]
            + [0xD0, 0x00, UInt8(id.count)] + id
        #expect(header.bytes == expected)
    }

    @Test("IPv6, and mixed families written IPv4-mapped; no identity, no TLV")
    func ipv6() {
        let v6 = ProxyProtocolHeader(
            source: SocketAddr("[fd00::1]:1")!, destination: SocketAddr("[fd00::2]:2")!, identity: nil)
        #expect(Array(v6.bytes.prefix(16)) == Self.signature + [0x21, 0x21, 0x00, 36])
        #expect(v6.bytes.count == 16 + 36)
        #expect(Array(v6.bytes[16..<32]) == IPAddress("fd00::1")!.bytes)
        let mixed = ProxyProtocolHeader(
            source: SocketAddr("10.0.0.1:1")!, destination: SocketAddr("[fd00::2]:2")!, identity: nil)
        #expect(mixed.bytes[13] == 0x21)
        #expect(Array(mixed.bytes[16..<32]) == IPAddress("::ffff:10.0.0.1")!.bytes)
    }
}
