import Crypto
import Foundation
import AmbitRuntime
import Kernel
import NIOConcurrencyHelpers
import SwiftASN1
import X509

/// A certificate authority for tests only: issues SPIFFE leaf certificates (ECDSA P-256,
/// empty subject, critical URI SAN) the way a mesh CA does. Never use outside tests.
final class TestMeshCA: Sendable {
    let name: String
    let rootPEM: String
    private let key: P256.Signing.PrivateKey
    private let root: Certificate

    init(name: String = "Test Mesh CA") throws {
        self.name = name
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("Ambit tests")
            CommonName(name)
        }
        let now = Date()
        let root = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(),
            publicKey: .init(key.publicKey), notValidBefore: now - 3600, notValidAfter: now + 86_400 * 30,
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
                SubjectKeyIdentifier(hash: .init(key.publicKey))
            },
            issuerPrivateKey: .init(key))
        self.key = key
        self.root = root
        self.rootPEM = try root.serializeAsPEM().pemString
    }

    /// A leaf for `identity`, valid from `notBefore` to `notAfter` (default: now-1h … now+1d).
    func issue(
        _ identity: SpiffeID, notBefore: Date = Date() - 3600, notAfter: Date = Date() + 86_400,
        extraRoots: [String] = []
    ) throws -> WorkloadCertificate {
        let leafKey = P256.Signing.PrivateKey()
        let serial = Certificate.SerialNumber()
        let leaf = try Certificate(
            version: .v3, serialNumber: serial, publicKey: .init(leafKey.publicKey),
            notValidBefore: notBefore, notValidAfter: notAfter,
            issuer: root.subject, subject: DistinguishedName(), signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true, keyEncipherment: true))
                try ExtendedKeyUsage([.serverAuth, .clientAuth])
                Critical(SubjectAlternativeNames([.uniformResourceIdentifier(identity.description)]))
                AuthorityKeyIdentifier(keyIdentifier: try root.extensions.subjectKeyIdentifier?.keyIdentifier)
            },
            issuerPrivateKey: .init(key))
        return WorkloadCertificate(
            identity: identity, privateKeyPEM: leafKey.pemRepresentation,
            chainPEM: [try leaf.serializeAsPEM().pemString], rootsPEM: [rootPEM] + extraRoots,
            notBefore: notBefore, notAfter: notAfter,
            serial: serial.bytes.map { String(format: "%02x", $0) }.joined())
    }

    /// Writes PEM files for a Python peer: `<prefix>.crt` (leaf), `<prefix>.key`, `ca.crt`.
    func writeFiles(for identity: SpiffeID, prefix: String, in directory: String, notAfter: Date = Date() + 86_400)
        throws -> (cert: String, key: String, ca: String)
    {
        let certificate = try issue(identity, notAfter: notAfter)
        let cert = directory + "/\(prefix).crt"
        let key = directory + "/\(prefix).key"
        let ca = directory + "/\(prefix)-ca.crt"
        try certificate.chainPEM.joined(separator: "\n").write(toFile: cert, atomically: true, encoding: .utf8)
        try certificate.privateKeyPEM.write(toFile: key, atomically: true, encoding: .utf8)
        try rootPEM.write(toFile: ca, atomically: true, encoding: .utf8)
        return (cert, key, ca)
    }
}

/// The CAs the test identity plugin issues from, by name (manifest config `ca:`).
enum TestCARegistry {
    private static let cas = NIOLockedValueBox<[String: TestMeshCA]>([:])

    static func register(_ ca: TestMeshCA) { cas.withLockedValue { $0[ca.name] = ca } }
    static func ca(named name: String) -> TestMeshCA? { cas.withLockedValue { $0[name] } }

    /// The shared mesh CA most tests use, and a second, unrelated one.
    static let mesh: TestMeshCA = {
        let ca = try! TestMeshCA(name: "mesh")
        register(ca)
        return ca
    }()
    static let other: TestMeshCA = {
        let ca = try! TestMeshCA(name: "other")
        register(ca)
        return ca
    }()
}
