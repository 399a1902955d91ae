import Foundation
public import Kernel
import Logging
import ServiceLifecycle
import Synchronization

/// Workload certificates for the identities on this node: the ``PluginRole/identity``
/// provider.
///
/// Manifest entry:
/// ```yaml
/// - id: certificates
///   config:
///     trustDomain: cluster.local     # identities outside it are refused (default cluster.local)
///     ttl: 24h                       # requested lifetime (default 24h)
///     maxConcurrentFetches: 8        # default 8
///     fetchTimeout: 10s              # how long a connection waits for a certificate (default 10s)
///     backend:                       # exactly one of:
///       local: {caDirectory: ca}     # sign in-process with ca-cert.pem/ca-key.pem (ambit ca init)
///       istio:                       # Istio's CA gRPC API over TLS
///         address: istiod.istio-system.svc:15012
///         rootCertificate: root-cert.pem
///         tokenFile: token
///         clusterId: Kubernetes      # default Kubernetes
///         serverName: istiod.istio-system.svc   # optional: name the CA's certificate must carry
///         requestTimeout: 10s        # default 10s
/// ```
///
/// While running it watches the mesh: an HBONE workload appearing on this node (its
/// `node` is this node's name) gets its identity prefetched at warmup priority; an
/// identity is forgotten when its last such workload leaves. Connections ask through
/// ``certificate(for:priority:)`` (on-demand priority). See ``CertificateCache`` for
/// rotation, backoff and single-flight.
public final class CertificatesPlugin: Plugin, IdentityProvider, CertificateStatusReporting {
    /// The CA backend.
    public enum Backend: Sendable {
        /// In-process signing with the CA files in a directory.
        case local(caDirectory: String)
        /// Istio's certificate service.
        case istio(IstioSettings)
    }

    /// `backend.istio` settings.
    public struct IstioSettings: Sendable, Decodable {
        /// `host:port` of the CA.
        public var address: String
        /// PEM root(s) the CA's TLS certificate and issued chains must chain to.
        public var rootCertificate: String
        /// File holding the bearer token, re-read on every request.
        public var tokenFile: String
        /// `clusterid` header.
        public var clusterId: String
        /// Name to verify the CA's certificate against.
        public var serverName: String?
        /// Deadline of one request.
        public var requestTimeout: Duration

        enum CodingKeys: String, CodingKey, CaseIterable {
            case address, rootCertificate, tokenFile, clusterId, serverName, requestTimeout
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            address = try container.decode(String.self, forKey: .address)
            rootCertificate = try container.decode(String.self, forKey: .rootCertificate)
            tokenFile = try container.decode(String.self, forKey: .tokenFile)
            clusterId = try container.decodeIfPresent(String.self, forKey: .clusterId) ?? "Kubernetes"
            serverName = try container.decodeIfPresent(String.self, forKey: .serverName)
            requestTimeout =
                try container.decodeIfPresent(ConfigDuration.self, forKey: .requestTimeout)?.duration ?? .seconds(10)
            if HostPort(address) == nil {
                throw DecodingError.dataCorruptedError(
                    forKey: .address, in: container, debugDescription: "expected host:port, got \"\(address)\"")
            }
        }
    }

    /// `config:` of the manifest entry.
    public struct Config: Decodable, Sendable {
        /// Trust domain of the identities this node holds.
        public var trustDomain: String
        /// Requested certificate lifetime.
        public var ttl: Duration
        /// Fetches at once.
        public var maxConcurrentFetches: Int
        /// How long a caller waits for a fetch.
        public var fetchTimeout: Duration
        /// Where certificates come from.
        public var backend: Backend

        /// Creates a config.
        public init(
            backend: Backend, trustDomain: String = "cluster.local", ttl: Duration = .seconds(86400),
            maxConcurrentFetches: Int = 8, fetchTimeout: Duration = .seconds(10)
        ) {
            self.backend = backend
            self.trustDomain = trustDomain
            self.ttl = ttl
            self.maxConcurrentFetches = maxConcurrentFetches
            self.fetchTimeout = fetchTimeout
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case trustDomain, ttl, maxConcurrentFetches, fetchTimeout, backend
        }

        enum BackendKeys: String, CodingKey, CaseIterable {
            case local, istio
        }

