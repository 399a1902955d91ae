import Capture
import Crypto
import Foundation
import HBONE
import NodeProxy
import Kernel
import LocalConfig
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import Telemetry
import TestSupport
import AmbitRuntime

/// Addresses of the test mesh. 127.0.8.x keeps clear of the other suites' 127.0.0.x.
enum TestMesh {
    static let clientA = "127.0.8.1"  // node-a, HBONE
    static let serverA = "127.0.8.2"  // node-a, HBONE
    static let serverB = "127.0.8.11"  // node-b, HBONE
    static let plainB = "127.0.8.12"  // node-b, plain TCP (not in mesh)
    static let waypoint = "127.0.8.21"  // a waypoint played by the Python peer
    static let viaWaypoint = "127.0.8.22"  // node-b, HBONE, reached through the waypoint
    static let outside = "127.0.8.31"  // not in the mesh at all
    static let serviceVIP = "127.0.9.1"
    static let waypointServiceVIP = "127.0.9.2"

    /// The mesh both nodes load. `ports` are the backends' ports by workload IP.
    static func yaml(ports: [String: UInt16]) -> String {
        func port(_ ip: String) -> UInt16 { ports[ip] ?? 9 }
        return """
            workloads:
            - uid: c//v1/Pod/default/client-a
              name: client-a
              namespace: default
              serviceAccount: client-a
              workloadIps: ["\(clientA)"]
              protocol: HBONE
              node: node-a
            - uid: c//v1/Pod/default/server-a
              name: server-a
              namespace: default
              serviceAccount: server-a
              workloadIps: ["\(serverA)"]
              protocol: HBONE
              node: node-a
            - uid: c//v1/Pod/default/server-b
              name: server-b
              namespace: default
              serviceAccount: server-b
              workloadIps: ["\(serverB)"]
              protocol: HBONE
              node: node-b
              services: {"default/echo.default.svc.cluster.local": {80: \(port(serverB))}}
            - uid: c//v1/Pod/default/plain-b
              name: plain-b
              namespace: default
              serviceAccount: plain-b
              workloadIps: ["\(plainB)"]
              protocol: TCP
              node: node-b
            - uid: c//v1/Pod/default/waypoint
              name: waypoint
              namespace: default
              serviceAccount: waypoint
              workloadIps: ["\(waypoint)"]
              protocol: HBONE
              node: node-w
            - uid: c//v1/Pod/default/behind-waypoint
              name: behind-waypoint
              namespace: default
              serviceAccount: behind-waypoint
              workloadIps: ["\(viaWaypoint)"]
              protocol: HBONE
              node: node-b
              waypoint: {destination: "/\(waypoint)", hboneMtlsPort: 15008}
            services:
            - name: echo
              namespace: default
              hostname: echo.default.svc.cluster.local
              vips: ["/\(serviceVIP)"]
              ports: {80: \(port(serverB))}
              subjectAltNames: ["spiffe://cluster.local/ns/default/sa/echo-san"]
            - name: waypointed
              namespace: default
              hostname: waypointed.default.svc.cluster.local
              vips: ["/\(waypointServiceVIP)"]
              ports: {80: 8080}
              waypoint: {destination: "/\(waypoint)", hboneMtlsPort: 15008}
            """
    }

    static func identity(_ serviceAccount: String) -> SpiffeID {
        SpiffeID(trustDomain: "cluster.local", namespace: "default", serviceAccount: serviceAccount)
    }
}

/// One in-process node proxy: local-config + test identity/policy/telemetry + capture + hbone.
final class MeshNode: Sendable {
    let running: RunningNode
    let socks: SocketAddr

    var node: ProxyNode { running.node }
    var dir: TemporaryDirectory { running.directory }

    static let registry = PluginRegistry([
        PluginType(LocalConfigPlugin.self), PluginType(CapturePlugin.self), PluginType(HBONEPlugin.self), PluginType(NodeProxyPlugin.self),
        PluginType(TestIdentityPlugin.self), PluginType(TestPolicyPlugin.self), PluginType(TestTelemetryPlugin.self),
        PluginType(TelemetryPlugin.self),
    ])

