#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
import Kernel

/// Why a listener could not listen or a dialer could not connect.
///
/// The ``code`` is for programs (retry a refused connection, report a timeout); the
/// ``message`` is for people and names the address involved.
public struct SocketError: Error, CustomStringConvertible {
    /// What went wrong, as a growable set of named codes.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// The listening socket could not be set up or bound.
        public static let bindFailed = Code("bindFailed")
        /// The destination actively refused the connection (nothing listens there).
        public static let connectionRefused = Code("connectionRefused")
        /// No answer within the dialer's connect timeout.
        public static let connectTimedOut = Code("connectTimedOut")
        /// Any other failure to connect (unreachable network, socket option refused, …).
        public static let connectFailed = Code("connectFailed")
        /// The addresses given cannot be used together (e.g. IPv4 source, IPv6 destination).
        public static let invalidAddress = Code("invalidAddress")

        public var description: String { name }
    }

    /// What went wrong.
    public var code: Code
    /// What went wrong, where, and what to check.
    public var message: String
    /// The error from NIO or the system, when there is one.
    public var underlying: (any Error)?

    /// Creates an error.
    public init(code: Code, message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String { message }

    /// Classifies a failed connect to `destination`.
    static func connect(to destination: SocketAddr, failedWith error: any Error) -> SocketError {
        if let error = error as? SocketError { return error }
        if let channelError = error as? ChannelError, case .connectTimeout(let timeout) = channelError {
            return SocketError(
                code: .connectTimedOut,
                message: "connect to \(destination) timed out after \(timeout.milliseconds) ms",
                underlying: error)
        }
        if let ioError = error as? IOError, ioError.errnoCode == ECONNREFUSED {
            return SocketError(
                code: .connectionRefused,
                message: "connect to \(destination) refused: nothing is listening there",
                underlying: error)
        }
        return SocketError(code: .connectFailed, message: "connect to \(destination) failed: \(error)", underlying: error)
    }
}

extension TimeAmount {
    fileprivate var milliseconds: Int64 { nanoseconds / 1_000_000 }
}
