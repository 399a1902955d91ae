public import AmbitRuntime
public import Kernel
import Logging

/// `ambit run --profile ztunnel`: a node manifest built from ztunnel's environment
/// variables, so Ambit runs where ztunnel runs (its DaemonSet, its chart's environment)
/// with no manifest file.
///
/// The manifest composes, in this order: `local-config` when `LOCAL_XDS_PATH` is set and
/// `xds` when it is not (both when `XDS_ADDRESS` is set too, as ztunnel runs both);
/// `certificates` with the `istio` backend; `authorization`; `capture` in-pod (SOCKS5
/// only with `UNSTABLE_ENABLE_SOCKS5=true`); `hbone`; `telemetry`; with ztunnel's ports
/// (admin 127.0.0.1:15000, metrics 0.0.0.0:15020, readiness 0.0.0.0:15021). Every
/// variable read, its default and its form is in ``variables``; the README has the same
/// table.
///
/// The environment is an input, not read here: `ambit` passes the process's. An empty
/// variable counts as unset. Relative paths are made absolute against
/// `workingDirectory`, so the printed manifest means the same wherever it is saved.
public struct ZtunnelProfile: Sendable {
    /// The profile's name on the command line.
    public static let name = "ztunnel"

    /// One environment variable the profile reads.
    public struct Variable: Sendable, Hashable {
        /// Its name.
        public var name: String
        /// What it sets, and how it is read.
        public var meaning: String
        /// Its default, when it has one.
        public var defaultValue: String?
    }

    /// ztunnel's default root certificate (the `istio-ca-root-cert` ConfigMap's mount).
    public static let defaultRootCertificate = "/var/run/secrets/istio/root-cert.pem"
    /// ztunnel's default token (the projected `istio-ca` service account token).
    public static let defaultTokenFile = "/var/run/secrets/tokens/istio-token"
    /// istiod's address inside a cluster (when `KUBERNETES_SERVICE_HOST` is set).
    public static let clusterIstiod = "istiod.istio-system.svc:15012"
    /// istiod's address outside one.
    public static let localIstiod = "localhost:15012"

    /// The variables read, in the order the README lists them.
    public static let variables: [Variable] = [
        Variable(
            name: "XDS_ADDRESS", meaning: "istiod's xDS: `host:port` or `https://host:port`; TLS verifies the host",
            defaultValue: "\(clusterIstiod) in a cluster (KUBERNETES_SERVICE_HOST set), else \(localIstiod)"),
        Variable(
            name: "CA_ADDRESS", meaning: "istiod's CA, same form", defaultValue: "as XDS_ADDRESS's default"),
        Variable(name: "XDS_ROOT_CA", meaning: "file: the root xDS's server certificate must chain to", defaultValue: defaultRootCertificate),
        Variable(name: "CA_ROOT_CA", meaning: "file: the root for the CA's certificate and issued chains", defaultValue: defaultRootCertificate),
        Variable(name: "AUTH_TOKEN", meaning: "file: the bearer token for xDS and the CA, re-read on every connect", defaultValue: defaultTokenFile),
        Variable(name: "CLUSTER_ID", meaning: "`clusterid` header to xDS and the CA; ISTIO_META_CLUSTER_ID wins", defaultValue: "Kubernetes"),
        Variable(name: "NODE_NAME", meaning: "`node.name`: workloads with this node are local", defaultValue: "the host name"),
        Variable(name: "POD_NAME", meaning: "xDS node id and NAME metadata (read by the xds plugin)", defaultValue: nil),
        Variable(name: "POD_NAMESPACE", meaning: "xDS node id and NAMESPACE metadata (read by the xds plugin)", defaultValue: nil),
        Variable(name: "INSTANCE_IP", meaning: "xDS node id and INSTANCE_IPS metadata: IP addresses, comma-separated", defaultValue: nil),
        Variable(name: "ISTIO_META_<K>", meaning: "xDS node metadata <K> (read by the xds plugin)", defaultValue: nil),
        Variable(name: "LOCAL_XDS_PATH", meaning: "a local-config file (ztunnel's format) instead of xDS", defaultValue: nil),
        Variable(name: "INPOD_UDS", meaning: "istio-cni's ZDS socket, where pods come from: `capture` config `inPod.zdsSocket` (with `inPod.source: zds`)", defaultValue: "/var/run/ztunnel/ztunnel.sock"),
        Variable(name: "LOG_FORMAT", meaning: "`plain` (text) or `json`", defaultValue: "plain"),
        Variable(name: "RUST_LOG", meaning: "log level, ztunnel's form `level[,target=level…]`; per-target levels are ignored", defaultValue: "info"),
        Variable(name: "UNSTABLE_ENABLE_SOCKS5", meaning: "`true`: SOCKS5 on 127.0.0.1:15080", defaultValue: "false"),
        Variable(name: "NETWORK", meaning: "`node.network`", defaultValue: "\"\" (the default network)"),
        Variable(name: "TRUST_DOMAIN", meaning: "`certificates` trust domain", defaultValue: "cluster.local"),
        Variable(name: "SECRET_TTL", meaning: "requested certificate lifetime (5s, 2m, 24h…)", defaultValue: "24h"),
        Variable(name: "CONNECTION_TERMINATION_DEADLINE", meaning: "`node.drainDeadline` (a duration)", defaultValue: "from TERMINATION_GRACE_PERIOD_SECONDS, else 5s"),
        Variable(name: "TERMINATION_GRACE_PERIOD_SECONDS", meaning: "drain deadline = seconds − 5 (− 1 when 10 or less), at least 1", defaultValue: nil),
        Variable(name: "PACKET_MARK", meaning: "`inPod.mark` on proxy sockets in pods", defaultValue: "1337"),
    ]

