import Capture
import Foundation
import AmbitRuntime
import Kernel
import NIOPosix
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The `ambit` binary as a user runs it.
@Suite("ambit CLI", .serialized)
struct CLITests {
    @Test("plugins lists every compiled-in plugin with a description")
    func pluginsCommand() async throws {
        let result = try await AmbitProcess.run(["plugins"])
        #expect(result.status == 0)
        let lines = result.stdout.split(separator: "\n")
        let ids = lines.compactMap { $0.split(separator: " ").first.map(String.init) }
        #expect(ids.contains("capture"))
        #expect(ids.contains("local-config"))
        for line in lines { #expect(line.split(separator: " ").count > 1, "no description: \(line)") }
    }

    @Test("version prints the version")
    func versionCommand() async throws {
        let result = try await AmbitProcess.run(["version"])
        #expect(result.status == 0)
        #expect(result.stdout.contains(AmbitVersion.current))
    }

    @Test("validate accepts the example manifest")
    func validateExample() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let result = try await AmbitProcess.run(["validate", "--manifest", root.path + "/Examples/node.yaml"])
        #expect(result.status == 0, "stderr: \(result.stderr)")
    }

    @Test("validate prints every manifest error with path and line and exits 1")
    func validateBroken() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manifest = try dir.write(
            "broken.yaml",
            """
            node:
              name: n1
              colour: blue
            plugins:
              - id: capture
                config:
                  socks5:
                    address: nowhere
              - id: capture
              - id: teleport
            """)
        let result = try await AmbitProcess.run(["validate", "--manifest", manifest])
        #expect(result.status == 1)
        let errors = result.stderr
        #expect(errors.contains("broken.yaml:3"), "unknown key line: \(errors)")
        #expect(errors.contains("node.colour"), "\(errors)")
        #expect(errors.contains("plugins[0] (capture).config.socks5.address"), "\(errors)")
        #expect(errors.contains("expected host:port"), "\(errors)")
        #expect(errors.contains("duplicate"), "\(errors)")
        #expect(errors.contains("teleport"), "\(errors)")
        #expect(errors.contains("discovery"), "missing role: \(errors)")
    }

    @Test("validate reports cross-field config problems with file, line and path")
    func validateConfigProblems() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manifest = try dir.write(
            "node.yaml",
            """
            plugins:
              - id: capture
                config:
                  inPod:
                    mark: 0
                    inboundPort: 15001
              - id: hbone
                config:
                  http2: {maxFrameSize: 100}
            """)
        let result = try await AmbitProcess.run(["validate", "--manifest", manifest])
        #expect(result.status == 1)
        let errors = result.stderr
        #expect(errors.contains("node.yaml:5: plugins[0] (capture).config.inPod.mark: must not be 0"), "\(errors)")
        #expect(
            errors.contains("node.yaml:5: plugins[0] (capture).config.inPod: outboundPort, inboundPort and hbonePort must differ"),
            "\(errors)")
        #expect(
            errors.contains("node.yaml:9: plugins[1] (hbone).config.http2.maxFrameSize: must be between 16384 and 16777215, got 100"),
            "\(errors)")
    }

    @Test("validate prints policy warnings in istiod's words with file and line, and exits 0")
    func validatePolicyWarnings() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        _ = try dir.write("mesh.yaml", "{}\n")
        let policies = try dir.write(
            "authz.yaml",
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: require-jwt, namespace: default}
            spec:
              action: DENY
              rules:
              - from: [{source: {notRequestPrincipals: ["*"]}}]
            """)
        let manifest = try dir.write(
            "node.yaml",
            """
            plugins:
              - id: local-config
                config: {path: \(dir.path)/mesh.yaml}
              - id: authorization
                config: {policies: [\(policies)]}
            """)
        let result = try await AmbitProcess.run(["validate", "--manifest", manifest])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(
            result.stderr.contains(
                "warning: plugins[1] (authorization): \(policies):7: document[0].spec.rules[0].from[0].source.notRequestPrincipals: "
                    + "policy default/require-jwt: HTTP attributes: ztunnel does not support HTTP attributes (found: "
                    + "notRequestPrincipals)."),
            "\(result.stderr)")
        #expect(result.stderr.contains("this DENY policy has no enforceable rules at ztunnel and will have no effect"))
    }

    @Test("validate reports an unreadable mesh config and exits 1")
    func validateUnreadableMesh() async throws {
        let dir = try TemporaryDirectory()
        defer { dir.remove() }
        let manifest = try dir.write(
            "node.yaml",
            """
            plugins:
              - id: local-config
                config: {path: missing.yaml}
            """)
        let result = try await AmbitProcess.run(["validate", "--manifest", manifest])
        #expect(result.status == 1)
        #expect(result.stderr.contains("missing.yaml"), "\(result.stderr)")
    }

    @Test("validate on a missing manifest file exits 1 naming the file")
    func validateMissingManifest() async throws {
        let result = try await AmbitProcess.run(["validate", "--manifest", "/nonexistent/ambit.yaml"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("/nonexistent/ambit.yaml"))
    }

    @Test("demo runs on its embedded mesh and exits 0")
    func demo() async throws {
        let result = try await AmbitProcess.run(["demo"], timeout: .seconds(90))
        #expect(result.status == 0, "stdout: \(result.stdout)\nstderr: \(result.stderr)")
        #expect(result.stdout.contains("served by echo-v"))
        #expect(result.stdout.contains("passthrough"))
        #expect(result.stdout.contains("refused"))
    }
}

/// A node started from a manifest, with a mesh of one client and one backend.
struct RunningNode {
    let process: AmbitProcess
    let dir: TemporaryDirectory
    let socks: SocketAddr
    let admin: SocketAddr
    let readiness: SocketAddr

    static func start(backend: SocketAddr, drainDeadline: String) async throws -> RunningNode {
        let dir = try TemporaryDirectory()
        try dir.write(
            "mesh.yaml",
            """
            workloads:
            - uid: test//v1/Pod/default/client
              name: client
              namespace: default
              workloadIps: ["127.0.0.1"]
            - uid: test//v1/Pod/default/backend
              name: backend
              namespace: default
              workloadIps: ["\(backend.ip)"]
              locality: {region: r1, zone: z1}
            """)
        let socks = SocketAddr(ip: IPAddress("127.0.0.1")!, port: freePort())
        let admin = SocketAddr(ip: IPAddress("127.0.0.1")!, port: freePort())
        let readiness = SocketAddr(ip: IPAddress("127.0.0.1")!, port: freePort())
        let manifest = try dir.write(
            "node.yaml",
            """
            node: {name: test-node, drainDeadline: \(drainDeadline)}
            admin: {address: "\(admin)", readinessAddress: "\(readiness)"}
            plugins:
              - id: local-config
                config: {path: mesh.yaml}
              - id: capture
                config: {socks5: {address: "\(socks)"}}
            """)
        let process = try AmbitProcess(["run", "--manifest", manifest])
        let node = RunningNode(process: process, dir: dir, socks: socks, admin: admin, readiness: readiness)
        let ready = await eventually(timeout: .seconds(20)) {
            (try? await httpRequest("GET", readiness, "/healthz/ready").status) == 200
        }
        guard ready else {
            process.signal(SIGKILL)
            throw TestFailure("node never became ready; stderr: \(process.stderr)")
        }
        return node
    }
}

@Suite("node process lifecycle", .serialized)
struct NodeLifecycleTests {
    @Test("SIGTERM drains: a live connection keeps working, readiness turns 500, exit 0 once it closes")
    func drainWithLiveConnection() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let backend = try await EchoServer.start(group: group)
        let node = try await RunningNode.start(backend: backend.address, drainDeadline: "20s")
        defer { node.dir.remove() }

        let target = SOCKS5Request(address: .ip(backend.address.ip), port: backend.address.port)
        let client = try await offload { try SOCKS5Client(proxy: node.socks, request: target) }
        #expect(client.reply == .succeeded)
        try client.send(Array("before".utf8))
        #expect(try await offload { try client.receive(exactly: 6) } == Array("before".utf8))

        node.process.signal(SIGTERM)
        let notReady = await eventually {
            (try? await httpRequest("GET", node.readiness, "/healthz/ready").status) == 500
        }
        #expect(notReady, "readiness should report draining")
        // New connections are no longer accepted…
        let refusedNew = await eventually {
            (try? await offload { try SOCKS5Client(proxy: node.socks, request: target) }) == nil
        }
        #expect(refusedNew)
        // …but the open one still flows both ways.
        try client.send(Array("during drain".utf8))
        #expect(try await offload { try client.receive(exactly: 12) } == Array("during drain".utf8))
        #expect(node.process.process.isRunning)

        client.finishSending()
        #expect(try await offload { try client.receiveToEnd() }.isEmpty)
        let status = await node.process.wait(timeout: .seconds(15))
        #expect(status == 0, "stderr: \(node.process.stderr)")
        await backend.close()
    }

    @Test("SIGTERM resets connections still open at the drain deadline, then exits 0")
    func drainDeadline() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let backend = try await EchoServer.start(group: group)
        let node = try await RunningNode.start(backend: backend.address, drainDeadline: "1s")
        defer { node.dir.remove() }

        let target = SOCKS5Request(address: .ip(backend.address.ip), port: backend.address.port)
        let client = try await offload { try SOCKS5Client(proxy: node.socks, request: target) }
        #expect(client.reply == .succeeded)
        let clock = ContinuousClock()
        let start = clock.now
        node.process.signal(SIGTERM)
        // The proxy cuts the connection at the deadline with a reset: a clean end of stream
        // would pass for a complete transfer.
        do {
            let rest = try await offload { try client.receiveToEnd() }
            Issue.record("the connection ended cleanly after \(rest.count) bytes; one cut at the drain deadline must be reset")
        } catch {
            #expect("\(error)".hasSuffix("errno \(ECONNRESET)"), "\(error)")
        }
        let status = await node.process.wait(timeout: .seconds(15))
        #expect(status == 0, "stderr: \(node.process.stderr)")
        #expect(start.duration(to: clock.now) >= .milliseconds(900))
        await backend.close()
    }

    @Test("POST /quitquitquit drains and exits 0; admin serves config_dump and logging")
    func adminEndpoints() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let backend = try await EchoServer.start(group: group)
        let node = try await RunningNode.start(backend: backend.address, drainDeadline: "2s")
        defer { node.dir.remove() }

        let dump = try await httpRequest("GET", node.admin, "/config_dump")
        #expect(dump.status == 200)
        let json = try JSONSerialization.jsonObject(with: Data(dump.body.utf8)) as? [String: Any]
        let workloads = json?["workloads"] as? [[String: Any]]
        #expect(workloads?.count == 2)
        // The newer model fields, in ztunnel's names; an unknown locality is left out.
        let backendView = workloads?.first { $0["name"] as? String == "backend" }
        #expect((backendView?["locality"] as? [String: String]) == ["region": "r1", "zone": "z1", "subzone": ""])
        #expect(backendView?["networkMode"] as? String == "Standard")
        #expect(workloads?.first { $0["name"] as? String == "client" }?["locality"] == nil)
        let plugins = json?["plugins"] as? [[String: Any]]
        #expect(plugins?.compactMap { $0["id"] as? String } == ["local-config", "capture"])
        #expect(plugins?.allSatisfy { ($0["state"] as? String) == "running" } == true)

        #expect(try await httpRequest("POST", node.admin, "/logging?level=debug").status == 200)
        #expect(try await httpRequest("POST", node.admin, "/logging?level=loud").status == 400)

        #expect(try await httpRequest("POST", node.admin, "/quitquitquit").status == 200)
        let status = await node.process.wait(timeout: .seconds(15))
        #expect(status == 0, "stderr: \(node.process.stderr)")
        await backend.close()
    }
}