    init(
        name: String, mesh: String, ca: String = "mesh", denyPorts: [UInt16] = [], hbone: String = "{}",
        captureExtra: String = "", waitForListeners: [String] = [], network: String = ""
    ) async throws {
        running = try await RunningNode.start(
            manifest: """
                node: {name: \(name), drainDeadline: 1s\(network.isEmpty ? "" : ", network: \(network)")}
                admin: {address: "127.0.0.1:0", readinessAddress: "127.0.0.1:0"}
                logging: {level: \(ProcessInfo.processInfo.environment["AMBIT_TEST_LOG"] ?? "critical")}
                plugins:
                  - id: local-config
                    config: {path: mesh.yaml, pollInterval: 50ms}
                  - id: test-identity
                    config: {ca: \(ca)}
                  - id: test-policy
                    config: {denyPorts: [\(denyPorts.map(String.init).joined(separator: ","))]}
                  - id: test-telemetry
                  - id: telemetry
                    config: {address: "127.0.0.1:0"}
                  - id: capture
                    config: {socks5: {address: "127.0.0.1:0"}\(captureExtra)}
                  - id: hbone
                    config: \(hbone)
                """,
            files: ["mesh.yaml": mesh], registry: Self.registry, logger: Logger(label: "hbone-test-\(name)"),
            levelFromManifest: true, timeout: .seconds(20)
        ) { node in
            guard node.readiness.isReady, let hbone = node.plugin(HBONEPlugin.self),
                node.plugin(CapturePlugin.self)?.captureAddresses.isEmpty == false
            else { return false }
            let bound = Set(hbone.tunnelAddresses.map { "\($0.ip)" })
            return waitForListeners.allSatisfy { bound.contains($0) }
        }
        socks = running.plugin(CapturePlugin.self)!.captureAddresses.first!
    }

    var hbone: HBONEPlugin { node.plugin(HBONEPlugin.self)! }
    var telemetry: TestTelemetryPlugin { node.plugin(TestTelemetryPlugin.self)! }
    var metrics: TelemetryPlugin { node.plugin(TelemetryPlugin.self)! }

    /// The value of the Istio series `metric` whose labels include every pair in `labels`.
    func metricValue(_ metric: String, _ labels: [String: String]) -> UInt64? {
        for line in metrics.sampleLines(of: metric) {
            guard labels.allSatisfy({ line.contains("\($0.key)=\"\($0.value)\"") }),
                let value = line.split(separator: " ").last.flatMap({ Double($0) })
            else { continue }
            return UInt64(value)
        }
        return nil
    }
    var policy: TestPolicyPlugin { node.plugin(TestPolicyPlugin.self)! }
    var capture: CapturePlugin { node.plugin(CapturePlugin.self)! }

    func stop() async throws {
        try await running.stop()
    }

    /// One blocking SOCKS5 exchange from `source`: send, half-close, read to the end.
    func exchange(to ip: String, _ port: UInt16, from source: String = TestMesh.clientA, payload: [UInt8])
        async throws -> (reply: SOCKS5Reply, response: [UInt8])
    {
        let socks = self.socks
        return try await NIOThreadPool.singleton.runIfActive {
            try SOCKS5Client.exchange(
                proxy: socks, source: IPAddress(source), request: SOCKS5Request(address: .ip(IPAddress(ip)!), port: port),
                payload: payload)
        }
    }
}

/// A backend that hashes what it receives and, after the client half-closes, answers with
/// `<byte count> <sha256 hex>` and closes; or, with `sourceBytes`, sends that many
/// deterministic bytes and closes without reading; or, with `echo`, echoes every byte
/// (reading only while it can write) and half-closes once it has echoed everything.
final class HashServer: Sendable {
    let address: SocketAddr
    private let channel: any Channel
    let accepted = NIOLockedValueBox(0)

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        var hasher = SHA256()
        var count = 0
        let sourceBytes: Int?
        let echo: Bool
        var sent = 0
        var readPending = false
        init(sourceBytes: Int?, echo: Bool) {
            self.sourceBytes = sourceBytes
            self.echo = echo
        }

        func channelActive(context: ChannelHandlerContext) {
            context.fireChannelActive()
            if sourceBytes != nil { pump(context) }
            if echo { context.read() }
        }

        func channelWritabilityChanged(context: ChannelHandlerContext) {
            if sourceBytes != nil { pump(context) }
            if echo && readPending && context.channel.isWritable {
                readPending = false
                context.read()
            }
            context.fireChannelWritabilityChanged()
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            guard echo else { return }
            context.flush()
            if context.channel.isWritable { context.read() } else { readPending = true }
        }

