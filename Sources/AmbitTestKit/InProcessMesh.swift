import Capture
import Foundation
import Kernel
import LocalConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization

/// A small mesh in one process, on loopback: two node proxies and real sockets, for an
/// end-to-end check that a policy plugin decides real connections.
///
/// ```
/// client workloads ──SOCKS5──▶ node-a ──tunnel──▶ node-b ──▶ server workload (echo)
///  (127.x.y.2, .3…)          capture, test-tunnel   test-tunnel + your policy plugins
/// ```
///
/// Node `node-a` runs `local-config` and `capture` (SOCKS5) and the tunnel's dialer;
/// node `node-b` runs `local-config`, the tunnel's acceptor and the policy plugins you
/// give it, in your order. The server workload speaks HBONE in the mesh, so node-a's
/// forwarding decision tunnels to node-b, which asks its policy chain before dialing
/// the echo server. Each client workload has its own loopback address and identity
/// `spiffe://cluster.local/ns/default/sa/<name>`.
///
/// The tunnel is ``LoopbackTunnelPlugin`` (identity sent, not proven) until the HBONE
/// plugin and a certificate plugin are first-party; the API here will not change when
/// it switches to them.
public final class InProcessMesh: Sendable {
    /// One client workload on node-a.
    public struct Client: Sendable {
        /// Its name (also its service account).
        public let name: String
        /// Its loopback address.
        public let address: IPAddress
        /// Its identity.
        public var identity: SpiffeID {
            SpiffeID(trustDomain: "cluster.local", namespace: "default", serviceAccount: name)
        }
    }

    /// What happened to one connection.
    public struct Outcome: Sendable, CustomStringConvertible {
        /// True when the connection reached the server and the echo came back.
        public var allowed: Bool
        /// What came back (empty when refused).
        public var response: String
        /// The SOCKS5 reply the client got.
        public var reply: SOCKS5Reply
        /// node-b's policy decision for it, naming the deciding plugin.
        public var decision: AuthorizationDecision?

        public var description: String {
            allowed ? "allowed (\(decision.map { "\($0)" } ?? "no decision"))" : "refused: \(decision.map { "\($0)" } ?? "\(reply)")"
        }
    }

    /// The client workloads, on node-a.
    public let clients: [Client]
    /// The server workload's address (an echo server on node-b).
    public let server: SocketAddr
    /// The client side node.
    public let clientNode: ProxyNode
    /// The server side node, running the policy plugins.
    public let serverNode: ProxyNode
    /// The directory both manifests live in: relative paths in plugin configs resolve
    /// here. Use ``write(_:_:)`` to create or change files policies read.
    public let directory: String

    private let socks: SocketAddr
    private let tasks: [Task<Void, any Error>]
    private let echo: EchoServer

    private static let nextMesh = Atomic<UInt32>(0)

    private init(
        clients: [Client], server: SocketAddr, clientNode: ProxyNode, serverNode: ProxyNode, directory: String,
        socks: SocketAddr, tasks: [Task<Void, any Error>], echo: EchoServer
    ) {
        self.clients = clients
        self.server = server
        self.clientNode = clientNode
        self.serverNode = serverNode
        self.directory = directory
        self.socks = socks
        self.tasks = tasks
        self.echo = echo
    }

