import Kernel

/// Why bytes are not a DNS message: a ``Code`` for programs, the byte ``offset`` where
/// it went wrong, and a ``message`` for people.
public struct DNSParseError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, as a growable set of named codes.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// The message ends inside a field (a header under 12 bytes, a record cut short,
        /// section counts promising more than the bytes hold).
        public static let truncated = Code("truncated")
        /// A compression pointer that points at or after itself or at what the name already
        /// passed through (a loop), or too many pointers in one name.
        public static let badPointer = Code("badPointer")
        /// A label over 63 bytes, or a name over 255 in wire form.
        public static let nameTooLong = Code("nameTooLong")
        /// A label type other than a length (0b00) or a pointer (0b11).
        public static let badLabelType = Code("badLabelType")
        /// Record data whose length does not fit its type (an A record that is not 4 bytes).
        public static let badRecordData = Code("badRecordData")
        /// More than one `OPT` record, or one with a name other than the root.
        public static let badEDNS = Code("badEDNS")

        public var description: String { name }
    }

    /// What went wrong.
    public var code: Code
    /// The byte offset where the problem was found.
    public var offset: Int
    /// What went wrong, in words.
    public var message: String

    /// An error.
    public init(code: Code, offset: Int, message: String) {
        self.code = code
        self.offset = offset
        self.message = message
    }

    public var description: String { "DNS message invalid at byte \(offset): \(message)" }
}

extension DNSMessage {
    /// The most compression pointers one name may follow. A name has at most 127 labels,
    /// and each pointer must lead to a label, so more hops than that cannot be honest.
    static let maxPointerHops = 127

    /// The smallest wire size of a question (root name, type, class) and of a record
    /// (root name, type, class, TTL, data length).
    private static let minQuestionSize = 5
    private static let minRecordSize = 11

    /// Parses a whole message from untrusted bytes.
    ///
    /// Never traps and does work linear in the input: names follow at most
    /// ``maxPointerHops`` compression pointers, each strictly backwards; section counts are
    /// checked against the bytes left before anything is allocated. Bytes after the last
    /// record are ignored (as most resolvers do).
    ///
    /// - Throws: ``DNSParseError``.
    public init(parsing bytes: some Collection<UInt8>) throws(DNSParseError) {
        var reader = DNSWireReader(Array(bytes))
        let header = try reader.header()
        let counts = try (reader.u16(), reader.u16(), reader.u16(), reader.u16())
        let minimum =
            Int(counts.0) * Self.minQuestionSize
            + (Int(counts.1) + Int(counts.2) + Int(counts.3)) * Self.minRecordSize
        guard minimum <= reader.remaining else {
            throw DNSParseError(
                code: .truncated, offset: reader.offset,
                message: "section counts (\(counts.0) questions, \(counts.1)+\(counts.2)+\(counts.3) records) need at least \(minimum) bytes, \(reader.remaining) left")
        }
        var message = DNSMessage(header: header)
        message.questions.reserveCapacity(Int(counts.0))
        for _ in 0..<counts.0 {
            let name = try reader.name()
            let type = DNSRecordType(rawValue: try reader.u16())
            let recordClass = DNSRecordClass(rawValue: try reader.u16())
            message.questions.append(DNSQuestion(name: name, type: type, recordClass: recordClass))
        }
        for _ in 0..<counts.1 { message.answers.append(try reader.record()) }
        for _ in 0..<counts.2 { message.authorities.append(try reader.record()) }
        for _ in 0..<counts.3 {
            let start = reader.offset
            let raw = try reader.rawRecord()
            if raw.type == .opt {
                guard message.edns == nil else {
                    throw DNSParseError(code: .badEDNS, offset: start, message: "more than one OPT record")
                }
                guard raw.name.labels.isEmpty else {
                    throw DNSParseError(code: .badEDNS, offset: start, message: "an OPT record named \(raw.name), not the root")
                }
                message.edns = DNSEDNS(
                    udpPayloadSize: raw.recordClass, extendedResponseCode: UInt8(raw.ttl >> 24),
                    version: UInt8((raw.ttl >> 16) & 0xFF), dnssecOK: raw.ttl & 0x8000 != 0, options: raw.data)
            } else {
                message.additionals.append(try reader.decode(raw))
            }
        }
        if let edns = message.edns {
            message.header.responseCode = DNSResponseCode(
                rawValue: UInt16(edns.extendedResponseCode) << 4 | message.header.responseCode.rawValue)
        }
        self = message
    }

    /// Reads just the header: what a FORMERR answer to an unparseable query needs. Nil
    /// when there are fewer than 12 bytes.
    public static func header(of bytes: some Collection<UInt8>) -> DNSHeader? {
        var reader = DNSWireReader(Array(bytes.prefix(12)))
        return try? reader.header()
    }