        private func pump(_ context: ChannelHandlerContext) {
            guard let total = sourceBytes, sent < total else { return }
            while context.channel.isWritable && sent < total {
                let size = min(64 * 1024, total - sent)
                var buffer = context.channel.allocator.buffer(capacity: size)
                buffer.writeBytes(HashServer.pattern(offset: sent, count: size))
                sent += size
                context.write(wrapOutboundOut(buffer), promise: nil)
            }
            context.flush()
            if sent >= total {
                let done = context.eventLoop.makePromise(of: Void.self)
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: done)
                done.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            }
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            if echo {
                context.write(data, promise: nil)
                return
            }
            buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) }
            count += buffer.readableBytes
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event, echo {
                // Everything echoed first: a full close would drop what is still queued.
                context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0))).assumeIsolated()
                    .whenComplete { _ in
                        context.close(mode: .output).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
                    }
                return
            }
            if case ChannelEvent.inputClosed = event, sourceBytes == nil {
                let digest = hasher.finalize().map { String(format: "%02x", $0) }.joined()
                let reply = "\(count) \(digest)"
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: reply))).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }

    /// Deterministic test bytes: byte i is a mix of i's bits.
    static func pattern(offset: Int, count: Int) -> [UInt8] {
        (offset..<(offset + count)).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) }
    }

    init(
        ip: String, sourceBytes: Int? = nil, echo: Bool = false,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws {
        let accepted = self.accepted
        channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                accepted.withLockedValue { $0 += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    if echo { try channel.syncOptions?.setOption(.autoRead, value: false) }
                    try channel.pipeline.syncOperations.addHandler(Handler(sourceBytes: sourceBytes, echo: echo))
                }
            }
            .bind(host: ip, port: 0).get()
        address = SocketAddr(channel.localAddress)!
    }

    func close() async {
        try? await channel.close()
    }
}

/// Runs the Python HBONE peer (Tests/Interop/hbone_peer.py) and returns its JSON output.
enum PythonPeer {
    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/hbone_peer.py").path
    }

    /// Whether python3 with h2 ≥ 4.4 is available.
    static let available: Bool = {
        let result = try? run(["check"], timeout: 20)
        return result?["ok"] as? Bool == true
    }()

    /// Runs `hbone_peer.py <arguments>` to completion; parses its last stdout line as JSON.
    static func run(_ arguments: [String], timeout: TimeInterval = 60) throws -> PeerOutput {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script] + arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let deadline = Date() + timeout
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if process.isRunning {
            stop(process)
            throw TestFailure("python peer \(arguments.first ?? "") timed out")
        }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        guard let line = text.split(separator: "\n").last,
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        else {
            throw TestFailure("python peer printed no JSON; stdout: \(text) stderr: \(errors)")
        }
        return PeerOutput(values: object)
    }

    /// Stops a peer started with ``start(_:)`` and waits until it is gone, so the address it
    /// listened on is free for the next test (SIGKILL: the test process may have left
    /// SIGTERM ignored for its children).
    static func stop(_ process: Process) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Starts the peer as the test mesh's waypoint: listening on `TestMesh.waypoint:15008`
    /// with the waypoint's certificate from the mesh CA, recording each request as a JSON
    /// line to the returned path in `dir`, with `extra` server arguments. Returns once it
    /// printed its first line (`listening` when it accepts).
    static func startWaypoint(
        in dir: TemporaryDirectory, extra: [String] = []
    ) throws -> (process: Process, record: String, firstLine: String) {
        let files = try TestCARegistry.mesh.writeFiles(for: TestMesh.identity("waypoint"), prefix: "waypoint", in: dir.path)
        let record = dir.path + "/requests.jsonl"
        let server = try start(
            [
                "server", "--listen", "\(TestMesh.waypoint):15008", "--cert", files.cert, "--key", files.key, "--ca",
                files.ca, "--record", record, "--max-seconds", "60",
            ] + extra)
        return (server.process, record, firstLine(of: server.output))
    }

    /// Blocks until the peer printed its first line (or closed its output) and returns it.
    static func firstLine(of pipe: Pipe) -> String {
        var data = Data()
        while true {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            data.append(chunk)
            if chunk.contains(UInt8(ascii: "\n")) { break }
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// Starts a long-running peer (the server); returns the process. Its stdout's first
    /// line is `{"listening": ...}` once it accepts.
    static func start(_ arguments: [String]) throws -> (process: Process, output: Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script] + arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.standardError
        try process.run()
        return (process, out)
    }
}

/// The Python peer's JSON answer. JSON values are immutable once parsed.
struct PeerOutput: @unchecked Sendable, CustomStringConvertible {
    let values: [String: Any]
    subscript(key: String) -> Any? { values[key] }
    var description: String { "\(values)" }
}

/// Every suite that starts node proxies: they listen on the same loopback addresses
/// (127.0.8.x:15008), so they run one test at a time, suites included.
@Suite("HBONE network tests", .serialized)
struct HBONENetworkTests {}
