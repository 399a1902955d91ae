public import Foundation

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
    /// Consecutive failed fetches.
    public var failures: Int
    /// The last fetch error, while failing.
    public var lastError: String?

    /// Creates a status row.
    public init(
        identity: SpiffeID, state: String, priority: WorkPriority? = nil, serial: String? = nil, notBefore: Date? = nil,
        notAfter: Date? = nil, chain: [String] = [], failures: Int = 0, lastError: String? = nil
    ) {
        self.identity = identity
        self.state = state
        self.priority = priority
        self.serial = serial
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.chain = chain
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
