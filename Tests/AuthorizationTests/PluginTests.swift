import Authorization
import Foundation
import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TestSupport
import Testing
import AmbitRuntime
import ConfigYAML

/// A node-less harness: a plugin context with a mesh, a registry and a directory holding
/// the policy plugins, as the kernel builds it.
struct Harness {
    let mesh = MeshStore()
    let connections = ConnectionRegistry()
    let directory = PluginDirectory()
    let base: String

    func context(_ id: String) -> PluginContext {
        PluginContext(
            pluginID: id, logger: Logger(label: "test"), eventLoopGroup: MultiThreadedEventLoopGroup.singleton, mesh: mesh,
            connections: connections, readiness: Readiness(), nodeName: "node-a", baseDirectory: base, directory: directory)
    }

    func plugin(_ config: AuthorizationPlugin.Config) throws -> AuthorizationPlugin {
        let plugin = try AuthorizationPlugin(config: config, context: context(AuthorizationPlugin.id))
        directory.set(directory.plugins + [plugin])
        return plugin
    }
}

let serverMesh = MeshSnapshot(workloads: [Fixture.server], services: [], policies: [])

func policyYAML(_ name: String, action: String = "ALLOW", rules: String) -> String {
    """
    apiVersion: security.istio.io/v1
    kind: AuthorizationPolicy
    metadata: {name: \(name), namespace: ns}
    spec:
      action: \(action)
      rules: \(rules)

    """
}

/// Reads until the file's content took effect, as the watch loop would.
func reloaded(_ plugin: AuthorizationPlugin) async -> Bool {
    await eventually { plugin.checkForChanges() }
}

/// Test authorizers with fixed verdicts.
final class FixedAuthorizer: ConnectionAuthorizer {
    let decision: AuthorizationDecision
    init(_ decision: AuthorizationDecision) { self.decision = decision }
    func authorize(_ connection: ConnectionAttributes) async -> AuthorizationDecision { decision }
}

extension AuthorizationPlugin.Config {
    /// The defaults with a few fields changed.
    init(policies: [String]? = nil, meshPolicies: Bool? = nil, pollInterval: Duration? = nil) {
        self.init()
        if let policies { self.policies = policies }
        if let meshPolicies { self.meshPolicies = meshPolicies }
        if let pollInterval { self.pollInterval = pollInterval }
    }
}

