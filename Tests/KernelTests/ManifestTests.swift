import Foundation
import Kernel
import Logging
import Testing
import AmbitRuntime


// Test-only plugins: a discovery source, a capture plugin that needs discovery, and a
// policy plugin, each with a small strict config.

private final class DiscoveryStub: Plugin, DiscoverySource {
    struct Config: Decodable, Sendable {
        var path: String
        var pollInterval: Duration

        enum CodingKeys: String, CodingKey, CaseIterable { case path, pollInterval }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            path = try container.decode(String.self, forKey: .path)
            pollInterval = try container.decodeIfPresent(ConfigDuration.self, forKey: .pollInterval)?.duration ?? .seconds(1)
        }
    }
    static let id = "local-config"
    static let summary = "test discovery"
    static var provides: Set<PluginRole> { [.discovery] }
    let discoveryOrigin = "test"
    init(config: Config, context: PluginContext) {}
    func run() async throws {}
}

private final class CaptureStub: Plugin {
    struct Config: Decodable, Sendable {
        var listen: SocketAddr
        var ports: [UInt16: UInt16]

        enum CodingKeys: String, CodingKey, CaseIterable { case listen, ports }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            listen = try container.decodeIfPresent(SocketAddr.self, forKey: .listen) ?? SocketAddr("127.0.0.1:15080")!
            ports = try container.decodeIfPresent([UInt16: UInt16].self, forKey: .ports) ?? [:]
        }
    }
    static let id = "capture"
    static let summary = "test capture"
    static var requires: Set<PluginRole> { [.discovery] }
    init(config: Config, context: PluginContext) {}
    func run() async throws {}
}

private final class PolicyStub: Plugin, ConnectionAuthorizer {
    struct Config: Decodable, Sendable {
        var deny: [String]
        enum CodingKeys: String, CodingKey, CaseIterable { case deny }
        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            deny = try container.decodeIfPresent([String].self, forKey: .deny) ?? []
        }
    }
    static let id = "deny-list"
    static let summary = "test policy"
    static var provides: Set<PluginRole> { [.policy] }
    init(config: Config, context: PluginContext) {}
    func run() async throws {}
    func authorize(_ connection: ConnectionAttributes) async throws -> AuthorizationDecision { .allow() }
}

private let registry = PluginRegistry([PluginType(DiscoveryStub.self), PluginType(CaptureStub.self), PluginType(PolicyStub.self)])

private func load(_ yaml: String) throws(ConfigErrors) -> ManifestPlan {
    try ManifestLoader.load(yaml: yaml, file: "manifest.yaml", baseDirectory: "/etc/ambit", registry: registry)
}

private func loadErrors(_ yaml: String) -> [String] {
    do {
        _ = try load(yaml)
        Issue.record("expected the manifest to be rejected")
        return []
    } catch {
        return error.errors.map(\.description)
    }
}

/// A fresh directory under the system temp dir, removed by the caller.
private func makeTempDirectory() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("ambit-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private func write(_ text: String, to path: String) {
    try! Data(text.utf8).write(to: URL(fileURLWithPath: path))
}

@Suite("Manifest")
struct ManifestTests {
    @Test("a good manifest decodes, with defaults and plugin order kept")
    func goodManifest() throws {
        let plan = try load(
            """
            plugins:
              - id: deny-list
                config: {deny: [a]}
              - id: local-config
                config: {path: mesh.yaml, pollInterval: 250ms}
              - id: capture
            """)
        #expect(plan.entries.map(\.entry.id) == ["deny-list", "local-config", "capture"])
        #expect(plan.entries.map(\.entry.index) == [0, 1, 2])
        #expect(plan.entries.map(\.entry.line) == [2, 4, 6])
        #expect(plan.baseDirectory == "/etc/ambit")
        #expect(plan.manifest.node.drainDeadline == .seconds(5))
        #expect(plan.manifest.node.threads >= 1)
        #expect(!plan.manifest.node.name.isEmpty)
        #expect(plan.manifest.node.network == "")
        #expect(plan.manifest.logging.level == .info)
        #expect(plan.manifest.logging.format == .text)
        #expect(plan.manifest.admin == nil)
        let discovery = try #require(plan.entries[1].config as? DiscoveryStub.Config)
        #expect(discovery.path == "mesh.yaml")
        #expect(discovery.pollInterval == .milliseconds(250))
        let capture = try #require(plan.entries[2].config as? CaptureStub.Config)
        #expect(capture.listen == SocketAddr("127.0.0.1:15080"))
        #expect(plan.entries[2].entry.config.path == "plugins[2] (capture).config")
    }

