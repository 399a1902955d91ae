import AmbitRuntime
import Authorization
import Capture
import Certificates
import Foundation
import IstioXDSAPI
import IstiodStandIn
import Kernel
import Logging
import NIOPosix
import SwiftProtobuf
import Telemetry
import TestSupport
import Testing
import XDS

let addressURL = WorkloadAPI.addressTypeURL
let authorizationURL = WorkloadAPI.authorizationTypeURL
let istiodName = "istiod.istio-system.svc"

/// A CA, an istiod stand-in serving a certificate it issued for `istiod.istio-system.svc`
/// on 127.0.12.1, and the files a node needs (root, token) in a temporary directory.
final class XDSFixture: Sendable {
    let dir: TemporaryDirectory
    let istiod: IstiodStandIn
    /// The root istiod's certificate chains to.
    let rootPEM: String
    /// A root it does not chain to.
    let otherRootPEM: String

    init(host: String = "127.0.12.1") throws {
        dir = try TemporaryDirectory()
        let root = try CertificateAuthority.makeRoot(trustDomain: "cluster.local")
        _ = try CertificateAuthority.write(root, to: dir.path + "/ca", force: false)
        let authority = try CertificateAuthority.load(directory: dir.path + "/ca", trustDomain: "cluster.local")
        let serving = try authority.issueServingCertificate(names: [istiodName], lifetime: .seconds(3600))
        rootPEM = try String(contentsOfFile: dir.path + "/ca/root-cert.pem", encoding: .utf8)
        let other = try CertificateAuthority.makeRoot(trustDomain: "cluster.local")
        _ = try CertificateAuthority.write(other, to: dir.path + "/other-ca", force: false)
        otherRootPEM = try String(contentsOfFile: dir.path + "/other-ca/root-cert.pem", encoding: .utf8)
        try dir.write("root-cert.pem", rootPEM)
        try dir.write("other-root.pem", otherRootPEM)
        try dir.write("token", "token-1\n")
        istiod = IstiodStandIn(
            host: host, certificateChainPEM: serving.chainPEM, privateKeyPEM: serving.keyPEM, tokens: ["token-1"])
    }

    /// Starts a node (xds, authorization, telemetry, capture) against the stand-in.
    func node(
        root: String = "root-cert.pem", waitForReady: Bool = true, port: Int? = nil, inbound: SocketAddr? = nil
    ) async throws -> RunningNode {
        let port = port ?? istiod.port ?? 1
        let inboundConfig =
            inbound.map { ", inbound: {enabled: true, address: \"127.0.12.1:0\", destination: \"\($0)\"}" } ?? ""
        return try await RunningNode.start(
            manifest: """
                node: {name: node-a, drainDeadline: 1s}
                admin: {address: "127.0.0.1:0", readinessAddress: "127.0.12.1:0"}
                plugins:
                  - id: xds
                    config:
                      address: "127.0.12.1:\(port)"
                      rootCertificate: \(root)
                      tokenFile: token
                      clusterId: cluster1
                      serverName: \(istiodName)
                  - id: authorization
                  - id: telemetry
                    config: {address: "127.0.12.1:0"}
                  - id: capture
                    config: {socks5: {address: "127.0.12.1:0"}\(inboundConfig)}
                """,
            registry: PluginRegistry([
                PluginType(XDSPlugin.self), PluginType(AuthorizationPlugin.self), PluginType(TelemetryPlugin.self),
                PluginType(CapturePlugin.self),
            ]),
            logger: quietLogger(), directory: dir, timeout: .seconds(20)
        ) { node in
            waitForReady
                ? node.readiness.isReady && node.plugin(CapturePlugin.self)?.captureAddresses.isEmpty == false
                : node.plugin(XDSPlugin.self) != nil
                    && node.plugin(CapturePlugin.self)?.captureAddresses.isEmpty == false
        }
    }

    func remove() { dir.remove() }
}