    /// The message in wire form.
    ///
    /// - Parameter compress: point repeated names (and name suffixes) at their first
    ///   occurrence (RFC 1035 §4.1.4), as answers to a query name usually repeat it.
    /// - Returns: the bytes; a message whose sections hold over 65535 entries is not
    ///   representable, and its counts are clamped (no proxy path builds one).
    public func serialized(compress: Bool = true) -> [UInt8] {
        var writer = DNSWireWriter(compress: compress)
        writer.header(header, counts: [
            questions.count, answers.count, authorities.count, additionals.count + (edns == nil ? 0 : 1),
        ])
        for question in questions {
            writer.name(question.name)
            writer.u16(question.type.rawValue)
            writer.u16(question.recordClass.rawValue)
        }
        for record in answers { writer.record(record) }
        for record in authorities { writer.record(record) }
        for record in additionals { writer.record(record) }
        if let edns {
            writer.bytes.append(0)
            writer.u16(DNSRecordType.opt.rawValue)
            writer.u16(edns.udpPayloadSize)
            let extended = UInt8(truncatingIfNeeded: header.responseCode.rawValue >> 4)
            writer.u32(UInt32(extended) << 24 | UInt32(edns.version) << 16 | (edns.dnssecOK ? 0x8000 : 0))
            writer.u16(UInt16(clamping: edns.options.count))
            writer.bytes += edns.options.prefix(Int(UInt16.max))
        }
        return writer.bytes
    }
}

