public import Capture
import Certificates
import Foundation
import HBONE
import NodeProxy
public import Kernel
import LocalConfig
public import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization
import Telemetry
public import AmbitRuntime

/// A small mesh in one process, on loopback: a certificate authority, two node proxies
/// and real sockets, for an end-to-end check that a policy plugin decides real
/// connections.
///
/// ```
/// client workloads ──SOCKS5──▶ node-a ══HBONE (mTLS, HTTP/2 CONNECT)══▶ node-b ──▶ server workload (echo)
///                              capture, hbone            hbone + your policy plugins
/// ```
///
/// Both nodes run Ambit's own plugins, as a deployed node would: `local-config`,
/// `certificates` (the local CA backend, with a CA made for this mesh), `hbone` and
/// `telemetry`; node-a adds `capture` (SOCKS5) and node-b the policy plugins you give
/// it, in your order. The server workload speaks HBONE, so node-a's forwarding decision
/// opens an HBONE tunnel to node-b: mutual TLS with workload certificates from the CA,
/// then an HTTP/2 CONNECT stream. node-b authenticates the client workload's SPIFFE
/// identity from its certificate and asks its policy chain (so
/// ``ConnectionAttributes/authenticatedIdentity`` is what the certificate proves, and
/// the deadline and containment apply) before it dials the echo server.
///
/// Each client workload has its own loopback address and identity
/// `spiffe://cluster.local/ns/default/sa/<name>`. Addresses come from
/// 127.0.20.0–127.0.27.255, a block of 16 per mesh (the server listens on the HBONE port
/// 15008 of its own address), so meshes in parallel tests and processes do not collide.
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
        /// What node-b's policy chain saw: the client identity it authenticated from the
        /// client workload's certificate, the source and destination workloads.
        public var attributes: ConnectionAttributes?

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
    /// here. Use ``write(_:_:)`` to create or change files policies read. The mesh's CA
    /// is in its `ca/` subdirectory.
    public let directory: String

    private let socks: SocketAddr
    private let tasks: [Task<Void, any Error>]
    private let echo: EchoServer

    private static let nextMesh = Atomic<Int>(0)

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
    ///   - clients: names of the client workloads to create (at most 13).
    ///   - files: files to write into ``directory`` before the nodes start (name → text).
    ///   - policyDeadline: node-b's `node.policyDeadline`.
    ///   - logLevel: the nodes' log level (the process's logging backend decides where
    ///     lines go).
    public static func start(
        policies: [PluginType], manifest: String, clients names: [String] = ["client", "other"],
        files: [String: String] = [:], policyDeadline: Duration = PolicyGuard.defaultDeadline,
        logLevel: Logger.Level = .notice
    ) async throws -> InProcessMesh {
        guard names.count <= AddressBlock.maxClients else {
            throw InProcessMeshError("at most \(AddressBlock.maxClients) client workloads, got \(names.count)")
        }
        let block = try await AddressBlock.claim(first: nextMesh.add(1, ordering: .relaxed).oldValue)
        let clients = names.enumerated().map { Client(name: $0.element, address: block.client($0.offset)) }

        let directory = NSTemporaryDirectory() + "ambit-mesh-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var logger = Logger(label: "in-process-mesh")
        logger.logLevel = logLevel
        var tasks: [Task<Void, any Error>] = []
        var nodes: [ProxyNode] = []
        var echo: EchoServer?
        do {
            for (name, text) in files { try text.write(toFile: directory + "/" + name, atomically: true, encoding: .utf8) }
            _ = try CertificateAuthority.write(
                CertificateAuthority.makeRoot(trustDomain: "cluster.local"), to: directory + "/ca", force: true)
            let started = try await EchoServer.start(at: SocketAddr(ip: block.server, port: 0))
            echo = started
            let server = started.address
            try meshYAML(clients: clients, server: block.server).write(
                toFile: directory + "/mesh.yaml", atomically: true, encoding: .utf8)

            // The nodes' own listeners (SOCKS5, admin, readiness, metrics) take free ports on
            // the block's first address: a free port taken on 127.0.0.1 could be one another
            // test just chose as closed or free.
            let nodeIP = block.nodes
            let common = """
                  - id: local-config
                    config: {path: mesh.yaml, watch: false}
                  - id: certificates
                    config: {backend: {local: {caDirectory: ca}}}
                  - id: telemetry
                    config: {address: "\(nodeIP):0"}
                """
            let clientPlan = try ManifestLoader.load(
                yaml: """
                    node: {name: node-a, drainDeadline: 1s}
                    admin: {address: "\(nodeIP):0", readinessAddress: "\(nodeIP):0"}
                    plugins:
                    \(common)
                      - id: capture
                        config: {socks5: {address: "\(nodeIP):0"}}
                      - id: hbone
                        config: {server: {enabled: false}}
                    """,
                file: "node-a.yaml", baseDirectory: directory, registry: PluginRegistry(firstParty))
            let entries = manifest.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }
            let serverPlan = try ManifestLoader.load(
                yaml: """
                    node: {name: node-b, drainDeadline: 1s, policyDeadline: \(ConfigDuration(policyDeadline))}
                    admin: {address: "\(nodeIP):0", readinessAddress: "\(nodeIP):0"}
                    plugins:
                    \(common)
                      - id: hbone
                      - id: \(InboundDecisionLog.id)
                    \(entries.joined(separator: "\n"))
                    """,
                file: "node-b.yaml", baseDirectory: directory,
                registry: PluginRegistry(firstParty + [PluginType(InboundDecisionLog.self)] + policies))
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
                    serverNode.plugin(HBONEPlugin.self)?.tunnelAddresses.contains(where: { $0.ip == block.server }) == true
                {
                    return InProcessMesh(
                        clients: clients, server: server, clientNode: clientNode, serverNode: serverNode,
                        directory: directory, socks: socks, tasks: tasks, echo: started)
                }
                let failed = failures.withLockedValue { $0 }
                if !failed.isEmpty {
                    throw InProcessMeshError("a node of the in-process mesh failed to start: \(failed.joined(separator: "; "))")
                }
                if ContinuousClock.now > deadline {
                    let pending = nodes.flatMap { $0.readiness.pending }
                    throw InProcessMeshError("the in-process mesh did not become ready within 20 s (pending: \(pending))")
                }
                try await Task.sleep(for: .milliseconds(20))
            }
        } catch {
            for node in nodes { node.shutdown() }
            for task in tasks { _ = try? await task.value }
            await echo?.close()
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
        let (socks, server) = (self.socks, self.server)
        let log = serverNode.plugin(InboundDecisionLog.self)
        let before = log?.count ?? 0
        let (reply, bytes, local) = try await Blocking.run { () throws -> (SOCKS5Reply, [UInt8], SocketAddr?) in
            let connection = try SOCKS5Client(
                proxy: socks, source: source.address, request: SOCKS5Request(address: .ip(server.ip), port: server.port))
            defer { connection.close() }
            guard connection.reply == .succeeded else { return (connection.reply, [], connection.localAddress) }
            try connection.send(Array(payload.utf8))
            connection.finishSending()
            return (connection.reply, try connection.receiveToEnd(), connection.localAddress)
        }
        let response = String(decoding: bytes, as: UTF8.self)
        // node-b records its decision before it answers the tunnel, so it is there by
        // now; the wait covers a refusal that came from elsewhere (no record at all).
        var record: ConnectionRecord?
        // node-b sees the tunnel's own connection as the source (the client workload's
        // address, another port): the first record from that address since we started.
        if let local, let log {
            let deadline = ContinuousClock.now.advanced(by: .seconds(1))
            record = log.record(from: local.ip, after: before)
            while record == nil && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
                record = log.record(from: local.ip, after: before)
            }
        }
        return Outcome(
            allowed: reply == .succeeded && response == payload, response: response, reply: reply,
            decision: record?.decision, attributes: record?.authorization)
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

    private static let firstParty = [
        PluginType(LocalConfigPlugin.self), PluginType(CertificatesPlugin.self), PluginType(TelemetryPlugin.self),
        PluginType(CapturePlugin.self), PluginType(HBONEPlugin.self), PluginType(NodeProxyPlugin.self),
    ]

    private static func meshYAML(clients: [Client], server: IPAddress) -> String {
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

/// The loopback addresses of one mesh: a block of 16 in 127.0.20.0–127.0.27.255 (the
/// range the test kit keeps to, clear of other suites): offset 1 for the nodes'
/// listeners, 2 for the server workload, 3… for the clients.
struct AddressBlock {
    static let count = 128
    static let maxClients = 13

    let base: (third: Int, fourth: Int)

    init(index: Int) {
        base = (20 + index / 16, (index % 16) * 16)
    }

    private func address(_ offset: Int) -> IPAddress { IPAddress("127.0.\(base.third).\(base.fourth + offset)")! }

    var nodes: IPAddress { address(1) }
    var server: IPAddress { address(2) }
    func client(_ index: Int) -> IPAddress { address(3 + index) }

    /// A block whose server address has the HBONE port free, starting from one chosen by
    /// the process id and `first` (a per-process counter), so parallel meshes in one
    /// process never share a block and meshes of other processes rarely do.
    static func claim(first: Int) async throws -> AddressBlock {
        let start = Int(getpid() % 1009) * 37 + first
        for attempt in 0..<count {
            let block = AddressBlock(index: (start + attempt) % count)
            if await isFree(SocketAddr(ip: block.server, port: 15008)) { return block }
        }
        throw InProcessMeshError("no free address block in 127.0.20.0–127.0.27.255 (port 15008 taken everywhere)")
    }

    private static func isFree(_ address: SocketAddr) async -> Bool {
        do {
            let probe = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(to: address.nioAddress()).get()
            try? await probe.close()
            return true
        } catch {
            return false
        }
    }
}

/// Test kit: node-b's record of its inbound connections with the policy chain's
/// decision on each, allowed or denied. A telemetry sink like any other: the HBONE
/// server's inbound path reports to it.
final class InboundDecisionLog: Plugin, TelemetrySink {
    struct Config: Decodable, Sendable {}
    static let id = "test-kit-inbound-log"
    static let summary = "test kit only: keeps inbound connections and their policy decisions for InProcessMesh"
    static let provides: Set<PluginRole> = [.telemetry]

    private let records = NIOLockedValueBox<[ConnectionRecord]>([])

    init(config: Config, context: PluginContext) {}

    /// How many records it holds.
    var count: Int { records.withLockedValue { $0.count } }

    /// The first inbound record from `source` (the client workload's address) among those
    /// kept after the first `index`.
    func record(from source: IPAddress, after index: Int) -> ConnectionRecord? {
        records.withLockedValue { $0.dropFirst(index).first { $0.source.ip == source } }
    }

    func connectionOpened(_ connection: ConnectionRecord) { keep(connection) }
    func connectionDenied(_ connection: ConnectionRecord) { keep(connection) }
    func connectionFailed(_ connection: ConnectionRecord) { keep(connection) }

    private func keep(_ connection: ConnectionRecord) {
        guard connection.direction == .inbound else { return }
        records.withLockedValue { $0.append(connection) }
    }
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
    let address: SocketAddr

    private init(channel: any Channel, address: SocketAddr) {
        self.channel = channel
        self.address = address
    }

    static func start(at address: SocketAddr) async throws -> EchoServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Echo()) }
            }
            .bind(to: address.nioAddress()).get()
        guard let bound = SocketAddr(channel.localAddress) else {
            try? await channel.close()
            throw InProcessMeshError("the echo server on \(address) has no local address")
        }
        return EchoServer(channel: channel, address: bound)
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
