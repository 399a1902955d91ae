/// Why the node refused a connection, or could not carry it: the mesh's reason (a code
/// each protocol maps to its own answer: a SOCKS5 reply, an HBONE status), the Istio
/// response flag telemetry records, and a message for people that says what and where.
///
/// One type for every path (outbound, inbound, tunnels): the SOCKS5 reply table lives in
/// the capture plugin, the HTTP status table in the HBONE plugin, and the flag travels
/// with the refusal into the connection's record.
public struct ConnectionRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong, as a growable set of named codes (a struct, not an enum, so new
    /// codes do not break exhaustive switches in plugins).
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private let name: String
        /// The flag a refusal with this code records unless it says otherwise.
        public let defaultFlag: ResponseFlag
        private init(_ name: String, _ flag: ResponseFlag) {
            self.name = name
            self.defaultFlag = flag
        }

        /// The destination is the proxy itself (a loop, or one of its own ports).
        public static let selfCall = Code("selfCall", .noRoute)
        /// The addressed service has no healthy endpoint serving the port.
        public static let noHealthyEndpoint = Code("noHealthyEndpoint", .noHealthyUpstream)
        /// The addressed service does not declare the port.
        public static let servicePortUnknown = Code("servicePortUnknown", .noRoute)
        /// The destination's waypoint cannot be resolved to a workload.
        public static let waypointUnresolved = Code("waypointUnresolved", .noRoute)
        /// The chosen endpoint (or waypoint) is on another network and its network gateway
        /// is missing or cannot be resolved to a workload.
        public static let networkGatewayUnresolved = Code("networkGatewayUnresolved", .noRoute)
        /// The destination needs a tunnel (HBONE) and no tunnel dialer is enabled.
        public static let noTunnel = Code("noTunnel", .noRoute)
        /// The source is not a workload of the mesh on this node.
        public static let sourceUnknown = Code("sourceUnknown", .noRoute)
        /// A domain name could not be resolved.
        public static let unresolvable = Code("unresolvable", .noRoute)
        /// No workload of the mesh owns the destination address (inbound).
        public static let unknownDestination = Code("unknownDestination", .noRoute)
        /// The destination workload runs on another node (inbound).
        public static let notLocal = Code("notLocal", .noRoute)
        /// A policy denied the connection.
        public static let denied = Code("denied", .denied)
        /// The destination (or the tunnel to it) could not be reached.
        public static let connectFailed = Code("connectFailed", .connectFailure)
        /// The request itself is malformed (a bad tunnel request).
        public static let badRequest = Code("badRequest", .noRoute)

        public var description: String { name }

        public static func == (lhs: Code, rhs: Code) -> Bool { lhs.name == rhs.name }
        public func hash(into hasher: inout Hasher) { hasher.combine(name) }
    }

    /// What went wrong.
    public var code: Code
    /// What telemetry records (`response_flags`); the code's default unless a path knows
    /// better (a tunnel without a certificate: ``ResponseFlag/identityError``).
    public var flag: ResponseFlag
    /// What, where, and why.
    public var message: String
    /// The error underneath, when one caused it (a socket error for a failed connect), so
    /// a protocol can answer precisely (SOCKS5 "connection refused" vs "host unreachable").
    public var underlying: (any Error)?

    /// Creates a refusal.
    public init(_ code: Code, _ message: String, flag: ResponseFlag? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.flag = flag ?? code.defaultFlag
        self.underlying = underlying
    }

    /// `code: message`.
    public var description: String { "\(code): \(message)" }

    /// Refusals are equal when code, flag and message are (the underlying error is not compared).
    public static func == (lhs: ConnectionRefusal, rhs: ConnectionRefusal) -> Bool {
        lhs.code == rhs.code && lhs.flag == rhs.flag && lhs.message == rhs.message
    }
}
