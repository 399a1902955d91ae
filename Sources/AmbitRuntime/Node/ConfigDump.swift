import Foundation
import Kernel
import Logging

/// Renders the node's state as the JSON `/config_dump` and `/plugins` serve.
///
/// `/config_dump` has ztunnel's shape (``ConfigDump/Dump``), so `istioctl ztunnel-config
/// workloads|services|policies|certificates|connections --file dump.json` reads it; the
/// keys ztunnel does not have are Ambit's and stay under their own names. Nothing secret
/// is in it: certificates without their keys, plugin configs with token values redacted.
enum ConfigDump {
    struct PluginView: Encodable {
        var id, summary, state: String
        var provides, requires: [String]
        /// The plugin's `config:` as written (scalars as text), secrets redacted.
        var config: ConfigJSON
    }

    /// A plugin's raw config as JSON, with what could be a secret replaced by
    /// `"<redacted>"`: the value of any key naming a token, password or secret (the CA
    /// server's `tokens` mapping is bearer tokens), but not a `…File` path to one.
    indirect enum ConfigJSON: Encodable {
        case null
        case text(String)
        case list([ConfigJSON])
        case object([String: ConfigJSON])

        init(_ value: ConfigValue?) {
            guard let value else {
                self = .object([:])
                return
            }
            switch value.content {
            case .scalar(let text, let plain):
                self = plain && ["", "~", "null", "Null", "NULL"].contains(text) ? .null : .text(text)
            case .sequence(let items):
                self = .list(items.map { ConfigJSON($0) })
            case .mapping(let entries):
                var object: [String: ConfigJSON] = [:]
                for entry in entries {
                    let key: String
                    if case .scalar(let text, _) = entry.key.content { key = text } else { key = "\(entry.key.content)" }
                    object[key] = Self.isSecret(key) ? .text("<redacted>") : ConfigJSON(entry.value)
                }
                self = .object(object)
            }
        }

        static func isSecret(_ key: String) -> Bool {
            let lowered = key.lowercased()
            guard !lowered.hasSuffix("file"), !lowered.hasSuffix("path") else { return false }
            return lowered.contains("token") || lowered.contains("password") || lowered.contains("secret")
        }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .null: try container.encodeNil()
            case .text(let text): try container.encode(text)
            case .list(let items): try container.encode(items)
            case .object(let object): try container.encode(object)
            }
        }
    }

    struct ConnectionView: Encodable {
        var id: UInt64
        var direction, source, destination, route: String
        var sourceWorkload, destinationWorkload, peerIdentity: String?
        var bytesSent, bytesReceived: UInt64
        var ageSeconds: Double

        init(_ r: ConnectionRecord) {
            id = r.id
            direction = r.direction.rawValue
            source = r.source.description
            destination = r.destination.description
            route = r.route
            sourceWorkload = r.sourceWorkload?.uid
            destinationWorkload = r.destinationWorkload?.uid
            peerIdentity = r.peerIdentity?.description
            bytesSent = r.bytes.sent
            bytesReceived = r.bytes.received
            let age = r.openedAt.duration(to: .now).components
            ageSeconds = Double(age.seconds) + Double(age.attoseconds) / 1e18
        }
    }

    /// One discovery source of the mesh store, by rank (lower wins conflicts).
    struct OriginView: Encodable {
        var name: String
        var rank: Int
        /// Resources of each kind whose version in force is this source's.
        var inForce: [String: Int]
    }

    /// The whole dump. ztunnel's keys: `workloads` (sorted by uid), `services` (sorted by
    /// `namespace/hostname`, each with its `endpoints` by workload uid), `policies` (sorted
    /// by `namespace/name`), `stagedServices`, `certificates` (sorted by identity),
    /// `workloadState` (local workloads by uid, with their connections), `staticConfig`,
    /// `config` and `version`. Ambit's: `node`, `meshVersion`, `meshOrigins`, `meshConflicts`,
    /// `plugins`, `connections`.
    struct Dump: Encodable {
        enum CodingKeys: String, CodingKey, CaseIterable {
            case workloads, services, policies, stagedServices, certificates, workloadState, staticConfig, config, version
            case node, meshVersion, meshOrigins, meshConflicts, plugins, connections
        }

        var workloads: [WorkloadView]
        var services: [ServiceView]
        var policies: [PolicyView]
        var stagedServices: [String: [String: EndpointView]]
        var certificates: [CertificatesView]
        var workloadState: [String: WorkloadStateView]
        /// ztunnel's `LocalConfig` read back from `LOCAL_XDS_PATH`; Ambit's mesh files are
        /// already in the lists above (with their `origin`), so it is empty.
        var staticConfig: StaticConfigView
        var config: ConfigView
        /// ztunnel's `BuildInfo` names: `version` (Ambit's) and `buildProfile`.
        var version: [String: String]
        var node: [String: String]
        var meshVersion: UInt64
        var meshOrigins: [OriginView]
        /// Resources more than one source holds: whose version is in force, whose is shadowed.
        var meshConflicts: [MeshStore.Conflict]
        var plugins: [PluginView]
        var connections: [ConnectionView]
    }

    /// ztunnel's empty `LocalConfig`.
    struct StaticConfigView: Encodable {
        var workloads: [WorkloadView] = []
        var policies: [PolicyView] = []
        var services: [ServiceView] = []
    }

    /// The node's settings, under ztunnel's `Config` names where ztunnel has the setting
    /// (`localNode`, `network`, `adminAddr`, `readinessAddr`), else Ambit's manifest names.
    struct ConfigView: Encodable {
        var localNode: String
        var network: String
        var adminAddr: String?
        var readinessAddr: String?
        var threads: Int
        var drainDeadline: String
        var policyDeadline: String
        var logLevel: String
        var logFormat: String
    }

    static func plugins(node: ProxyNode) -> [PluginView] {
        let states = Dictionary(node.pluginStates.map { ($0.id, $0.state) }, uniquingKeysWith: { a, _ in a })
        return node.plan.entries.map { entry in
            PluginView(
                id: entry.type.id, summary: entry.type.summary,
                state: states[entry.type.id]?.rawValue ?? PluginState.configured.rawValue,
                provides: entry.type.provides.sorted().map { $0.name },
                requires: entry.type.requires.sorted().map { $0.name },
                config: ConfigJSON(entry.entry.config.value))
        }
    }

    static func origins(_ store: MeshStore, _ mesh: MeshSnapshot) -> [OriginView] {
        // One pass over each kind: resources in force by origin.
        var inForce: [String: [String: Int]] = [:]
        func count<R: MeshResource>(_ type: R.Type) {
            for key in mesh.resources(of: type).keys {
                if let origin = mesh.origin(of: type, key: key) { inForce[origin, default: [:]][R.kind, default: 0] += 1 }
            }
        }
        count(Workload.self)
        count(Service.self)
        count(AuthorizationPolicy.self)
        return store.origins.enumerated().map { rank, name in
            OriginView(
                name: name, rank: rank,
                inForce: [Workload.kind, Service.kind, AuthorizationPolicy.kind].reduce(into: [:]) {
                    $0[$1] = inForce[name]?[$1] ?? 0
                })
        }
    }

    static func render(node: ProxyNode) async -> String {
        let mesh = node.mesh.snapshot
        let manifest = node.plan.manifest
        let now = Date()
        let dump = Dump(
            workloads: mesh.workloads.values.sorted { $0.uid < $1.uid }.map {
                WorkloadView($0, origin: mesh.origin(of: Workload.self, key: $0.uid))
            },
            services: mesh.services.values.sorted { $0.namespacedHostname < $1.namespacedHostname }.map {
                ServiceView(
                    $0, endpoints: mesh.endpoints(of: $0.namespacedHostname),
                    origin: mesh.origin(of: Service.self, key: $0.namespacedHostname))
            },
            policies: mesh.policies.values.sorted { $0.key < $1.key }.map(PolicyView.init),
            stagedServices: stagedServices(mesh),
            certificates: node.plugins.compactMap { $0 as? any CertificateStatusReporting }
                .flatMap(\.certificateStatuses).sorted { $0.identity < $1.identity }
                .map { CertificatesView($0, now: now) },
            workloadState: workloadState(node: node, mesh: mesh),
            staticConfig: StaticConfigView(),
            config: ConfigView(
                localNode: manifest.node.name, network: manifest.node.network,
                adminAddr: node.adminAddress?.description, readinessAddr: node.readinessAddress?.description,
                threads: manifest.node.threads, drainDeadline: "\(manifest.node.drainDeadline)",
                policyDeadline: "\(manifest.node.policyDeadline)", logLevel: manifest.logging.level.rawValue,
                logFormat: manifest.logging.format.rawValue),
            version: ["version": AmbitVersion.current, "buildProfile": Self.buildProfile],
            node: [
                "name": manifest.node.name,
                "network": manifest.node.network,
                "state": node.isDraining ? "draining" : (node.readiness.isReady ? "ready" : "starting"),
            ],
            meshVersion: mesh.version,
            meshOrigins: origins(node.mesh, mesh),
            meshConflicts: node.mesh.conflicts,
            plugins: plugins(node: node),
            connections: node.connections.records.sorted { $0.id < $1.id }.map(ConnectionView.init))
        var sections: [(key: String, value: any Encodable & Sendable)] = []
        for provider in node.plugins.compactMap({ $0 as? any ConfigDumpSectionProvider }) {
            let key = provider.configDumpKey
            guard !Dump.CodingKeys.allCases.contains(where: { $0.stringValue == key }),
                !sections.contains(where: { $0.key == key })
            else { continue }
            sections.append((key, await provider.configDumpSection()))
        }
        return encode(DumpWithSections(dump: dump, sections: sections))
    }

    #if DEBUG
    static let buildProfile = "debug"
    #else
    static let buildProfile = "release"
    #endif

    /// The dump with the plugins' sections (``ConfigDumpSectionProvider``) added as
    /// top-level keys.
    struct DumpWithSections: Encodable {
        var dump: Dump
        var sections: [(key: String, value: any Encodable & Sendable)]

        private struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: any Encoder) throws {
            try dump.encode(to: encoder)
            // The same encoder's keyed container: the sections join the dump's keys.
            var container = encoder.container(keyedBy: Key.self)
            for (key, value) in sections {
                try container.encode(value, forKey: Key(stringValue: key))
            }
        }
    }

    static func renderPlugins(node: ProxyNode) -> String {
        encode(plugins(node: node))
    }

    static func encode(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let data = try? encoder.encode(value) else { return "{}" }
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
