public import Kernel

/// A DNS message (RFC 1035 §4): the header, the question, and the answer, authority and
/// additional sections, with the EDNS `OPT` pseudo-record (RFC 6891) taken out of the
/// additional section into ``edns``.
///
/// The section counts are not stored: they are the arrays' lengths when the message is
/// written (``serialized(compress:)``). Parse untrusted bytes with ``init(parsing:)``.
public struct DNSMessage: Sendable, Hashable {
    /// The header's fields other than the counts.
    public var header: DNSHeader
    /// The questions; a query has exactly one.
    public var questions: [DNSQuestion]
    /// The answer section.
    public var answers: [DNSResourceRecord]
    /// The authority section.
    public var authorities: [DNSResourceRecord]
    /// The additional section, without the `OPT` record.
    public var additionals: [DNSResourceRecord]
    /// The `OPT` record's contents, when the message has one.
    public var edns: DNSEDNS?

    /// A message from its parts.
    public init(
        header: DNSHeader, questions: [DNSQuestion] = [], answers: [DNSResourceRecord] = [],
        authorities: [DNSResourceRecord] = [], additionals: [DNSResourceRecord] = [], edns: DNSEDNS? = nil
    ) {
        self.header = header
        self.questions = questions
        self.answers = answers
        self.authorities = authorities
        self.additionals = additionals
        self.edns = edns
    }

    /// A standard query for `name` and `type` (class IN) with `id`, recursion desired.
    public static func query(id: UInt16, name: DNSName, type: DNSRecordType, edns: DNSEDNS? = nil) -> DNSMessage {
        DNSMessage(
            header: DNSHeader(id: id, recursionDesired: true),
            questions: [DNSQuestion(name: name, type: type)], edns: edns)
    }
}

/// The header of a DNS message (RFC 1035 §4.1.1), without the section counts.
public struct DNSHeader: Sendable, Hashable {
    /// The id a response echoes.
    public var id: UInt16
    /// QR: a response rather than a query.
    public var isResponse: Bool
    /// The kind of query (0: a standard query).
    public var opcode: DNSOpcode
    /// AA: the answer comes from an authority for the name.
    public var authoritative: Bool
    /// TC: the message was cut to fit the transport; ask again over TCP.
    public var truncated: Bool
    /// RD: the client wants recursion.
    public var recursionDesired: Bool
    /// RA: the server offers recursion.
    public var recursionAvailable: Bool
    /// AD (RFC 4035).
    public var authenticData: Bool
    /// CD (RFC 4035).
    public var checkingDisabled: Bool
    /// The low 4 bits of the response code (the EDNS record holds the high 8).
    public var responseCode: DNSResponseCode

    /// A header; everything but the id defaults to a plain query's.
    public init(
        id: UInt16, isResponse: Bool = false, opcode: DNSOpcode = .query, authoritative: Bool = false,
        truncated: Bool = false, recursionDesired: Bool = false, recursionAvailable: Bool = false,
        authenticData: Bool = false, checkingDisabled: Bool = false, responseCode: DNSResponseCode = .noError
    ) {
        self.id = id
        self.isResponse = isResponse
        self.opcode = opcode
        self.authoritative = authoritative
        self.truncated = truncated
        self.recursionDesired = recursionDesired
        self.recursionAvailable = recursionAvailable
        self.authenticData = authenticData
        self.checkingDisabled = checkingDisabled
        self.responseCode = responseCode
    }

    /// The header of the response to a query with this header: same id and opcode, RD
    /// echoed, RA set (the proxy forwards what it does not answer), QR set, `code`.
    public func response(_ code: DNSResponseCode = .noError, authoritative: Bool = false) -> DNSHeader {
        DNSHeader(
            id: id, isResponse: true, opcode: opcode, authoritative: authoritative,
            recursionDesired: recursionDesired, recursionAvailable: true, checkingDisabled: checkingDisabled,
            responseCode: code)
    }
}

/// A DNS opcode (4 bits).
public struct DNSOpcode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt8
    /// The opcode, masked to its 4 bits.
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x0F }
    /// A standard query, the only one the proxy answers.
    public static let query = DNSOpcode(rawValue: 0)
    /// An inverse query (obsolete).
    public static let inverseQuery = DNSOpcode(rawValue: 1)
    /// A server status request.
    public static let status = DNSOpcode(rawValue: 2)
    /// NOTIFY (RFC 1996).
    public static let notify = DNSOpcode(rawValue: 4)
    /// UPDATE (RFC 2136).
    public static let update = DNSOpcode(rawValue: 5)
    public var description: String { "opcode \(rawValue)" }
}

/// A DNS response code (the header's 4 bits; EDNS extends it to 12).
public struct DNSResponseCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue & 0x0FFF }
    /// NOERROR.
    public static let noError = DNSResponseCode(rawValue: 0)
    /// FORMERR: the server could not understand the query.
    public static let formatError = DNSResponseCode(rawValue: 1)
    /// SERVFAIL: the server could not answer.
    public static let serverFailure = DNSResponseCode(rawValue: 2)
    /// NXDOMAIN: the name does not exist.
    public static let nameError = DNSResponseCode(rawValue: 3)
    /// NOTIMP: the kind of query is not supported.
    public static let notImplemented = DNSResponseCode(rawValue: 4)
    /// REFUSED.
    public static let refused = DNSResponseCode(rawValue: 5)

    public var description: String {
        switch rawValue {
        case 0: "NOERROR"
        case 1: "FORMERR"
        case 2: "SERVFAIL"
        case 3: "NXDOMAIN"
        case 4: "NOTIMP"
        case 5: "REFUSED"
        default: "RCODE\(rawValue)"
        }
    }
}

