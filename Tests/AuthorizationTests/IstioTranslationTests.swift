import Authorization
import Foundation
import AmbitRuntime
import Kernel
import Testing
import ConfigYAML

@Suite("Istio AuthorizationPolicy translation")
struct IstioTranslationTests {
    func parse(_ yaml: String, root: String = "istio-system") throws -> LoadedPolicies {
        try IstioPolicyFile.parse(yaml: yaml, file: "p.yaml", rootNamespace: root)
    }

    func errors(_ yaml: String) -> [ConfigError] {
        do {
            _ = try IstioPolicyFile.parse(yaml: yaml, file: "p.yaml")
            return []
        } catch {
            return error.errors
        }
    }

    @Test("v1 and v1beta1, several documents, each with its scope")
    func multiDocument() throws {
        let loaded = try parse(
            """
            # leading comment
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: by-label, namespace: ns}
            spec:
              selector: {matchLabels: {app: server}}
              rules: [{}]
            ---
            apiVersion: security.istio.io/v1beta1
            kind: AuthorizationPolicy
            metadata: {name: whole-ns, namespace: ns}
            spec: {action: DENY, rules: [{to: [{operation: {ports: ["9999"]}}]}]}
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: mesh-wide, namespace: istio-system}
            spec: {}
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: root-selector, namespace: istio-system}
            spec: {selector: {matchLabels: {app: server}}}
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: empty-selector, namespace: ns}
            spec: {selector: {}}
            """)
        #expect(loaded.policies.map(\.key) == ["ns/by-label", "ns/whole-ns", "istio-system/mesh-wide", "istio-system/root-selector", "ns/empty-selector"])
        #expect(loaded.policies[0].scope == .workloadSelector(["app": "server"]))
        #expect(loaded.policies[0].action == .allow)
        #expect(loaded.policies[0].rules == [[]])
        #expect(loaded.policies[1].scope == .namespace)
        #expect(loaded.policies[1].action == .deny)
        #expect(loaded.policies[2].scope == .global)
        #expect(loaded.policies[2].rules.isEmpty)
        #expect(loaded.policies[3].scope == .workloadSelector(["app": "server"]))
        #expect(loaded.policies[4].scope == .namespace)
        #expect(loaded.warnings.isEmpty)
    }

    @Test("a root namespace from config decides what is mesh-wide")
    func rootNamespace() throws {
        let yaml = """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: p, namespace: mesh-root}
            spec: {}
            """
        #expect(try parse(yaml).policies[0].scope == .namespace)
        #expect(try parse(yaml, root: "mesh-root").policies[0].scope == .global)
    }

    @Test("spec {} on ALLOW allows nothing; rules [{}] allows everything")
    func allowNothingVersusAllowAll() throws {
        func policy(_ spec: String) throws -> AuthorizationPolicy {
            try parse(
                """
                apiVersion: security.istio.io/v1
                kind: AuthorizationPolicy
                metadata: {name: p, namespace: ns}
                spec: \(spec)
                """
            ).policies[0]
        }
        let nothing = try policy("{selector: {matchLabels: {app: server}}}")
        let all = try policy("{selector: {matchLabels: {app: server}}, rules: [{}]}")
        #expect(!Fixture.decide([nothing], Fixture.tls).allowed)
        #expect(!Fixture.decide([nothing], Fixture.plaintext).allowed)
        #expect(Fixture.decide([all], Fixture.plaintext).allowed)
        #expect(Fixture.decide([all], Fixture.tls).allowed)
        // A DENY with no rules never matches.
        let denyNothing = try policy("{action: DENY}")
        #expect(Fixture.decide([denyNothing], Fixture.tls).allowed)
    }

