import AmbitCLI
import AmbitRuntime
import Certificates
import ConfigYAML
import Foundation
import Kernel
import Logging
import Testing
import TestSupport

/// `--profile ztunnel`: ztunnel's environment into a manifest, and that manifest run.
@Suite("ztunnel profile")
struct ZtunnelProfileTests {
    static let workingDirectory = "/work/dir"

    func build(_ environment: [String: String], registry: PluginRegistry = FirstPartyPlugins.registry) throws(ConfigErrors)
        -> ProfileManifest
    {
        try ZtunnelProfile(environment: environment, workingDirectory: Self.workingDirectory, registry: registry).build()
    }

    /// The printed manifest parsed back, as the loader would read it.
    func printed(_ environment: [String: String]) throws -> Printed {
        let manifest = try build(environment)
        return Printed(root: try #require(try ConfigNode.parse(yaml: manifest.yaml, file: "printed.yaml").value))
    }

    /// The errors, each as printed (`environment: NAME: message`).
    func errors(_ environment: [String: String]) -> [String] {
        do {
            _ = try build(environment)
            Issue.record("expected \(environment) to be rejected")
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    struct Printed {
        let root: ConfigValue

        func value(_ path: String...) -> String? { Self.walk(root, path)?.scalarText }
        func node(_ path: String...) -> ConfigValue? { Self.walk(root, path) }

        /// A plugin's config value, by plugin id then path.
        func plugin(_ id: String, _ path: String...) -> String? {
            guard let entry = plugin(id) else { return nil }
            return Self.walk(entry, ["config"] + path)?.scalarText
        }

        func plugin(_ id: String) -> ConfigValue? {
            guard case .sequence(let items)? = root["plugins"]?.content else { return nil }
            return items.first { $0["id"]?.scalarText == id }
        }

        var pluginIDs: [String] {
            guard case .sequence(let items)? = root["plugins"]?.content else { return [] }
            return items.compactMap { $0["id"]?.scalarText }
        }

        static func walk(_ value: ConfigValue, _ path: [String]) -> ConfigValue? {
            var current: ConfigValue? = value
            for key in path { current = current?[key] }
            return current
        }
    }

    // MARK: - Defaults and each variable

    @Test("no environment: ztunnel's defaults, ports and plugin order")
    func defaults() throws {
        let manifest = try printed([:])
        #expect(manifest.pluginIDs == ["xds", "certificates", "authorization", "capture", "hbone", "telemetry"])
        #expect(manifest.plugin("xds", "address") == "localhost:15012")
        #expect(manifest.plugin("xds", "rootCertificate") == "/var/run/secrets/istio/root-cert.pem")
        #expect(manifest.plugin("xds", "tokenFile") == "/var/run/secrets/tokens/istio-token")
        #expect(manifest.plugin("xds", "clusterId") == "Kubernetes")
        #expect(manifest.plugin("xds", "serverName") == nil, "the TLS name is the address's host")
        #expect(manifest.plugin("certificates", "backend", "istio", "address") == "localhost:15012")
        #expect(manifest.plugin("certificates", "backend", "istio", "rootCertificate") == "/var/run/secrets/istio/root-cert.pem")
        #expect(manifest.plugin("certificates", "backend", "istio", "tokenFile") == "/var/run/secrets/tokens/istio-token")
        #expect(manifest.plugin("certificates", "backend", "istio", "clusterId") == "Kubernetes")
        #expect(manifest.plugin("certificates", "backend", "istio", "serverName") == nil)
        #expect(manifest.plugin("certificates", "trustDomain") == "cluster.local")
        #expect(manifest.plugin("certificates", "ttl") == nil)
        #expect(manifest.plugin("capture", "socks5", "enabled") == "false")
        #expect(manifest.plugin("capture", "inPod", "enabled") == "true")
        #expect(manifest.plugin("capture", "inPod", "installRules") == "false")
        #expect(manifest.plugin("capture", "inPod", "mark") == nil)
        #expect(manifest.plugin("capture", "inPod", "source") == "zds")
        #expect(manifest.plugin("capture", "inPod", "zdsSocket") == "/var/run/ztunnel/ztunnel.sock")
        #expect(manifest.plugin("telemetry", "address") == "0.0.0.0:15020")
        #expect(manifest.value("admin", "address") == "127.0.0.1:15000")
        #expect(manifest.value("admin", "readinessAddress") == "0.0.0.0:15021")
        #expect(manifest.value("logging", "level") == "info")
        #expect(manifest.value("logging", "format") == "text")
        #expect(manifest.value("node", "drainDeadline") == "5s")
        #expect(manifest.value("node", "name") == nil, "the loader defaults it (NODE_NAME, else the host name)")
        #expect(manifest.value("node", "network") == nil)
    }

    @Test("in a cluster (KUBERNETES_SERVICE_HOST) xDS and the CA default to istiod.istio-system.svc:15012")
    func clusterDefaults() throws {
        let manifest = try printed(["KUBERNETES_SERVICE_HOST": "10.96.0.1"])
        #expect(manifest.plugin("xds", "address") == "istiod.istio-system.svc:15012")
        #expect(manifest.plugin("certificates", "backend", "istio", "address") == "istiod.istio-system.svc:15012")
    }

    @Test(
        "XDS_ADDRESS and CA_ADDRESS: host:port or https://host:port, written host:port",
        arguments: [
            ("istiod.istio-system.svc:15012", "istiod.istio-system.svc:15012"),
            ("https://istiod-canary.istio-system.svc:15012", "istiod-canary.istio-system.svc:15012"),
            ("HTTPS://10.0.0.1:15012/", "10.0.0.1:15012"),
            ("[fd00::1]:15012", "[fd00::1]:15012"),
            ("https://[::1]:15010", "[::1]:15010"),
        ])
    func addresses(input: String, expected: String) throws {
        let xds = try printed(["XDS_ADDRESS": input])
        #expect(xds.plugin("xds", "address") == expected)
        #expect(xds.plugin("certificates", "backend", "istio", "address") == "localhost:15012", "CA_ADDRESS is separate")
        let ca = try printed(["CA_ADDRESS": input])
        #expect(ca.plugin("certificates", "backend", "istio", "address") == expected)
        #expect(ca.plugin("xds", "address") == "localhost:15012")
    }

    @Test(
        "a malformed address is an error naming the variable and the form",
        arguments: [
            ("istiod.istio-system.svc", "no port"),
            ("http://istiod:15010", "only https://"),
            ("grpc://istiod:15012", "only https://"),
            ("istiod:0", "the port must be 1…65535"),
            ("istiod:http", "the port must be 1…65535"),
            ("istiod:99999", "the port must be 1…65535"),
            ("bad host:15012", "is not a host name"),
            (":15012", "is not a host name"),
            ("[10.0.0.1]:15012", "is not an IPv6 address"),
        ])
    func badAddresses(input: String, reason: String) {
        for name in ["XDS_ADDRESS", "CA_ADDRESS"] {
            let errors = errors([name: input])
            #expect(errors.count == 1, "\(errors)")
            let expected = "environment: \(name): expected host:port or https://host:port, got \"\(input)\""
            #expect(errors.first?.hasPrefix(expected) == true, "\(errors)")
            #expect(errors.first?.contains(reason) == true, "\(errors)")
        }
    }

    @Test("XDS_ROOT_CA, CA_ROOT_CA and AUTH_TOKEN are files; relative paths are made absolute")
    func files() throws {
        let manifest = try printed([
            "XDS_ROOT_CA": "/etc/xds/root.pem", "CA_ROOT_CA": "./ca/root.pem", "AUTH_TOKEN": "secrets/token",
        ])
        #expect(manifest.plugin("xds", "rootCertificate") == "/etc/xds/root.pem")
        #expect(manifest.plugin("certificates", "backend", "istio", "rootCertificate") == "/work/dir/ca/root.pem")
        #expect(manifest.plugin("xds", "tokenFile") == "/work/dir/secrets/token")
        #expect(manifest.plugin("certificates", "backend", "istio", "tokenFile") == "/work/dir/secrets/token")
    }

    @Test("ztunnel's other root forms, SYSTEM and inline PEM, are errors saying to give a file")
    func rootForms() {
        let errors = errors(["XDS_ROOT_CA": "SYSTEM", "CA_ROOT_CA": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"])
        #expect(errors.count == 2, "\(errors)")
        #expect(errors.contains { $0.hasPrefix("environment: XDS_ROOT_CA: SYSTEM") && $0.contains("file") }, "\(errors)")
        #expect(errors.contains { $0.hasPrefix("environment: CA_ROOT_CA: an inline PEM") }, "\(errors)")
    }

    @Test("CLUSTER_ID sets clusterId for xDS and the CA; ISTIO_META_CLUSTER_ID wins, as in ztunnel")
    func clusterID() throws {
        let plain = try printed(["CLUSTER_ID": "east"])
        #expect(plain.plugin("xds", "clusterId") == "east")
        #expect(plain.plugin("certificates", "backend", "istio", "clusterId") == "east")
        let meta = try printed(["CLUSTER_ID": "east", "ISTIO_META_CLUSTER_ID": "west"])
        #expect(meta.plugin("xds", "clusterId") == "west")
        #expect(meta.plugin("certificates", "backend", "istio", "clusterId") == "west")
    }

    @Test("NODE_NAME and NETWORK set node.name and node.network; empty counts as unset")
    func node() throws {
        let manifest = try printed(["NODE_NAME": "worker-1", "NETWORK": "net-east"])
        #expect(manifest.value("node", "name") == "worker-1")
        #expect(manifest.value("node", "network") == "net-east")
        let empty = try printed(["NODE_NAME": "", "NETWORK": ""])
        #expect(empty.value("node", "name") == nil)
        #expect(empty.value("node", "network") == nil)
    }

    @Test("POD_NAME, POD_NAMESPACE, INSTANCE_IP, NODE_NAME and ISTIO_META_* make the xDS node, shown in the header")
    func xdsNode() throws {
        let manifest = try build([
            "POD_NAME": "ztunnel-abcde", "POD_NAMESPACE": "istio-system", "INSTANCE_IP": "10.0.0.5",
            "NODE_NAME": "worker-1", "ISTIO_META_CLUSTER_ID": "Kubernetes", "ISTIO_META_DNS_CAPTURE": "true",
            "ISTIO_METAX": "not metadata",
        ])
        let node = try #require(manifest.xdsNode)
        #expect(node.id == "ztunnel~10.0.0.5~ztunnel-abcde.istio-system~istio-system.svc.cluster.local")
        #expect(
            node.metadata == [
                "NAME": "ztunnel-abcde", "NAMESPACE": "istio-system", "INSTANCE_IPS": "10.0.0.5", "NODE_NAME": "worker-1",
                "CLUSTER_ID": "Kubernetes", "DNS_CAPTURE": "true",
            ])
        #expect(manifest.yaml.contains("# xDS node id: ztunnel~10.0.0.5~ztunnel-abcde.istio-system~istio-system.svc.cluster.local\n"))
        #expect(manifest.yaml.contains("CLUSTER_ID=Kubernetes DNS_CAPTURE=true INSTANCE_IPS=10.0.0.5 NAME=ztunnel-abcde"))
        // Without them, ztunnel's placeholders.
        #expect(try build([:]).xdsNode?.id == "ztunnel~1.1.1.1~.~.svc.cluster.local")
    }

    @Test("INSTANCE_IP must be IP addresses (comma-separated)")
    func instanceIP() throws {
        #expect(try build(["INSTANCE_IP": "10.0.0.5,fd00::5"]).xdsNode?.metadata["INSTANCE_IPS"] == "10.0.0.5,fd00::5")
        let errors = errors(["INSTANCE_IP": "10.0.0.5,pod-ip"])
        #expect(errors == ["environment: INSTANCE_IP: expected IP addresses (comma-separated), got \"10.0.0.5,pod-ip\": \"pod-ip\" is not one"])
    }

    @Test("LOCAL_XDS_PATH: local-config instead of xDS; with XDS_ADDRESS set too, both (as ztunnel runs both)")
    func localConfig() throws {
        let local = try printed(["LOCAL_XDS_PATH": "mesh.yaml", "XDS_ROOT_CA": "/x.pem"])
        #expect(local.pluginIDs == ["local-config", "certificates", "authorization", "capture", "hbone", "telemetry"])
        #expect(local.plugin("local-config", "path") == "/work/dir/mesh.yaml")
        #expect(try build(["LOCAL_XDS_PATH": "/m.yaml"]).xdsNode == nil)
        #expect(try !build(["LOCAL_XDS_PATH": "/m.yaml"]).yaml.contains("xDS node"))
        let both = try printed(["LOCAL_XDS_PATH": "/m.yaml", "XDS_ADDRESS": "istiod:15012"])
        #expect(both.pluginIDs.prefix(2) == ["local-config", "xds"])
        #expect(errors(["LOCAL_XDS": "workloads: []"]).first?.hasPrefix("environment: LOCAL_XDS: inline local config is not supported") == true)
    }

    @Test("INPOD_UDS names istio-cni's socket: inPod.source zds, inPod.zdsSocket")
    func inPodSocketCarried() throws {
        let manifest = try build(["INPOD_UDS": "/run/cni/zds.sock"])
        let parsed = Printed(root: try #require(try ConfigNode.parse(yaml: manifest.yaml, file: "p.yaml").value))
        #expect(parsed.plugin("capture", "inPod", "source") == "zds")
        #expect(parsed.plugin("capture", "inPod", "zdsSocket") == "/run/cni/zds.sock")
        #expect(manifest.notes.isEmpty)
        // The composed manifest loads: the capture plugin takes the keys.
        _ = try manifest.plan(registry: FirstPartyPlugins.registry)
    }

    /// A `capture` without ZDS, as a composed binary might carry.
    final class CaptureWithoutZDS: Plugin {
        struct Config: DefaultedConfig, Sendable {
            struct InPod: DefaultedConfig, Sendable {
                var enabled = false
                var installRules = true
                init() {}
            }
            var inPod = InPod()
            init() {}
        }
        static let id = "capture"
        static let summary = "test: capture without inPod.source"
        init(config: Config, context: PluginContext) {}
    }

    @Test("a capture plugin without ZDS gets no inPod.source, and a note says where pods come from")
    func inPodSocketIgnored() throws {
        let registry = PluginRegistry([PluginType(CaptureWithoutZDS.self)])
        let manifest = try build(["INPOD_UDS": "/var/run/ztunnel/ztunnel.sock"], registry: registry)
        #expect(!manifest.yaml.contains("zdsSocket"))
        #expect(manifest.notes.contains { $0.contains("no inPod.source: zds") && $0.contains("INPOD_UDS=/var/run/ztunnel/ztunnel.sock ignored") })
    }

    @Test(
        "RUST_LOG: ztunnel's level directives; per-target ones are checked, then ignored with a note",
        arguments: [
            ("debug", "debug", false), ("INFO", "info", false), ("warn", "warning", false), ("error", "error", false),
            ("trace", "trace", false), ("off", "critical", false), ("info,xds=debug", "info", true),
            ("xds=trace,warn", "warning", true), (" debug , ", "debug", false), ("warning", "warning", false),
        ])
    func rustLog(value: String, level: String, noted: Bool) throws {
        let manifest = try build(["RUST_LOG": value])
        let parsed = Printed(root: try #require(try ConfigNode.parse(yaml: manifest.yaml, file: "p.yaml").value))
        #expect(parsed.value("logging", "level") == level)
        #expect(manifest.notes.contains { $0.hasPrefix("RUST_LOG: per-target levels") } == noted)
    }

    @Test("a bad RUST_LOG directive is an error naming it")
    func badRustLog() {
        #expect(errors(["RUST_LOG": "verbose"]) == [
            "environment: RUST_LOG: \"verbose\": expected a level (trace, debug, info, warn, error or off) or target=level"
        ])
        #expect(errors(["RUST_LOG": "info,xds=loud"]) == [
            "environment: RUST_LOG: \"xds=loud\": expected target=level with a level of trace, debug, info, warn, error or off"
        ])
    }

    @Test("LOG_FORMAT: plain (text) or json")
    func logFormat() throws {
        #expect(try printed(["LOG_FORMAT": "json"]).value("logging", "format") == "json")
        #expect(try printed(["LOG_FORMAT": "plain"]).value("logging", "format") == "text")
        #expect(errors(["LOG_FORMAT": "xml"]) == ["environment: LOG_FORMAT: expected plain or json, got \"xml\""])
    }

    @Test("SOCKS5 on 127.0.0.1:15080 only with UNSTABLE_ENABLE_SOCKS5=true")
    func socks5() throws {
        let on = try printed(["UNSTABLE_ENABLE_SOCKS5": "true"])
        #expect(on.plugin("capture", "socks5", "enabled") == "true")
        #expect(on.plugin("capture", "socks5", "address") == "127.0.0.1:15080")
        #expect(on.plugin("capture", "inPod", "enabled") == "true")
        #expect(try printed(["UNSTABLE_ENABLE_SOCKS5": "false"]).plugin("capture", "socks5", "enabled") == "false")
        #expect(errors(["UNSTABLE_ENABLE_SOCKS5": "yes"]) == ["environment: UNSTABLE_ENABLE_SOCKS5: expected true or false, got \"yes\""])
    }

    @Test("TRUST_DOMAIN, SECRET_TTL and PACKET_MARK set the certificates' trust domain and lifetime and the in-pod mark")
    func certificatesAndMark() throws {
        let manifest = try printed(["TRUST_DOMAIN": "corp.example", "SECRET_TTL": "12h", "PACKET_MARK": "0x540"])
        #expect(manifest.plugin("certificates", "trustDomain") == "corp.example")
        #expect(manifest.plugin("certificates", "ttl") == "12h")
        #expect(manifest.plugin("capture", "inPod", "mark") == "1344")
        let errors = errors(["TRUST_DOMAIN": "spiffe://x", "SECRET_TTL": "soon", "PACKET_MARK": "0"])
        #expect(errors.count == 3, "\(errors)")
        #expect(errors.contains { $0.hasPrefix("environment: TRUST_DOMAIN: expected a trust domain") })
        #expect(errors.contains { $0.hasPrefix("environment: SECRET_TTL: expected a duration") })
        #expect(errors.contains { $0.hasPrefix("environment: PACKET_MARK: expected a non-zero 32-bit mark") })
    }

    @Test(
        "the drain deadline: CONNECTION_TERMINATION_DEADLINE, else TERMINATION_GRACE_PERIOD_SECONDS less ztunnel's margin",
        arguments: [
            (["CONNECTION_TERMINATION_DEADLINE": "12s"], "12s"), (["TERMINATION_GRACE_PERIOD_SECONDS": "30"], "25s"),
            (["TERMINATION_GRACE_PERIOD_SECONDS": "8"], "7s"), (["TERMINATION_GRACE_PERIOD_SECONDS": "1"], "1s"),
            (["CONNECTION_TERMINATION_DEADLINE": "2s", "TERMINATION_GRACE_PERIOD_SECONDS": "30"], "2s"),
        ])
    func drainDeadline(environment: [String: String], expected: String) throws {
        #expect(try printed(environment).value("node", "drainDeadline") == expected)
    }

    @Test("every bad variable is reported at once, in reading order")
    func allErrors() {
        let errors = errors([
            "XDS_ADDRESS": "nope", "CA_ADDRESS": "http://x:1", "RUST_LOG": "loud", "LOG_FORMAT": "yaml",
            "INSTANCE_IP": "x", "TERMINATION_GRACE_PERIOD_SECONDS": "-3",
        ])
        #expect(
            errors.map { $0.split(separator: ":").prefix(2).joined(separator: ":") } == [
                "environment: XDS_ADDRESS", "environment: CA_ADDRESS", "environment: INSTANCE_IP",
                "environment: TERMINATION_GRACE_PERIOD_SECONDS", "environment: RUST_LOG", "environment: LOG_FORMAT",
            ], "\(errors)")
    }

    // MARK: - The printed manifest

    @Test("the printed manifest loads back to exactly the environment's values, awkward ones included")
    func roundTrip() throws {
        let awkward = "node: 1 # not a comment ${NOT_A_REF} $$ \"quoted\" \\ yes"
        let environment = [
            "LOCAL_XDS_PATH": "/srv/my mesh/mesh.yaml", "NODE_NAME": awkward, "NETWORK": "true", "CLUSTER_ID": "0x10",
            "TRUST_DOMAIN": "on",
        ]
        let manifest = try build(environment)
        let plan = try manifest.plan(registry: FirstPartyPlugins.registry)
        #expect(plan.manifest.node.name == awkward)
        #expect(plan.manifest.node.network == "true")
        #expect(plan.file == "ztunnel profile")
        let certificates = try #require(plan.entries.first { $0.type.id == "certificates" }?.config as? CertificatesPlugin.Config)
        #expect(certificates.trustDomain == "on")
        guard case .istio(let istio) = certificates.backend else {
            Issue.record("expected the istio backend")
            return
        }
        #expect(istio.clusterId == "0x10")
        #expect(istio.address == "localhost:15012")
        #expect(istio.tokenFile == "/var/run/secrets/tokens/istio-token")
    }

    @Test("a newline in a value cannot break out of the header comment")
    func headerComments() throws {
        let manifest = try build(["POD_NAME": "p\nplugins: []"])
        #expect(manifest.yaml.split(separator: "\n").filter { $0.hasPrefix("plugins:") }.count == 1)
        _ = try ConfigNode.parse(yaml: manifest.yaml, file: "p.yaml")
    }

    @Test("the printed manifest is commented with where each value came from")
    func printedComments() throws {
        let yaml = try build(["NODE_NAME": "worker-1", "XDS_ADDRESS": "istiod:15012"]).yaml
        #expect(yaml.hasPrefix("# Built by `ambit run --profile ztunnel`"))
        #expect(yaml.contains("  name: worker-1  # NODE_NAME\n"))
        #expect(yaml.contains("      address: istiod:15012  # XDS_ADDRESS\n"))
        #expect(yaml.contains("  - id: xds\n    config:\n"))
        #expect(yaml.contains("  - id: authorization\n"))
    }

    // MARK: - The deployment files and the README

    /// The `env:` names and literal values of the DaemonSet's container.
    static func daemonSetEnvironment() throws -> [(name: String, value: String?)] {
        let text = try String(contentsOfFile: repositoryRoot + "/deploy/kubernetes/ambit-daemonset.yaml", encoding: .utf8)
        var result: [(String, String?)] = []
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for (index, line) in lines.enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard trimmed.hasPrefix("- name: "), line.hasPrefix("        - name: ") else { continue }
            let name = String(trimmed.dropFirst("- name: ".count))
            guard name.allSatisfy({ $0.isUppercase || $0.isNumber || $0 == "_" }) else { continue }
            let next = index + 1 < lines.count ? lines[index + 1].trimmingCharacters(in: .whitespaces) : ""
            result.append((name, next.hasPrefix("value: ") ? String(next.dropFirst("value: ".count)) : nil))
        }
        return result
    }

