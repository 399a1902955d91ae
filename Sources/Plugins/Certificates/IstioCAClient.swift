import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import IstioCAAPI
public import Kernel
import NIOPosix
import SwiftProtobuf
public import X509

/// A client of Istio's certificate service (`istio.v1.auth.IstioCertificateService/
/// CreateCertificate`) over gRPC with TLS.
///
/// Each request re-reads the bearer token file (tokens are rotated on disk), sends
/// `authorization: Bearer <token>` and `clusterid` headers and the identity wanted as
/// `ImpersonatedIdentity` metadata (the node proxy asks on behalf of a workload). The
/// response's leaf must carry exactly that identity and chain to the configured root,
/// else it is rejected.
///
/// A connection is opened per request: fetches are rare (one per identity per half
/// lifetime), and a fresh connection gives a CA outage a clear, immediate error rather
/// than a call queued behind a reconnect backoff; the certificate cache does the retrying.
public struct IstioCAClient: CertificateAuthorityClient {
    /// Where the CA listens.
    public let host: String
    /// Its port.
    public let port: Int
    /// The roots the CA's serving certificate and issued chains must chain to.
    public let roots: [Certificate]
    /// The file holding the bearer token.
    public let tokenFile: String
    /// The `clusterid` header.
    public let clusterID: String
    /// Name to verify the CA's certificate against (and send as SNI); nil: the host when
    /// it is a DNS name, chain-only verification when it is an IP address.
    public let serverName: String?
    /// Deadline of one request.
    public let requestTimeout: Duration

    public var name: String { "istio CA \(host):\(port)" }

    /// Creates a client.
    public init(
        host: String, port: Int, roots: [Certificate], tokenFile: String, clusterID: String = "Kubernetes",
        serverName: String? = nil, requestTimeout: Duration = .seconds(10)
    ) {
        self.host = host
        self.port = port
        self.roots = roots
        self.tokenFile = tokenFile
        self.clusterID = clusterID
        self.serverName = serverName
        self.requestTimeout = requestTimeout
    }

    /// Reads the bearer token: the file's content without surrounding whitespace.
    public func readToken() throws(PKIError) -> String {
        let token = try PEMFiles.read(tokenFile, what: "CA token file").trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else {
            throw PKIError(.invalidFile, "CA token file \(tokenFile) is empty; write the node's token into it")
        }
        return token
    }

    public func certificate(for key: WorkloadKey, lifetime: Duration) async throws -> WorkloadCertificate {
        let chain = try await requestChain(csrPEM: key.csrPEM, identity: key.identity, lifetime: lifetime)
        return try await IssuedChainVerifier(roots: roots).verify(chainPEM: chain, for: key, source: name)
    }

    /// Sends one CreateCertificate request and returns the raw PEM chain (unverified).
    public func requestChain(csrPEM: String, identity: SpiffeID, lifetime: Duration) async throws -> [String] {
        let token = try readToken()
        var request = Istio_V1_Auth_IstioCertificateRequest()
        request.csr = csrPEM
        request.validityDuration = max(1, lifetime.components.seconds)
        request.metadata = Google_Protobuf_Struct(fields: [
            "ImpersonatedIdentity": Google_Protobuf_Value(stringValue: identity.description)
        ])
        var metadata = Metadata()
        metadata.addString("Bearer \(token)", forKey: "authorization")
        metadata.addString(clusterID, forKey: "clusterid")
        var options = CallOptions.defaults
        options.timeout = requestTimeout
        options.waitForReady = false

        let transport: HTTP2ClientTransport.Posix
        do {
            transport = try HTTP2ClientTransport.Posix(
                target: target, transportSecurity: transportSecurity(),
                config: .defaults { config in
                    config.http2.authority = serverName
                },
                eventLoopGroup: MultiThreadedEventLoopGroup.singleton)
        } catch {
            throw PKIError(.caUnavailable, "\(name): cannot set up the gRPC transport: \(error)")
        }
        do {
            return try await withGRPCClient(transport: transport) { client in
                let ca = Istio_V1_Auth_IstioCertificateService.Client(wrapping: client)
                return try await ca.createCertificate(request, metadata: metadata, options: options) { response in
                    try response.message.certChain
                }
            }
        } catch let error as RPCError {
            switch error.code {
            case .unauthenticated:
                throw PKIError(
                    .refused, "\(name) refused \(identity): UNAUTHENTICATED: \(error.message); check the token in \(tokenFile)")
            case .permissionDenied:
                throw PKIError(.refused, "\(name) refused \(identity): PERMISSION_DENIED: \(error.message)")
            case .invalidArgument:
                throw PKIError(.invalidCSR, "\(name) rejected the request for \(identity): \(error.message)")
            default:
                throw PKIError(.caUnavailable, "\(name) failed for \(identity): \(error.code): \(error.message)")
            }
        } catch {
            throw PKIError(.caUnavailable, "\(name) failed for \(identity): \(error)")
        }
    }

    private var target: any ResolvableTarget {
        if IPAddress(host)?.isIPv4 == true { return .ipv4(address: host, port: port) }
        if IPAddress(host) != nil { return .ipv6(address: host, port: port) }
        return .dns(host: host, port: port)
    }

    private func transportSecurity() throws -> HTTP2ClientTransport.Posix.TransportSecurity {
        let rootSources: [TLSConfig.CertificateSource] = try roots.map { root in
            .bytes(Array(try PEMFiles.pem(root).utf8), format: .pem)
        }
        return .tls { tls in
            tls.trustRoots = .certificates(rootSources)
            tls.serverCertificateVerification = .fullVerification
        }
    }
}
