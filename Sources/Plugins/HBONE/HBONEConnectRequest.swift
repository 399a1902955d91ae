public import Kernel

/// One inbound HBONE CONNECT request, validated: what the server acts on.
///
/// ``parse(headers:)`` is the transport's whole decision about a request's headers (the
/// CONNECT framing), as a pure function of them, so that it can be tested and fuzzed
/// without a connection. The server calls it for every stream; what the authority may
/// name is the ``TunnelTerminator``'s rule (the node proxy's: one of the destination
/// workload's addresses, an address or a service whose waypoint it is, or a service
/// hostname; never a proxy port).
public struct HBONEConnectRequest: Sendable, Equatable {
    /// Where the tunnel goes: the `:authority`, an IP address or a hostname, and a non-zero
    /// port.
    public var authority: TunnelAuthority
    /// The authority's address; nil when it is a hostname.
    public var target: SocketAddr? { authority.address }
    /// The original client address from `forwarded: for="ip:port"`, when the header has
    /// one that parses; the server falls back to the TCP peer's address.
    public var forwardedFor: SocketAddr?
    /// The service hostname from `forwarded: …;host=<hostname>` (quoted or not), when the
    /// header has one: the service the peer says the application addressed, for
    /// telemetry only.
    public var forwardedHost: String?
    /// The peer's W3C `baggage` entries (its own workload's description), members that do
    /// not parse skipped; empty without the header. Informational only: nothing is
    /// decided on it.
    public var baggage: [String: String]
    /// The network the peer says the connection came from (`x-forwarded-network`, sent on
    /// the inner CONNECT of double HBONE through a network gateway); nil without the header.
    public var forwardedNetwork: String?

    /// Creates a request for an `ip:port` authority.
    public init(
        target: SocketAddr, forwardedFor: SocketAddr? = nil, baggage: [String: String] = [:], forwardedHost: String? = nil
    ) {
        self.init(authority: .address(target), forwardedFor: forwardedFor, baggage: baggage, forwardedHost: forwardedHost)
    }

    /// Creates a request.
    public init(
        authority: TunnelAuthority, forwardedFor: SocketAddr? = nil, baggage: [String: String] = [:],
        forwardedHost: String? = nil, forwardedNetwork: String? = nil
    ) {
        self.authority = authority
        self.forwardedFor = forwardedFor
        self.baggage = baggage
        self.forwardedHost = forwardedHost
        self.forwardedNetwork = forwardedNetwork
    }

    /// Why a request is refused and the status to answer with.
    public struct Rejection: Error, Sendable, Equatable, CustomStringConvertible {
        /// The HTTP status of the response (400 for every header problem).
        public var status: Int
        /// What was wrong, for the log.
        public var reason: String

        /// Creates a rejection.
        public init(status: Int, _ reason: String) {
            self.status = status
            self.reason = reason
        }

        public var description: String { "\(status): \(reason)" }
    }

    /// The most baggage members kept (W3C Baggage allows at least 64 and no more need be
    /// honoured); the rest are ignored.
    public static let maximumBaggageMembers = 64
    /// The longest `baggage` value parsed (W3C Baggage: 8192 bytes); a longer one is ignored.
    public static let maximumBaggageLength = 8192