    /// What the profile read.
    public var environment: [String: String]
    /// Where relative paths in the environment are resolved.
    public var workingDirectory: String
    /// The plugins of the binary: asked whether `capture` takes `inPod.source: zds`.
    public var registry: PluginRegistry

    /// Creates the profile over an environment.
    public init(environment: [String: String], workingDirectory: String, registry: PluginRegistry) {
        self.environment = environment
        self.workingDirectory = workingDirectory
        self.registry = registry
    }

    /// Builds the manifest, or fails with every bad variable (each error's path is the
    /// variable's name, its file `environment`).
    public func build() throws(ConfigErrors) -> ProfileManifest {
        var reader = Reader(environment: environment, workingDirectory: workingDirectory)
        var notes: [String] = []

        // --- discovery and istiod
        let inCluster = reader.value("KUBERNETES_SERVICE_HOST") != nil
        let defaultIstiod = inCluster ? Self.clusterIstiod : Self.localIstiod
        let explicitXDS = reader.value("XDS_ADDRESS")
        let xdsAddress = reader.address("XDS_ADDRESS") ?? defaultIstiod
        let caAddress = reader.address("CA_ADDRESS") ?? defaultIstiod
        let xdsRoot = reader.rootCertificate("XDS_ROOT_CA")
        let caRoot = reader.rootCertificate("CA_ROOT_CA")
        let token = reader.path("AUTH_TOKEN") ?? Self.defaultTokenFile
        let metaClusterID = reader.value("ISTIO_META_CLUSTER_ID")
        let clusterID = metaClusterID ?? reader.value("CLUSTER_ID") ?? "Kubernetes"
        let clusterSource = metaClusterID != nil ? "ISTIO_META_CLUSTER_ID" : reader.source("CLUSTER_ID")
        let localPath = reader.path("LOCAL_XDS_PATH")
        if reader.value("LOCAL_XDS") != nil {
            reader.fail(
                "LOCAL_XDS",
                "inline local config is not supported: write it to a file and set LOCAL_XDS_PATH to its path")
        }
        let instanceIPs = reader.instanceIPs()
        let podName = reader.value("POD_NAME")
        let podNamespace = reader.value("POD_NAMESPACE")

        // --- node, logging
        let nodeName = reader.value("NODE_NAME")
        let network = reader.value("NETWORK")
        let (drainDeadline, drainSource) = reader.drainDeadline()
        let (level, ignoredDirectives) = reader.logLevel()
        let format = reader.logFormat()
        if !ignoredDirectives.isEmpty {
            notes.append(
                "RUST_LOG: per-target levels are not supported yet, ignored: \(ignoredDirectives.joined(separator: ","))")
        }

        // --- certificates, capture
        let trustDomain = reader.trustDomain()
        let ttl = reader.duration("SECRET_TTL")
        let socks5 = reader.bool("UNSTABLE_ENABLE_SOCKS5") ?? false
        let mark = reader.mark()
        let zdsSocket = reader.path("INPOD_UDS")

        if !reader.errors.isEmpty { throw ConfigErrors(reader.errors) }

        var plugins: [ManifestDocument.Value] = []
        if let localPath {
            plugins.append(
                .mapping([
                    .init("id", .text("local-config"), comment: "LOCAL_XDS_PATH"),
                    .init("config", .mapping([.init("path", .text(localPath))])),
                ]))
        }
        let useXDS = localPath == nil || explicitXDS != nil
        if useXDS {
            plugins.append(
                .mapping([
                    .init("id", .text("xds")),
                    .init(
                        "config",
                        .mapping([
                            .init("address", .text(xdsAddress), comment: reader.source("XDS_ADDRESS")),
                            .init("rootCertificate", .text(xdsRoot), comment: reader.source("XDS_ROOT_CA")),
                            .init("tokenFile", .text(token), comment: reader.source("AUTH_TOKEN")),
                            .init("clusterId", .text(clusterID), comment: clusterSource),
                        ])),
                ]))
        }
        var certificates: [ManifestDocument.Field] = [
            .init("trustDomain", .text(trustDomain), comment: reader.source("TRUST_DOMAIN"))
        ]
        if let ttl { certificates.append(.init("ttl", .literal(ttl.description), comment: "SECRET_TTL")) }
        certificates.append(
            .init(
                "backend",
                .mapping([
                    .init(
                        "istio",
                        .mapping([
                            .init("address", .text(caAddress), comment: reader.source("CA_ADDRESS")),
                            .init("rootCertificate", .text(caRoot), comment: reader.source("CA_ROOT_CA")),
                            .init("tokenFile", .text(token), comment: reader.source("AUTH_TOKEN")),
                            .init("clusterId", .text(clusterID), comment: clusterSource),
                        ]))
                ])))
        plugins.append(.mapping([.init("id", .text("certificates")), .init("config", .mapping(certificates))]))
        plugins.append(.mapping([.init("id", .text("authorization"))]))

        var inPod: [ManifestDocument.Field] = [
            .init("enabled", .literal("true")),
            .init("installRules", .literal("false"), comment: "istio-cni owns the pods' redirect rules"),
        ]
        if let mark { inPod.append(.init("mark", .literal("\(mark)"), comment: "PACKET_MARK")) }
        if captureTakesZDSSocket {
            // As ztunnel: istio-cni hands over every pod over ZDS.
            inPod.append(.init("source", .text("zds"), comment: "pods come from istio-cni"))
            inPod.append(.init("zdsSocket", .text(zdsSocket ?? "/var/run/ztunnel/ztunnel.sock"), comment: zdsSocket == nil ? "INPOD_UDS default" : "INPOD_UDS"))
        } else {
            notes.append(
                "this binary's capture plugin has no inPod.source: zds; pods come from the mesh's netns and /pods"
                    + (zdsSocket.map { " (INPOD_UDS=\($0) ignored)" } ?? ""))
        }
        let socksConfig: ManifestDocument.Value =
            socks5
            ? .mapping([.init("enabled", .literal("true")), .init("address", .literal("127.0.0.1:15080"))])
            : .mapping([.init("enabled", .literal("false"))])
        plugins.append(
            .mapping([
                .init("id", .text("capture")),
                .init(
                    "config",
                    .mapping([
                        .init("socks5", socksConfig, comment: reader.source("UNSTABLE_ENABLE_SOCKS5")),
                        .init("inPod", .mapping(inPod)),
                    ])),
            ]))
        plugins.append(.mapping([.init("id", .text("hbone"))]))
        plugins.append(
            .mapping([
                .init("id", .text("telemetry")),
                .init(
                    "config",
                    .mapping([
                        .init("address", .literal("0.0.0.0:15020"), comment: "/metrics and /stats/prometheus")
                    ])),
            ]))

        var node: [ManifestDocument.Field] = []
        if let nodeName { node.append(.init("name", .text(nodeName), comment: "NODE_NAME")) }
        if let network { node.append(.init("network", .text(network), comment: "NETWORK")) }
        node.append(.init("drainDeadline", .literal(drainDeadline.description), comment: drainSource))

        var header = [
            "Built by `ambit run --profile ztunnel` from ztunnel's environment variables.",
            "Saved to a file it runs as is with `ambit run --manifest` (values are literal; $$ is a $).",
        ]
        var xdsNode: XDSNode?
        if useXDS {
            let identity = XDSNode(
                podName: podName, podNamespace: podNamespace, instanceIPs: instanceIPs, nodeName: nodeName,
                clusterID: clusterID, metadata: reader.istioMetadata())
            xdsNode = identity
            header += [
                "xDS node id: \(identity.id)",
                "xDS node metadata: "
                    + identity.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "),
                "(the xds plugin reads POD_NAME, POD_NAMESPACE, INSTANCE_IP, NODE_NAME and ISTIO_META_* itself)",
            ]
        }

        let document = ManifestDocument(
            header: header,
            fields: [
                .init("node", .mapping(node)),
                .init(
                    "logging",
                    .mapping([
                        .init("level", .literal(level.rawValue), comment: reader.source("RUST_LOG")),
                        .init("format", .literal(format.rawValue), comment: reader.source("LOG_FORMAT")),
                    ])),
                .init(
                    "admin",
                    .mapping([
                        .init("address", .literal("127.0.0.1:15000")),
                        .init("readinessAddress", .literal("0.0.0.0:15021"), comment: "/healthz/ready"),
                    ])),
                .init("plugins", .sequence(plugins)),
            ])
        return ProfileManifest(
            name: Self.name, document: document, notes: notes, baseDirectory: workingDirectory,
            environment: environment, xdsNode: xdsNode)
    }

