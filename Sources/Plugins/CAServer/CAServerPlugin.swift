import Certificates
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
public import Kernel
import Logging
import NIOPosix
import ServiceLifecycle
import Synchronization
import X509
import ConfigYAML

/// A CA Ambit can run: serves Istio's certificate API
/// (`istio.v1.auth.IstioCertificateService/CreateCertificate`) over TLS, signing with a
/// plugged-in CA directory (`ambit ca init` makes one), and binds callers to nodes.
///
/// Manifest entry:
/// ```yaml
/// - id: local-config                 # where the CA learns which workloads run on which node
///   config: {path: mesh.yaml}
/// - id: ca-server
///   config:
///     listen: 0.0.0.0:15012          # default 0.0.0.0:15012
///     caDirectory: ca                # required: ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem
///     trustDomain: cluster.local     # default cluster.local
///     maxTTL: 24h                    # cap on requested lifetimes (default 24h)
///     tokens: {s3cr3t-a: node-a}     # bearer token → node name
///     tokensFile: tokens.yaml        # and/or the same mapping in a YAML file
///     servingCertificate:            # optional; default: issued by the CA itself for serverNames
///       certificate: tls.crt
///       privateKey: tls.key
///     serverNames: [localhost, 127.0.0.1, istiod.istio-system.svc]   # SANs of that certificate
/// ```
///
/// A caller authenticates with `authorization: Bearer <token>`; the token names its
/// node. It may obtain an identity (its `ImpersonatedIdentity` metadata, else its CSR's
/// URI SAN) only if the mesh has a workload with that identity on that node; otherwise
/// PERMISSION_DENIED, logged. Unknown tokens get UNAUTHENTICATED. The CSR's signature
/// and its URI SAN (= the identity) are verified; the lifetime is the requested one
/// capped at `maxTTL`; the response is leaf … root.
public final class CAServerPlugin: Plugin {
    /// `servingCertificate` files.
    public struct ServingCertificate: Decodable, Sendable {
        /// PEM chain, leaf first.
        public var certificate: String
        /// PEM private key.
        public var privateKey: String
        enum CodingKeys: String, CodingKey, CaseIterable { case certificate, privateKey }
    }

    /// `config:` of the manifest entry.
    public struct Config: Decodable, Sendable {
        /// Address to listen on.
        public var listen: SocketAddr
        /// The plugged-in CA directory.
        public var caDirectory: String
        /// The trust domain issued.
        public var trustDomain: String
        /// Cap on certificate lifetimes.
        public var maxTTL: Duration
        /// Bearer token → node name.
        public var tokens: [String: String]
        /// A YAML file with more token → node entries.
        public var tokensFile: String?
        /// The TLS certificate to serve; nil: issue one from the CA.
        public var servingCertificate: ServingCertificate?
        /// DNS names and IPs of the self-issued serving certificate.
        public var serverNames: [String]

        enum CodingKeys: String, CodingKey, CaseIterable {
            case listen, caDirectory, trustDomain, maxTTL, tokens, tokensFile, servingCertificate, serverNames
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            listen =
                try container.decodeIfPresent(SocketAddr.self, forKey: .listen)
                ?? SocketAddr(ip: IPAddress("0.0.0.0")!, port: 15012)
            caDirectory = try container.decode(String.self, forKey: .caDirectory)
            trustDomain = try container.decodeIfPresent(String.self, forKey: .trustDomain) ?? "cluster.local"
            maxTTL = try container.decodeIfPresent(ConfigDuration.self, forKey: .maxTTL)?.duration ?? .seconds(86400)
            tokens = try container.decodeIfPresent([String: String].self, forKey: .tokens) ?? [:]
            tokensFile = try container.decodeIfPresent(String.self, forKey: .tokensFile)
            servingCertificate = try container.decodeIfPresent(ServingCertificate.self, forKey: .servingCertificate)
            serverNames =
                try container.decodeIfPresent([String].self, forKey: .serverNames)
                ?? ["localhost", "127.0.0.1", "istiod.istio-system.svc"]
            if maxTTL < .seconds(1) {
                throw DecodingError.dataCorruptedError(
                    forKey: .maxTTL, in: container, debugDescription: "expected at least 1s, got \(ConfigDuration(maxTTL))")
            }
            if tokens.isEmpty && tokensFile == nil {
                throw DecodingError.dataCorruptedError(
                    forKey: .tokens, in: container,
                    debugDescription: "set tokens (token: node-name) or tokensFile; without them every caller is refused")
            }
            if serverNames.isEmpty && servingCertificate == nil {
                throw DecodingError.dataCorruptedError(
                    forKey: .serverNames, in: container, debugDescription: "expected at least one name for the serving certificate")
            }
        }
    }