/// Quiet loggers: the tests check behaviour. `XDS_TEST_LOG=debug` shows the nodes' logs.
func quietLogger() -> Logger {
    var logger = Logger(label: "xds-test")
    logger.logLevel =
        ProcessInfo.processInfo.environment["XDS_TEST_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .critical
    return logger
}

func address(workload: Istio_Workload_Workload) -> Google_Protobuf_Any {
    var address = Istio_Workload_Address()
    address.workload = workload
    return IstiodStandIn.body(address)
}

func address(service: Istio_Workload_Service) -> Google_Protobuf_Any {
    var address = Istio_Workload_Address()
    address.service = service
    return IstiodStandIn.body(address)
}

func serviceMessage(vip: String, port: UInt32, target: UInt32) -> Istio_Workload_Service {
    var s = Istio_Workload_Service()
    s.name = "echo"
    s.namespace = "default"
    s.hostname = "echo.default.svc.cluster.local"
    s.addresses = [networkAddress(vip)]
    s.ports = portList([(port, target)])
    return s
}

/// An ALLOW policy for the default namespace that admits only `principal`.
func allowOnly(_ principal: String) -> Google_Protobuf_Any {
    var policy = Istio_Security_Authorization()
    policy.name = "allow-only"
    policy.namespace = "default"
    policy.scope = .namespace
    policy.action = .allow
    var match = Istio_Security_Match()
    match.principals = [stringMatch("exact", principal)]
    var clause = Istio_Security_Clause()
    clause.matches = [match]
    var rule = Istio_Security_Rule()
    rule.clauses = [clause]
    policy.rules = [rule]
    return IstiodStandIn.body(policy)
}

let clientUID = "cluster1//v1/Pod/default/client"
let echoUID = "cluster1//v1/Pod/default/echo"
let echoService = "default/echo.default.svc.cluster.local"

/// The stand-in's mesh: a client on node-a at 127.0.12.2, an echo backend at `echo`, and
/// the echo service on VIP 127.0.12.10:80.
func seed(_ istiod: IstiodStandIn, echo: SocketAddr) {
    istiod.set(
        addressURL,
        upserting: [
            (clientUID, "1", address(workload: workloadMessage(uid: clientUID, ip: "127.0.12.2"))),
            (
                echoUID, "1",
                address(
                    workload: workloadMessage(
                        uid: echoUID, ip: "\(echo.ip)", node: "node-b",
                        services: [echoService: [(80, UInt32(echo.port))]]))
            ),
            (echoService, "1", address(service: serviceMessage(vip: "127.0.12.10", port: 80, target: 0))),
        ])
    istiod.set(authorizationURL, upserting: [])
}

/// One SOCKS5 exchange from the client workload's address.
func exchange(_ node: RunningNode, to destination: String, payload: String = "ping") async throws -> (
    SOCKS5Reply, String
) {
    let socks = node.plugin(CapturePlugin.self)!.captureAddresses.first!
    let target = SocketAddr(destination)!
    let (reply, response) = try await offload {
        try SOCKS5Client.exchange(
            proxy: socks, source: IPAddress("127.0.12.2"),
            request: SOCKS5Request(address: .ip(target.ip), port: target.port),
            payload: Array(payload.utf8))
    }
    return (reply, String(decoding: response, as: UTF8.self))
}

/// A plaintext inbound connection to the echo workload, as the authorization plugin sees it.
func decision(_ node: RunningNode, identity: SpiffeID?) async -> AuthorizationDecision.Verdict? {
    guard let echo = node.node.mesh.snapshot.workloads[echoUID] else { return nil }
    let attributes = ConnectionAttributes(
        sourceIdentity: identity, sourceAddress: SocketAddr("127.0.12.2:40000")!, sourceWorkload: nil,
        destinationAddress: SocketAddr(ip: echo.workloadIPs[0], port: 8080), destinationWorkload: echo,
        isMutualTLS: identity != nil)
    return await node.plugin(AuthorizationPlugin.self)?.authorize(attributes).verdict
}

/// The stand-in's requests that are ACKs or NACKs of a response.
func replies(_ istiod: IstiodStandIn) -> [Envoy_Service_Discovery_V3_DeltaDiscoveryRequest] {
    istiod.requests.filter { !$0.initial }.map(\.request)
}

func withXDS(_ body: (XDSFixture, EchoServer) async throws -> Void) async throws {
    let fixture = try XDSFixture()
    let echo = try await EchoServer.start("127.0.12.3:0", name: "echo", group: MultiThreadedEventLoopGroup.singleton)
    defer { fixture.remove() }
    do {
        seed(fixture.istiod, echo: echo.address)
        try await body(fixture, echo)
    } catch {
        await fixture.istiod.stop()
        await echo.close()
        throw error
    }
    await fixture.istiod.stop()
    await echo.close()
}

@Suite("xds: a node under an istiod stand-in (real gRPC, real TLS)", .serialized)
struct XDSIntegrationTests {
    @Test("initial sync: ztunnel's node id and headers, both types ACKed, then traffic routed by the synced mesh")
    func initialSync() async throws {
        try await withXDS { fixture, echo in
            try await fixture.istiod.start()
            let node = try await fixture.node()
            let initial = fixture.istiod.requests.filter(\.initial).map(\.request)
            #expect(initial.map(\.typeURL) == [addressURL, authorizationURL])
            #expect(
                initial.allSatisfy { $0.node.id.hasPrefix("ztunnel~") && $0.node.id.hasSuffix(".svc.cluster.local") })
            #expect(initial.first?.node.metadata.fields["NODE_NAME"]?.stringValue.isEmpty == false)
            #expect(initial.allSatisfy { $0.resourceNamesSubscribe.isEmpty && $0.initialResourceVersions.isEmpty })
            #expect(fixture.istiod.streams.first?.authorization == "Bearer token-1")
            #expect(fixture.istiod.streams.first?.clusterID == "cluster1")
            #expect(await eventually(timeout: .seconds(5)) { replies(fixture.istiod).count >= 2 })
            #expect(replies(fixture.istiod).allSatisfy { !$0.responseNonce.isEmpty && !$0.hasErrorDetail })

            let mesh = node.node.mesh.snapshot
            #expect(Set(mesh.workloads.keys) == [clientUID, echoUID])
            #expect(mesh.origin(of: Workload.self, key: echoUID) == "xds")
            // The service VIP goes to the endpoint's port, through the node's forwarding decision.
            let (reply, response) = try await exchange(node, to: "127.0.12.10:80", payload: "hello")
            #expect(reply == .succeeded)
            #expect(response == "echo: hello")

            let status = try #require(node.plugin(XDSPlugin.self)?.status)
            #expect(status.state == .connected)
            #expect(status.synced)
            #expect(status.types[addressURL]?.versions == [clientUID: "1", echoUID: "1", echoService: "1"])
            #expect(status.types[addressURL]?.lastNonce?.isEmpty == false)
            let telemetry = try #require(node.plugin(TelemetryPlugin.self))
            #expect(
                telemetry.sampleLines(of: "istio_xds_message_total").contains {
                    $0.contains("url=\"\(addressURL)\"") && $0.hasSuffix(" 1")
                })
            #expect(
                telemetry.sampleLines(of: "istio_xds_message_bytes_total").contains {
                    $0.contains("url=\"\(authorizationURL)\"")
                })
            // /config_dump carries the plugin's section.
            let admin = try #require(node.node.adminAddress)
            let dump = try await httpRequest("GET", admin, "/config_dump")
            let json = try #require(try JSONSerialization.jsonObject(with: Data(dump.body.utf8)) as? [String: Any])
            let xds = try #require(json["xds"] as? [String: Any])
            #expect(xds["state"] as? String == "connected")
            #expect(xds["address"] as? String == "127.0.12.1:\(fixture.istiod.port!)")
            #expect((xds["types"] as? [String: Any])?[addressURL] != nil)
            try await node.stop()
        }
    }

    @Test(
        "readiness waits for the first response of each type; an unreachable istiod at start leaves the node running, not ready"
    )
    func readinessGating() async throws {
        try await withXDS { fixture, _ in
            // istiod not listening yet: the node starts, retries, and says what it waits for.
            let port = Int(freePort())
            let node = try await fixture.node(waitForReady: false, port: port)
            let xds = try #require(node.plugin(XDSPlugin.self))
            #expect(await eventually(timeout: .seconds(5)) { xds.status.attempts >= 3 })
            #expect(xds.status.state == .retrying)
            #expect(node.node.readiness.pending.contains("xds istio.workload.Address"))
            #expect(node.node.readiness.pending.contains("xds istio.security.Authorization"))
            let readiness = try #require(node.node.readinessAddress)
            let notReady = try await httpRequest("GET", readiness, "/healthz/ready")
            #expect(notReady.status == 500)
            #expect(notReady.body.contains("xds istio.workload.Address"))

            // istiod comes up but holds back its policies: Address alone does not make the node ready.
            fixture.istiod.hold(authorizationURL)
            try await startStandIn(fixture.istiod, port: port)
            #expect(await eventually(timeout: .seconds(20)) { xds.status.types[addressURL]?.synced == true })
            try await Task.sleep(for: .milliseconds(200))
            #expect(node.node.readiness.pending == ["xds istio.security.Authorization"])
            #expect(try await httpRequest("GET", readiness, "/healthz/ready").status == 500)
            fixture.istiod.release(authorizationURL)
            #expect(await eventually(timeout: .seconds(5)) { node.node.readiness.isReady })
            #expect(try await httpRequest("GET", readiness, "/healthz/ready").status == 200)
            try await node.stop()
        }
    }

    @Test("a workload and a policy are updated and removed by pushes")
    func updatesAndRemovals() async throws {
        try await withXDS { fixture, echo in
            try await fixture.istiod.start()
            let node = try await fixture.node()
            #expect(await eventually(timeout: .seconds(5)) { await decision(node, identity: nil) == .allow })

            // A policy arrives: plaintext is no longer allowed to the echo workload.
            fixture.istiod.push(
                authorizationURL,
                upserting: [("default/allow-only", "1", allowOnly("cluster.local/ns/default/sa/admin"))])
            #expect(
                await eventually(timeout: .seconds(5)) { node.node.mesh.snapshot.policies["default/allow-only"] != nil }
            )
            #expect(await eventually(timeout: .seconds(5)) { await decision(node, identity: nil) == .deny })
            let admin = SpiffeID(trustDomain: "cluster.local", namespace: "default", serviceAccount: "admin")
            #expect(await eventually(timeout: .seconds(5)) { await decision(node, identity: admin) == .allow })
            // Updated: now it admits someone else.
            fixture.istiod.push(
                authorizationURL,
                upserting: [("default/allow-only", "2", allowOnly("cluster.local/ns/default/sa/other"))])
            #expect(
                await eventually(timeout: .seconds(5)) {
                    node.node.mesh.snapshot.policies["default/allow-only"]?.rules.first?.first?.first?.principals == [
                        .exact("cluster.local/ns/default/sa/other")
                    ]
                })
            #expect(await eventually(timeout: .seconds(5)) { await decision(node, identity: admin) == .deny })
            // Removed: allowed again.
            fixture.istiod.push(authorizationURL, removing: ["default/allow-only"])
            #expect(await eventually(timeout: .seconds(5)) { node.node.mesh.snapshot.policies.isEmpty })
            #expect(await eventually(timeout: .seconds(5)) { await decision(node, identity: nil) == .allow })

            // The echo workload moves to another port: traffic follows.
            let second = try await EchoServer.start(
                "127.0.12.4:0", name: "echo-2", group: MultiThreadedEventLoopGroup.singleton)
            fixture.istiod.push(
                addressURL,
                upserting: [
                    (
                        echoUID, "2",
                        address(
                            workload: workloadMessage(
                                uid: echoUID, ip: "127.0.12.4", node: "node-b",
                                services: [echoService: [(80, UInt32(second.address.port))]]))
                    )
                ])
            #expect(
                await eventually(timeout: .seconds(5)) {
                    node.node.mesh.snapshot.workloads[echoUID]?.workloadIPs == [IPAddress("127.0.12.4")!]
                })
            #expect(try await exchange(node, to: "127.0.12.10:80", payload: "a").1 == "echo-2: a")
            // Removed: the service has no endpoint and the connection is refused.
            fixture.istiod.push(addressURL, removing: [echoUID])
            #expect(await eventually(timeout: .seconds(5)) { node.node.mesh.snapshot.workloads[echoUID] == nil })
            let (reply, _) = try await exchange(node, to: "127.0.12.10:80")
            #expect(reply != .succeeded)
            #expect(replies(fixture.istiod).allSatisfy { !$0.hasErrorDetail })
            await second.close()
            _ = echo
            try await node.stop()
        }
    }

    @Test("a push with one bad resource is NACKed naming it; the rest is applied and the node serves on")
    func partialNACK() async throws {
        try await withXDS { fixture, _ in
            try await fixture.istiod.start()
            let node = try await fixture.node()
            var bad = workloadMessage(uid: "cluster1//v1/Pod/default/bad", ip: "127.0.12.5")
            bad.addresses = [Data([127, 0, 12, 5, 1])]
            let nonces = fixture.istiod.push(
                addressURL,
                upserting: [
                    (
                        "cluster1//v1/Pod/default/good", "1",
                        address(workload: workloadMessage(uid: "cluster1//v1/Pod/default/good", ip: "127.0.12.6"))
                    ),
                    ("cluster1//v1/Pod/default/bad", "1", address(workload: bad)),
                ])
            #expect(nonces.count == 1)
            #expect(
                await eventually(timeout: .seconds(5)) {
                    replies(fixture.istiod).contains { $0.responseNonce == nonces.first }
                })
            let nack = try #require(replies(fixture.istiod).first { $0.responseNonce == nonces.first })
            #expect(nack.typeURL == addressURL)
            #expect(
                nack.errorDetail.message
                    == "cluster1//v1/Pod/default/bad: workload.addresses[0]: an IP address is 4 or 16 bytes, got 5")
            let mesh = node.node.mesh.snapshot
            #expect(mesh.workloads["cluster1//v1/Pod/default/good"] != nil)
            #expect(mesh.workloads["cluster1//v1/Pod/default/bad"] == nil)
            #expect(node.node.readiness.isReady)
            let status = try #require(node.plugin(XDSPlugin.self)?.status)
            #expect(
                status.types[addressURL]?.rejected["cluster1//v1/Pod/default/bad"]?.field == "workload.addresses[0]")
            #expect(try await exchange(node, to: "127.0.12.10:80", payload: "still").1 == "echo: still")
            try await node.stop()
        }
    }

    @Test("istiod restarts: the node reconnects with its versions, gets only what changed and applies removals")
    func serverRestart() async throws {
        try await withXDS { fixture, _ in
            let port = try await fixture.istiod.start()
            let node = try await fixture.node()
            let xds = try #require(node.plugin(XDSPlugin.self))
            let streamsBefore = fixture.istiod.streams.count
            await fixture.istiod.stop()
            #expect(await eventually(timeout: .seconds(5)) { xds.status.state == .retrying })
            // While it is down the mesh changes: the client moves, the echo service goes.
            fixture.istiod.set(
                addressURL,
                upserting: [(clientUID, "2", address(workload: workloadMessage(uid: clientUID, ip: "127.0.12.7")))],
                removing: [echoService])
            #expect(node.node.mesh.snapshot.services.count == 1)  // the last good state stays meanwhile
            try await startStandIn(fixture.istiod, port: port)
            #expect(await eventually(timeout: .seconds(20)) { node.node.mesh.snapshot.services.isEmpty })
            #expect(node.node.mesh.snapshot.workloads[clientUID]?.workloadIPs == [IPAddress("127.0.12.7")!])
            let again = fixture.istiod.requests.filter { $0.initial && $0.stream > streamsBefore }.map(\.request)
            let addressRequest = try #require(again.first { $0.typeURL == addressURL })
            #expect(addressRequest.initialResourceVersions == [clientUID: "1", echoUID: "1", echoService: "1"])
            #expect(xds.status.types[addressURL]?.versions == [clientUID: "2", echoUID: "1"])
            #expect(await eventually(timeout: .seconds(5)) { xds.status.state == .connected })
            let telemetry = try #require(node.plugin(TelemetryPlugin.self))
            #expect(
                !telemetry.sampleLines(of: "istio_xds_connection_terminations_total").filter { !$0.hasSuffix(" 0") }
                    .isEmpty)
            try await node.stop()
        }
    }

    @Test("the token file is re-read on every connect; a clean close by istiod reconnects at once")
    func tokenRotation() async throws {
        try await withXDS { fixture, _ in
            try await fixture.istiod.start()
            let node = try await fixture.node()
            _ = try fixture.dir.write("token", "token-2\n")
            fixture.istiod.tokens = ["token-2"]
            let before = fixture.istiod.streams.count
            fixture.istiod.closeStreams()
            #expect(
                await eventually(timeout: .seconds(5)) {
                    fixture.istiod.streams.count > before && fixture.istiod.openStreams == 1
                })
            #expect(fixture.istiod.streams.last?.authorization == "Bearer token-2")
            #expect(node.node.readiness.isReady)
            let telemetry = try #require(node.plugin(TelemetryPlugin.self))
            #expect(
                telemetry.sampleLines(of: "istio_xds_connection_terminations_total").contains {
                    $0.contains("reason=\"Complete\"") && $0.hasSuffix(" 1")
                })
            try await node.stop()
        }
    }

    @Test("a policy pushed while a connection is open is enforced on it: the connection it now denies is closed")
    func openConnectionsReevaluated() async throws {
        try await withXDS { fixture, _ in
            let local = try await EchoServer.start(
                "127.0.12.8:0", name: "local", group: MultiThreadedEventLoopGroup.singleton)
            let uid = "cluster1//v1/Pod/default/local"
            fixture.istiod.set(
                addressURL, upserting: [(uid, "1", address(workload: workloadMessage(uid: uid, ip: "127.0.12.8")))])
            try await fixture.istiod.start()
            let node = try await fixture.node(inbound: local.address)
            let inbound = try #require(node.plugin(CapturePlugin.self)?.inboundPlaintextAddress)
            let socket = try BlockingSocket(connectingTo: inbound, from: IPAddress("127.0.12.2"))
            try socket.send("one")
            let echoed = try await offload {
                var received: [UInt8] = []
                while received.count < "local: one".utf8.count {
                    let chunk = try socket.receive()
                    if chunk.isEmpty { break }
                    received += chunk
                }
                return String(decoding: received, as: UTF8.self)
            }
            #expect(echoed == "local: one")
            // Plaintext has no identity: an ALLOW for one principal denies it, and the open
            // connection is checked again and closed.
            fixture.istiod.push(
                authorizationURL,
                upserting: [("default/allow-only", "1", allowOnly("cluster.local/ns/default/sa/admin"))])
            let rest = try await offload { try socket.receiveToEnd() }
            #expect(rest.isEmpty)
            #expect(node.node.mesh.snapshot.policies["default/allow-only"] != nil)
            try await node.stop()
            await local.close()
        }
    }

    @Test("a root certificate istiod's does not chain to fails closed: no mesh, not ready, a clear error")
    func rootMismatch() async throws {
        try await withXDS { fixture, _ in
            try await fixture.istiod.start()
            let node = try await fixture.node(root: "other-root.pem", waitForReady: false)
            let xds = try #require(node.plugin(XDSPlugin.self))
            #expect(
                await eventually(timeout: .seconds(5)) { xds.status.attempts >= 2 && xds.status.state == .retrying })
            let error = try #require(xds.status.lastError)
            #expect(error.contains("other-root.pem"), "\(error)")
            #expect(node.node.mesh.snapshot.workloads.isEmpty)
            #expect(!node.node.readiness.isReady)
            #expect(node.node.readiness.pending.contains("xds istio.workload.Address"))
            // No stream was ever opened past TLS.
            #expect(fixture.istiod.requests.isEmpty)
            try await node.stop()
        }
    }
}

/// Starts the stand-in on `port`, retrying while the port is still held by the last run.
func startStandIn(_ istiod: IstiodStandIn, port: Int) async throws {
    if istiod.port == nil {
        // Not started yet: reserve the port by starting on it.
        try await retryBind { try await istiod.start(on: port) }
    } else {
        try await retryBind { try await istiod.start() }
    }
}

func retryBind(_ body: () async throws -> Void) async throws {
    var lastError: (any Error)?
    for _ in 0..<50 {
        do {
            try await body()
            return
        } catch {
            lastError = error
            try await Task.sleep(for: .milliseconds(100))
        }
    }
    throw lastError ?? TestFailure("could not bind")
}
