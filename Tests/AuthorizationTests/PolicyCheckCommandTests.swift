import Foundation
import TestSupport
import Testing

/// `ambit policy check`, run as the built binary.
@Suite("ambit policy check", .timeLimit(.minutes(2)))
struct PolicyCheckCommandTests {
    static let mesh = """
        workloads:
        - {uid: sleep, name: sleep, namespace: default, serviceAccount: sleep, workloadIps: ["10.0.0.1"], protocol: HBONE, labels: {app: sleep}}
        - {uid: echo, name: echo, namespace: default, serviceAccount: echo, workloadIps: ["10.0.0.2"], protocol: HBONE, labels: {app: echo}}
        - {uid: db, name: db, namespace: data, workloadIps: ["10.0.0.3"], labels: {app: db}}
        services:
        - {name: echo, namespace: default, hostname: echo.default.svc.cluster.local, vips: ["/10.96.0.1"], ports: {80: 8080}}
        policies:
        - {name: deny-9999, namespace: default, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [9999]}]]]}

        """

    static let policies = """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: allow-sleep, namespace: default}
        spec:
          selector: {matchLabels: {app: echo}}
          rules:
          - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
            to: [{operation: {ports: ["8080"]}}]
        ---
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata: {name: audit-get, namespace: default}
        spec:
          selector: {matchLabels: {app: echo}}
          action: DENY
          rules: [{to: [{operation: {methods: [DELETE], ports: ["7070"]}}]}]

        """

    func files() throws -> (TemporaryDirectory, String, String) {
        let directory = try TemporaryDirectory()
        return (directory, try directory.write("mesh.yaml", Self.mesh), try directory.write("authz.yaml", Self.policies))
    }

