/// Why a certificate could not be made, loaded, issued or accepted.
///
/// Messages say what failed, where (file, identity, CA address) and what to do.
public struct PKIError: Error, Sendable, CustomStringConvertible {
    /// Broad classes of failure; a struct so codes can be added without breaking switches.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        public var description: String { raw }

        /// A file is missing, unreadable, or not the PEM it should be.
        public static let invalidFile = Code("invalid file")
        /// A CSR could not be parsed, its signature is wrong, or its SAN is not the identity.
        public static let invalidCSR = Code("invalid CSR")
        /// The CA's own certificate or key is unusable (expired, not a CA, key mismatch).
        public static let invalidAuthority = Code("invalid authority")
        /// The identity is not in the trust domain this component serves.
        public static let wrongTrustDomain = Code("wrong trust domain")
        /// The CA answered with a certificate for another identity or key.
        public static let identityMismatch = Code("identity mismatch")
        /// The CA answered with a chain that does not verify against the trusted roots.
        public static let untrustedChain = Code("untrusted chain")
        /// The CA could not be reached or refused the request.
        public static let caUnavailable = Code("CA unavailable")
        /// The CA refused the caller (authentication or authorization).
        public static let refused = Code("refused")
        /// No valid certificate is available and none could be fetched in time.
        public static let unavailable = Code("unavailable")
        /// Refusing to overwrite existing files.
        public static let exists = Code("exists")
    }

    /// The failure's class.
    public var code: Code
    /// What went wrong and what to do about it.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