    static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    @Test("every variable the DaemonSet sets is one the profile reads, and its environment builds")
    func daemonSet() throws {
        let environment = try Self.daemonSetEnvironment()
        #expect(environment.count >= 10, "the env list was not found: \(environment)")
        let read = Set(ZtunnelProfile.variables.map(\.name))
        for variable in environment where !variable.name.hasPrefix("ISTIO_META_") {
            #expect(read.contains(variable.name), "\(variable.name) is set by the DaemonSet but not read")
        }
        var values: [String: String] = [:]
        let downward = ["POD_NAME": "ztunnel-abcde", "POD_NAMESPACE": "istio-system", "NODE_NAME": "node-1", "INSTANCE_IP": "10.0.0.5"]
        for variable in environment { values[variable.name] = variable.value ?? downward[variable.name] ?? "x" }
        let manifest = try build(values)
        let parsed = Printed(root: try #require(try ConfigNode.parse(yaml: manifest.yaml, file: "p.yaml").value))
        #expect(parsed.plugin("xds", "address") == "istiod.istio-system.svc:15012")
        #expect(parsed.value("node", "name") == "node-1")
        #expect(manifest.xdsNode?.id == "ztunnel~10.0.0.5~ztunnel-abcde.istio-system~istio-system.svc.cluster.local")
    }

    @Test("the README's variable table lists every variable the profile reads")
    func readme() throws {
        let readme = try String(contentsOfFile: Self.repositoryRoot + "/README.md", encoding: .utf8)
        for variable in ZtunnelProfile.variables {
            #expect(readme.contains("| `\(variable.name)`"), "README has no row for \(variable.name)")
        }
    }

    // MARK: - Validating and running what it builds

    /// A LOCAL_XDS_PATH environment over real files: a mesh, a CA root and a token.
    static func localEnvironment(_ directory: TemporaryDirectory) throws -> [String: String] {
        let root = try CertificateAuthority.makeRoot(trustDomain: "cluster.local")
        try directory.write("root-cert.pem", root.certificatePEM)
        try directory.write("istio-token", "test-token\n")
        try directory.write(
            "mesh.yaml",
            """
            workloads:
            - uid: c//v1/Pod/default/remote
              name: remote
              namespace: default
              serviceAccount: remote
              workloadIps: ["10.71.9.9"]
              protocol: HBONE
              node: another-node
            """)
        return [
            "LOCAL_XDS_PATH": directory.path + "/mesh.yaml", "CA_ROOT_CA": directory.path + "/root-cert.pem",
            "XDS_ROOT_CA": directory.path + "/root-cert.pem", "AUTH_TOKEN": directory.path + "/istio-token",
            "CA_ADDRESS": "127.0.14.1:1", "NODE_NAME": "profile-node", "RUST_LOG": "warn",
        ]
    }

    @Test("a LOCAL_XDS_PATH profile loads and provisions with the first-party plugins")
    func validates() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let manifest = try ZtunnelProfile(
            environment: try Self.localEnvironment(directory), workingDirectory: directory.path,
            registry: FirstPartyPlugins.registry
        ).build()
        let plan = try manifest.plan(registry: FirstPartyPlugins.registry)
        #expect(plan.entries.map(\.type.id) == ["local-config", "certificates", "authorization", "capture", "hbone", "telemetry", "node-proxy"])
        #expect(plan.manifest.node.name == "profile-node")
        #expect(plan.manifest.logging.level == .warning)
        let node = ProxyNode(plan: plan, logger: Logger(label: "test.profile"), handleSignals: false)
        _ = try await node.validate()
    }

