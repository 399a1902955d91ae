import DNSProxy
import Kernel
import Testing

@Suite("DNS messages")
struct DNSMessageTests {
    @Test("a query with EDNS survives a round trip, with and without compression")
    func queryRoundTrip() throws {
        let query = DNSMessage.query(
            id: 0xBEEF, name: DNSName("echo.default.svc.cluster.local")!, type: .aaaa,
            edns: DNSEDNS(udpPayloadSize: 1232, version: 0, dnssecOK: true))
        for compress in [true, false] {
            let parsed = try DNSMessage(parsing: query.serialized(compress: compress))
            #expect(parsed == query)
        }
        let bytes = query.serialized()
        #expect(bytes[0] == 0xBE && bytes[1] == 0xEF)
        #expect(bytes[2] == 0x01)  // RD only
    }

    @Test("an answer with a CNAME and addresses round-trips; compression shrinks it and points backwards")
    func answerRoundTrip() throws {
        let name = DNSName("www.example.com")!
        let target = DNSName("edge.example.com")!
        var header = DNSHeader(id: 7, isResponse: true, authoritative: true, recursionDesired: true, recursionAvailable: true)
        header.responseCode = .noError
        let message = DNSMessage(
            header: header, questions: [DNSQuestion(name: name, type: .a)],
            answers: [
                DNSResourceRecord(name: name, ttl: 30, data: .cname(target)),
                DNSResourceRecord(name: target, ttl: 30, data: .a(IPAddress("10.0.0.1")!)),
                DNSResourceRecord(name: target, ttl: 30, data: .a(IPAddress("10.0.0.2")!)),
            ],
            authorities: [DNSResourceRecord(name: DNSName("example.com")!, ttl: 60, data: .other(type: .txt, bytes: [3, 0x61, 0x62, 0x63]))],
            additionals: [DNSResourceRecord(name: target, ttl: 30, data: .aaaa(IPAddress("fd00::1")!))],
            edns: DNSEDNS(udpPayloadSize: 4096))
        let compressed = message.serialized(compress: true)
        let plain = message.serialized(compress: false)
        #expect(compressed.count < plain.count)
        #expect(try DNSMessage(parsing: compressed) == message)
        #expect(try DNSMessage(parsing: plain) == message)
    }

    @Test("names keep their case on the wire and compare through lowercased")
    func nameCase() throws {
        let name = try #require(DNSName("Echo.Default.SVC"))
        #expect(name.description == "Echo.Default.SVC")
        #expect(name.lowercased == DNSName("echo.default.svc"))
        #expect(DNSName("a.b.") == DNSName("a.b"))
        #expect(DNSName(".") == DNSName.root)
        #expect(DNSName("a..b") == nil)
        #expect(DNSName(String(repeating: "x", count: 64)) == nil)
        #expect(DNSName(String(repeating: "x", count: 63)) != nil)
        // 4 × (63 + 1) + 1 = 257 > 255.
        #expect(DNSName(Array(repeating: String(repeating: "x", count: 63), count: 4).joined(separator: ".")) == nil)
    }

    /// A header with the given counts.
    private func header(id: UInt16 = 1, flags: UInt16 = 0x0100, counts: [UInt16]) -> [UInt8] {
        var bytes = [UInt8(id >> 8), UInt8(id & 0xFF), UInt8(flags >> 8), UInt8(flags & 0xFF)]
        for count in counts { bytes += [UInt8(count >> 8), UInt8(count & 0xFF)] }
        return bytes
    }

    private func code(_ bytes: [UInt8]) -> DNSParseError.Code? {
        do {
            _ = try DNSMessage(parsing: bytes)
            return nil
        } catch {
            return error.code
        }
    }

