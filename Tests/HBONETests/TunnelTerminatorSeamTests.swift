import AmbitRuntime
import Foundation
import HBONE
import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NodeProxy
import Testing
import TestSupport

/// A second tunnel terminator, as a waypoint will be: it presents its own identity, takes
/// any `ip:port` authority (a service VIP that is no workload's address), and ends each
/// stream itself, here by echoing the bytes behind a prefix. Port 81 is "denied", any port
/// but 80 and 81 "unknown".
final class EchoTerminatorPlugin: Plugin, TunnelTerminator {
    struct Config: Decodable, Sendable {}

    static let id = "test-echo-terminator"
    static let summary = "test-only tunnel terminator: its own identity, echoes each stream"
    static let provides: Set<PluginRole> = [.tunnelTerminator]
    static let identity = SpiffeID(trustDomain: "cluster.local", namespace: "mesh-system", serviceAccount: "echo-terminator")
    static let prefix = "echo-terminator:"

    let connections = NIOLockedValueBox<[AcceptedTunnelConnection]>([])
    let streams = NIOLockedValueBox<[TunnelStreamRequest]>([])

    init(config: Config, context: PluginContext) throws {}

    func serverIdentity(for connection: AcceptedTunnelConnection) -> Result<TunnelServerIdentity, ConnectionRefusal> {
        connections.withLockedValue { $0.append(connection) }
        return .success(TunnelServerIdentity(identity: Self.identity, peerTrustDomain: "cluster.local"))
    }

    func terminate(_ request: TunnelStreamRequest, responder: any TunnelStreamResponder) {
        streams.withLockedValue { $0.append(request) }
        switch request.authority.port {
        case 80:
            let stream = responder.accept()
            do {
                try stream.pipeline.syncOperations.addHandler(Echo())
                stream.setOption(ChannelOptions.autoRead, value: true).whenSuccess { stream.read() }
            } catch {
                stream.close(promise: nil)
            }
        case 81:
            responder.refuse(ConnectionRefusal(.denied, "port 81 is denied here"))
        default:
            responder.refuse(ConnectionRefusal(.unknownDestination, "nothing at \(request.authority)"))
        }
    }

    /// Echoes behind ``prefix`` and half-closes once the peer has.
    private final class Echo: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        var first = true

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            if first {
                first = false
                var prefixed = context.channel.allocator.buffer(string: EchoTerminatorPlugin.prefix)
                prefixed.writeBuffer(&buffer)
                buffer = prefixed
            }
            context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .some(ChannelEvent.inputClosed) = event as? ChannelEvent {
                context.close(mode: .output, promise: nil)
            }
            context.fireUserInboundEventTriggered(event)
        }
    }
}

extension HBONENetworkTests {
    /// The HBONE transport apart from what ends a tunnel: with a second terminator enabled
    /// the same HBONE plugin serves a waypoint-shaped node, and the node proxy's own
    /// terminator is not enabled.
    @Suite("HBONE: a second tunnel terminator", .serialized, .enabled(if: PythonPeer.available))
    struct TunnelTerminatorSeamTests {
        static let registry = PluginRegistry([
            PluginType(TestIdentityPlugin.self), PluginType(HBONEPlugin.self), PluginType(NodeProxyPlugin.self),
            PluginType(EchoTerminatorPlugin.self),
        ])

        static func manifest(terminator: Bool) -> String {
            """
            node: {name: waypoint-node, drainDeadline: 1s}
            admin: {address: "127.0.0.1:0", readinessAddress: "127.0.0.1:0"}
            logging: {level: critical}
            plugins:
              - id: test-identity
              - id: hbone
                config: {server: {address: "127.0.8.41:0"}}
            \(terminator ? "  - id: test-echo-terminator" : "")
            """
        }

        @Test("the node proxy's terminator is enabled by default and replaced by enabling another")
        func defaultAndReplacement() throws {
            let plain = try ManifestLoader.load(yaml: Self.manifest(terminator: false), file: "n.yaml", baseDirectory: "/", registry: Self.registry)
            #expect(plain.entries.map(\.entry.id) == ["test-identity", "hbone", "node-proxy"])
            let replaced = try ManifestLoader.load(yaml: Self.manifest(terminator: true), file: "n.yaml", baseDirectory: "/", registry: Self.registry)
            #expect(replaced.entries.map(\.entry.id) == ["test-identity", "hbone", "test-echo-terminator"])
        }