    @Test("a node runs from the profile's manifest: ready, with the mesh from LOCAL_XDS_PATH")
    func runs() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        // istio-cni's stand-in: the node is ready once it has its (empty) snapshot.
        let agent = try ZDSAgentStandIn(directory: directory.path)
        var environment = try Self.localEnvironment(directory)
        environment["INPOD_UDS"] = agent.path
        let manifest = try ZtunnelProfile(
            environment: environment, workingDirectory: directory.path, registry: FirstPartyPlugins.registry
        ).build()
        let cni = Task {
            _ = try await agent.accept(timeout: 20)
            return try await agent.snapshotSent()
        }
        // ztunnel's fixed ports would clash with other tests: move them to free ones.
        let yaml = manifest.yaml.replacingOccurrences(of: "127.0.0.1:15000", with: "127.0.14.1:0")
            .replacingOccurrences(of: "0.0.0.0:15021", with: "127.0.14.1:0")
            .replacingOccurrences(of: "0.0.0.0:15020", with: "127.0.14.1:0")
        let running = try await TestSupport.RunningNode.start(
            manifest: yaml, registry: FirstPartyPlugins.registry, logger: Logger(label: "test.profile"),
            directory: directory,
            // The readiness address is set once every plugin is expected: only then does
            // "ready" mean the plugins are up.
            until: { $0.readinessAddress != nil && $0.readiness.isReady })
        let node = running.node
        #expect(try await cni.value == "", "the snapshot was not acked")
        let readiness = try #require(node.readinessAddress)
        let ready = try await httpRequest("GET", readiness, "/healthz/ready")
        #expect(ready.status == 200, "\(ready.body)")
        let admin = try #require(node.adminAddress)
        let dump = try await httpRequest("GET", admin, "/config_dump")
        #expect(dump.status == 200)
        #expect(dump.body.contains("c//v1/Pod/default/remote"), "the mesh came from LOCAL_XDS_PATH")
        #expect(dump.body.contains("profile-node"))
        try await running.stop()
    }

    // MARK: - The command line

    @Test("ambit run --profile ztunnel --print-manifest prints the YAML and exits 0; bad variables exit 1 naming them")
    func printManifestCommand() async throws {
        let printed = try await AmbitProcess.run(
            ["run", "--profile", "ztunnel", "--print-manifest"],
            environment: ["NODE_NAME": "worker-9", "XDS_ADDRESS": "https://istiod.example:15012", "PATH": "/usr/bin:/bin"])
        #expect(printed.status == 0, "\(printed.stderr)")
        let parsed = Printed(root: try #require(try ConfigNode.parse(yaml: printed.stdout, file: "out.yaml").value))
        #expect(parsed.plugin("xds", "address") == "istiod.example:15012")
        #expect(parsed.value("node", "name") == "worker-9")
        #expect(printed.stdout == (try build(["NODE_NAME": "worker-9", "XDS_ADDRESS": "https://istiod.example:15012", "PATH": "/usr/bin:/bin"]).yaml))

        let bad = try await AmbitProcess.run(
            ["run", "--profile", "ztunnel", "--print-manifest"], environment: ["XDS_ADDRESS": "istiod", "RUST_LOG": "loud"])
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("error: environment: XDS_ADDRESS: expected host:port or https://host:port, got \"istiod\""), "\(bad.stderr)")
        #expect(bad.stderr.contains("error: environment: RUST_LOG:"), "\(bad.stderr)")
        #expect(bad.stdout.isEmpty)
    }

    @Test("ambit validate --profile ztunnel validates the built manifest")
    func validateCommand() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let good = try await AmbitProcess.run(["validate", "--profile", "ztunnel"], environment: try Self.localEnvironment(directory))
        #expect(good.status == 0, "\(good.stderr)")
        #expect(good.stdout.contains("ztunnel profile: ok (7 plugins: local-config, certificates"), "\(good.stdout)")

        var missing = try Self.localEnvironment(directory)
        missing["AUTH_TOKEN"] = directory.path + "/no-such-token"
        let failed = try await AmbitProcess.run(["validate", "--profile", "ztunnel"], environment: missing)
        #expect(failed.status == 1)
        #expect(failed.stderr.contains("no-such-token"), "\(failed.stderr)")
    }

    @Test("run and validate need exactly one of --manifest and --profile; --print-manifest needs --profile")
    func commandLine() async throws {
        let neither = try await AmbitProcess.run(["validate"])
        #expect(neither.status != 0)
        #expect(neither.stderr.contains("--manifest") && neither.stderr.contains("--profile"), "\(neither.stderr)")
        let both = try await AmbitProcess.run(["validate", "--manifest", "x.yaml", "--profile", "ztunnel"])
        #expect(both.status != 0)
        #expect(both.stderr.contains("not both"), "\(both.stderr)")
        let print = try await AmbitProcess.run(["run", "--manifest", "x.yaml", "--print-manifest"])
        #expect(print.status != 0)
        #expect(print.stderr.contains("--print-manifest needs --profile"), "\(print.stderr)")
        let unknown = try await AmbitProcess.run(["run", "--profile", "envoy"])
        #expect(unknown.status != 0)
        #expect(unknown.stderr.contains("ztunnel"), "\(unknown.stderr)")
    }
}
