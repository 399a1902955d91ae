public import Foundation

/// A workload's certificate and private key, as PEM, with what peers of that workload
/// must chain to.
public struct WorkloadCertificate: Sendable, Hashable {
    /// The identity in the leaf's URI SAN.
    public var identity: SpiffeID
    /// The leaf's private key (PKCS#8 or SEC1 PEM).
    public var privateKeyPEM: String
    /// The leaf first, then any intermediates (not the root).
    public var chainPEM: [String]
    /// Trust anchors: certificates of peers must chain to one of these.
    public var rootsPEM: [String]
    /// Start of validity.
    public var notBefore: Date
    /// End of validity.
    public var notAfter: Date
    /// The leaf's serial number, hex.
    public var serial: String

    /// Creates a certificate record.
    public init(
        identity: SpiffeID, privateKeyPEM: String, chainPEM: [String], rootsPEM: [String], notBefore: Date,
        notAfter: Date, serial: String
    ) {
        self.identity = identity
        self.privateKeyPEM = privateKeyPEM
        self.chainPEM = chainPEM
        self.rootsPEM = rootsPEM
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.serial = serial
    }

    /// Whether the certificate is valid at `date`.
    public func isValid(at date: Date = Date()) -> Bool {
        notBefore <= date && date < notAfter
    }
}

/// Role ``PluginRole/identity``: holds the certificates of the workload identities on
/// this node (one per identity; the node's own identity is never used for workload
/// traffic).
///
/// Threading: called concurrently from connection paths; must be thread-safe.
public protocol IdentityProvider: AnyObject, Sendable {
    /// The certificate for `identity`. Returns a cached, valid certificate at once;
    /// otherwise fetches at `priority` (callers for one identity share one fetch) and
    /// waits. Throws a descriptive error when no valid certificate can be had: callers
    /// fail closed.
    func certificate(for identity: SpiffeID, priority: WorkPriority) async throws -> WorkloadCertificate

    /// Identities the provider currently holds a valid certificate for.
    var availableIdentities: [SpiffeID] { get }
}