    /// Whether this binary's `capture` plugin takes pods from istio-cni (`inPod.source: zds`
    /// and `inPod.zdsSocket`; a plugin of a composed binary may not): its config is decoded
    /// with those keys set.
    var captureTakesZDSSocket: Bool {
        guard let capture = registry.type(id: "capture") else { return false }
        func scalar(_ text: String) -> ConfigValue { ConfigValue(.scalar(text, plain: true)) }
        let config = ConfigValue(
            .mapping([
                .init(
                    key: scalar("inPod"),
                    value: ConfigValue(
                        .mapping([
                            .init(key: scalar("enabled"), value: scalar("true")),
                            .init(key: scalar("source"), value: scalar("zds")),
                            .init(key: scalar("zdsSocket"), value: scalar("/var/run/ztunnel/ztunnel.sock")),
                        ])))
            ]))
        return (try? capture.decode(ConfigNode(value: config, path: "capture.config", file: "probe"))) != nil
    }
}

/// What a profile built: the manifest (print it, or load it) and notes for the log.
public struct ProfileManifest: Sendable {
    /// The profile's name.
    public var name: String
    /// The manifest.
    public var document: ManifestDocument
    /// Things worth a debug line once logging is up (variables accepted and ignored).
    public var notes: [String]
    /// The base directory for relative paths.
    public var baseDirectory: String
    /// The environment it was built from (also what the loader resolves in).
    public var environment: [String: String]
    /// The xDS node istiod will see, when the manifest has the `xds` plugin.
    public var xdsNode: XDSNode?

