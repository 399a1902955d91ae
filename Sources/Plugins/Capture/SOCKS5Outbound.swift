import AmbitRuntime
import Kernel
import NIOCore
import NIOPosix
import NodeProxy

#if canImport(Glibc)
import Glibc
#endif

// The SOCKS5 side of the node proxy's outbound path: refusals become reply codes a
// client can act on (RFC 1928 §6), connected upstreams become the handler's result.

extension SOCKS5Reply {
    /// The reply for a refused or failed connection.
    static func answering(_ refusal: ConnectionRefusal) -> SOCKS5Reply {
        switch refusal.code {
        case .noHealthyEndpoint, .unresolvable:
            return .hostUnreachable
        case .networkGatewayUnresolved:
            // The endpoint's network cannot be reached from here.
            return .networkUnreachable
        case .connectFailed:
            // A plain connect carries the socket error; a tunnel's failure does not.
            return refusal.underlying.map { reply(for: $0) } ?? .hostUnreachable
        default:
            return .notAllowed
        }
    }

    /// Maps a connect failure to the SOCKS5 reply a client can act on.
    static func reply(for error: any Error) -> SOCKS5Reply {
        if let socket = error as? SocketError {
            switch socket.code {
            case .connectionRefused: return .connectionRefused
            case .connectTimedOut: return .hostUnreachable
            default: return socket.underlying.map { reply(for: $0) } ?? .generalFailure
            }
        }
        if let io = error as? IOError {
            switch io.errnoCode {
            case ECONNREFUSED: return .connectionRefused
            case ENETUNREACH: return .networkUnreachable
            case EHOSTUNREACH, ETIMEDOUT: return .hostUnreachable
            default: return .generalFailure
            }
        }
        if error is ChannelError { return .hostUnreachable }  // connect timeout
        if let connect = error as? NIOConnectionError, let first = connect.connectionErrors.first {
            return reply(for: first.error)
        }
        return .generalFailure
    }
}

extension SOCKS5Error {
    /// The error that answers `refusal` with its reply code.
    init(_ refusal: ConnectionRefusal) {
        self.init(SOCKS5Reply.answering(refusal), refusal.description)
    }
}

extension SOCKS5Connected {
    /// The handler's result for a connected outbound connection.
    init(_ connection: OutboundConnection) {
        self.init(boundAddress: connection.boundAddress, start: connection.start, cancel: connection.cancel)
    }
}

extension OutboundPath {
    /// Handles one SOCKS5 CONNECT: the outbound path, answered in SOCKS5's terms.
    func connect(_ request: SOCKS5Request, from downstream: any Channel) -> EventLoopFuture<SOCKS5Connected> {
        let destination: OutboundDestination
        switch request.address {
        case .ip(let ip): destination = .address(SocketAddr(ip: ip, port: request.port))
        case .domain(let name): destination = .domain(name, port: request.port)
        }
        return connect(from: downstream, to: destination).map(SOCKS5Connected.init).flatMapErrorThrowing { error in
            throw (error as? ConnectionRefusal).map(SOCKS5Error.init) ?? error
        }
    }
}
