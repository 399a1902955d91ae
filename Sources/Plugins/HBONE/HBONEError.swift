public import Kernel

/// Why an HBONE tunnel could not be opened or served.
///
/// The ``code`` is for programs (tests switch on it, ``responseFlag`` derives from it); the
/// ``message`` is for people and names the peer, identity or status involved.
public struct HBONEError: Error, Sendable, CustomStringConvertible, ResponseFlagProviding {
    /// What went wrong, as a growable set of named codes.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// No usable certificate for the identity (provider failed, bad PEM).
        public static let certificate = Code("certificate")
        /// The peer's certificate failed verification (chain, validity, SPIFFE identity).
        public static let peerRejected = Code("peerRejected")
        /// TLS or HTTP/2 could not be established (handshake failure, no ALPN `h2`, closed).
        public static let handshakeFailed = Code("handshakeFailed")
        /// The peer answered the CONNECT with a non-200 status.
        public static let refused = Code("refused")
        /// The tunnel was not established in time.
        public static let timedOut = Code("timedOut")
        /// The TCP connection to the peer's HBONE port was not established in time: the
        /// peer is down, or a NetworkPolicy drops traffic to that port.
        public static let connectTimedOut = Code("connectTimedOut")
        /// The connection carrying the tunnel went away.
        public static let connectionClosed = Code("connectionClosed")
        /// The tunnel's stream was reset: by the peer (RST_STREAM), or by this side because
        /// one of its frames could not be sent.
        public static let streamReset = Code("streamReset")

        public var description: String { name }
    }

    /// What went wrong.
    public var code: Code
    /// What, where, and what to check.
    public var message: String
    /// The CONNECT response status, for ``Code/refused``.
    public var status: Int?
    /// The flag telemetry records, when the code alone does not decide it (an established
    /// tunnel's stream ending early).
    private var flag: ResponseFlag?

    /// Creates an error; `flag`, when given, is its ``responseFlag`` whatever the code.
    public init(_ code: Code, _ message: String, status: Int? = nil, flag: ResponseFlag? = nil) {
        self.code = code
        self.message = message
        self.status = status
        self.flag = flag
    }

    public var description: String { message }

    /// How telemetry flags a connection whose tunnel failed so, as ztunnel does:
    /// ``ResponseFlag/identityError`` without a usable certificate,
    /// ``ResponseFlag/networkPolicy`` when the TCP connect timed out,
    /// ``ResponseFlag/connectFailure`` otherwise (TLS, HTTP/2, a refusing status, …); the
    /// flag given at creation when there is one (an established tunnel whose stream ended
    /// early: `-` for the peer's CANCEL or NO_ERROR reset or its connection going away,
    /// ``ResponseFlag/connectFailure`` for a reset with an error code).
    public var responseFlag: ResponseFlag {
        if let flag { return flag }
        return switch code {
        case .certificate: .identityError
        case .connectTimedOut: .networkPolicy
        default: .connectFailure
        }
    }
}
