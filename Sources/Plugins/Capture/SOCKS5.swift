public import Kernel
public import NIOCore

// SOCKS5 (RFC 1928) as Ambit speaks it: the server side only, no authentication, CONNECT
// only. Applications that cannot be captured transparently (no root, no pod netns) point
// at the node proxy's SOCKS5 port (15080 by default) and name their destination
// explicitly. The value types here carry no NIO channel dependency so the parser can be
// driven from byte arrays in tests and fuzzers.

/// The destination a SOCKS5 client asks for: an IP address or a name to resolve.
public enum SOCKS5Address: Sendable, Equatable, CustomStringConvertible {
    /// An IPv4 (ATYP 1) or IPv6 (ATYP 4) address.
    case ip(IPAddress)
    /// A host name (ATYP 3), exactly as the client sent it. The parser has checked it is
    /// 1 to 255 bytes of host-name characters; resolving it is the delegate's job.
    case domain(String)

    public var description: String {
        switch self {
        case .ip(let ip): return ip.isIPv4 ? ip.description : "[\(ip)]"
        case .domain(let name): return name
        }
    }
}

/// A parsed SOCKS5 CONNECT request: where the client wants to go.
public struct SOCKS5Request: Sendable, Equatable, CustomStringConvertible {
    /// The destination address or name.
    public var address: SOCKS5Address
    /// The destination TCP port. Port 0 is passed through; connecting to it fails upstream.
    public var port: UInt16

    /// Creates a request.
    public init(address: SOCKS5Address, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `host:port`, with brackets around IPv6.
    public var description: String { "\(address):\(port)" }
}

/// The REP field of a SOCKS5 reply (RFC 1928 §6). A struct rather than an enum so a
/// reply code the RFC does not name can still be carried and written.
public struct SOCKS5Reply: Sendable, Hashable, CustomStringConvertible {
    /// The code as it goes on the wire.
    public var rawValue: UInt8

    /// Wraps a raw code.
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// 0: the upstream connection is open.
    public static let succeeded = SOCKS5Reply(rawValue: 0)
    /// 1: anything without a better code, including malformed requests.
    public static let generalFailure = SOCKS5Reply(rawValue: 1)
    /// 2: policy refused the connection.
    public static let notAllowed = SOCKS5Reply(rawValue: 2)
    /// 3: no route to the destination network.
    public static let networkUnreachable = SOCKS5Reply(rawValue: 3)
    /// 4: the host could not be reached or its name not resolved.
    public static let hostUnreachable = SOCKS5Reply(rawValue: 4)
    /// 5: the destination refused the connection.
    public static let connectionRefused = SOCKS5Reply(rawValue: 5)
    /// 6: the connection attempt timed out.
    public static let ttlExpired = SOCKS5Reply(rawValue: 6)
    /// 7: the command is not CONNECT.
    public static let commandNotSupported = SOCKS5Reply(rawValue: 7)
    /// 8: the address type is not IPv4, domain or IPv6.
    public static let addressTypeNotSupported = SOCKS5Reply(rawValue: 8)

    public var description: String {
        switch rawValue {
        case 0: return "succeeded"
        case 1: return "general failure"
        case 2: return "connection not allowed by ruleset"
        case 3: return "network unreachable"
        case 4: return "host unreachable"
        case 5: return "connection refused"
        case 6: return "TTL expired"
        case 7: return "command not supported"
        case 8: return "address type not supported"
        default: return "reply \(rawValue)"
        }
    }

    /// The full reply message as the server sends it: `05 REP 00 ATYP BND.ADDR BND.PORT`.
    /// Without a bound address (failures) it reports `0.0.0.0:0`, which clients ignore.
    public func encoded(boundAddress: SocketAddr?) -> [UInt8] {
        let bound = boundAddress ?? SocketAddr(ip: .v4(0), port: 0)
        var bytes: [UInt8] = [SOCKS5Wire.version, rawValue, 0]
        bytes.append(bound.ip.isIPv4 ? SOCKS5Wire.addressTypeIPv4 : SOCKS5Wire.addressTypeIPv6)
        bytes.append(contentsOf: bound.ip.bytes)
        bytes.append(UInt8(truncatingIfNeeded: bound.port >> 8))
        bytes.append(UInt8(truncatingIfNeeded: bound.port))
        return bytes
    }
}

/// Why a SOCKS5 CONNECT could not be served, with the reply code the client receives.
/// Delegates fail their future with this to choose the code; any other error is
/// answered with ``SOCKS5Reply/generalFailure``.
public struct SOCKS5Error: Error, Sendable, CustomStringConvertible {
    /// The code written to the client.
    public var reply: SOCKS5Reply
    /// What went wrong, for logs (never sent to the client).
    public var message: String

    /// Creates an error.
    public init(_ reply: SOCKS5Reply, _ message: String) {
        self.reply = reply
        self.message = message
    }

    public var description: String { "SOCKS5 \(reply): \(message)" }
}

/// What a ``SOCKS5ServerHandler`` delegate returns once it has connected upstream.
public struct SOCKS5Connected: Sendable {
    /// The address reported to the client as BND.ADDR/BND.PORT; normally the upstream
    /// connection's local address.
    public var boundAddress: SocketAddr
    /// Called on the client channel's event loop after the success reply has been
    /// written and the handler has removed itself from the pipeline. Receives the bytes
    /// the client sent after its request but before the reply (normally nil); they must
    /// be forwarded upstream ahead of anything read later. Install the relay here.
    public var start: @Sendable (ByteBuffer?) -> Void
    /// Called on the client channel's event loop, instead of ``start``, when the
    /// handshake cannot be finished after all (the client went away or the handshake
    /// timed out while connecting): release the upstream connection here.
    public var cancel: @Sendable () -> Void

    /// Creates the result. `cancel` defaults to doing nothing, which suits delegates that
    /// watch the client channel's `closeFuture` themselves.
    public init(
        boundAddress: SocketAddr, start: @escaping @Sendable (ByteBuffer?) -> Void,
        cancel: @escaping @Sendable () -> Void = {}
    ) {
        self.boundAddress = boundAddress
        self.start = start
        self.cancel = cancel
    }
}

/// Constants of the wire format, shared by the parser and the handler.
enum SOCKS5Wire {
    static let version: UInt8 = 5
    static let methodNoAuthentication: UInt8 = 0
    static let methodNoneAcceptable: UInt8 = 0xFF
    static let commandConnect: UInt8 = 1
    static let commandBind: UInt8 = 2
    static let commandUDPAssociate: UInt8 = 3
    static let addressTypeIPv4: UInt8 = 1
    static let addressTypeDomain: UInt8 = 3
    static let addressTypeIPv6: UInt8 = 4

    /// The method-selection message accepting "no authentication".
    static let methodAccepted: [UInt8] = [version, methodNoAuthentication]
    /// The method-selection message refusing every offered method.
    static let methodRejected: [UInt8] = [version, methodNoneAcceptable]

    /// VER NMETHODS and up to 255 methods.
    static let maximumGreetingLength = 2 + 255
    /// VER CMD RSV ATYP, a 255-byte name with its length byte, and the port.
    static let maximumRequestLength = 4 + 1 + 255 + 2
}
