import Crypto
public import Foundation
public import Kernel
import SwiftASN1
public import X509

/// A certificate authority backed by key material on disk, in Istio's plugged-in CA
/// layout: it signs workload CSRs for SPIFFE identities of one trust domain.
///
/// Used in-process by the `local` backend of ``CertificatesPlugin`` and by the CA server.
/// Loading checks everything that would otherwise fail later and less clearly: every
/// file parses, the key matches the signing certificate, the signing certificate is a CA,
/// and neither it nor the root has expired.
public struct CertificateAuthority: Sendable {
    /// File names of Istio's plugged-in CA directory (`cacerts`).
    public enum FileName {
        /// The certificate the CA signs with.
        public static let certificate = "ca-cert.pem"
        /// Its private key.
        public static let key = "ca-key.pem"
        /// The root peers trust.
        public static let root = "root-cert.pem"
        /// The chain from the signing certificate up to the root (for a self-signed
        /// root: the root itself).
        public static let chain = "cert-chain.pem"
        /// All four, in the order `ambit ca init` writes them.
        public static let all = [certificate, key, root, chain]
    }

    /// The signing certificate.
    public let certificate: Certificate
    /// The root certificate(s) peers trust.
    public let roots: [Certificate]
    /// The trust domain the CA issues identities in.
    public let trustDomain: String
    /// Appended after a leaf in responses: the signing certificate, intermediates, root.
    public let chain: [Certificate]
    private let privateKey: Certificate.PrivateKey

    /// The roots as PEM.
    public var rootsPEM: [String] { roots.compactMap { try? PEMFiles.pem($0) } }

    /// Builds a CA from parsed material, checking it is usable at `now`.
    public init(
        certificate: Certificate, privateKey: Certificate.PrivateKey, chain: [Certificate], roots: [Certificate],
        trustDomain: String, now: Date = Date(), source: String = "CA"
    ) throws(PKIError) {
        guard certificate.publicKey == privateKey.publicKey else {
            throw PKIError(
                .invalidAuthority, "\(source): the private key does not belong to the signing certificate \(certificate.subject)")
        }
        guard certificate.isCertificateAuthority else {
            throw PKIError(
                .invalidAuthority, "\(source): the signing certificate \(certificate.subject) is not a CA (basicConstraints CA:true is missing)")
        }
        for (what, cert) in [("signing certificate", certificate)] + roots.map({ ("root", $0) }) {
            if cert.notValidAfter <= now {
                throw PKIError(
                    .invalidAuthority,
                    "\(source): the \(what) \(cert.subject) expired at \(cert.notValidAfter); create a new root (ambit ca init --force)")
            }
            if cert.notValidBefore > now {
                throw PKIError(.invalidAuthority, "\(source): the \(what) \(cert.subject) is not valid before \(cert.notValidBefore)")
            }
        }
        guard !roots.isEmpty else { throw PKIError(.invalidAuthority, "\(source): no root certificate") }
        self.certificate = certificate
        self.privateKey = privateKey
        self.roots = roots
        self.trustDomain = trustDomain
        // Response order is leaf, signing certificate, intermediates, root: make sure the
        // chain starts at the signing certificate and ends at a root, without repeats.
        var full = chain.first == certificate ? chain : [certificate] + chain
        if let last = full.last, !roots.contains(last), let root = roots.first { full.append(root) }
        var seen: [Certificate] = []
        for cert in full where !seen.contains(cert) { seen.append(cert) }
        self.chain = seen
    }

    /// Loads `ca-cert.pem`, `ca-key.pem`, `root-cert.pem` and `cert-chain.pem` (the last is
    /// optional: without it the chain is the signing certificate then the root).
    public static func load(directory: String, trustDomain: String, now: Date = Date()) throws(PKIError)
        -> CertificateAuthority
    {
        let path = { (name: String) in directory.hasSuffix("/") ? directory + name : directory + "/" + name }
        let certificate = try PEMFiles.certificates(atPath: path(FileName.certificate), what: "CA certificate")
        let key = try PEMFiles.privateKey(atPath: path(FileName.key), what: "CA key")
        let roots = try PEMFiles.certificates(atPath: path(FileName.root), what: "CA root")
        var chain: [Certificate] = []
        if FileManager.default.fileExists(atPath: path(FileName.chain)) {
            chain = try PEMFiles.certificates(atPath: path(FileName.chain), what: "CA chain")
        }
        return try CertificateAuthority(
            certificate: certificate[0], privateKey: key, chain: chain, roots: roots, trustDomain: trustDomain,
            now: now, source: "CA directory \(directory)")
    }

    // MARK: - Issuing