    /// Parses the request headers of one stream.
    ///
    /// The request must have exactly one `:method`, `CONNECT`; no `:scheme`, `:path` or
    /// `:protocol` (a plain CONNECT, not extended CONNECT); exactly one `:authority` of
    /// the form `ip:port`, `[ipv6]:port` or `hostname:port` with a non-zero port, where a
    /// hostname is DNS letters, digits, `-`, `_` and dots, at most 253 of them, whose last
    /// label is not all digits (so a malformed IPv4 address is not taken for a name).
    /// `forwarded` and `baggage` never fail a request: the first `for=` and `host=` of the
    /// first `forwarded` header are used if they parse, and baggage is best effort.
    public static func parse(
        headers: some Sequence<(name: String, value: String)>
    ) throws(Rejection) -> HBONEConnectRequest {
        var methods: [String] = []
        var authorities: [String] = []
        var forwarded: String?
        var baggage: String?
        var forwardedNetwork: String?
        for (name, value) in headers {
            switch name {
            case ":method": methods.append(value)
            case ":authority": authorities.append(value)
            case ":scheme", ":path", ":protocol":
                throw Rejection(status: 400, "\(name) is not allowed on an HBONE CONNECT")
            case "forwarded": if forwarded == nil { forwarded = value }
            case "baggage": if baggage == nil { baggage = value }
            case HBONEHeaders.forwardedNetwork: if forwardedNetwork == nil { forwardedNetwork = value }
            default: break
            }
        }
        guard methods.count == 1, let method = methods.first else {
            throw Rejection(status: 400, "\(methods.count) :method headers; exactly one is required")
        }
        guard method == "CONNECT" else {
            throw Rejection(
                status: 400, "method \(quoted(method)) is not CONNECT; HBONE streams are CONNECT tunnels")
        }
        guard authorities.count == 1, let authority = authorities.first else {
            throw Rejection(status: 400, "\(authorities.count) :authority headers; exactly one is required")
        }
        guard let target = HBONEHeaders.parseTunnelAuthority(authority) else {
            throw Rejection(status: 400, "authority \(quoted(authority)) is not ip:port or hostname:port")
        }
        return HBONEConnectRequest(
            authority: target, forwardedFor: forwarded.flatMap(HBONEHeaders.forwardedFor),
            baggage: baggage.map(parseBaggage) ?? [:], forwardedHost: forwarded.flatMap(HBONEHeaders.forwardedHost),
            forwardedNetwork: forwardedNetwork)
    }

    /// Parses a W3C `baggage` value, `key=value;property,…`, into keys and percent-decoded
    /// values. Members without a key or `=` are skipped, properties are dropped, the first
    /// occurrence of a key wins, and at most ``maximumBaggageMembers`` are kept; a value
    /// longer than ``maximumBaggageLength`` yields nothing.
    public static func parseBaggage(_ value: String) -> [String: String] {
        guard value.utf8.count <= maximumBaggageLength else { return [:] }
        var entries: [String: String] = [:]
        for member in value.utf8.split(separator: UInt8(ascii: ",")) {
            guard entries.count < maximumBaggageMembers else { break }
            let pair = member.prefix { $0 != UInt8(ascii: ";") }
            guard let equals = pair.firstIndex(of: UInt8(ascii: "=")) else { continue }
            let key = trimmed(pair[pair.startIndex..<equals])
            let rawValue = trimmed(pair[pair.index(after: equals)...])
            guard !key.isEmpty, key.allSatisfy(isTokenByte) else { continue }
            let name = String(decoding: key, as: UTF8.self)
            if entries[name] == nil { entries[name] = percentDecoded(rawValue) }
        }
        return entries
    }

    /// RFC 7230 `tchar`: the characters of a baggage key.
    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }

    /// Without leading and trailing spaces and tabs (OWS).
    private static func trimmed(_ bytes: Substring.UTF8View.SubSequence) -> Substring.UTF8View.SubSequence {
        var start = bytes.startIndex
        var end = bytes.endIndex
        while start < end, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t") {
            start = bytes.index(after: start)
        }
        while end > start {
            let last = bytes.index(before: end)
            guard bytes[last] == UInt8(ascii: " ") || bytes[last] == UInt8(ascii: "\t") else { break }
            end = last
        }
        return bytes[start..<end]
    }

    /// `%XX` escapes decoded; a malformed escape is kept as it is; invalid UTF-8 repaired.
    private static func percentDecoded(_ bytes: some Collection<UInt8>) -> String {
        let input = Array(bytes)
        var output: [UInt8] = []
        output.reserveCapacity(input.count)
        var index = 0
        while index < input.count {
            if input[index] == UInt8(ascii: "%"), index + 2 < input.count,
                let high = input[index + 1].asciiHexValue, let low = input[index + 2].asciiHexValue
            {
                output.append(high << 4 | low)
                index += 3
            } else {
                output.append(input[index])
                index += 1
            }
        }
        return String(decoding: output, as: UTF8.self)
    }


    /// A header value for a log line: quoted, cut at 128 characters.
    private static func quoted(_ value: String) -> String {
        value.count > 128 ? "\"\(value.prefix(128))…\"" : "\"\(value)\""
    }
}
