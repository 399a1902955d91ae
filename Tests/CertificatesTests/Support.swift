import CAServer
import Certificates
import Foundation
import Kernel
import LocalConfig
import Logging
import Synchronization
import TestSupport
import AmbitRuntime

/// Quiet loggers: the tests check behaviour, not log lines.
func quietLogger(_ label: String = "test") -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = .critical
    return logger
}

let trustDomain = "cluster.local"
let idA = SpiffeID(trustDomain: trustDomain, namespace: "default", serviceAccount: "app-a")
let idB = SpiffeID(trustDomain: trustDomain, namespace: "default", serviceAccount: "app-b")

/// A mesh with `app-a` on node-a and `app-b` on node-b (both HBONE), plus a TCP workload.
let meshYAML = """
    workloads:
    - uid: Kubernetes//v1/Pod/default/a
      name: a
      namespace: default
      serviceAccount: app-a
      workloadIps: ["127.0.0.21"]
      protocol: HBONE
      node: node-a
    - uid: Kubernetes//v1/Pod/default/b
      name: b
      namespace: default
      serviceAccount: app-b
      workloadIps: ["127.0.0.22"]
      protocol: HBONE
      node: node-b
    - uid: Kubernetes//v1/Pod/default/plain
      name: plain
      namespace: default
      serviceAccount: plain
      workloadIps: ["127.0.0.23"]
      protocol: TCP
      node: node-a
    """

/// A temp dir with a fresh CA (`ca/`) and the mesh file (`mesh.yaml`).
struct CAFixture {
    let dir: TemporaryDirectory
    let authority: CertificateAuthority
    var caDirectory: String { dir.path + "/ca" }
    var meshPath: String { dir.path + "/mesh.yaml" }
    var rootPath: String { caDirectory + "/root-cert.pem" }

    init() throws {
        dir = try TemporaryDirectory()
        let root = try CertificateAuthority.makeRoot(trustDomain: trustDomain)
        _ = try CertificateAuthority.write(root, to: dir.path + "/ca", force: false)
        authority = try CertificateAuthority.load(directory: dir.path + "/ca", trustDomain: trustDomain)
        try dir.write("mesh.yaml", meshYAML)
        try dir.write("token-a", "token-a\n")
        try dir.write("token-b", "token-b\n")
        try dir.write("token-unknown", "who-am-i\n")
    }

    func client(token: String = "token-a", port: Int) throws -> IstioCAClient {
        IstioCAClient(
            host: "127.0.0.1", port: port, roots: authority.roots, tokenFile: dir.path + "/" + token,
            requestTimeout: .seconds(5))
    }
}

/// A CA server node (local-config + ca-server) running in process.
final class RunningCA: Sendable {
    let running: RunningNode
    let address: SocketAddr

    var node: ProxyNode { running.node }

    private init(running: RunningNode, address: SocketAddr) {
        self.running = running
        self.address = address
    }

    static func start(_ fixture: CAFixture, port: UInt16 = 0, maxTTL: String = "24h") async throws -> RunningCA {
        let yaml = """
            node: {name: ca, drainDeadline: 100ms}
            admin: {address: null, readinessAddress: null}
            plugins:
              - id: local-config
                config: {path: "\(fixture.meshPath)", watch: false}
              - id: ca-server
                config:
                  listen: "127.0.0.1:\(port)"
                  caDirectory: "\(fixture.caDirectory)"
                  maxTTL: \(maxTTL)
                  tokens: {token-a: node-a, token-b: node-b}
            """
        let running = try await RunningNode.start(
            manifest: yaml, registry: PluginRegistry([PluginType(LocalConfigPlugin.self), PluginType(CAServerPlugin.self)]),
            logger: quietLogger("ca"), directory: fixture.dir
        ) { node in
            node.plugin(CAServerPlugin.self)?.boundAddress != nil
        }
        return RunningCA(running: running, address: running.plugin(CAServerPlugin.self)!.boundAddress!)
    }

    func stop() async {
        await running.stopQuietly()
    }
}

/// Runs a command line tool; returns status and combined output.
func runTool(_ path: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: path)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// `openssl verify` of a leaf against a root, with the rest of the chain as untrusted
/// intermediates; returns openssl's output.
func opensslVerify(chain: [String], roots: [String], in dir: TemporaryDirectory) throws -> (ok: Bool, output: String) {
    let leaf = try dir.write("leaf-\(UUID().uuidString).pem", chain[0])
    let root = try dir.write("root-\(UUID().uuidString).pem", roots.joined())
    var arguments = ["verify", "-CAfile", root]
    if chain.count > 1 {
        arguments += ["-untrusted", try dir.write("chain-\(UUID().uuidString).pem", chain.dropFirst().joined())]
    }
    let result = try runTool("/usr/bin/openssl", arguments + [leaf])
    return (result.status == 0 && result.output.contains(": OK"), result.output)
}

/// Fields of a PEM certificate as `openssl x509 -text` prints them.
func opensslText(_ pem: String, in dir: TemporaryDirectory) throws -> String {
    let file = try dir.write("x509-\(UUID().uuidString).pem", pem)
    return try runTool("/usr/bin/openssl", ["x509", "-in", file, "-noout", "-text"]).output
}

/// A CA client that records CSRs and holds them until its gate opens, then signs locally.
final class GatedCAClient: CertificateAuthorityClient {
    let local: LocalCAClient
    let calls = Mutex<[SpiffeID]>([])
    let open = Mutex(false)
    var name: String { "gated test CA" }

    init(authority: CertificateAuthority) {
        local = LocalCAClient(authority: authority)
    }

    func certificate(for key: WorkloadKey, lifetime: Duration) async throws -> WorkloadCertificate {
        calls.withLock { $0.append(key.identity) }
        while !open.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
        return try await local.certificate(for: key, lifetime: lifetime)
    }
}

/// A clock that records each requested sleep and sleeps 1/100 of it: retry schedules
/// are checked on the recorded values, not on wall time.
struct RecordingClock: Clock {
    typealias Instant = ContinuousClock.Instant
    let base = ContinuousClock()
    let sleeps = SleepLog()

    final class SleepLog: Sendable {
        let values = Mutex<[Duration]>([])
    }

    var now: Instant { base.now }
    var minimumResolution: Duration { base.minimumResolution }

    func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        let requested = base.now.duration(to: deadline)
        sleeps.values.withLock { $0.append(requested) }
        try await base.sleep(for: requested / 100)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) * 1e-18 }
}