    /// Checks a PEM CSR (parses, signature verifies, its only URI SAN is `identity`) and
    /// issues a leaf for it. Returns the chain as PEM, leaf first, root last.
    public func issue(csrPEM: String, identity: SpiffeID, lifetime: Duration, now: Date = Date()) throws(PKIError)
        -> [String]
    {
        let csr = try Self.verifiedCSR(pem: csrPEM, identity: identity)
        let leaf = try sign(publicKey: csr.publicKey, uri: identity.description, lifetime: lifetime, now: now)
        return try ([leaf] + chain).map { cert throws(PKIError) in try PEMFiles.pem(cert) }
    }

    /// Parses a PEM CSR and checks its signature and that its URI SAN is exactly `identity`.
    public static func verifiedCSR(pem: String, identity: SpiffeID) throws(PKIError) -> CertificateSigningRequest {
        let csr: CertificateSigningRequest
        do {
            csr = try CertificateSigningRequest(pemEncoded: pem)
        } catch {
            throw PKIError(.invalidCSR, "the CSR for \(identity) is not a PEM certificate request: \(error)")
        }
        guard csr.publicKey.isValidSignature(csr.signature, for: csr) else {
            throw PKIError(.invalidCSR, "the CSR for \(identity) has a signature its own key does not verify")
        }
        let names: [String]
        do {
            let sans = try csr.attributes.extensionRequest?.extensions.subjectAlternativeNames
            names = (sans.map(Array.init) ?? []).compactMap { name in
                if case .uniformResourceIdentifier(let uri) = name { return uri }
                return nil
            }
        } catch {
            throw PKIError(.invalidCSR, "the CSR for \(identity) has an unreadable extension request: \(error)")
        }
        guard names == [identity.description] else {
            throw PKIError(
                .invalidCSR,
                "the CSR's URI SANs \(names) must be exactly [\(identity)], the identity asked for")
        }
        return csr
    }

    /// The URI SANs a PEM CSR asks for, without verifying it; nil when it does not parse.
    public static func uriSANs(ofCSR pem: String) -> [String]? {
        guard let csr = try? CertificateSigningRequest(pemEncoded: pem),
            let sans = try? csr.attributes.extensionRequest?.extensions.subjectAlternativeNames
        else { return nil }
        return sans.compactMap { name in
            if case .uniformResourceIdentifier(let uri) = name { return uri }
            return nil
        }
    }