    @Test("malformed messages fail with a precise code")
    func malformed() {
        // Under 12 bytes: not even a header.
        #expect(code([1, 2, 3]) == .truncated)
        #expect(DNSMessage.header(of: [1, 2, 3]) == nil)
        // A pointer to itself (a loop).
        #expect(code(header(counts: [1, 0, 0, 0]) + [0xC0, 12, 0, 1, 0, 1]) == .badPointer)
        // Two names pointing at each other: the second question's pointer goes forward.
        let loop = header(counts: [2, 0, 0, 0]) + [1, 0x61, 0xC0, 18, 0, 1, 0, 1] + [0xC0, 12, 0, 1, 0, 1]
        #expect(code(loop) == .badPointer)
        // A forward pointer.
        #expect(code(header(counts: [1, 0, 0, 0]) + [0xC0, 20, 0, 1, 0, 1, 0, 0, 1, 0x61, 0]) == .badPointer)
        // A name cut off.
        #expect(code(header(counts: [1, 0, 0, 0]) + [5, 0x61, 0x62, 0, 1, 0, 1]) == .truncated)
        // An oversize name: five 63-byte labels.
        var long = header(counts: [1, 0, 0, 0])
        for _ in 0..<5 { long += [63] + Array(repeating: 0x78, count: 63) }
        long += [0, 0, 1, 0, 1]
        #expect(code(long) == .nameTooLong)
        // Label type 0b01.
        #expect(code(header(counts: [1, 0, 0, 0]) + [0x41, 0, 0, 1, 0, 1]) == .badLabelType)
        // Counts beyond the data: 65535 answers promised, none there.
        #expect(code(header(counts: [0, 0xFFFF, 0, 0])) == .truncated)
        // An A record of 3 bytes.
        #expect(code(header(flags: 0x8180, counts: [0, 1, 0, 0]) + [0, 0, 1, 0, 1, 0, 0, 0, 30, 0, 3, 1, 2, 3]) == .badRecordData)
        // Record data longer than the message.
        #expect(code(header(flags: 0x8180, counts: [0, 1, 0, 0]) + [0, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 1, 2]) == .truncated)
        // Two OPT records.
        let opt: [UInt8] = [0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]
        #expect(code(header(counts: [0, 0, 0, 2]) + opt + opt) == .badEDNS)
    }

    @Test("a chain of backward pointers is followed, a long one stopped")
    func pointerChains() throws {
        // "a" at 12, then names that each add a label and point at the previous one.
        var bytes = header(counts: [3, 0, 0, 0])
        bytes += [1, 0x61, 0, 0, 1, 0, 1]  // a.      at 12
        bytes += [1, 0x62, 0xC0, 12, 0, 1, 0, 1]  // b.a   at 19
        bytes += [1, 0x63, 0xC0, 19, 0, 1, 0, 1]  // c.b.a at 27
        let message = try DNSMessage(parsing: bytes)
        #expect(message.questions.map(\.name.description) == ["a", "b.a", "c.b.a"])
        // A chain of pointers, each strictly backwards, kept in a TXT record's data; a
        // second record's owner name enters it at its last link.
        #expect(try chain(hops: 100).answers.last?.name == DNSName.root)
        #expect(throws: DNSParseError.self) { try chain(hops: 200) }
    }

    /// A response whose second answer's owner follows `hops` pointers to the root.
    @discardableResult
    private func chain(hops: Int) throws -> DNSMessage {
        var bytes = header(flags: 0x8180, counts: [0, 2, 0, 0])
        bytes += [0, 0, 16, 0, 1, 0, 0, 0, 30]  // root owner, TXT, IN, TTL 30
        let lengthAt = bytes.count
        bytes += [0, 0]
        let dataStart = bytes.count
        bytes += [0]  // the root the chain ends at
        var last = dataStart
        for _ in 0..<hops {
            let here = bytes.count
            bytes += [0xC0 | UInt8(last >> 8), UInt8(last & 0xFF)]
            last = here
        }
        let length = bytes.count - dataStart
        bytes[lengthAt] = UInt8(length >> 8)
        bytes[lengthAt + 1] = UInt8(length & 0xFF)
        bytes += [0xC0 | UInt8(last >> 8), UInt8(last & 0xFF), 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1]
        return try DNSMessage(parsing: bytes)
    }
}