        struct LocalSettings: Decodable {
            var caDirectory: String
            enum CodingKeys: String, CodingKey, CaseIterable { case caDirectory }
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            trustDomain = try container.decodeIfPresent(String.self, forKey: .trustDomain) ?? "cluster.local"
            ttl = try container.decodeIfPresent(ConfigDuration.self, forKey: .ttl)?.duration ?? .seconds(86400)
            maxConcurrentFetches = try container.decodeIfPresent(Int.self, forKey: .maxConcurrentFetches) ?? 8
            fetchTimeout = try container.decodeIfPresent(ConfigDuration.self, forKey: .fetchTimeout)?.duration ?? .seconds(10)
            if trustDomain.isEmpty || trustDomain.contains("/") {
                throw DecodingError.dataCorruptedError(
                    forKey: .trustDomain, in: container, debugDescription: "expected a trust domain such as cluster.local")
            }
            if ttl < .seconds(1) {
                throw DecodingError.dataCorruptedError(
                    forKey: .ttl, in: container, debugDescription: "expected at least 1s, got \(ConfigDuration(ttl))")
            }
            if maxConcurrentFetches < 1 {
                throw DecodingError.dataCorruptedError(
                    forKey: .maxConcurrentFetches, in: container, debugDescription: "expected at least 1")
            }
            guard container.contains(.backend) else {
                throw DecodingError.keyNotFound(
                    CodingKeys.backend,
                    .init(
                        codingPath: container.codingPath,
                        debugDescription: "set backend.local.caDirectory or backend.istio (address, rootCertificate, tokenFile)"))
            }
            let backends = try container.nestedContainer(keyedBy: BackendKeys.self, forKey: .backend)
            switch (backends.contains(.local), backends.contains(.istio)) {
            case (true, false):
                let local = try backends.decode(LocalSettings.self, forKey: .local)
                backend = .local(caDirectory: local.caDirectory)
            case (false, true):
                backend = .istio(try backends.decode(IstioSettings.self, forKey: .istio))
            default:
                throw DecodingError.dataCorruptedError(
                    forKey: .backend, in: container, debugDescription: "expected exactly one of local or istio")
            }
        }
    }

    public static let id = "certificates"
    public static let summary = "workload certificates: per-identity keys and CSRs, Istio CA or local CA, cache, rotation"
    public static var provides: Set<PluginRole> { [.identity] }

    /// The decoded config.
    public let config: Config
    private let context: PluginContext
    private let storage = Mutex<CertificateCache?>(nil)

    public init(config: Config, context: PluginContext) throws {
        self.config = config
        self.context = context
    }

    /// The certificate cache, once provisioned.
    public var cache: CertificateCache? { storage.withLock { $0 } }

    /// Loads the CA material (local) or the root and token (istio) and builds the cache.
    public func provision() async throws {
        let client: any CertificateAuthorityClient
        do {
            switch config.backend {
            case .local(let directory):
                let path = context.resolvePath(directory)
                let authority = try CertificateAuthority.load(directory: path, trustDomain: config.trustDomain)
                client = LocalCAClient(authority: authority, name: "local CA \(path)")
            case .istio(let settings):
                let roots = try PEMFiles.certificates(
                    atPath: context.resolvePath(settings.rootCertificate), what: "CA root certificate")
                guard let address = HostPort(settings.address) else {
                    throw PKIError(.invalidFile, "backend.istio.address: expected host:port")
                }
                let istio = IstioCAClient(
                    host: address.host, port: address.port, roots: roots,
                    tokenFile: context.resolvePath(settings.tokenFile), clusterID: settings.clusterId,
                    serverName: settings.serverName, requestTimeout: settings.requestTimeout)
                // Fail at start, not at the first fetch, when the token file is missing.
                _ = try istio.readToken()
                client = istio
            }
        } catch let error as PKIError {
            throw PluginError(.unavailable, plugin: Self.id, error.message)
        }
        let settings = CertificateCache.Settings(
            trustDomain: config.trustDomain, lifetime: config.ttl, maxConcurrentFetches: config.maxConcurrentFetches,
            fetchTimeout: config.fetchTimeout)
        let store = CertificateCache(client: client, settings: settings, logger: context.logger)
        storage.withLock { $0 = store }
        context.logger.info(
            "certificates ready", metadata: ["ca": "\(client.name)", "trust_domain": "\(config.trustDomain)"])
    }

    /// Runs the cache and follows the mesh until graceful shutdown.
    public func run() async throws {
        guard let store = cache else { return }
        await withDiscardingTaskGroup { group in
            group.addTask { try? await store.run() }
            group.addTask { await self.followMesh(store) }
        }
    }

    /// Prefetches identities of HBONE workloads arriving on this node and forgets those
    /// whose last local workload left.
    private func followMesh(_ store: CertificateCache) async {
        var local: Set<SpiffeID> = []
        for await snapshot in context.mesh.updates().cancelOnGracefulShutdown() {
            let current = Self.localIdentities(snapshot, node: context.nodeName)
            for identity in current.subtracting(local).sorted() { store.prefetch(identity) }
            for identity in local.subtracting(current).sorted() { store.forget(identity) }
            local = current
        }
    }

    /// Identities of the HBONE workloads on `node`: the ones this node proxy holds.
    public static func localIdentities(_ snapshot: MeshSnapshot, node: String) -> Set<SpiffeID> {
        Set(snapshot.workloads.values.filter { $0.node == node && $0.tunnelProtocol == .hbone }.map(\.identity))
    }

    // MARK: - IdentityProvider

    public func certificate(for identity: SpiffeID, priority: WorkPriority) async throws -> WorkloadCertificate {
        guard let store = cache else {
            throw PKIError(.unavailable, "no certificate for \(identity): the certificates plugin is not provisioned")
        }
        return try await store.certificate(for: identity, priority: priority)
    }

    public var availableIdentities: [SpiffeID] { cache?.availableIdentities ?? [] }

    public var certificateStatuses: [CertificateStatus] { cache?.certificateStatuses ?? [] }
}

/// `host:port` with a DNS name, IPv4 address or bracketed IPv6 address.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    /// The host (IPv6 without brackets).
    public var host: String
    /// The port.
    public var port: Int

    /// Parses `host:port`; nil when malformed.
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty, !host.contains(" ") else { return nil }
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
