public import Crypto
import Foundation
public import Kernel
import SwiftASN1
public import X509

/// A fresh key and certificate signing request for one workload identity: ECDSA P-256,
/// the SPIFFE ID as the only URI SAN (in an extension request), and an empty subject
/// (no CN), as Istio's CA expects.
public struct WorkloadKey: Sendable {
    /// The identity the CSR asks for.
    public let identity: SpiffeID
    /// The private key, which never leaves this process.
    public let privateKey: P256.Signing.PrivateKey
    /// The CSR, PEM.
    public let csrPEM: String

    /// Generates a key and its CSR.
    public init(identity: SpiffeID) throws(PKIError) {
        self.identity = identity
        privateKey = P256.Signing.PrivateKey()
        do {
            let extensions = try Certificate.Extensions {
                SubjectAlternativeNames([.uniformResourceIdentifier(identity.description)])
            }
            let attributes = CertificateSigningRequest.Attributes([
                try CertificateSigningRequest.Attribute(ExtensionRequest(extensions: extensions))
            ])
            let csr = try CertificateSigningRequest(
                version: .v1, subject: DistinguishedName(), privateKey: Certificate.PrivateKey(privateKey),
                attributes: attributes, signatureAlgorithm: .ecdsaWithSHA256)
            csrPEM = try csr.serializeAsPEM().pemString + "\n"
        } catch {
            throw PKIError(.invalidCSR, "cannot build a CSR for \(identity): \(error)")
        }
    }
}

/// Checks what a CA returned before it is used: the leaf is for the asked identity and
/// for our key, and the chain verifies (RFC 5280) to one of the trusted roots.
public struct IssuedChainVerifier: Sendable {
    /// The trust anchors.
    public let roots: [Certificate]

    /// Creates a verifier trusting `roots`.
    public init(roots: [Certificate]) {
        self.roots = roots
    }

    /// Verifies a response chain (leaf first) at the current time and makes the certificate record.
    public func verify(chainPEM: [String], for key: WorkloadKey, source: String) async throws(PKIError)
        -> WorkloadCertificate
    {
        guard !chainPEM.isEmpty else {
            throw PKIError(.untrustedChain, "\(source) returned an empty certificate chain for \(key.identity)")
        }
        var chain: [Certificate] = []
        for (index, pem) in chainPEM.enumerated() {
            chain += try PEMFiles.certificates(pem: pem, source: "\(source) response certificate \(index + 1)")
        }
        let leaf = chain[0]
        let sans = leaf.uriSANs
        guard sans == [key.identity.description] else {
            throw PKIError(
                .identityMismatch,
                "\(source) returned a certificate for \(sans) when \(key.identity) was asked for; rejected")
        }
        guard leaf.publicKey == Certificate.PublicKey(key.privateKey.publicKey) else {
            throw PKIError(
                .identityMismatch, "\(source) returned a certificate for \(key.identity) that is not for the key of our CSR")
        }
        var verifier = Verifier(rootCertificates: X509.CertificateStore(roots)) {
            RFC5280Policy()
            SpiffeLeafPolicy()
        }
        let result = await verifier.validate(leaf: leaf, intermediates: X509.CertificateStore(Array(chain.dropFirst())))
        switch result {
        case .validCertificate:
            break
        case .couldNotValidate(let failures):
            let reasons = failures.map { $0.policyFailureReason.description }
            throw PKIError(
                .untrustedChain,
                "\(source) returned a chain for \(key.identity) that does not verify against the trusted root"
                    + (reasons.isEmpty ? " (no path to a trusted root)" : ": \(reasons.joined(separator: "; "))"))
        }
        // Peers get leaf + intermediates; roots are distributed separately.
        let presented = chain.filter { !roots.contains($0) && !$0.isSelfSigned }
        let encode = { (cert: Certificate) throws(PKIError) -> String in try PEMFiles.pem(cert) }
        return WorkloadCertificate(
            identity: key.identity, privateKeyPEM: key.privateKey.pemRepresentation,
            chainPEM: try presented.map(encode), rootsPEM: try roots.map(encode),
            notBefore: leaf.notValidBefore, notAfter: leaf.notValidAfter, serial: leaf.serialHex)
    }
}

/// Lets the verifier accept a critical SubjectAlternativeName (workload leaves have an
/// empty subject, so RFC 5280 makes their SAN critical); the identity itself is checked
/// by ``IssuedChainVerifier`` before chain building.
struct SpiffeLeafPolicy: VerifierPolicy {
    let verifyingCriticalExtensions: [ASN1ObjectIdentifier] = [.X509ExtensionID.subjectAlternativeName]

    func chainMeetsPolicyRequirements(chain: UnverifiedCertificateChain) async -> PolicyEvaluationResult {
        .meetsPolicy
    }
}
