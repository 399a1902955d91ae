import CAServer
import Certificates
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import IstioCAAPI
import AmbitRuntime
import Kernel
import NIOPosix
import SwiftASN1
import Testing
import TestSupport
import X509

@Suite("CA server and Istio CA client over gRPC + TLS", .serialized)
struct CAServerTests {
    @Test("the istio client gets a certificate for a workload on its node; the chain verifies (also with openssl)")
    func issues() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let ca = try await RunningCA.start(fixture)
        let client = try fixture.client(port: Int(ca.address.port))
        let key = try WorkloadKey(identity: idA)
        let certificate = try await client.certificate(for: key, lifetime: .seconds(600))
        #expect(certificate.identity == idA)
        #expect(abs(certificate.notAfter.timeIntervalSince(certificate.notBefore) - 600) < 2)

        let raw = try await client.requestChain(csrPEM: key.csrPEM, identity: idA, lifetime: .seconds(600))
        let verified = try opensslVerify(chain: raw, roots: fixture.authority.rootsPEM, in: fixture.dir)
        #expect(verified.ok, "\(verified.output)")
        #expect(try opensslText(raw[0], in: fixture.dir).contains("URI:spiffe://cluster.local/ns/default/sa/app-a"))
        await ca.stop()
    }

    @Test("lifetimes are capped by maxTTL")
    func maxTTL() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let ca = try await RunningCA.start(fixture, maxTTL: "1m")
        let certificate = try await fixture.client(port: Int(ca.address.port))
            .certificate(for: try WorkloadKey(identity: idA), lifetime: .seconds(86400))
        #expect(abs(certificate.notAfter.timeIntervalSince(certificate.notBefore) - 60) < 2)
        await ca.stop()
    }

    @Test("node binding: another node's identity is PERMISSION_DENIED, an unknown token UNAUTHENTICATED; the CA stays up")
    func nodeBinding() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let ca = try await RunningCA.start(fixture)
        let port = Int(ca.address.port)

        // token-a (node-a) asks for app-b, which runs only on node-b.
        await #expect {
            _ = try await fixture.client(token: "token-a", port: port).certificate(for: try WorkloadKey(identity: idB), lifetime: .seconds(60))
        } throws: { error in
            guard let error = error as? PKIError else { return false }
            return error.code == .refused && error.message.contains("PERMISSION_DENIED")
                && error.message.contains("node node-a may not have spiffe://cluster.local/ns/default/sa/app-b")
        }
        await #expect {
            _ = try await fixture.client(token: "token-unknown", port: port).certificate(for: try WorkloadKey(identity: idA), lifetime: .seconds(60))
        } throws: { error in
            guard let error = error as? PKIError else { return false }
            return error.code == .refused && error.message.contains("UNAUTHENTICATED")
        }
        // A TCP workload's identity on the right node is fine (the node runs it);
        // an identity that no workload has is refused.
        let nobody = SpiffeID(trustDomain: trustDomain, namespace: "default", serviceAccount: "nobody")
        await #expect(throws: PKIError.self) {
            _ = try await fixture.client(port: port).certificate(for: try WorkloadKey(identity: nobody), lifetime: .seconds(60))
        }
        // Wrong trust domain.
        let foreign = SpiffeID(trustDomain: "other.local", namespace: "default", serviceAccount: "app-a")
        await #expect {
            _ = try await fixture.client(port: port).certificate(for: try WorkloadKey(identity: foreign), lifetime: .seconds(60))
        } throws: { error in
            (error as? PKIError)?.message.contains("not in trust domain cluster.local") == true
        }
        // Malformed CSR.
        await #expect {
            _ = try await fixture.client(port: port).requestChain(csrPEM: "garbage", identity: idA, lifetime: .seconds(60))
        } throws: { error in
            (error as? PKIError)?.code == .invalidCSR
        }
        // token-b gets app-b, and the server is still up after all of the above.
        let b = try await fixture.client(token: "token-b", port: port).certificate(for: try WorkloadKey(identity: idB), lifetime: .seconds(60))
        #expect(b.identity == idB)
        await ca.stop()
    }

    @Test("the client rejects a response for another identity, or one that does not chain to its root")
    func rejectsWrongResponses() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        for mode in [MisbehavingCA.Mode.otherIdentity, .otherRoot] {
            let server = try await MisbehavingCA.start(authority: fixture.authority, mode: mode)
            let client = try fixture.client(port: server.port)
            await #expect {
                _ = try await client.certificate(for: try WorkloadKey(identity: idA), lifetime: .seconds(60))
            } throws: { error in
                guard let error = error as? PKIError else { return false }
                return error.code == (mode == .otherIdentity ? .identityMismatch : .untrustedChain)
            }
            await server.stop()
        }
    }

    @Test("a missing token file is a clear error; the token file is re-read on every request")
    func tokenFile() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let ca = try await RunningCA.start(fixture)
        let client = IstioCAClient(
            host: "127.0.0.1", port: Int(ca.address.port), roots: fixture.authority.roots,
            tokenFile: fixture.dir.path + "/rotating-token")
        #expect {
            _ = try client.readToken()
        } throws: { error in
            (error as? PKIError)?.message.contains("rotating-token does not exist") == true
        }
        try fixture.dir.write("rotating-token", "who-am-i")
        await #expect(throws: PKIError.self) {
            _ = try await client.certificate(for: try WorkloadKey(identity: idA), lifetime: .seconds(60))
        }
        try fixture.dir.write("rotating-token", "token-a")
        #expect(try await client.certificate(for: try WorkloadKey(identity: idA), lifetime: .seconds(60)).identity == idA)
        await ca.stop()
    }
}

