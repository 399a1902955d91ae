import Authorization
import Foundation
import AmbitRuntime
import Kernel
import Testing

/// PeerAuthentication as istiod enforces it for ztunnel: STRICT is a DENY of connections
/// without an mTLS identity, resolved mesh → namespace → workload, with port-level modes.
@Suite("PeerAuthentication")
struct PeerAuthenticationTests {
    static let root = "istio-system"

    /// A PeerAuthentication document.
    static func peer(
        _ name: String, namespace: String, selector: String? = nil, mode: String? = nil, ports: [Int: String] = [:],
        created: String? = nil
    ) -> String {
        var spec: [String] = []
        if let selector { spec.append("selector: {matchLabels: {\(selector)}}") }
        if let mode { spec.append("mtls: {mode: \(mode)}") }
        if !ports.isEmpty {
            spec.append("portLevelMtls: {" + ports.sorted { $0.key < $1.key }.map { "\"\($0.key)\": {mode: \($0.value)}" }
                .joined(separator: ", ") + "}")
        }
        return """
            ---
            apiVersion: security.istio.io/v1
            kind: PeerAuthentication
            metadata: {name: \(name), namespace: \(namespace)\(created.map { ", creationTimestamp: \"\($0)\"" } ?? "")}
            spec: {\(spec.joined(separator: ", "))}

            """
    }

    static func load(_ documents: String...) throws -> LoadedPolicies {
        try IstioPolicyFile.parse(yaml: documents.joined(), file: "peer.yaml", rootNamespace: root)
    }

    static func decide(_ loaded: LoadedPolicies, _ connection: ConnectionAttributes) -> AuthorizationDecision {
        PolicyIndex(loaded.policies, peerAuthentications: loaded.peerAuthentications, rootNamespace: root)
            .evaluate(connection, destination: connection.destinationWorkload!).decision
    }

    static func plaintext(port: Int) -> ConnectionAttributes {
        Fixture.connection(identity: nil, destination: "10.0.0.2:\(port)")
    }

    static func mtls(port: Int) -> ConnectionAttributes {
        Fixture.connection(identity: Fixture.identity("td", "other", "sa"), destination: "10.0.0.2:\(port)")
    }

    @Test("mesh-wide STRICT denies plaintext to every workload with istio_converted_static_strict; mTLS passes")
    func meshStrict() throws {
        let loaded = try Self.load(Self.peer("default", namespace: Self.root, mode: "STRICT"))
        let denied = Self.decide(loaded, Self.plaintext(port: 8080))
        #expect(!denied.allowed)
        #expect(denied.policy == "istio-system/istio_converted_static_strict")
        #expect(Self.decide(loaded, Self.mtls(port: 8080)).allowed)
        // PERMISSIVE (or no policy at all) lets plaintext in.
        #expect(Self.decide(try Self.load(Self.peer("default", namespace: Self.root, mode: "PERMISSIVE")), Self.plaintext(port: 8080)).allowed)
    }