    /// How errors in the built manifest name it: `ztunnel profile`, whose lines are those
    /// of `--print-manifest`.
    public var file: String { "\(name) profile" }

    /// The manifest's YAML, as `--print-manifest` prints it.
    public var yaml: String { document.yaml }

    /// Loads the manifest with `registry`, like a manifest file.
    public func plan(registry: PluginRegistry) throws(ConfigErrors) -> ManifestPlan {
        try ManifestLoader.load(
            yaml: yaml, file: file, baseDirectory: baseDirectory, registry: registry, environment: environment)
    }
}

/// The xDS node ztunnel presents to istiod, built from the same environment: the `xds`
/// plugin sends it; the profile shows it in the printed manifest's header.
public struct XDSNode: Sendable, Hashable {
    /// `ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    public var id: String
    /// Node metadata: NAME, NAMESPACE, INSTANCE_IPS, NODE_NAME, CLUSTER_ID and every
    /// `ISTIO_META_<K>` as `<K>`.
    public var metadata: [String: String]

    init(
        podName: String?, podNamespace: String?, instanceIPs: [String], nodeName: String?, clusterID: String,
        metadata extra: [String: String]
    ) {
        let namespace = podNamespace ?? ""
        // istiod needs four parts; ztunnel puts 1.1.1.1 where it knows no IP.
        id = "ztunnel~\(instanceIPs.first ?? "1.1.1.1")~\(podName ?? "").\(namespace)~\(namespace).svc.cluster.local"
        var fields = extra
        fields["CLUSTER_ID"] = fields["CLUSTER_ID"] ?? clusterID
        if let podName { fields["NAME"] = podName }
        if let podNamespace { fields["NAMESPACE"] = podNamespace }
        if !instanceIPs.isEmpty { fields["INSTANCE_IPS"] = instanceIPs.joined(separator: ",") }
        if let nodeName { fields["NODE_NAME"] = nodeName }
        metadata = fields
    }
}