    public static let id = "ca-server"
    public static let summary = "a CA: Istio's certificate gRPC API over TLS, callers bound to their node's workloads"
    public static var requires: Set<PluginRole> { [.discovery] }

    /// The decoded config.
    public let config: Config
    private let context: PluginContext
    private let state = Mutex(State())

    private struct State {
        var issuer: CertificateIssuer?
        var serving: (chainPEM: [String], keyPEM: String)?
        var boundAddress: SocketAddr?
        var server: GRPCServer<HTTP2ServerTransport.Posix>?
    }

    private var listenerComponent: String { "ca-server listener \(config.listen)" }

    public init(config: Config, context: PluginContext) throws {
        self.config = config
        self.context = context
    }

    /// The address the server is bound to, once it listens (the real port when `listen`
    /// had port 0).
    public var boundAddress: SocketAddr? { state.withLock { $0.boundAddress } }

    /// The CA's roots as PEM, once provisioned: what clients must trust.
    public var rootsPEM: [String] { state.withLock { $0.issuer?.authority.rootsPEM ?? [] } }

    /// Loads the CA, the tokens and the serving certificate.
    public func provision() async throws {
        do {
            let directory = context.resolvePath(config.caDirectory)
            let authority = try CertificateAuthority.load(directory: directory, trustDomain: config.trustDomain)
            var tokens = config.tokens
            if let file = config.tokensFile {
                let path = context.resolvePath(file)
                let text = try PEMFiles.read(path, what: "tokens file")
                do {
                    let extra = try ConfigDecoder.decode([String: String].self, yaml: text, file: path)
                    tokens.merge(extra) { _, new in new }
                } catch {
                    throw PKIError(.invalidFile, "tokens file: \(error); expected a YAML mapping token: node-name")
                }
            }
            let serving: (chainPEM: [String], keyPEM: String)
            if let files = config.servingCertificate {
                let chain = try PEMFiles.certificates(
                    atPath: context.resolvePath(files.certificate), what: "serving certificate")
                _ = try PEMFiles.privateKey(atPath: context.resolvePath(files.privateKey), what: "serving key")
                serving = (
                    try chain.map { try PEMFiles.pem($0) },
                    try PEMFiles.read(context.resolvePath(files.privateKey), what: "serving key")
                )
            } else {
                serving = try authority.issueServingCertificate(names: config.serverNames, lifetime: .seconds(365 * 86400))
            }
            let issuer = CertificateIssuer(authority: authority, tokens: tokens, maxTTL: config.maxTTL, mesh: context.mesh)
            state.withLock { state in
                state.issuer = issuer
                state.serving = serving
            }
            context.readiness.expect(listenerComponent)
            context.logger.info(
                "CA loaded",
                metadata: [
                    "directory": "\(directory)", "subject": "\(authority.certificate.subject)",
                    "not_after": "\(authority.certificate.notValidAfter.formatted(.iso8601))",
                    "nodes": "\(Set(tokens.values).sorted().joined(separator: ","))",
                ])
        } catch let error as PKIError {
            throw PluginError(.unavailable, plugin: Self.id, error.message)
        }
    }

    /// Serves until graceful shutdown.
    public func run() async throws {
        guard let (issuer, serving) = state.withLock({ state in state.issuer.flatMap { i in state.serving.map { (i, $0) } } })
        else { return }
        let address: GRPCNIOTransportCore.SocketAddress =
            config.listen.ip.isIPv4
            ? .ipv4(host: config.listen.ip.description, port: Int(config.listen.port))
            : .ipv6(host: config.listen.ip.description, port: Int(config.listen.port))
        let transport = HTTP2ServerTransport.Posix(
            address: address,
            transportSecurity: .tls(
                certificateChain: serving.chainPEM.map { .bytes(Array($0.utf8), format: .pem) },
                privateKey: .bytes(Array(serving.keyPEM.utf8), format: .pem)),
            eventLoopGroup: context.eventLoopGroup as? MultiThreadedEventLoopGroup ?? .singleton)
        let server = GRPCServer(
            transport: transport, services: [IstioCertificateService(issuer: issuer, logger: context.logger)])
        state.withLock { $0.server = server }
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask { try await server.serve() }
            group.addTask {
                try? await gracefulShutdown()
                server.beginGracefulShutdown()
            }
            let listening = try await transport.listeningAddress
            let port = listening.ipv4?.port ?? listening.ipv6?.port ?? Int(config.listen.port)
            let bound = SocketAddr(ip: config.listen.ip, port: UInt16(port))
            state.withLock { $0.boundAddress = bound }
            context.readiness.markReady(listenerComponent)
            context.logger.info("CA serving Istio's certificate API over TLS", metadata: ["address": "\(bound)"])
        }
    }

    /// Stops accepting RPCs; in-flight ones finish.
    public func drain() async {
        state.withLock { $0.server }?.beginGracefulShutdown()
    }
}