    @Test("ALLOW: exit 0, deciding policy and rule")
    func allow() async throws {
        let (directory, mesh, policy) = try files()
        defer { directory.remove() }
        let result = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--policy", policy, "--destination", "10.0.0.2:8080",
            "--source-identity", "spiffe://cluster.local/ns/default/sa/sleep",
        ])
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(lines.first == "ALLOW")
        #expect(lines.contains("policy: default/allow-sleep, rule 0"))
        #expect(result.stdout.contains("reason: ALLOW policy default/allow-sleep rule 0 matches: principals [cluster.local/ns/default/sa/sleep] and destinationPorts [8080]") || result.stdout.contains("reason: ALLOW policy default/allow-sleep rule 0 matches:"))
        #expect(result.stdout.contains("source: 10.0.0.1 (workload default/sleep), mTLS as spiffe://cluster.local/ns/default/sa/sleep"))
        // The L7 field is warned about with file, line, document and path.
        #expect(result.stderr.contains(
            "warning: \(policy):16: document[1].spec.rules[0].to[0].operation.methods: policy default/audit-get: HTTP attributes: "
                + "ztunnel does not support HTTP attributes (found: methods)."))
    }

    @Test("PeerAuthentication and HTTP attributes are explained as istiod decides them")
    func peerAuthenticationAndHTTP() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let mesh = try directory.write("mesh.yaml", Self.mesh)
        let policy = try directory.write(
            "peer.yaml",
            """
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: default, namespace: istio-system}
            spec: {mtls: {mode: STRICT}}
            ---
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: echo-metrics, namespace: default}
            spec:
              selector: {matchLabels: {app: echo}}
              portLevelMtls: {"9090": {mode: PERMISSIVE}}
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: require-jwt, namespace: default}
            spec:
              action: DENY
              rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]

            """)
        let denied = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--policy", policy, "--destination", "10.0.0.2:8080", "--plaintext",
        ])
        #expect(denied.status == 1, "\(denied.stdout)\(denied.stderr)")
        #expect(denied.stdout.hasPrefix("DENY\npolicy: default/converted_peer_authentication_echo-metrics, rule 0"), "\(denied.stdout)")
        #expect(denied.stdout.contains(
            "derived from PeerAuthentication: mesh-wide istio-system/default STRICT, workload default/echo-metrics UNSET with port-level modes"))
        // The HTTP-only DENY is listed, explained by istiod's words, and decides nothing.
        #expect(denied.stdout.contains("    istiod: HTTP attributes: ztunnel does not support HTTP attributes (found: notRequestPrincipals)"))
        #expect(denied.stdout.contains("this DENY policy has no enforceable rules at ztunnel and will have no effect"))

        let metrics = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--policy", policy, "--destination", "10.0.0.2:9090", "--plaintext",
        ])
        #expect(metrics.status == 0, "\(metrics.stdout)")
        let mtls = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--policy", policy, "--destination", "10.0.0.2:8080",
            "--source-identity", "spiffe://cluster.local/ns/default/sa/sleep",
        ])
        #expect(mtls.status == 0, "\(mtls.stdout)")
        // The database in another namespace gets the static STRICT policy.
        let db = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--policy", policy, "--destination", "10.0.0.3:5432", "--plaintext",
        ])
        #expect(db.status == 1)
        #expect(db.stdout.contains("policy: istio-system/istio_converted_static_strict, rule 0"))
    }

    @Test("DENY: exit 1, plaintext has no identity, each policy explained")
    func deny() async throws {
        let (directory, mesh, policy) = try files()
        defer { directory.remove() }
        let result = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--policy", policy, "--destination", "10.0.0.2:8080", "--source-ip", "10.0.0.1",
            "--plaintext",
        ])
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(result.status == 1)
        #expect(lines.first == "DENY")
        #expect(lines.contains("policy: none"))
        #expect(result.stdout.contains("none matches (1: default/allow-sleep)"))
        #expect(result.stdout.contains("principals [cluster.local/ns/default/sa/sleep] do not match none (plaintext has no identity)"))

        let denied = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--destination", "10.0.0.2:9999",
        ])
        #expect(denied.status == 1)
        #expect(denied.stdout.hasPrefix("DENY\npolicy: default/deny-9999, rule 0\n"))
    }

    @Test("no policy applies: exit 0 and says so; JSON output")
    func noPolicy() async throws {
        let (directory, mesh, policy) = try files()
        defer { directory.remove() }
        let result = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--policy", policy, "--destination", "10.0.0.3:5432",
        ])
        #expect(result.status == 0)
        #expect(result.stdout.hasPrefix("ALLOW\n"))
        #expect(result.stdout.contains("no policy applies"))

        let json = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--policy", policy, "--destination", "10.0.0.2:8080", "--json",
        ])
        #expect(json.status == 1)
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(object?["decision"] as? String == "DENY")
        #expect((object?["applicable"] as? [Any])?.count == 3)
    }

    @Test("bad input: exit 2 with file, line, document and path")
    func badInput() async throws {
        let (directory, mesh, _) = try files()
        defer { directory.remove() }
        let bad = try directory.write(
            "bad.yaml",
            Self.policies + "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n  - from:\n    - source: {ipBlocks: [\"10.0.0.0/40\"]}\n")
        let result = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--policy", bad, "--destination", "10.0.0.2:8080",
        ])
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains("error: \(bad):24: document[2].spec.rules[0].from[0].source.ipBlocks[0]: expected an IP address or CIDR block, got \"10.0.0.0/40\""), "\(result.stderr)")

        let badMesh = try directory.write("badmesh.yaml", "workloads: [{uid: a, namespace: x, colour: red}]\n")
        let meshError = try await AmbitProcess.run(["policy", "check", "--mesh", badMesh, "--destination", "10.0.0.2:8080"])
        #expect(meshError.status == 2)
        #expect(meshError.stderr.contains("\(badMesh):1: workloads[0].colour: unknown key"))

        let unknown = try await AmbitProcess.run(["policy", "check", "--mesh", mesh, "--destination", "10.9.9.9:80"])
        #expect(unknown.status == 2)
        #expect(unknown.stderr.contains("no workload in \(mesh) has address 10.9.9.9"))

        let vip = try await AmbitProcess.run(["policy", "check", "--mesh", mesh, "--destination", "10.96.0.1:80"])
        #expect(vip.status == 2)
        #expect(vip.stderr.contains("is a VIP of service default/echo.default.svc.cluster.local"))

        let both = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--destination", "10.0.0.2:8080", "--plaintext", "--source-identity",
            "spiffe://cluster.local/ns/a/sa/b",
        ])
        #expect(both.status == 2)

        let badIdentity = try await AmbitProcess.run([
            "policy", "check", "--mesh", mesh, "--destination", "10.0.0.2:8080", "--source-identity", "cluster.local/ns/a",
        ])
        #expect(badIdentity.status == 2)
        #expect(badIdentity.stderr.contains("--source-identity: invalid SPIFFE ID"))
    }
}
