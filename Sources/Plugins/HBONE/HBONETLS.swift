import Foundation
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import SwiftASN1
import X509

/// TLS contexts built from workload certificates, cached per certificate so a connection
/// costs no PEM parsing; and the SPIFFE peer check both sides run.
///
/// Thread-safe.
final class HBONETLSContexts: Sendable {
    enum Side: Hashable, Sendable { case client, server }

    private struct Key: Hashable {
        var side: Side
        var identity: SpiffeID
        var serial: String
        var notAfter: Date
    }

    /// A context plus the parsed roots its peers must chain to.
    struct Material: Sendable {
        let context: NIOSSLContext
        let roots: [Certificate]
        let identity: SpiffeID
    }

    private let cache = NIOLockedValueBox<[Key: Material]>([:])
    private let allowTLS12: Bool

    init(allowTLS12: Bool) {
        self.allowTLS12 = allowTLS12
    }

    /// The context presenting `certificate`, for `side`. Rotated certificates get a new
    /// context (the key includes the serial); expired entries are dropped on the way.
    func material(for certificate: WorkloadCertificate, side: Side) throws -> Material {
        let key = Key(side: side, identity: certificate.identity, serial: certificate.serial, notAfter: certificate.notAfter)
        if let cached = cache.withLockedValue({ $0[key] }) { return cached }

        let chain: [NIOSSLCertificate]
        let privateKey: NIOSSLPrivateKey
        let roots: [Certificate]
        do {
            chain = try certificate.chainPEM.flatMap { try NIOSSLCertificate.fromPEMBytes(Array($0.utf8)) }
            privateKey = try NIOSSLPrivateKey(bytes: Array(certificate.privateKeyPEM.utf8), format: .pem)
            roots = try certificate.rootsPEM.map { try Certificate(pemEncoded: $0) }
        } catch {
            throw HBONEError(
                .certificate, "certificate of \(certificate.identity) (serial \(certificate.serial)) is unusable: \(error)")
        }
        guard !chain.isEmpty, !roots.isEmpty else {
            throw HBONEError(.certificate, "certificate of \(certificate.identity) has an empty chain or no roots")
        }
        var configuration: TLSConfiguration
        switch side {
        case .server:
            configuration = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(privateKey))
        case .client:
            configuration = TLSConfiguration.makeClientConfiguration()
            configuration.certificateChain = chain.map { .certificate($0) }
            configuration.privateKey = .privateKey(privateKey)
        }
        configuration.minimumTLSVersion = allowTLS12 ? .tlsv12 : .tlsv13
        configuration.maximumTLSVersion = .tlsv13
        configuration.applicationProtocols = ["h2"]
        // Peers are named by SPIFFE URI SANs, not host names; the custom verification
        // callback checks the chain and the identity. On the server this also makes the
        // client certificate mandatory.
        configuration.certificateVerification = .noHostnameVerification
        configuration.trustRoots = .certificates([])
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw HBONEError(.certificate, "cannot build a TLS context for \(certificate.identity): \(error)")
        }
        let material = Material(context: context, roots: roots, identity: certificate.identity)
        let now = Date()
        cache.withLockedValue { cache in
            cache = cache.filter { $0.key.notAfter > now }
            cache[key] = material
        }
        return material
    }
}

/// Checks a peer's certificate chain against mesh roots and reads its SPIFFE identity.
enum SpiffePeerVerifier {
    /// What the peer's identity must be.
    enum Requirement: Sendable {
        /// Any SPIFFE identity in this trust domain (the server side: authorization decides
        /// which identities may connect).
        case trustDomain(String)
        /// One of these identities (the client side: the destination's expected identities).
        case oneOf(Set<SpiffeID>)
    }

    /// Verifies `chain` (leaf first, as presented) against `roots`: signatures, validity
    /// periods, CA constraints, and a URI SAN that is a SPIFFE ID meeting `requirement`.
    static func verify(
        chain: [NIOSSLCertificate], roots: [Certificate], requirement: Requirement
    ) async -> Result<SpiffeID, HBONEError> {
        guard let leafCertificate = chain.first else {
            return .failure(HBONEError(.peerRejected, "peer presented no certificate"))
        }
        let leaf: Certificate
        let intermediates: [Certificate]
        do {
            leaf = try Certificate(derEncoded: try leafCertificate.toDERBytes())
            intermediates = try chain.dropFirst().map { try Certificate(derEncoded: try $0.toDERBytes()) }
        } catch {
            return .failure(HBONEError(.peerRejected, "peer certificate cannot be parsed: \(error)"))
        }
        let identity: SpiffeID
        switch spiffeID(of: leaf) {
        case .success(let id): identity = id
        case .failure(let error): return .failure(error)
        }
        switch requirement {
        case .trustDomain(let domain):
            guard identity.trustDomain == domain else {
                return .failure(
                    HBONEError(.peerRejected, "peer \(identity) is not in trust domain \(domain)"))
            }
        case .oneOf(let allowed):
            guard allowed.contains(identity) else {
                let names = allowed.map(\.description).sorted().joined(separator: ", ")
                return .failure(HBONEError(.peerRejected, "peer \(identity) is not one of the expected identities [\(names)]"))
            }
        }
        var verifier = Verifier(rootCertificates: CertificateStore(roots)) {
            RFC5280Policy()
            SpiffeSANPolicy()
        }
        let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore(intermediates))
        switch result {
        case .validCertificate:
            return .success(identity)
        case .couldNotValidate(let failures):
            let reasons = failures.map { "\($0.policyFailureReason)" }
            return .failure(
                HBONEError(
                    .peerRejected,
                    "certificate of \(identity) does not chain to the mesh roots or is not valid now"
                        + (reasons.isEmpty ? "" : ": " + reasons.joined(separator: "; "))))
        }
    }

    /// The leaf's SPIFFE identity: exactly one `spiffe://` URI SAN.
    static func spiffeID(of certificate: Certificate) -> Result<SpiffeID, HBONEError> {
        let names: SubjectAlternativeNames?
        do {
            names = try certificate.extensions.subjectAlternativeNames
        } catch {
            return .failure(HBONEError(.peerRejected, "peer certificate has a malformed SAN extension: \(error)"))
        }
        var uris: [String] = []
        for name in names ?? SubjectAlternativeNames([]) {
            if case .uniformResourceIdentifier(let uri) = name, uri.hasPrefix("spiffe://") { uris.append(uri) }
        }
        guard uris.count == 1, let uri = uris.first else {
            return .failure(
                HBONEError(
                    .peerRejected,
                    (uris.isEmpty
                        ? "peer certificate has no SPIFFE URI SAN" : "peer certificate has several SPIFFE URI SANs")
                        + " (subject \"\(certificate.subject)\", SANs: \(names.map { Array($0).map { "\($0)" }.joined(separator: ", ") } ?? "none"))"))
        }
        do {
            return .success(try SpiffeID(parsing: uri))
        } catch {
            return .failure(HBONEError(.peerRejected, "peer certificate: \(error)"))
        }
    }
}

/// Declares the SAN and extended-key-usage extensions handled, so a mesh leaf that marks
/// its SAN critical (as it must with an empty subject) passes chain validation; the SPIFFE
/// check itself runs before, in ``SpiffePeerVerifier``.
struct SpiffeSANPolicy: VerifierPolicy {
    let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [
        .X509ExtensionID.subjectAlternativeName, .X509ExtensionID.extendedKeyUsage,
    ]

    func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult {
        .meetsPolicy
    }
}