    @Test("inheritance: a namespace policy overrides the mesh unless UNSET; a workload policy overrides both")
    func inheritance() throws {
        let meshStrict = Self.peer("default", namespace: Self.root, mode: "STRICT")
        #expect(Self.decide(try Self.load(meshStrict, Self.peer("ns", namespace: "ns", mode: "PERMISSIVE")), Self.plaintext(port: 80)).allowed)
        #expect(!Self.decide(try Self.load(meshStrict, Self.peer("ns", namespace: "ns", mode: "UNSET")), Self.plaintext(port: 80)).allowed)
        #expect(!Self.decide(try Self.load(meshStrict, Self.peer("ns", namespace: "ns")), Self.plaintext(port: 80)).allowed)
        // Another namespace's policy does not apply.
        #expect(!Self.decide(try Self.load(meshStrict, Self.peer("other", namespace: "other", mode: "PERMISSIVE")), Self.plaintext(port: 80)).allowed)
        // The workload's own policy, selected by label, wins; one selecting other labels does not apply.
        #expect(Self.decide(
            try Self.load(meshStrict, Self.peer("w", namespace: "ns", selector: "app: server", mode: "DISABLE")), Self.plaintext(port: 80)).allowed)
        #expect(!Self.decide(
            try Self.load(meshStrict, Self.peer("w", namespace: "ns", selector: "app: client", mode: "DISABLE")), Self.plaintext(port: 80)).allowed)
        #expect(!Self.decide(
            try Self.load(Self.peer("w", namespace: "ns", selector: "app: server", mode: "STRICT")), Self.plaintext(port: 80)).allowed)
        // A selector policy in the root namespace is ignored, as istiod ignores it.
        #expect(Self.decide(
            try Self.load(Self.peer("w", namespace: Self.root, selector: "app: server", mode: "STRICT")), Self.plaintext(port: 80)).allowed)
    }

    @Test("the oldest policy of a level wins; one without a creationTimestamp counts as oldest")
    func oldestWins() throws {
        let older = Self.peer("a", namespace: Self.root, mode: "PERMISSIVE", created: "2024-01-01T00:00:00Z")
        let newer = Self.peer("b", namespace: Self.root, mode: "STRICT", created: "2025-01-01T00:00:00Z")
        #expect(Self.decide(try Self.load(newer, older), Self.plaintext(port: 80)).allowed)
        let undated = Self.peer("c", namespace: Self.root, mode: "STRICT")
        #expect(!Self.decide(try Self.load(older, undated), Self.plaintext(port: 80)).allowed)
    }

    @Test("workload STRICT with a PERMISSIVE port: plaintext only on that port, by the converted policy")
    func strictWithPermissivePort() throws {
        let loaded = try Self.load(Self.peer("w", namespace: "ns", selector: "app: server", mode: "STRICT", ports: [8080: "PERMISSIVE"]))
        #expect(Self.decide(loaded, Self.plaintext(port: 8080)).allowed)
        let denied = Self.decide(loaded, Self.plaintext(port: 9090))
        #expect(!denied.allowed)
        #expect(denied.policy == "ns/converted_peer_authentication_w")
        #expect(Self.decide(loaded, Self.mtls(port: 9090)).allowed)
    }

    @Test("PERMISSIVE (mesh and workload) with a STRICT port: plaintext refused on that port only")
    func permissiveWithStrictPort() throws {
        let loaded = try Self.load(
            Self.peer("default", namespace: Self.root, mode: "PERMISSIVE"),
            Self.peer("w", namespace: "ns", selector: "app: server", ports: [9090: "STRICT"]))
        #expect(Self.decide(loaded, Self.plaintext(port: 8080)).allowed)
        #expect(!Self.decide(loaded, Self.plaintext(port: 9090)).allowed)
        #expect(Self.decide(loaded, Self.mtls(port: 9090)).allowed)
    }

    @Test("a STRICT namespace and a workload with UNSET mode: PERMISSIVE ports are exempt, DISABLE ports stay STRICT (istiod)")
    func strictNamespaceUnsetWorkload() throws {
        let namespace = Self.peer("ns", namespace: "ns", mode: "STRICT")
        let permissive = try Self.load(namespace, Self.peer("w", namespace: "ns", selector: "app: server", ports: [8080: "PERMISSIVE"]))
        #expect(Self.decide(permissive, Self.plaintext(port: 8080)).allowed)
        #expect(!Self.decide(permissive, Self.plaintext(port: 9090)).allowed)
        let disable = try Self.load(namespace, Self.peer("w", namespace: "ns", selector: "app: server", ports: [8080: "DISABLE"]))
        #expect(!Self.decide(disable, Self.plaintext(port: 8080)).allowed)
    }

    @Test("bad PeerAuthentication: each error names where it is")
    func errors() {
        func messages(_ yaml: String) -> [String] {
            do {
                _ = try IstioPolicyFile.parse(yaml: yaml, file: "peer.yaml")
                return []
            } catch {
                return error.errors.map(\.description)
            }
        }
        #expect(messages(Self.peer("x", namespace: "ns", ports: [80: "STRICT"])).first?.contains(
            "spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS") == true)
        #expect(messages(Self.peer("x", namespace: "ns", mode: "STRIKT")).first?.contains(
            "spec.mtls.mode: expected one of UNSET, DISABLE, PERMISSIVE, STRICT, got \"STRIKT\"") == true)
        #expect(messages(Self.peer("x", namespace: "ns", selector: "a: b", ports: [70000: "STRICT"])).first?.contains(
            "port must be in range 1..65535") == true)
        #expect(messages(Self.peer("x", namespace: "ns") + Self.peer("x", namespace: "ns")).first?.contains(
            "duplicate PeerAuthentication ns/x") == true)
        let unknown = messages(Self.peer("x", namespace: "ns").replacingOccurrences(of: "spec: {", with: "spec: {mode: STRICT, "))
        #expect(unknown.first?.contains("peer.yaml:") == true)
        #expect(unknown.first?.contains("document[0].spec.mode") == true)
    }

    @Test("AuthorizationPolicy and PeerAuthentication share a file; an ALLOW still applies under STRICT")
    func sharedFile() throws {
        let loaded = try Self.load(
            Self.peer("default", namespace: Self.root, mode: "STRICT"),
            """
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: from-other, namespace: ns}
            spec: {rules: [{from: [{source: {namespaces: [other]}}]}]}

            """)
        #expect(loaded.policies.map(\.key) == ["ns/from-other"])
        #expect(loaded.peerAuthentications.map(\.key) == ["istio-system/default"])
        #expect(Self.decide(loaded, Self.mtls(port: 80)).allowed)
        #expect(!Self.decide(loaded, Self.plaintext(port: 80)).allowed)
        let explained = PolicyIndex(loaded.policies, peerAuthentications: loaded.peerAuthentications, rootNamespace: Self.root)
            .explain(Self.plaintext(port: 80), destination: Fixture.server)
        let strict = try #require(explained.first { $0.policy.name == "istio_converted_static_strict" })
        #expect(strict.details.contains { $0.hasPrefix("derived from PeerAuthentication: mesh-wide istio-system/default STRICT") })
    }
}
