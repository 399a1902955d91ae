public import Foundation

/// One certificate of an identity's chain or trust roots, as `/config_dump` lists it
/// (ztunnel's `CertDump`). Only public material: never a private key.
public struct CertificateDetails: Sendable, Hashable {
    /// The certificate, PEM.
    public var pem: String
    /// Its serial number in decimal, as ztunnel writes it (istioctl prints it in hex).
    public var serialNumber: String
    /// Start of validity.
    public var notBefore: Date
    /// End of validity.
    public var notAfter: Date

    /// Creates a row.
    public init(pem: String, serialNumber: String, notBefore: Date, notAfter: Date) {
        self.pem = pem
        self.serialNumber = serialNumber
        self.notBefore = notBefore
        self.notAfter = notAfter
    }
}

/// One certificate an identity provider holds (or is fetching), as `/config_dump` lists it.
public struct CertificateStatus: Sendable, Hashable {
    /// The workload identity.
    public var identity: SpiffeID
    /// `pending`, `fetching`, `available`, `failed` or `expired`.
    public var state: String
    /// The fetch priority while one is queued or running.
    public var priority: WorkPriority?
    /// The current certificate's serial (hex), if there is one.
    public var serial: String?
    /// Its validity.
    public var notBefore: Date?
    /// Its expiry.
    public var notAfter: Date?
    /// Its chain, leaf first, PEM.
    public var chain: [String]
    /// Each certificate of ``chain`` (leaf, then intermediates), parsed; empty when the
    /// provider does not parse them.
    public var chainDetails: [CertificateDetails]
    /// The trust roots the certificate chains to, parsed.
    public var roots: [CertificateDetails]
    /// Consecutive failed fetches.
    public var failures: Int
    /// The last fetch error, while failing.
    public var lastError: String?

    /// Creates a status row.
    public init(
        identity: SpiffeID, state: String, priority: WorkPriority? = nil, serial: String? = nil, notBefore: Date? = nil,
        notAfter: Date? = nil, chain: [String] = [], failures: Int = 0, lastError: String? = nil,
        chainDetails: [CertificateDetails] = [], roots: [CertificateDetails] = []
    ) {
        self.identity = identity
        self.state = state
        self.priority = priority
        self.serial = serial
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.chain = chain
        self.chainDetails = chainDetails
        self.roots = roots
        self.failures = failures
        self.lastError = lastError
    }
}

/// Implemented by identity providers that can list their certificates for `/config_dump`.
/// Thread-safe; called from the admin server.
public protocol CertificateStatusReporting: AnyObject, Sendable {
    /// Every certificate held or being fetched, sorted by identity.
    var certificateStatuses: [CertificateStatus] { get }
}