    /// Starts the mesh and waits until both nodes are ready.
    ///
    /// - Parameters:
    ///   - policies: the plugin types node-b may use (your policy plugins).
    ///   - manifest: node-b's policy plugin entries, as they would appear under
    ///     `plugins:` in a manifest (a YAML list, not indented), e.g.
    ///     `"- id: time-window\n  config: {days: [mon]}"`.
    ///   - clients: names of the client workloads to create.
    ///   - files: files to write into ``directory`` before the nodes start (name → text).
    ///   - policyDeadline: node-b's `node.policyDeadline`.
    ///   - logLevel: the nodes' log level (the process's logging backend decides where
    ///     lines go).
    public static func start(
        policies: [PluginType], manifest: String, clients names: [String] = ["client", "other"],
        files: [String: String] = [:], policyDeadline: Duration = PolicyGuard.defaultDeadline,
        logLevel: Logger.Level = .notice
    ) async throws -> InProcessMesh {
        // A fresh 127.a.b.0/24 per mesh so meshes in parallel tests never share an address.
        let number = nextMesh.add(1, ordering: .relaxed).oldValue
        let prefix = "127.\(100 + Int(getpid() % 100)).\(1 + Int(number % 250))"
        let clients = names.enumerated().map { Client(name: $0.element, address: IPAddress("\(prefix).\($0.offset + 2)")!) }
        let serverIP = "\(prefix).200"
        // The nodes' own listeners (SOCKS5, admin, readiness) use the mesh's prefix too:
        // a free port taken on 127.0.0.1 could be one another test just chose as closed
        // or free.
        let nodeIP = "\(prefix).1"
        let server = SocketAddr("\(serverIP):18080")!

        let directory = NSTemporaryDirectory() + "ambit-mesh-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (name, text) in files { try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8) }
        try meshYAML(clients: clients, server: serverIP).write(
            toFile: directory + "/mesh.yaml", atomically: true, encoding: .utf8)

        var logger = Logger(label: "in-process-mesh")
        logger.logLevel = logLevel
        let echo = try await EchoServer.start(at: server)
        var tasks: [Task<Void, any Error>] = []
        var nodes: [ProxyNode] = []
        do {
            let clientPlan = try ManifestLoader.load(
                yaml: """
                    node: {name: node-a, drainDeadline: 1s}
                    admin: {address: "\(nodeIP):0", readinessAddress: "\(nodeIP):0"}
                    plugins:
                      - id: local-config
                        config: {path: mesh.yaml, watch: false}
                      - id: capture
                        config: {socks5: {address: "\(nodeIP):0"}}
                      - id: test-tunnel
                    """,
                file: "node-a.yaml", baseDirectory: directory,
                registry: PluginRegistry([
                    PluginType(LocalConfigPlugin.self), PluginType(CapturePlugin.self),
                    PluginType(LoopbackTunnelPlugin.self),
                ]))
            let entries = manifest.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }
            let serverPlan = try ManifestLoader.load(
                yaml: """
                    node: {name: node-b, drainDeadline: 1s, policyDeadline: \(ConfigDuration(policyDeadline))}
                    admin: {address: "\(nodeIP):0", readinessAddress: "\(nodeIP):0"}
                    plugins:
                      - id: local-config
                        config: {path: mesh.yaml, watch: false}
                      - id: test-tunnel
                        config: {accept: ["\(serverIP):15008"]}
                    \(entries.joined(separator: "\n"))
                    """,
                file: "node-b.yaml", baseDirectory: directory,
                registry: PluginRegistry(
                    [PluginType(LocalConfigPlugin.self), PluginType(LoopbackTunnelPlugin.self)] + policies))
            let failures = NIOLockedValueBox<[String]>([])
            for plan in [clientPlan, serverPlan] {
                let node = ProxyNode(plan: plan, logger: logger, handleSignals: false)
                nodes.append(node)
                tasks.append(
                    Task {
                        do {
                            try await node.run()
                        } catch {
                            failures.withLockedValue { $0.append("\(plan.manifest.node.name): \(error)") }
                            throw error
                        }
                    })
            }
            let clientNode = nodes[0]
            let serverNode = nodes[1]
            let deadline = ContinuousClock.now.advanced(by: .seconds(20))
            while true {
                if let socks = clientNode.plugin(CapturePlugin.self)?.captureAddresses.first, clientNode.readiness.isReady,
                    serverNode.readiness.isReady,
                    serverNode.plugin(LoopbackTunnelPlugin.self)?.tunnelAddresses.isEmpty == false
                {
                    return InProcessMesh(
                        clients: clients, server: server, clientNode: clientNode, serverNode: serverNode,
                        directory: directory, socks: socks, tasks: tasks, echo: echo)
                }
                let failed = failures.withLockedValue { $0 }
                if !failed.isEmpty {
                    throw InProcessMeshError("a node of the in-process mesh failed to start: \(failed.joined(separator: "; "))")
                }
                if ContinuousClock.now > deadline {
                    throw InProcessMeshError("the in-process mesh did not become ready within 20 s")
                }
                try await Task.sleep(for: .milliseconds(20))
            }
        } catch {
            for node in nodes { node.shutdown() }
            for task in tasks { _ = try? await task.value }
            await echo.close()
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// Connects from client workload `client` to the server through both nodes, sends
    /// `payload`, half-closes, and reads the echo to the end.
    public func connect(from client: String, payload: String = "ping") async throws -> Outcome {
        guard let source = clients.first(where: { $0.name == client }) else {
            throw InProcessMeshError("no client workload named \(client) (have \(clients.map(\.name)))")
        }
        let tunnel = serverNode.plugin(LoopbackTunnelPlugin.self)
        let before = tunnel?.decisions.count ?? 0
        let (socks, server) = (self.socks, self.server)
        let (reply, bytes) = try await Blocking.run {
            try SOCKS5Client.exchange(
                proxy: socks, source: source.address,
                request: SOCKS5Request(address: .ip(server.ip), port: server.port), payload: Array(payload.utf8))
        }
        let response = String(decoding: bytes, as: UTF8.self)
        let decision = tunnel?.decisions.dropFirst(before).last { $0.attributes.sourceAddress.ip == source.address }?
            .decision
        return Outcome(allowed: reply == .succeeded && response == payload, response: response, reply: reply, decision: decision)
    }

    /// Writes (or replaces) a file in ``directory``; returns its path.
    @discardableResult
    public func write(_ name: String, _ contents: String) throws -> String {
        let path = directory + "/" + name
        try contents.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    /// Drains both nodes, stops the echo server and removes ``directory``.
    public func stop() async {
        clientNode.shutdown()
        serverNode.shutdown()
        for task in tasks { _ = try? await task.value }
        await echo.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private static func meshYAML(clients: [Client], server: String) -> String {
        var lines = ["workloads:"]
        for client in clients {
            lines += [
                "- name: \(client.name)", "  namespace: default", "  serviceAccount: \(client.name)",
                "  workloadIps: [\"\(client.address)\"]", "  node: node-a",
            ]
        }
        lines += [
            "- name: server", "  namespace: default", "  serviceAccount: server", "  workloadIps: [\"\(server)\"]",
            "  node: node-b", "  protocol: HBONE",
        ]
        return lines.joined(separator: "\n") + "\n"
    }
}

/// Why the in-process mesh could not do what was asked.
public struct InProcessMeshError: Error, Sendable, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Blocking socket calls off Swift's cooperative threads: blocking one would starve the
/// in-process nodes' own async work.
enum Blocking {
    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try body() }) }.start()
        }
    }
}

/// A TCP echo server: writes back what it reads and closes after the client's
/// half-close, so a client can read "to the end".
final class EchoServer: Sendable {
    let channel: any Channel

    private init(channel: any Channel) { self.channel = channel }

    static func start(at address: SocketAddr) async throws -> EchoServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Echo()) }
            }
            .bind(to: address.nioAddress()).get()
        return EchoServer(channel: channel)
    }

    func close() async {
        try? await channel.close()
    }

    private final class Echo: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.writeAndFlush(data, promise: nil)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if event as? ChannelEvent == .inputClosed {
                context.close(promise: nil)
            } else {
                context.fireUserInboundEventTriggered(event)
            }
        }
    }
}