/// A record type (and query type).
public struct DNSRecordType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// An IPv4 address.
    public static let a = DNSRecordType(rawValue: 1)
    /// A name server.
    public static let ns = DNSRecordType(rawValue: 2)
    /// An alias.
    public static let cname = DNSRecordType(rawValue: 5)
    /// The start of a zone of authority.
    public static let soa = DNSRecordType(rawValue: 6)
    /// A pointer (reverse lookups).
    public static let ptr = DNSRecordType(rawValue: 12)
    /// Mail exchange.
    public static let mx = DNSRecordType(rawValue: 15)
    /// Text.
    public static let txt = DNSRecordType(rawValue: 16)
    /// An IPv6 address.
    public static let aaaa = DNSRecordType(rawValue: 28)
    /// A service location.
    public static let srv = DNSRecordType(rawValue: 33)
    /// The EDNS pseudo-record.
    public static let opt = DNSRecordType(rawValue: 41)
    /// Any type (a query only).
    public static let any = DNSRecordType(rawValue: 255)

    /// The mnemonic, e.g. `AAAA`, or `TYPE<n>` (RFC 3597) for types without one here.
    public var description: String {
        switch rawValue {
        case 1: "A"
        case 2: "NS"
        case 5: "CNAME"
        case 6: "SOA"
        case 12: "PTR"
        case 15: "MX"
        case 16: "TXT"
        case 28: "AAAA"
        case 33: "SRV"
        case 41: "OPT"
        case 255: "ANY"
        default: "TYPE\(rawValue)"
        }
    }
}

/// A record class; the proxy only deals in IN.
public struct DNSRecordClass: RawRepresentable, Sendable, Hashable {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    /// The Internet.
    public static let internet = DNSRecordClass(rawValue: 1)
}

/// One question: a name, a type and a class.
public struct DNSQuestion: Sendable, Hashable {
    /// The name asked for.
    public var name: DNSName
    /// The type asked for.
    public var type: DNSRecordType
    /// The class asked for (IN).
    public var recordClass: DNSRecordClass

    /// A question; class IN unless told.
    public init(name: DNSName, type: DNSRecordType, recordClass: DNSRecordClass = .internet) {
        self.name = name
        self.type = type
        self.recordClass = recordClass
    }
}

/// A resource record.
public struct DNSResourceRecord: Sendable, Hashable {
    /// The owner name.
    public var name: DNSName
    /// The class (IN).
    public var recordClass: DNSRecordClass
    /// How long the record may be cached, in seconds.
    public var ttl: UInt32
    /// The type and data.
    public var data: DNSRecordData

    /// A record; class IN unless told.
    public init(name: DNSName, ttl: UInt32, data: DNSRecordData, recordClass: DNSRecordClass = .internet) {
        self.name = name
        self.recordClass = recordClass
        self.ttl = ttl
        self.data = data
    }

    /// The record's type.
    public var type: DNSRecordType { data.type }
}

/// A record's data: decoded for the types the proxy makes, raw bytes for the rest.
public enum DNSRecordData: Sendable, Hashable {
    /// An IPv4 address (type A).
    case a(IPAddress)
    /// An IPv6 address (type AAAA).
    case aaaa(IPAddress)
    /// The canonical name of an alias (type CNAME).
    case cname(DNSName)
    /// Any other type's data as it came. Names inside it are not decompressed, so such a
    /// record is only written back correctly when its data holds no compression pointer.
    case other(type: DNSRecordType, bytes: [UInt8])

    /// The record type.
    public var type: DNSRecordType {
        switch self {
        case .a: .a
        case .aaaa: .aaaa
        case .cname: .cname
        case .other(let type, _): type
        }
    }
}

/// The EDNS `OPT` pseudo-record (RFC 6891 §6.1.3).
public struct DNSEDNS: Sendable, Hashable {
    /// The largest UDP payload the sender can take.
    public var udpPayloadSize: UInt16
    /// The high 8 bits of the extended response code.
    public var extendedResponseCode: UInt8
    /// The EDNS version (0).
    public var version: UInt8
    /// DO: the sender wants DNSSEC records.
    public var dnssecOK: Bool
    /// The options, as they came (code, length, data).
    public var options: [UInt8]

    /// An `OPT` record.
    public init(
        udpPayloadSize: UInt16 = 1232, extendedResponseCode: UInt8 = 0, version: UInt8 = 0, dnssecOK: Bool = false,
        options: [UInt8] = []
    ) {
        self.udpPayloadSize = udpPayloadSize
        self.extendedResponseCode = extendedResponseCode
        self.version = version
        self.dnssecOK = dnssecOK
        self.options = options
    }
}