    @Test("from[] OR'ed, to[] OR'ed, from/to/when AND'ed")
    func structure() throws {
        let policy = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: p, namespace: ns}
            spec:
              rules:
              - from:
                - source: {principals: ["cluster.local/ns/a/sa/x", "spiffe://cluster.local/ns/b/*"], notNamespaces: [c]}
                - source: {ipBlocks: ["10.0.0.0/8", 192.168.1.1], notIpBlocks: ["10.9.0.0/16"]}
                - source: {namespaces: ["*-prod", "dev*", "*"], serviceAccounts: [ns2/sa2, sa1], notServiceAccounts: [bad]}
                to:
                - operation: {ports: ["80", 8080], notPorts: ["81"]}
                - operation: {notPorts: ["22"]}
                when:
                - {key: source.ip, values: ["10.1.0.0/16"], notValues: ["10.1.2.3"]}
                - {key: source.namespace, values: ["a*"], notValues: [ab]}
                - {key: source.principal, values: ["*/sa/x"], notValues: ["spiffe://td/ns/a/sa/y"]}
                - {key: destination.ip, values: ["10.0.0.2"], notValues: ["10.0.0.3/32"]}
                - {key: destination.port, values: ["8080"], notValues: [9090]}
            """
        ).policies[0]
        #expect(policy.rules.count == 1)
        let rule = policy.rules[0]
        #expect(rule.count == 7)  // to, from, five conditions
        // to: one match per operation.
        #expect(rule[0].map(\.destinationPorts) == [[80, 8080], []])
        #expect(rule[0].map(\.notDestinationPorts) == [[81], [22]])
        // from: one match per source.
        #expect(rule[1].count == 3)
        // A `spiffe://` principal is kept as written, so it never matches (as in Istio).
        #expect(rule[1][0].principals == [.exact("cluster.local/ns/a/sa/x"), .prefix("spiffe://cluster.local/ns/b/")])
        #expect(rule[1][0].notNamespaces == [.exact("c")])
        #expect(rule[1][1].sourceIPs == [CIDR("10.0.0.0/8")!, CIDR("192.168.1.1/32")!])
        #expect(rule[1][1].notSourceIPs == [CIDR("10.9.0.0/16")!])
        #expect(rule[1][2].namespaces == [.suffix("-prod"), .prefix("dev"), .presence])
        #expect(rule[1][2].serviceAccounts == [.exact("ns2/sa2"), .exact("ns/sa1")])
        #expect(rule[1][2].notServiceAccounts == [.exact("ns/bad")])
        // when: one clause per condition.
        #expect(rule[2] == [Fixture.match { $0.sourceIPs = [CIDR("10.1.0.0/16")!]; $0.notSourceIPs = [CIDR("10.1.2.3")!] }])
        #expect(rule[3] == [Fixture.match { $0.namespaces = [.prefix("a")]; $0.notNamespaces = [.exact("ab")] }])
        #expect(rule[4] == [Fixture.match { $0.principals = [.suffix("/sa/x")]; $0.notPrincipals = [.exact("spiffe://td/ns/a/sa/y")] }])
        #expect(rule[5] == [Fixture.match { $0.destinationIPs = [CIDR("10.0.0.2")!]; $0.notDestinationIPs = [CIDR("10.0.0.3/32")!] }])
        #expect(rule[6] == [Fixture.match { $0.destinationPorts = [8080]; $0.notDestinationPorts = [9090] }])
    }

    @Test("a spiffe://-prefixed principal never matches, as in Istio, and is warned about with the fix")
    func spiffePrincipals() throws {
        let loaded = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: allow-spiffe, namespace: ns}
            spec:
              rules:
              - from:
                - source: {principals: ["spiffe://td/ns/namespace/sa/account"]}
              - when:
                - {key: source.principal, values: ["spiffe://td/*"]}
            """)
        // Fixture.tls is td/ns/namespace/sa/account: written with spiffe:// it
        // matches neither rule, so the ALLOW admits nothing.
        #expect(!Fixture.decide(loaded.policies, Fixture.tls).allowed)
        #expect(loaded.warnings.count == 2)
        let first = try #require(loaded.warnings.first)
        #expect(first.policy == "ns/allow-spiffe")
        #expect(first.field == "principals")
        #expect(first.message.contains("never matches"))
        #expect(first.message.contains("write \"td/ns/namespace/sa/account\""))
        #expect(first.location.line == 7, "\(first)")
        #expect(loaded.warnings.last?.field == "when source.principal values")
        // Without the prefix the same policy admits the connection.
        let fixed = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: allow, namespace: ns}
            spec:
              rules:
              - from:
                - source: {principals: ["td/ns/namespace/sa/account"]}
            """)
        #expect(Fixture.decide(fixed.policies, Fixture.tls).allowed)
        #expect(fixed.warnings.isEmpty)
    }

    @Test("an end-to-end decision through a translated policy")
    func translatedDecision() throws {
        let loaded = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: allow-a, namespace: ns}
            spec:
              selector: {matchLabels: {app: server}}
              rules:
              - from: [{source: {namespaces: [namespace]}}, {source: {ipBlocks: ["10.0.0.3/32"]}}]
                to: [{operation: {ports: ["8080"]}}]
            """)
        #expect(Fixture.decide(loaded.policies, Fixture.tls).allowed)  // namespace "namespace", port 8080
        #expect(!Fixture.decide(loaded.policies, Fixture.plaintext).allowed)  // no identity, 10.0.0.1
        #expect(!Fixture.decide(loaded.policies, Fixture.tlsAlt).allowed)  // 10.0.0.3 but port 9090
    }

    @Test("HTTP attributes in ALLOW: the rule is omitted, one warning in istiod's words at the first attribute")
    func httpInAllow() throws {
        let loaded = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: get-only, namespace: ns}
            spec:
              rules:
              - to:
                - operation:
                    methods: [GET]
                    ports: ["8080"]
              - from: [{source: {remoteIpBlocks: ["10.0.0.0/8"]}}]
              - when: [{key: "request.headers[x-user]", values: [alice]}]
              - from: [{source: {requestPrincipals: ["*"]}}]
            """)
        #expect(loaded.policies[0].rules.isEmpty)
        #expect(!Fixture.decide(loaded.policies, Fixture.tls).allowed)
        #expect(loaded.warnings.count == 1)
        let warning = try #require(loaded.warnings.first)
        #expect(warning.policy == "ns/get-only")
        #expect(warning.location.line == 8)
        #expect(warning.location.path == "document[0].spec.rules[0].to[0].operation.methods")
        #expect(
            warning.message
                == "ztunnel does not support HTTP attributes (found: methods, remoteIpBlocks, request.headers[x-user], "
                + "requestPrincipals). In ambient mode you must use a waypoint proxy to enforce HTTP rules. Within an ALLOW "
                + "policy, rules matching HTTP attributes are omitted. This will be more restrictive than requested.")
    }

    @Test("HTTP attributes in DENY: entries keep their L4 fields; an entry left empty never matches")
    func httpInDeny() throws {
        let loaded = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: no-post, namespace: ns}
            spec:
              action: DENY
              rules:
              - to: [{operation: {methods: [POST], ports: ["9090"]}}]
              - from: [{source: {namespaces: [ns-alt]}}]
                to: [{operation: {paths: ["/admin"]}}]
                when: [{key: "request.auth.claims[iss]", values: [x]}]
            """)
        let rules = loaded.policies[0].rules
        // The port survives, the method is gone: denies more than written.
        #expect(rules[0] == [[Fixture.match { $0.destinationPorts = [9090] }]])
        // The path entry and the claim condition are empty matches: the rule never matches.
        #expect(rules[1] == [[PolicyMatch()], [Fixture.match { $0.namespaces = [.exact("ns-alt")] }], [PolicyMatch()]])
        #expect(loaded.warnings.count == 1)
        #expect(loaded.warnings[0].message.hasSuffix(
            "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive than requested."))
        #expect(!Fixture.decide(loaded.policies, Fixture.tlsAlt).allowed)  // port 9090, by rule 0
        let nsAltOn8080 = Fixture.connection(identity: Fixture.identity("td", "ns-alt", "sa"))
        #expect(Fixture.decide(loaded.policies, nsAltOn8080).allowed)  // rule 1 cannot match
        #expect(Fixture.decide(loaded.policies, Fixture.tls).allowed)
    }

    @Test("Istio's require-JWT recipe (DENY notRequestPrincipals *) has no effect at a node proxy, as in Istio")
    func requireJWTRecipe() throws {
        let loaded = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: require-jwt, namespace: ns}
            spec:
              action: DENY
              rules:
              - from:
                - source:
                    notRequestPrincipals: ["*"]
            """)
        // Before: the entry became match-all and every connection was denied.
        #expect(Fixture.decide(loaded.policies, Fixture.plaintext).allowed)
        #expect(Fixture.decide(loaded.policies, Fixture.tls).allowed)
        #expect(loaded.warnings.map(\.field) == ["HTTP attributes"])
        #expect(loaded.warnings[0].location.line == 9)
        #expect(
            loaded.warnings[0].message
                == "ztunnel does not support HTTP attributes (found: notRequestPrincipals). In ambient mode you must use a "
                + "waypoint proxy to enforce HTTP rules. After omitting unsupported HTTP attributes, this DENY policy has "
                + "no enforceable rules at ztunnel and will have no effect. Deploy a waypoint proxy and use a targetRef to "
                + "enforce this policy.")

        let methodOnly = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: no-delete, namespace: ns}
            spec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}
            """)
        #expect(Fixture.decide(methodOnly.policies, Fixture.plaintext).allowed)
        #expect(methodOnly.warnings[0].message.contains("has no enforceable rules at ztunnel and will have no effect"))

        let headerOnly = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: no-header, namespace: ns}
            spec: {action: DENY, rules: [{when: [{key: "request.headers[x-a]", values: ["1"]}]}]}
            """)
        #expect(Fixture.decide(headerOnly.policies, Fixture.tls).allowed)
    }

    @Test("DENY: one entry mixing L4 and HTTP fields denies by its L4 part; a sibling HTTP-only entry adds nothing")
    func mixedEntries() throws {
        let loaded = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: mixed, namespace: ns}
            spec:
              action: DENY
              rules:
              - from:
                - source: {namespaces: [namespace], requestPrincipals: ["*"]}
                - source: {requestPrincipals: ["issuer/alice"]}
            """)
        #expect(!Fixture.decide(loaded.policies, Fixture.tls).allowed)  // namespace "namespace"
        #expect(Fixture.decide(loaded.policies, Fixture.tlsAlt).allowed)  // the HTTP-only entry is skipped
        #expect(loaded.warnings[0].message.contains("found: requestPrincipals)"))
        #expect(loaded.warnings[0].message.hasSuffix("This will be more restrictive than requested."))
    }

    @Test("when keys: every key Istio accepts loads (non-L4 ones as HTTP attributes); retired keys are errors")
    func whenKeys() throws {
        for key in [
            "source.serviceAccount", "source.trustDomain", "remote.ip", "request.auth.principal", "request.auth.audiences",
            "request.auth.presenter", "request.auth.claims[groups]", "connection.sni", "experimental.envoy.filters.a[b]",
        ] {
            let loaded = try parse(
                """
                apiVersion: security.istio.io/v1
                kind: AuthorizationPolicy
                metadata: {name: k, namespace: ns}
                spec: {rules: [{when: [{key: "\(key)", values: ["x"]}]}]}
                """)
            #expect(loaded.policies[0].rules.isEmpty, "\(key)")
            #expect(loaded.warnings.first?.message.contains("found: \(key))") == true, "\(key)")
        }
        let retired = errors(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: k, namespace: ns}
            spec: {rules: [{when: [{key: destination.namespace, values: ["x"]}]}]}
            """)
        #expect(retired.map(\.message) == ["key \"destination.namespace\" is replaced by the policy's metadata.namespace"])
        let unknown = errors(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: k, namespace: ns}
            spec: {rules: [{when: [{key: request.nonsense, values: ["x"]}]}]}
            """)
        #expect(unknown.first?.message.hasPrefix("unknown key \"request.nonsense\"") == true)
    }

    @Test("source.trustDomains loads and is dropped as istiod drops it for ztunnel, with a warning")
    func trustDomains() throws {
        let loaded = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: td, namespace: ns}
            spec:
              action: DENY
              rules:
              - from: [{source: {namespaces: [namespace], notTrustDomains: [td]}}]
              - from: [{source: {trustDomains: [td-alt]}}]
            """)
        // Rule 0 checks only the namespace; rule 1's entry is empty and never matches.
        #expect(!Fixture.decide(loaded.policies, Fixture.tls).allowed)
        #expect(Fixture.decide(loaded.policies, Fixture.tlsAlt).allowed)
        #expect(loaded.warnings.map(\.field) == ["notTrustDomains", "trustDomains"])
        #expect(loaded.warnings[0].location.path == "document[0].spec.rules[0].from[0].source.notTrustDomains")
    }

    @Test("dry-run annotation, targetRefs skipped with a warning")
    func annotationsAndTargets() throws {
        let loaded = try parse(
            """
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata:
              name: trial
              namespace: ns
              annotations: {"istio.io/dry-run": "true"}
              labels: {team: a}
              resourceVersion: "12"
            spec: {action: DENY, rules: [{}]}
            status: {}
            ---
            apiVersion: security.istio.io/v1
            kind: AuthorizationPolicy
            metadata: {name: for-waypoint, namespace: ns}
            spec:
              targetRefs: [{kind: Service, group: "", name: echo}]
              rules: [{to: [{operation: {methods: [GET]}}]}]
            """)
        #expect(loaded.policies.map(\.key) == ["ns/trial"])
        #expect(loaded.policies[0].dryRun)
        #expect(loaded.warnings.map(\.field) == ["targetRefs"])
    }

    struct BadCase: Sendable, CustomTestStringConvertible {
        var name: String
        var yaml: String
        var line: Int?
        var path: String
        var message: String
        var testDescription: String { name }
    }

    static let header = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: ns}\n"

    static let badCases: [BadCase] = [
        .init(
            name: "bad CIDR", yaml: header + "spec:\n  rules:\n  - from:\n    - source: {ipBlocks: [\"10.0.0.0/33\"]}\n",
            line: 7, path: "document[0].spec.rules[0].from[0].source.ipBlocks[0]", message: "10.0.0.0/33"),
        .init(
            name: "port out of range", yaml: header + "spec:\n  rules:\n  - to:\n    - operation: {ports: [\"70000\"]}\n",
            line: 7, path: "document[0].spec.rules[0].to[0].operation.ports[0]", message: "expected a port 1…65535, got \"70000\""),
        .init(
            name: "port in a when condition", yaml: header + "spec:\n  rules:\n  - when:\n    - {key: destination.port, values: [http]}\n",
            line: 7, path: "document[0].spec.rules[0].when[0].values[0]", message: "expected a port"),
        .init(
            name: "unknown field", yaml: header + "spec:\n  rules:\n  - from:\n    - source: {principal: [x]}\n",
            line: 7, path: "document[0].spec.rules[0].from[0].source.principal", message: "unknown key"),
        .init(
            name: "CUSTOM rejected", yaml: header + "spec:\n  action: CUSTOM\n  provider: {name: ext}\n",
            line: 5, path: "document[0].spec.action", message: "action CUSTOM is not supported"),
        .init(
            name: "AUDIT rejected", yaml: header + "spec: {action: AUDIT}\n",
            line: 4, path: "document[0].spec.action", message: "action AUDIT is not supported"),
        .init(
            name: "unknown action", yaml: header + "spec: {action: allow}\n",
            line: 4, path: "document[0].spec.action", message: "expected one of ALLOW, DENY, AUDIT, CUSTOM"),
        .init(
            name: "unknown when key", yaml: header + "spec: {rules: [{when: [{key: source.pod, values: [x]}]}]}\n",
            line: 4, path: "document[0].spec.rules[0].when[0].key", message: "unknown key \"source.pod\""),
        .init(
            name: "condition without values", yaml: header + "spec: {rules: [{when: [{key: source.ip}]}]}\n",
            line: 4, path: "document[0].spec.rules[0].when[0].key", message: "needs values or notValues"),
        .init(
            name: "empty source", yaml: header + "spec: {rules: [{from: [{source: {}}]}]}\n",
            line: 4, path: "document[0].spec.rules[0].from[0].source", message: "at least one field"),
        .init(
            name: "wrong kind", yaml: "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: p}\n",
            line: 2, path: "document[0].kind", message: "expected AuthorizationPolicy or PeerAuthentication"),
        .init(
            name: "wrong apiVersion", yaml: "apiVersion: security.istio.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n",
            line: 1, path: "document[0].apiVersion", message: "security.istio.io/v1 or security.istio.io/v1beta1"),
        .init(
            name: "malformed YAML in the second document",
            yaml: header + "spec: {}\n---\n" + header.replacingOccurrences(of: "name: p", with: "name: q") + "spec: {rules: [\n",
            line: 10, path: "document[1]", message: "invalid YAML"),
        .init(
            name: "an error in the third document names it and its line",
            yaml: header + "---\n" + header.replacingOccurrences(of: "name: p", with: "name: q") + "---\n"
                + header.replacingOccurrences(of: "name: p", with: "name: r") + "spec:\n  rules:\n  - from:\n    - source: {notIpBlocks: [nope]}\n",
            line: 15, path: "document[2].spec.rules[0].from[0].source.notIpBlocks[0]", message: "nope"),
        .init(
            name: "duplicate policy", yaml: header + "---\n" + header,
            line: 5, path: "document[1]", message: "duplicate policy ns/p"),
        .init(
            name: "bad dry-run annotation", yaml: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, annotations: {istio.io/dry-run: maybe}}\n",
            line: 3, path: "document[0].metadata.annotations", message: "must be \"true\" or \"false\""),
    ]

    @Test("bad input: precise errors", arguments: badCases)
    func bad(_ c: BadCase) {
        let found = errors(c.yaml)
        let error = found.first { $0.path == c.path }
        #expect(error != nil, "no error at \(c.path): \(found)")
        #expect(error?.file == "p.yaml")
        if let line = c.line { #expect(error?.line == line, "\(found)") }
        #expect(error?.message.contains(c.message) == true, "\(found)")
    }

    @Test("documents are split on --- lines with their first line")
    func split() throws {
        let loaded = try parse("---\n" + Self.header + "spec: {}\n---\n\n# only a comment\n---\n" + Self.header.replacingOccurrences(of: "name: p", with: "name: q"))
        #expect(loaded.policies.map(\.name) == ["p", "q"])
    }
}
