import Certificates
import Crypto
import Foundation
import AmbitRuntime
import Kernel
import SwiftASN1
import Testing
import TestSupport
import X509

@Suite("certificate authority, CSRs and issued chains")
struct CertificateAuthorityTests {
    @Test("a CSR for an identity is issued a leaf with only the URI SAN, that verifies with our verifier and openssl")
    func issueAndVerify() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let key = try WorkloadKey(identity: idA)
        let chain = try fixture.authority.issue(csrPEM: key.csrPEM, identity: idA, lifetime: .seconds(3600))
        #expect(chain.count == 2)

        let certificate = try await IssuedChainVerifier(roots: fixture.authority.roots)
            .verify(chainPEM: chain, for: key, source: "test")
        #expect(certificate.identity == idA)
        #expect(abs(certificate.notAfter.timeIntervalSince(certificate.notBefore) - 3600) < 2)
        #expect(certificate.chainPEM.count == 1)

        let verified = try opensslVerify(chain: chain, roots: fixture.authority.rootsPEM, in: fixture.dir)
        #expect(verified.ok, "openssl verify: \(verified.output)")
        let text = try opensslText(chain[0], in: fixture.dir)
        #expect(text.contains("URI:spiffe://cluster.local/ns/default/sa/app-a"))
        #expect(text.contains("CA:FALSE"))
        #expect(text.contains("Digital Signature, Key Encipherment"))
        #expect(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"))
        let subject = text.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("Subject:") }
        #expect(subject.map { !$0.contains("CN") } == true, "workload leaves have no CN: \(subject ?? "")")
        #expect(text.contains("ASN1 OID: prime256v1"))
    }

    @Test("the CSR has the SPIFFE ID as URI SAN, no CN, and a valid signature (openssl req -verify)")
    func csrShape() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let key = try WorkloadKey(identity: idB)
        let file = try dir.write("csr.pem", key.csrPEM)
        let result = try runTool("/usr/bin/openssl", ["req", "-in", file, "-noout", "-text", "-verify"])
        #expect(result.status == 0, "\(result.output)")
        #expect(result.output.contains("URI:spiffe://cluster.local/ns/default/sa/app-b"))
        #expect(!result.output.contains("CN ="))
        #expect(CertificateAuthority.uriSANs(ofCSR: key.csrPEM) == [idB.description])
    }

    @Test("bad CSRs are refused with a clear error: garbage, another identity's SAN")
    func badCSRs() throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        #expect {
            try fixture.authority.issue(csrPEM: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", identity: idA, lifetime: .seconds(60))
        } throws: { error in
            (error as? PKIError)?.code == .invalidCSR
        }
        let other = try WorkloadKey(identity: idB)
        #expect {
            try fixture.authority.issue(csrPEM: other.csrPEM, identity: idA, lifetime: .seconds(60))
        } throws: { error in
            guard let error = error as? PKIError else { return false }
            return error.code == .invalidCSR && error.message.contains("must be exactly [spiffe://cluster.local/ns/default/sa/app-a]")
        }
    }

    @Test("lifetimes never exceed the signing certificate")
    func lifetimeCappedByCA() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let root = try CertificateAuthority.makeRoot(trustDomain: trustDomain, validity: .seconds(120))
        _ = try CertificateAuthority.write(root, to: dir.path, force: false)
        let authority = try CertificateAuthority.load(directory: dir.path, trustDomain: trustDomain)
        let key = try WorkloadKey(identity: idA)
        let chain = try authority.issue(csrPEM: key.csrPEM, identity: idA, lifetime: .seconds(86400))
        let leaf = try Certificate(pemEncoded: chain[0])
        #expect(leaf.notValidAfter <= authority.certificate.notValidAfter)
    }

    @Test("malformed PEM files, a key of another certificate and an expired root are clear errors naming the file")
    func badCAFiles() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let root = try CertificateAuthority.makeRoot(trustDomain: trustDomain)
        let files = try CertificateAuthority.write(root, to: dir.path + "/good", force: false)
        #expect(files.count == 4)

        // Malformed certificate file.
        _ = try CertificateAuthority.write(root, to: dir.path + "/bad", force: false)
        try dir.write("bad/ca-cert.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        #expect {
            try CertificateAuthority.load(directory: dir.path + "/bad", trustDomain: trustDomain)
        } throws: { error in
            guard let error = error as? PKIError else { return false }
            return error.code == .invalidFile && error.message.contains("bad/ca-cert.pem")
        }
        // A key file that is not a key.
        _ = try CertificateAuthority.write(root, to: dir.path + "/badkey", force: false)
        try dir.write("badkey/ca-key.pem", "hello\n")
        #expect {
            try CertificateAuthority.load(directory: dir.path + "/badkey", trustDomain: trustDomain)
        } throws: { error in
            (error as? PKIError)?.message.contains("badkey/ca-key.pem") == true
        }
        // Another root's key.
        let other = try CertificateAuthority.makeRoot(trustDomain: trustDomain)
        _ = try CertificateAuthority.write(root, to: dir.path + "/mismatch", force: false)
        try dir.write("mismatch/ca-key.pem", other.keyPEM)
        #expect {
            try CertificateAuthority.load(directory: dir.path + "/mismatch", trustDomain: trustDomain)
        } throws: { error in
            (error as? PKIError)?.message.contains("does not belong") == true
        }
        // Expired root.
        let expired = try CertificateAuthority.makeRoot(
            trustDomain: trustDomain, validity: .seconds(60), notBefore: Date().addingTimeInterval(-3600))
        _ = try CertificateAuthority.write(expired, to: dir.path + "/expired", force: false)
        #expect {
            try CertificateAuthority.load(directory: dir.path + "/expired", trustDomain: trustDomain)
        } throws: { error in
            guard let error = error as? PKIError else { return false }
            return error.code == .invalidAuthority && error.message.contains("expired")
        }
        // Missing directory.
        #expect {
            try CertificateAuthority.load(directory: dir.path + "/nope", trustDomain: trustDomain)
        } throws: { error in
            (error as? PKIError)?.message.contains("does not exist") == true
        }
    }

    @Test("writing a root refuses to overwrite unless forced; P-384 roots work")
    func writeRoot() throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let first = try CertificateAuthority.makeRoot(trustDomain: trustDomain, keyType: .p384)
        _ = try CertificateAuthority.write(first, to: dir.path, force: false)
        let second = try CertificateAuthority.makeRoot(trustDomain: trustDomain)
        #expect {
            try CertificateAuthority.write(second, to: dir.path, force: false)
        } throws: { error in
            (error as? PKIError)?.code == .exists
        }
        #expect(try String(contentsOfFile: dir.path + "/ca-cert.pem", encoding: .utf8) == first.certificatePEM)
        _ = try CertificateAuthority.write(second, to: dir.path, force: true)
        #expect(try String(contentsOfFile: dir.path + "/root-cert.pem", encoding: .utf8) == second.certificatePEM)

        let p384 = try TemporaryDirectory()
        defer { p384.remove() }
        _ = try CertificateAuthority.write(first, to: p384.path, force: false)
        let authority = try CertificateAuthority.load(directory: p384.path, trustDomain: trustDomain)
        let key = try WorkloadKey(identity: idA)
        let chain = try authority.issue(csrPEM: key.csrPEM, identity: idA, lifetime: .seconds(60))
        #expect(try opensslVerify(chain: chain, roots: authority.rootsPEM, in: p384).ok)
    }

    @Test("a chain that does not lead to the trusted root, or is for another key, is rejected")
    func verifierRejects() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let otherRoot = try CertificateAuthority.makeRoot(trustDomain: trustDomain)
        let otherDir = try TemporaryDirectory()
        defer { otherDir.remove() }
        _ = try CertificateAuthority.write(otherRoot, to: otherDir.path, force: false)
        let other = try CertificateAuthority.load(directory: otherDir.path, trustDomain: trustDomain)

        let key = try WorkloadKey(identity: idA)
        let foreign = try other.issue(csrPEM: key.csrPEM, identity: idA, lifetime: .seconds(60))
        await #expect {
            try await IssuedChainVerifier(roots: fixture.authority.roots).verify(chainPEM: foreign, for: key, source: "t")
        } throws: { error in
            (error as? PKIError)?.code == .untrustedChain
        }
        let anotherKey = try WorkloadKey(identity: idA)
        let forAnotherKey = try fixture.authority.issue(csrPEM: anotherKey.csrPEM, identity: idA, lifetime: .seconds(60))
        await #expect {
            try await IssuedChainVerifier(roots: fixture.authority.roots).verify(chainPEM: forAnotherKey, for: key, source: "t")
        } throws: { error in
            (error as? PKIError)?.code == .identityMismatch
        }
    }
}