    @Test("sections: node, logging, admin with durations and null")
    func sections() throws {
        let plan = try load(
            """
            node: {name: node-a, network: net-east, threads: 3, drainDeadline: 1500ms}
            logging: {level: debug, format: json}
            admin:
              address: 127.0.0.1:16000
              readinessAddress: null
            plugins: []
            """)
        #expect(plan.manifest.node.name == "node-a")
        #expect(plan.manifest.node.network == "net-east")
        #expect(plan.manifest.node.threads == 3)
        #expect(plan.manifest.node.drainDeadline == .milliseconds(1500))
        #expect(plan.manifest.logging.level == .debug)
        #expect(plan.manifest.logging.format == .json)
        #expect(plan.manifest.admin?.address == SocketAddr("127.0.0.1:16000"))
        #expect(plan.manifest.admin?.readinessAddress == nil)

        let defaults = try load("admin: {}")
        #expect(defaults.manifest.admin?.address == SocketAddr("127.0.0.1:15000"))
        #expect(defaults.manifest.admin?.readinessAddress == SocketAddr("0.0.0.0:15021"))
    }

    @Test("unknown keys at the top level, in a section and in a plugin config")
    func unknownKeys() {
        let found = loadErrors(
            """
            node:
              name: a
              thread: 2
            plugin: []
            plugins:
              - id: local-config
                config:
                  path: mesh.yaml
                  pollIntervall: 1s
              - id: capture
                confg: {}
            """)
        #expect(found.count == 4)
        #expect(found.contains { $0.hasPrefix("manifest.yaml:3: node.thread: unknown key \"thread\"; did you mean \"threads\"?") })
        #expect(found.contains { $0.hasPrefix("manifest.yaml:4: plugin: unknown key \"plugin\"; did you mean \"plugins\"?") })
        #expect(found.contains { $0.hasPrefix("manifest.yaml:9: plugins[0] (local-config).config.pollIntervall: unknown key") })
        #expect(found.contains { $0.hasPrefix("manifest.yaml:11: plugins[1] (capture).confg: unknown key \"confg\"") })
    }

