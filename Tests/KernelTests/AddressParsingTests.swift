import AmbitRuntime
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

/// The plugin API parses and prints addresses in Swift (it links no C library); the
/// platform's `inet_pton`/`inet_ntop` are the reference they must agree with.
@Suite("Address parsing agrees with inet_pton and inet_ntop")
struct AddressParsingReferenceTests {
    /// Hand-picked edge cases: every rule of both grammars, accepted and refused.
    static let edgeCases: [String] = [
        "0.0.0.0", "255.255.255.255", "256.0.0.0", "1.2.3", "1.2.3.4.5", "01.2.3.4", "1.02.3.4", "1.2.3.00",
        "1..2.3", ".1.2.3", "1.2.3.", "1.2.3.4 ", " 1.2.3.4", "+1.2.3.4", "1.2.3.-4", "0x1.2.3.4", "1.2.3.4a",
        "::", "::1", "1::", "::0", "1:2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:7:8::",
        "::1:2:3:4:5:6:7:8", "1::2::3", ":::", "1:::2", ":1::", "1::2:", ":", "1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9",
        "12345::", "0000:0000:0000:0000:0000:0000:0000:0001", "FFFF::", "fFfF::aBcD", "g::", "::ffff:1.2.3.4",
        "::1.2.3.4", "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "::ffff:1.2.3", "::ffff:01.2.3.4",
        "::ffff:1.2.3.4:5", "1.2.3.4::", "::ffff:256.1.1.1", "fe80::1%eth0", "[::1]", "::ffff:0.0.0.0",
        "1:0:0:1:0:0:0:1", "1:0:0:0:1:0:0:1", "0:0:1:0:0:1:0:0", "1:0:1:0:1:0:1:0", "::0.0.0.1", "::0.1.0.0",
        "::ffff:0:1", "0:0:0:0:0:ffff:a00:1", "0:0:0:0:1:ffff:a00:1", "2001:db8::ffff:0:1", "", ".", "1", "a",
    ]

    @Test("the edge cases parse as inet_pton parses them, and print as inet_ntop prints")
    func edgeCasesAgree() {
        for text in Self.edgeCases {
            #expect(IPAddress(text)?.bytes == ReferenceParser.parse(text), "\(text)")
        }
        for text in Self.edgeCases {
            guard let address = IPAddress(text), !address.isIPv4 else { continue }
            #expect(address.description == ReferenceParser.format(address.bytes), "\(text)")
        }
    }

    @Test("random texts from the address alphabet parse alike; random addresses print alike")
    func randomAgree() {
        var rng = SplitMix64(seed: 0x1234_5678)
        let alphabet = Array("0123456789abcdefABCDEF:.:::..00ff".utf8)
        var accepted = 0
        for _ in 0..<100_000 {
            let length = Int(rng.next() % 24) + 1
            let text = String(decoding: (0..<length).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }, as: UTF8.self)
            let ours = IPAddress(text)?.bytes
            if ours != nil { accepted += 1 }
            #expect(ours == ReferenceParser.parse(text), "\(text)")
        }
        #expect(accepted > 100, "the random texts exercised the accepting paths")
        for _ in 0..<50_000 {
            // Mostly zero groups, so runs of zeros, mapped and compatible forms all occur.
            var bytes = [UInt8](repeating: 0, count: 16)
            for group in 0..<8 where rng.next() % 3 == 0 {
                bytes[2 * group] = rng.next() % 2 == 0 ? 0 : UInt8(truncatingIfNeeded: rng.next())
                bytes[2 * group + 1] = UInt8(truncatingIfNeeded: rng.next())
            }
            if rng.next() % 8 == 0 { bytes[10] = 0xff; bytes[11] = 0xff }
            let address = IPAddress(bytes: bytes)!
            let text = address.description
            #expect(text == ReferenceParser.format(bytes), "\(bytes)")
            #expect(IPAddress(text) == address, "\(text) reads back")
        }
    }
}
