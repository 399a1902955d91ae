import Kernel
import Testing

/// Address parsing on untrusted text (found by the audit behind RELIABILITY.md's fuzzing).
@Suite("Address parsing: bad input is refused, never truncated")
struct AddressParsingTests {
    @Test(
        "text a C parser would cut short is refused",
        arguments: ["10.0.0.1\u{0}junk", "10.0.0.1\u{0}", "fd00::1\u{0}", "\u{0}10.0.0.1", String(repeating: "1", count: 4096)])
    func refused(_ text: String) {
        #expect(IPAddress(text) == nil)
        #expect(CIDR(text + "/8") == nil)
        #expect(SocketAddr(text + ":80") == nil)
    }

    @Test("valid forms still parse")
    func valid() {
        #expect(IPAddress("10.0.0.1") == .v4(0x0A00_0001))
        #expect(IPAddress("::ffff:192.168.100.200")?.isIPv4 == false)
        #expect(IPAddress("1111:2222:3333:4444:5555:6666:7777:8888") != nil)
        #expect(CIDR("10.0.0.0/8")?.prefixLength == 8)
    }
}