@Suite("Authorization plugin and policy chain", .timeLimit(.minutes(1)))
struct PluginTests {
    @Test("config: defaults, strictness")
    func config() throws {
        let defaults = try ConfigDecoder.decode(AuthorizationPlugin.Config.self, yaml: "{}", file: "m.yaml", path: "config")
        #expect(defaults.policies.isEmpty && defaults.rootNamespace == "istio-system" && defaults.meshPolicies && defaults.watch)
        #expect(defaults.pollInterval == .seconds(1))
        #expect(throws: ConfigErrors.self) {
            try ConfigDecoder.decode(AuthorizationPlugin.Config.self, yaml: "{policy: [a]}", file: "m.yaml", path: "config")
        }
        #expect(throws: ConfigErrors.self) {
            try ConfigDecoder.decode(AuthorizationPlugin.Config.self, yaml: "{rootNamespace: \"\"}", file: "m.yaml", path: "config")
        }
        // Cross-field and range checks carry file, line and path.
        do {
            _ = try ConfigDecoder.decode(
                AuthorizationPlugin.Config.self, yaml: "watch: true\npollInterval: 1ms\npolicies: [\"\"]", file: "m.yaml", path: "config")
            Issue.record("expected errors")
        } catch {
            #expect(error.errors.map(\.description) == [
                "m.yaml:2: config.pollInterval: expected at least 10ms, got 1ms",
                "m.yaml:3: config.policies: paths must not be empty",
            ])
        }
    }

    @Test("mesh policies (ztunnel form) apply at once and follow the mesh")
    func meshPolicies() async throws {
        let harness = Harness(base: "/")
        let plugin = try harness.plugin(.init())
        try await plugin.provision()
        harness.mesh.publish(serverMesh)
        #expect(await plugin.authorize(Fixture.plaintext).allowed)
        let deny = Fixture.policy("deny-plain", .deny, rules: [[[Fixture.match { $0.notPrincipals = [.presence] }]]])
        harness.mesh.publish(MeshSnapshot(workloads: [Fixture.server], services: [], policies: [deny]))
        let decision = await plugin.authorize(Fixture.plaintext)
        #expect(decision == .deny(policy: "ns/deny-plain", rule: 0, reason: decision.reason))
        #expect(await plugin.authorize(Fixture.tls).allowed)

        // With meshPolicies off, the mesh's own policies are not enforced.
        let other = Harness(base: "/")
        other.mesh.publish(MeshSnapshot(workloads: [Fixture.server], services: [], policies: [deny]))
        let ignoring = try other.plugin(.init(meshPolicies: false))
        try await ignoring.provision()
        #expect(await ignoring.authorize(Fixture.plaintext).allowed)
    }

    @Test("policy file watched and reloaded; a bad edit keeps the last good set with a precise error")
    func fileReload() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let file = try directory.write("authz.yaml", policyYAML("allow-8080", rules: "[{to: [{operation: {ports: [\"8080\"]}}]}]"))
        let harness = Harness(base: directory.path)
        harness.mesh.publish(serverMesh)
        let plugin = try harness.plugin(.init(policies: ["authz.yaml"], pollInterval: .milliseconds(20)))
        #expect(plugin.paths == [file])
        try await plugin.provision()
        #expect(await plugin.authorize(Fixture.plaintext).allowed)
        #expect(await !plugin.authorize(Fixture.tlsAlt).allowed)  // port 9090

        // A good edit takes effect.
        try directory.write("authz.yaml", policyYAML("allow-9090", rules: "[{to: [{operation: {ports: [\"9090\"]}}]}]"))
        #expect(await reloaded(plugin))
        #expect(await !plugin.authorize(Fixture.plaintext).allowed)
        #expect(await plugin.authorize(Fixture.tlsAlt).allowed)
        #expect(plugin.status.filePolicies.map(\.key) == ["ns/allow-9090"])

        // Bad edits: each reported precisely; the last good set stays.
        let bad: [(String, String)] = [
            (policyYAML("x", rules: "[{from: [{source: {ipBlocks: [\"300.0.0.1\"]}}]}]"), "\(file):6: document[0].spec.rules[0].from[0].source.ipBlocks[0]: expected an IP address or CIDR block"),
            (policyYAML("x", rules: "[{to: [{operation: {ports: [\"0\"]}}]}]"), "\(file):6: document[0].spec.rules[0].to[0].operation.ports[0]: expected a port 1…65535, got \"0\""),
            (policyYAML("x", rules: "[{to: [{operation: {port: [\"80\"]}}]}]"), "\(file):6: document[0].spec.rules[0].to[0].operation.port: unknown key"),
            ("apiVersion: security.istio.io/v1\nkind: [", "\(file):3:1: document[0]: invalid YAML"),
        ]
        for (text, expected) in bad {
            try directory.write("authz.yaml", text)
            // Each edit replaces the previous error once the watcher has read it.
            #expect(await eventually {
                plugin.checkForChanges()
                return plugin.status.lastError?.description.hasPrefix(expected) == true
            }, "\(plugin.status.lastError?.description ?? "no error")")
            #expect(await plugin.authorize(Fixture.tlsAlt).allowed)
            #expect(await !plugin.authorize(Fixture.plaintext).allowed)
            #expect(plugin.status.filePolicies.map(\.key) == ["ns/allow-9090"])
        }

        // Restoring good content applies it again.
        try directory.write("authz.yaml", policyYAML("allow-all", rules: "[{}]"))
        #expect(await reloaded(plugin))
        #expect(plugin.status.lastError == nil)
        #expect(await plugin.authorize(Fixture.plaintext).allowed)
    }

    @Test("provision fails on a bad file with every error")
    func provisionFails() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write("a.yaml", policyYAML("x", action: "CUSTOM", rules: "[]"))
        let plugin = try Harness(base: directory.path).plugin(.init(policies: ["a.yaml", "missing.yaml"]))
        do {
            try await plugin.provision()
            Issue.record("provision should fail")
        } catch let errors as ConfigErrors {
            #expect(errors.errors.count == 2)
            #expect(errors.description.contains("a.yaml:5: document[0].spec.action: action CUSTOM is not supported"))
            #expect(errors.description.contains("missing.yaml: cannot read: No such file or directory"))
        }
    }

    @Test("the chain: manifest order, first deny wins, abstentions pass, ids named")
    func chain() async {
        let allow = PolicyChain.Link(id: "a", authorizer: FixedAuthorizer(.allow(policy: "p/a", reason: "ok")))
        let abstain = PolicyChain.Link(id: "b", authorizer: FixedAuthorizer(.abstain()))
        let deny1 = PolicyChain.Link(id: "c", authorizer: FixedAuthorizer(.deny(policy: "p/c", rule: 2, reason: "no")))
        let deny2 = PolicyChain.Link(id: "d", authorizer: FixedAuthorizer(.deny(reason: "never asked")))

        let empty = await PolicyChain([]).authorize(Fixture.tls)
        #expect(empty.allowed && empty.reason == "no policy plugin enabled")
        let abstained = await PolicyChain([abstain]).authorize(Fixture.tls)
        #expect(abstained.verdict == .allow && abstained.reason == "no policy plugin objected")
        let allowed = await PolicyChain([allow, abstain]).authorize(Fixture.tls)
        #expect(allowed.verdict == .allow && allowed.plugin == "a" && allowed.policy == "p/a")
        let denied = await PolicyChain([allow, abstain, deny1, deny2]).authorize(Fixture.tls)
        #expect(denied.verdict == .deny && denied.plugin == "c" && denied.rule == 2)
        #expect(denied.description == "deny by c: p/c rule 2: no")
        let onLoop = try? await PolicyChain([deny2, deny1]).authorize(Fixture.tls, on: MultiThreadedEventLoopGroup.singleton.next()).get()
        #expect(onLoop?.plugin == "d")
    }

    @Test("the chain from a context: every enabled policy plugin in manifest order")
    func chainFromContext() async throws {
        let harness = Harness(base: "/")
        harness.mesh.publish(serverMesh)
        let plugin = try harness.plugin(.init())
        try await plugin.provision()
        let chain = harness.context("other").policyChain
        #expect(chain.links.map(\.id) == ["authorization"])
        let decision = await chain.authorize(Fixture.tls)
        #expect(decision.allowed && decision.plugin == "authorization")
    }

    @Test("an open connection is closed when a new policy denies it (real sockets)")
    func reevaluation() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let echo = try await EchoServer.start(group: group)
        defer { Task { await echo.close() } }
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        try directory.write("authz.yaml", policyYAML("allow-all", rules: "[{}]"))
        let harness = Harness(base: directory.path)
        harness.mesh.publish(serverMesh)
        let plugin = try harness.plugin(.init(policies: ["authz.yaml"], pollInterval: .milliseconds(20)))
        try await plugin.provision()

        // A stand-in inbound path: authorize through the chain, then relay to the backend
        // with a record that carries what the chain saw.
        let chain = harness.context("inbound").policyChain
        let registry = harness.connections
        let attributes = Fixture.plaintext
        let dialer = TCPDialer()
        let inbound = try await TCPListener.bind(ListenerOptions(address: SocketAddr("127.0.0.1:0")!), group: group) { channel in
            chain.authorize(attributes, on: channel.eventLoop).flatMap { decision in
                guard decision.allowed else { return channel.close() }
                return dialer.connect(to: echo.address, on: channel.eventLoop).map { upstream in
                    let record = ConnectionRecord(
                        direction: .inbound, source: attributes.sourceAddress, destination: attributes.destinationAddress,
                        sourceWorkload: nil, destinationWorkload: Fixture.server, route: "plaintext",
                        authorization: attributes)
                    Relay.join(downstream: channel, upstream: upstream, record: record, registry: registry)
                }
            }
        }
        defer { Task { await inbound.stopAccepting() } }

        let received = Received()
        let client = try await ClientBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(received) }
            }
            .connect(to: inbound.localAddress.nioAddress()).get()
        try await client.writeAndFlush(ByteBuffer(string: "hello")).get()
        #expect(await eventually { received.text == "hello" })
        #expect(await eventually { registry.count == 1 })

        // A policy change that still allows it leaves it open.
        try directory.write("authz.yaml", policyYAML("allow-8080", rules: "[{to: [{operation: {ports: [\"8080\"]}}]}]"))
        #expect(await reloaded(plugin))
        #expect(await plugin.reevaluate(reason: "test") == 0)
        #expect(client.isActive)

        // One that denies it closes it, both sides.
        try directory.write("authz.yaml", policyYAML("deny-plaintext", action: "DENY", rules: "[{from: [{source: {notPrincipals: [\"*\"]}}]}]"))
        #expect(await reloaded(plugin))
        #expect(await plugin.reevaluate(reason: "test") == 1)
        #expect(await eventually { !client.isActive })
        #expect(await eventually { registry.count == 0 })
        #expect(plugin.status.closedByReevaluation == 1)

        // New connections are refused by the chain.
        let second = try await ClientBootstrap(group: group).connect(to: inbound.localAddress.nioAddress()).get()
        #expect(await eventually { !second.isActive })
    }

    @Test("the run loop re-evaluates when the mesh changes")
    func reevaluationOnMeshChange() async throws {
        let harness = Harness(base: "/")
        harness.mesh.publish(serverMesh)
        let plugin = try harness.plugin(.init())
        try await plugin.provision()
        let record = ConnectionRecord(
            direction: .inbound, source: Fixture.plaintext.sourceAddress, destination: Fixture.plaintext.destinationAddress,
            sourceWorkload: nil, destinationWorkload: Fixture.server, route: "plaintext", authorization: Fixture.plaintext)
        let closed = ClosedFlag()
        record.setCloser { closed.set() }
        harness.connections.register(record)
        let outbound = ConnectionRecord(
            direction: .outbound, source: Fixture.plaintext.sourceAddress, destination: Fixture.plaintext.destinationAddress,
            sourceWorkload: nil, destinationWorkload: Fixture.server, route: "direct")
        outbound.setCloser { Issue.record("outbound connections are not governed by inbound policy") }
        harness.connections.register(outbound)

        let runner = Task { try await plugin.run() }
        defer { runner.cancel() }
        // Re-publishing until the loop has subscribed: the first publish it sees after
        // subscribing triggers a re-evaluation.
        let deny = Fixture.policy("deny-all", .deny, rules: [[]])
        #expect(await eventually {
            harness.mesh.publish(MeshSnapshot(workloads: [Fixture.server], services: [], policies: [deny]))
            return closed.isSet
        })
        #expect(record.failure?.contains("ns/deny-all") == true)
        runner.cancel()
        _ = await runner.result
    }
}

final class ClosedFlag: Sendable {
    private let box = NIOLockedValueBox(false)
    func set() { box.withLockedValue { $0 = true } }
    var isSet: Bool { box.withLockedValue { $0 } }
}

/// Collects what a client channel reads.
final class Received: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    private let box = NIOLockedValueBox("")
    var text: String { box.withLockedValue { $0 } }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        box.withLockedValue { $0 += String(buffer: buffer) }
    }
}