/// A CA that misbehaves: signs the CSR's key for another identity, or with another root.
struct MisbehavingCA: Istio_V1_Auth_IstioCertificateService.ServiceProtocol {
    enum Mode: Sendable { case otherIdentity, otherRoot }
    let signer: CertificateAuthority
    let mode: Mode

    func createCertificate(
        request: ServerRequest<Istio_V1_Auth_IstioCertificateRequest>, context: ServerContext
    ) async throws -> ServerResponse<Istio_V1_Auth_IstioCertificateResponse> {
        let csr = try CertificateSigningRequest(pemEncoded: request.message.csr)
        let uri = mode == .otherIdentity ? idB.description : idA.description
        let leaf = try signer.sign(publicKey: csr.publicKey, uri: uri, lifetime: .seconds(60))
        var response = Istio_V1_Auth_IstioCertificateResponse()
        response.certChain = [try PEMFiles.pem(leaf)] + signer.rootsPEM
        return ServerResponse(message: response)
    }

    final class Running: Sendable {
        let server: GRPCServer<HTTP2ServerTransport.Posix>
        let task: Task<Void, any Error>
        let port: Int
        init(server: GRPCServer<HTTP2ServerTransport.Posix>, task: Task<Void, any Error>, port: Int) {
            self.server = server
            self.task = task
            self.port = port
        }
        func stop() async {
            server.beginGracefulShutdown()
            _ = try? await task.value
        }
    }

    /// Serves TLS with a certificate from `authority` (so the client trusts the server)
    /// but signs leaves with `authority` (otherIdentity) or a fresh root (otherRoot).
    static func start(authority: CertificateAuthority, mode: Mode) async throws -> Running {
        var signer = authority
        if mode == .otherRoot {
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            _ = try CertificateAuthority.write(try CertificateAuthority.makeRoot(trustDomain: trustDomain), to: dir.path, force: false)
            signer = try CertificateAuthority.load(directory: dir.path, trustDomain: trustDomain)
        }
        let serving = try authority.issueServingCertificate(names: ["127.0.0.1"], lifetime: .seconds(600))
        let transport = HTTP2ServerTransport.Posix(
            address: .ipv4(host: "127.0.0.1", port: 0),
            transportSecurity: .tls(
                certificateChain: serving.chainPEM.map { .bytes(Array($0.utf8), format: .pem) },
                privateKey: .bytes(Array(serving.keyPEM.utf8), format: .pem)),
            eventLoopGroup: .singleton)
        let server = GRPCServer(transport: transport, services: [MisbehavingCA(signer: signer, mode: mode)])
        let task = Task { try await server.serve() }
        let port = try await transport.listeningAddress.ipv4?.port ?? 0
        return Running(server: server, task: task, port: port)
    }
}