    /// Signs a workload leaf for `publicKey`: no subject, the URI SAN only (critical, as
    /// RFC 5280 asks when the subject is empty), digitalSignature + keyEncipherment,
    /// serverAuth + clientAuth, not a CA, a random serial, valid from `now` for
    /// `lifetime` (never past the signing certificate).
    public func sign(publicKey: Certificate.PublicKey, uri: String, lifetime: Duration, now: Date = Date()) throws(PKIError)
        -> Certificate
    {
        do {
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                Critical(SubjectAlternativeNames([.uniformResourceIdentifier(uri)]))
                AuthorityKeyIdentifier(keyIdentifier: authorityKeyIdentifier)
            }
            return try makeLeaf(publicKey: publicKey, extensions: extensions, lifetime: lifetime, now: now)
        } catch let error as PKIError {
            throw error
        } catch {
            throw PKIError(.invalidAuthority, "cannot sign a certificate for \(uri): \(error)")
        }
    }

    /// Issues a TLS server certificate for the CA's own endpoint, with a fresh P-256 key:
    /// DNS and IP SANs, serverAuth. Returns the chain (leaf first) and the key, as PEM.
    public func issueServingCertificate(names: [String], lifetime: Duration, now: Date = Date()) throws(PKIError)
        -> (chainPEM: [String], keyPEM: String)
    {
        let key = P256.Signing.PrivateKey()
        do {
            let generalNames: [GeneralName] = names.map { name in
                if let ip = IPAddress(name) { return .ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip.bytes))) }
                return .dnsName(name)
            }
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage([.serverAuth])
                SubjectAlternativeNames(generalNames)
                AuthorityKeyIdentifier(keyIdentifier: authorityKeyIdentifier)
            }
            let leaf = try makeLeaf(
                publicKey: Certificate.PublicKey(key.publicKey), extensions: extensions, lifetime: lifetime, now: now)
            let chainPEM = try ([leaf] + chain).map { cert throws(PKIError) in try PEMFiles.pem(cert) }
            return (chainPEM, key.pemRepresentation)
        } catch let error as PKIError {
            throw error
        } catch {
            throw PKIError(.invalidAuthority, "cannot issue the CA's serving certificate for \(names): \(error)")
        }
    }

    private var authorityKeyIdentifier: ArraySlice<UInt8>? {
        (try? certificate.extensions.subjectKeyIdentifier)?.keyIdentifier
    }

    private func makeLeaf(publicKey: Certificate.PublicKey, extensions: Certificate.Extensions, lifetime: Duration, now: Date)
        throws -> Certificate
    {
        let seconds = Double(lifetime.components.seconds) + Double(lifetime.components.attoseconds) * 1e-18
        // X.509 times have whole seconds and encoding rounds; truncating keeps a new
        // certificate from starting a fraction of a second in the future.
        let start = Date(timeIntervalSince1970: now.timeIntervalSince1970.rounded(.down))
        let notAfter = min(start.addingTimeInterval(max(seconds, 1)), certificate.notValidAfter)
        return try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey, notValidBefore: start,
            notValidAfter: notAfter, issuer: certificate.subject, subject: DistinguishedName(),
            signatureAlgorithm: Self.signatureAlgorithm(for: privateKey.publicKey), extensions: extensions,
            issuerPrivateKey: privateKey)
    }

    /// ECDSA with the hash matching the curve (as X.509 convention pairs them); RSA with SHA-256.
    static func signatureAlgorithm(for key: Certificate.PublicKey) -> Certificate.SignatureAlgorithm {
        if P384.Signing.PublicKey(key) != nil { return .ecdsaWithSHA384 }
        if P521.Signing.PublicKey(key) != nil { return .ecdsaWithSHA512 }
        if P256.Signing.PublicKey(key) != nil { return .ecdsaWithSHA256 }
        return .sha256WithRSAEncryption
    }

    // MARK: - Creating a root

    /// Key types for a new root.
    public enum RootKeyType: String, Sendable, CaseIterable {
        case p256 = "p256"
        case p384 = "p384"
    }

    /// A new self-signed root as PEM.
    public struct RootMaterial: Sendable {
        /// The root certificate.
        public var certificatePEM: String
        /// Its private key (PKCS#8).
        public var keyPEM: String
    }

    /// Makes a self-signed root: CA:true, keyCertSign + cRLSign, O = the trust domain.
    /// Valid from `notBefore` (default: a minute ago, so peers with a slightly slow clock
    /// accept it at once) for `validity`.
    public static func makeRoot(
        trustDomain: String, keyType: RootKeyType = .p256, validity: Duration = .seconds(10 * 365 * 86400),
        notBefore: Date = Date().addingTimeInterval(-60)
    ) throws(PKIError) -> RootMaterial {
        let key: Certificate.PrivateKey
        let keyPEM: String
        switch keyType {
        case .p256:
            let raw = P256.Signing.PrivateKey()
            key = Certificate.PrivateKey(raw)
            keyPEM = raw.pemRepresentation
        case .p384:
            let raw = P384.Signing.PrivateKey()
            key = Certificate.PrivateKey(raw)
            keyPEM = raw.pemRepresentation
        }
        do {
            let name = try DistinguishedName {
                OrganizationName(trustDomain)
                CommonName("Ambit root CA")
            }
            let extensions = try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: key.publicKey)
            }
            let seconds = Double(validity.components.seconds)
            let root = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
                notValidBefore: notBefore, notValidAfter: notBefore.addingTimeInterval(seconds), issuer: name,
                subject: name, signatureAlgorithm: Self.signatureAlgorithm(for: key.publicKey), extensions: extensions,
                issuerPrivateKey: key)
            return RootMaterial(certificatePEM: try PEMFiles.pem(root), keyPEM: keyPEM)
        } catch let error as PKIError {
            throw error
        } catch {
            throw PKIError(.invalidAuthority, "cannot create a root certificate: \(error)")
        }
    }

    /// Writes a self-signed root in the plugged-in CA layout: `ca-cert.pem` and
    /// `root-cert.pem` are the root, `cert-chain.pem` holds it, `ca-key.pem` its key
    /// (mode 0600). Refuses to overwrite any existing file unless `force`.
    public static func write(_ root: RootMaterial, to directory: String, force: Bool) throws(PKIError) -> [String] {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw PKIError(.invalidFile, "cannot create directory \(directory): \(error)")
        }
        let path = { (name: String) in (directory as NSString).appendingPathComponent(name) }
        let existing = FileName.all.map(path).filter { FileManager.default.fileExists(atPath: $0) }
        if !existing.isEmpty && !force {
            throw PKIError(
                .exists, "refusing to overwrite \(existing.joined(separator: ", ")); pass --force to replace them")
        }
        try PEMFiles.write(root.certificatePEM, to: path(FileName.certificate), permissions: 0o644)
        try PEMFiles.write(root.keyPEM, to: path(FileName.key), permissions: 0o600)
        try PEMFiles.write(root.certificatePEM, to: path(FileName.root), permissions: 0o644)
        try PEMFiles.write(root.certificatePEM, to: path(FileName.chain), permissions: 0o644)
        return FileName.all.map(path)
    }
}
