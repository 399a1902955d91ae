import Foundation
public import Kernel

/// Where workload certificates come from: sends one identity's CSR to a CA and returns
/// the verified certificate. Implementations: ``LocalCAClient`` (in-process signing) and
/// ``IstioCAClient`` (Istio's gRPC API).
///
/// Threading: called concurrently for different identities (never twice at once for one
/// identity by the certificate cache).
public protocol CertificateAuthorityClient: Sendable {
    /// A short description for logs and errors, e.g. `istio CA 10.0.0.1:15012`.
    var name: String { get }

    /// Obtains a certificate for `key.identity` valid for (at most) `lifetime`.
    func certificate(for key: WorkloadKey, lifetime: Duration) async throws -> WorkloadCertificate
}

/// Signs in-process with a CA key on disk: for a single node, tests and the demo.
public struct LocalCAClient: CertificateAuthorityClient {
    /// The authority that signs.
    public let authority: CertificateAuthority
    /// Where the authority was loaded from, for messages.
    public let name: String

    /// Creates a client for an authority.
    public init(authority: CertificateAuthority, name: String = "local CA") {
        self.authority = authority
        self.name = name
    }

    public func certificate(for key: WorkloadKey, lifetime: Duration) async throws -> WorkloadCertificate {
        let chain = try authority.issue(csrPEM: key.csrPEM, identity: key.identity, lifetime: lifetime)
        // The same checks as for a remote CA: cheap, and they catch a CA whose files changed.
        return try await IssuedChainVerifier(roots: authority.roots).verify(chainPEM: chain, for: key, source: name)
    }
}