/// A bounds-checked cursor over a message's bytes.
struct DNSWireReader {
    let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }

    private func need(_ count: Int, _ what: String) throws(DNSParseError) {
        guard count <= remaining else {
            throw DNSParseError(
                code: .truncated, offset: offset, message: "\(what) needs \(count) bytes, \(remaining) left")
        }
    }

    mutating func u8() throws(DNSParseError) -> UInt8 {
        try need(1, "a byte")
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func u16() throws(DNSParseError) -> UInt16 {
        try need(2, "a 16-bit field")
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }

    mutating func u32() throws(DNSParseError) -> UInt32 {
        try need(4, "a 32-bit field")
        defer { offset += 4 }
        return UInt32(bytes[offset]) << 24 | UInt32(bytes[offset + 1]) << 16 | UInt32(bytes[offset + 2]) << 8
            | UInt32(bytes[offset + 3])
    }

    mutating func take(_ count: Int, _ what: String) throws(DNSParseError) -> [UInt8] {
        try need(count, what)
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func header() throws(DNSParseError) -> DNSHeader {
        try need(12, "the header")
        let id = try u16()
        let flags = try u16()
        return DNSHeader(
            id: id, isResponse: flags & 0x8000 != 0, opcode: DNSOpcode(rawValue: UInt8((flags >> 11) & 0x0F)),
            authoritative: flags & 0x0400 != 0, truncated: flags & 0x0200 != 0,
            recursionDesired: flags & 0x0100 != 0, recursionAvailable: flags & 0x0080 != 0,
            authenticData: flags & 0x0020 != 0, checkingDisabled: flags & 0x0010 != 0,
            responseCode: DNSResponseCode(rawValue: flags & 0x000F))
    }

    /// A possibly compressed name at the cursor; the cursor moves past its in-place part.
    mutating func name() throws(DNSParseError) -> DNSName {
        var labels: [[UInt8]] = []
        var wireLength = 1
        var position = offset
        // Every pointer must go strictly below the lowest byte this name has used so far,
        // so the walk cannot revisit anything: no loops, no forward pointers.
        var lowest = offset
        var hops = 0
        var end: Int?
        while true {
            guard position < bytes.count else {
                throw DNSParseError(code: .truncated, offset: position, message: "a name runs past the end")
            }
            let length = bytes[position]
            switch length & 0xC0 {
            case 0x00:
                if length == 0 {
                    offset = end ?? (position + 1)
                    return DNSName(unchecked: labels)
                }
                let count = Int(length)
                wireLength += count + 1
                guard wireLength <= DNSName.maxWireLength else {
                    throw DNSParseError(code: .nameTooLong, offset: position, message: "a name longer than 255 bytes")
                }
                guard position + 1 + count <= bytes.count else {
                    throw DNSParseError(code: .truncated, offset: position, message: "a label runs past the end")
                }
                labels.append(Array(bytes[position + 1..<position + 1 + count]))
                position += 1 + count
            case 0xC0:
                guard position + 1 < bytes.count else {
                    throw DNSParseError(code: .truncated, offset: position, message: "a compression pointer cut short")
                }
                let target = Int(length & 0x3F) << 8 | Int(bytes[position + 1])
                hops += 1
                guard target < lowest, hops <= DNSMessage.maxPointerHops else {
                    throw DNSParseError(
                        code: .badPointer, offset: position,
                        message: "compression pointer to \(target) does not point strictly backwards (a loop or forward pointer)")
                }
                if end == nil { end = position + 2 }
                lowest = target
                position = target
            default:
                throw DNSParseError(
                    code: .badLabelType, offset: position, message: "label type 0x\(String(length >> 6, radix: 16)) is not supported")
            }
        }
    }

    struct RawRecord {
        var name: DNSName
        var type: DNSRecordType
        var recordClass: UInt16
        var ttl: UInt32
        var data: [UInt8]
        /// Where the data starts in the message, for names inside it.
        var dataOffset: Int
    }

    mutating func rawRecord() throws(DNSParseError) -> RawRecord {
        let name = try name()
        let type = DNSRecordType(rawValue: try u16())
        let recordClass = try u16()
        let ttl = try u32()
        let length = Int(try u16())
        let dataOffset = offset
        let data = try take(length, "record data of \(length) bytes")
        return RawRecord(name: name, type: type, recordClass: recordClass, ttl: ttl, data: data, dataOffset: dataOffset)
    }

    mutating func record() throws(DNSParseError) -> DNSResourceRecord {
        try decode(try rawRecord())
    }

    func decode(_ raw: RawRecord) throws(DNSParseError) -> DNSResourceRecord {
        let data: DNSRecordData
        switch raw.type {
        case .a, .aaaa:
            let size = raw.type == .a ? 4 : 16
            guard raw.data.count == size, let ip = IPAddress(bytes: raw.data) else {
                throw DNSParseError(
                    code: .badRecordData, offset: raw.dataOffset,
                    message: "\(raw.type) data of \(raw.data.count) bytes, not \(size)")
            }
            data = raw.type == .a ? .a(ip) : .aaaa(ip)
        case .cname:
            // The name may point back into the message: read it in place.
            var inner = self
            inner.offset = raw.dataOffset
            let target = try inner.name()
            guard inner.offset == raw.dataOffset + raw.data.count else {
                throw DNSParseError(
                    code: .badRecordData, offset: raw.dataOffset, message: "CNAME data is not exactly one name")
            }
            data = .cname(target)
        default:
            data = .other(type: raw.type, bytes: raw.data)
        }
        return DNSResourceRecord(
            name: raw.name, ttl: raw.ttl, data: data, recordClass: DNSRecordClass(rawValue: raw.recordClass))
    }
}

/// Appends a message's fields, compressing names when asked.
struct DNSWireWriter {
    var bytes: [UInt8] = []
    let compress: Bool
    /// Name suffixes already written, and where.
    private var written: [[[UInt8]]: Int] = [:]

    init(compress: Bool) {
        self.compress = compress
        bytes.reserveCapacity(512)
    }

    mutating func u16(_ value: UInt16) {
        bytes.append(UInt8(value >> 8))
        bytes.append(UInt8(value & 0xFF))
    }

    mutating func u32(_ value: UInt32) {
        u16(UInt16(value >> 16))
        u16(UInt16(value & 0xFFFF))
    }

    mutating func header(_ header: DNSHeader, counts: [Int]) {
        u16(header.id)
        var flags = UInt16(header.opcode.rawValue & 0x0F) << 11 | header.responseCode.rawValue & 0x0F
        if header.isResponse { flags |= 0x8000 }
        if header.authoritative { flags |= 0x0400 }
        if header.truncated { flags |= 0x0200 }
        if header.recursionDesired { flags |= 0x0100 }
        if header.recursionAvailable { flags |= 0x0080 }
        if header.authenticData { flags |= 0x0020 }
        if header.checkingDisabled { flags |= 0x0010 }
        u16(flags)
        for count in counts { u16(UInt16(clamping: count)) }
    }

    mutating func name(_ name: DNSName) {
        // Suffixes match byte for byte, case included, so every name reads back exactly as
        // it was written (a client checking its query's case, as with 0x20 randomisation,
        // sees its own).
        for index in name.labels.indices {
            let suffix = Array(name.labels[index...])
            if compress, let at = written[suffix] {
                u16(0xC000 | UInt16(at))
                return
            }
            if compress, bytes.count < 0x3FFF { written[suffix] = bytes.count }
            bytes.append(UInt8(name.labels[index].count))
            bytes += name.labels[index]
        }
        bytes.append(0)
    }

    mutating func record(_ record: DNSResourceRecord) {
        name(record.name)
        u16(record.type.rawValue)
        u16(record.recordClass.rawValue)
        u32(record.ttl)
        let lengthAt = bytes.count
        u16(0)
        switch record.data {
        case .a(let ip), .aaaa(let ip): bytes += ip.bytes
        case .cname(let target): name(target)
        case .other(_, let data): bytes += data.prefix(Int(UInt16.max))
        }
        let length = UInt16(clamping: bytes.count - lengthAt - 2)
        bytes[lengthAt] = UInt8(length >> 8)
        bytes[lengthAt + 1] = UInt8(length & 0xFF)
    }
}