        @Test("HBONE in a binary without any terminator is a manifest error naming the role")
        func noTerminator() throws {
            let registry = PluginRegistry([PluginType(TestIdentityPlugin.self), PluginType(HBONEPlugin.self)])
            #expect {
                try ManifestLoader.load(yaml: Self.manifest(terminator: false), file: "n.yaml", baseDirectory: "/", registry: registry)
            } throws: { "\($0)".contains("requires role \"tunnel-terminator\"") }
        }

        @Test("Python client → HBONE → the second terminator: its identity, VIP authority, echo; its refusals as 401 and 400")
        func secondTerminator() async throws {
            let plan = try ManifestLoader.load(yaml: Self.manifest(terminator: true), file: "n.yaml", baseDirectory: "/", registry: Self.registry)
            let node = ProxyNode(plan: plan, logger: Logger(label: "seam"), handleSignals: false)
            let running = Task { try await node.run() }
            defer {
                node.shutdown()
                running.cancel()
            }
            #expect(await eventually { node.readiness.isReady && node.plugin(HBONEPlugin.self)?.tunnelAddresses.isEmpty == false })
            #expect(node.plugin(NodeProxyPlugin.self) == nil)
            let terminator = try #require(node.plugin(EchoTerminatorPlugin.self))
            let gateway = try #require(node.plugin(HBONEPlugin.self)?.tunnelAddresses.first)
            let dir = try TemporaryDirectory()
            defer { dir.remove() }
            let files = try HBONEInteropTests.clientFiles(dir, identity: TestMesh.identity("python"))

            let ok = try await HBONEInteropTests.python(
                ["client", "--connect", "\(gateway)", "--authority", "\(TestMesh.serviceVIP):80", "--payload", "hello"] + files)
            #expect(ok["status"] as? Int == 200, "\(ok)")
            #expect(ok["server_san"] as? String == "\(EchoTerminatorPlugin.identity)")
            #expect(ok["body"] as? String == "\(EchoTerminatorPlugin.prefix)hello")
            let seen = try #require(terminator.streams.withLockedValue { $0.first })
            #expect(seen.target == SocketAddr("\(TestMesh.serviceVIP):80"))
            #expect(seen.peerIdentity == TestMesh.identity("python"))
            // The source is the connection's peer; the claimed client is handed over apart.
            #expect(seen.source.ip == IPAddress("127.0.0.1") && seen.source.port != 40000)
            #expect(seen.forwardedFor == SocketAddr("127.0.0.1:40000"))
            #expect(seen.server.workload == nil)
            #expect(terminator.connections.withLockedValue { $0.first?.local } == gateway)

            let denied = try await HBONEInteropTests.python(
                ["client", "--connect", "\(gateway)", "--authority", "\(TestMesh.serviceVIP):81", "--payload", "x"] + files)
            #expect(denied["status"] as? Int == 401, "\(denied)")
            let unknown = try await HBONEInteropTests.python(
                ["client", "--connect", "\(gateway)", "--authority", "\(TestMesh.serviceVIP):82", "--payload", "x"] + files)
            #expect(unknown["status"] as? Int == 400, "\(unknown)")
            // The transport's own framing rule still applies before any terminator sees it.
            let framing = try await HBONEInteropTests.python(
                ["client", "--connect", "\(gateway)", "--authority", "10.0.0.300:80", "--payload", "x"] + files)
            #expect(framing["status"] as? Int == 400, "\(framing)")
            #expect(terminator.streams.withLockedValue { $0.count } == 3)

            let foreign = try HBONEInteropTests.clientFiles(
                dir, identity: SpiffeID(trustDomain: "elsewhere.local", namespace: "default", serviceAccount: "python"))
            let refused = try await HBONEInteropTests.python(
                ["client", "--connect", "\(gateway)", "--authority", "\(TestMesh.serviceVIP):80", "--payload", "x"] + foreign)
            #expect(refused["status"] as? Int == nil, "\(refused)")
            node.shutdown()
            try await running.value
        }
    }
}