    @Test("wrong types anywhere")
    func wrongTypes() {
        let found = loadErrors(
            """
            node: {threads: many}
            logging: {level: loud}
            plugins:
              - id: capture
                config: {listen: x}
              - id: local-config
                config: {path: [a]}
            """)
        #expect(found == [
            "manifest.yaml:1: node.threads: expected an integer \(Int.min)…\(Int.max), got \"many\"",
            "manifest.yaml:2: logging.level: expected one of trace, debug, info, notice, warning, error, critical, got \"loud\"",
            "manifest.yaml:5: plugins[0] (capture).config.listen: expected host:port, got \"x\"",
            "manifest.yaml:7: plugins[1] (local-config).config.path: expected a string, got a sequence",
        ])
    }

    @Test("node settings out of range are reported together, each at its key")
    func nodeSettingsChecks() {
        let found = loadErrors(
            """
            node:
              name: ""
              threads: 0
              policyDeadline: 0s
            """)
        #expect(found == [
            "manifest.yaml:2: node.name: must not be empty",
            "manifest.yaml:3: node.threads: expected 1…1024 threads, got 0",
            "manifest.yaml:4: node.policyDeadline: must be longer than 0",
        ])
    }

    @Test("unknown plugin id")
    func unknownPlugin() {
        let found = loadErrors(
            """
            plugins:
              - id: local-config
                config: {path: m.yaml}
              - id: foo
            """)
        #expect(found == ["manifest.yaml:4: plugins[1].id: unknown plugin \"foo\": not compiled into this binary (compiled in: capture, deny-list, local-config); compose a binary with it: swift package compose, see SDK/README.md"])
    }

    @Test("duplicate plugin id")
    func duplicateID() {
        let found = loadErrors(
            """
            plugins:
              - id: local-config
                config: {path: m.yaml}
              - id: capture
              - id: deny-list
              - id: capture
            """)
        #expect(found == ["manifest.yaml:6: plugins[3] (capture): duplicate plugin id \"capture\", first at plugins[1] (capture) (line 4)"])
    }

    @Test("a required role no enabled plugin provides")
    func missingRole() {
        let found = loadErrors(
            """
            plugins:
              - id: deny-list
              - id: capture
            """)
        #expect(found == ["manifest.yaml:3: plugins[1] (capture): requires role \"discovery\", which no enabled plugin provides"])
    }

    @Test("many errors are reported in one run, in document order")
    func manyErrors() {
        let found = loadErrors(
            """
            logging: {format: xml}
            plugins:
              - id: capture
                config: {ports: {80: 70000}}
              - id: nope
              - id: deny-list
                config: {deny: a-string}
              - id: deny-list
              - config: {}
            """)
        #expect(found.count == 7, "\(found)")
        #expect(found.first?.hasPrefix("manifest.yaml:1: logging.format: expected one of text, json") == true)
        #expect(found.contains("manifest.yaml:4: plugins[0] (capture).config.ports.80: expected an integer 0…65535, got 70000"))
        #expect(found.contains { $0.hasPrefix("manifest.yaml:5: plugins[1].id: unknown plugin \"nope\"") })
        #expect(found.contains("manifest.yaml:7: plugins[2] (deny-list).config.deny: expected a sequence, got \"a-string\""))
        #expect(found.contains { $0.hasPrefix("manifest.yaml:8: plugins[3] (deny-list): duplicate plugin id") })
        #expect(found.contains("manifest.yaml:9: plugins[4]: missing required key \"id\""))
        #expect(found.contains { $0.contains("requires role \"discovery\"") })
    }

    @Test("files: unreadable, syntax errors, base directory")
    func files() throws {
        let directory = makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }

        do {
            _ = try ManifestLoader.load(path: "\(directory)/missing.yaml", registry: registry)
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "\(directory)/missing.yaml: cannot read: No such file or directory")
        }

        write("plugins:\n  - id: [capture\n", to: "\(directory)/bad.yaml")
        do {
            _ = try ManifestLoader.load(path: "\(directory)/bad.yaml", registry: registry)
            Issue.record("expected an error")
        } catch {
            #expect(error.errors.count == 1)
            #expect(error.errors.first?.line != nil && error.errors.first?.column != nil)
            #expect(error.description.hasPrefix("\(directory)/bad.yaml:"))
        }

        write("plugins:\n  - id: local-config\n    config: {path: mesh.yaml}\n", to: "\(directory)/good.yaml")
        let plan = try ManifestLoader.load(path: "\(directory)/good.yaml", registry: registry)
        #expect(plan.baseDirectory == directory)
        #expect(plan.file == "\(directory)/good.yaml")
    }
}

/// Declares the policy role without being a ``ConnectionAuthorizer``.
private final class MislabelledPolicy: Plugin {
    struct Config: Decodable, Sendable {}
    static let id = "mislabelled"
    static let summary = "declares a role it does not implement"
    static var provides: Set<PluginRole> { [.policy] }
    init(config: Config, context: PluginContext) {}
}

/// Provides the discovery role by conformance alone.
private final class UndeclaredDiscovery: Plugin, DiscoverySource {
    struct Config: Decodable, Sendable {}
    static let id = "undeclared"
    static let summary = "a discovery source that does not list its role"
    let discoveryOrigin = "test"
    init(config: Config, context: PluginContext) {}
}

@Suite("Plugin roles follow protocol conformance")
struct PluginRoleConformanceTests {
    @Test("a role declared without its protocol is a manifest error naming both; conformance alone provides a role")
    func rolesFromConformance() throws {
        #expect(PluginType(UndeclaredDiscovery.self).provides == [.discovery])
        #expect(PluginType(MislabelledPolicy.self).provides.isEmpty)
        let registry = PluginRegistry([PluginType(MislabelledPolicy.self), PluginType(UndeclaredDiscovery.self)])
        #expect {
            try ManifestLoader.load(
                yaml: "plugins:\n  - id: undeclared\n  - id: mislabelled\n", file: "m.yaml", baseDirectory: "/", registry: registry)
        } throws: { error in
            let text = "\(error)"
            return text.contains("m.yaml:3") && text.contains("declares role \"policy\" but does not conform to ConnectionAuthorizer")
        }
    }
}
