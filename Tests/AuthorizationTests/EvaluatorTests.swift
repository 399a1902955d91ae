import Authorization
import AmbitRuntime
import Kernel
import Testing

/// One match field against the three reference connections: does an ALLOW policy with
/// this single match let each through?
struct FieldCase: CustomTestStringConvertible, Sendable {
    var name: String
    var match: PolicyMatch
    var plaintext: Bool
    var tls: Bool
    var tlsAlt: Bool
    var testDescription: String { name }
}

let fieldCases: [FieldCase] = [
    .init(name: "namespaces", match: Fixture.match { $0.namespaces = [.exact("namespace")] }, plaintext: false, tls: true, tlsAlt: false),
    .init(name: "notNamespaces", match: Fixture.match { $0.notNamespaces = [.exact("namespace")] }, plaintext: true, tls: false, tlsAlt: true),
    .init(name: "serviceAccounts", match: Fixture.match { $0.serviceAccounts = [.exact("namespace/account")] }, plaintext: false, tls: true, tlsAlt: false),
    .init(name: "notServiceAccounts", match: Fixture.match { $0.notServiceAccounts = [.exact("namespace/account")] }, plaintext: true, tls: false, tlsAlt: true),
    .init(name: "principals", match: Fixture.match { $0.principals = [.exact("td/ns/namespace/sa/account")] }, plaintext: false, tls: true, tlsAlt: false),
    .init(name: "notPrincipals", match: Fixture.match { $0.notPrincipals = [.exact("td/ns/namespace/sa/account")] }, plaintext: true, tls: false, tlsAlt: true),
    .init(name: "principals presence (*)", match: Fixture.match { $0.principals = [.presence] }, plaintext: false, tls: true, tlsAlt: true),
    .init(name: "notPrincipals presence (*): plaintext has none", match: Fixture.match { $0.notPrincipals = [.presence] }, plaintext: true, tls: false, tlsAlt: false),
    .init(name: "principals prefix", match: Fixture.match { $0.principals = [.prefix("td/ns/namespace/")] }, plaintext: false, tls: true, tlsAlt: false),
    .init(name: "principals suffix", match: Fixture.match { $0.principals = [.suffix("/sa/sa-alt")] }, plaintext: false, tls: false, tlsAlt: true),
    .init(name: "namespaces prefix", match: Fixture.match { $0.namespaces = [.prefix("ns-")] }, plaintext: false, tls: false, tlsAlt: true),
    .init(name: "namespaces presence", match: Fixture.match { $0.namespaces = [.presence] }, plaintext: false, tls: true, tlsAlt: true),
    .init(name: "sourceIps", match: Fixture.match { $0.sourceIPs = [CIDR("10.0.0.1/32")!] }, plaintext: true, tls: true, tlsAlt: false),
    .init(name: "notSourceIps", match: Fixture.match { $0.notSourceIPs = [CIDR("10.0.0.1/32")!] }, plaintext: false, tls: false, tlsAlt: true),
    .init(name: "sourceIps bare address", match: Fixture.match { $0.sourceIPs = [CIDR("10.0.0.3")!] }, plaintext: false, tls: false, tlsAlt: true),
    .init(name: "sourceIps IPv6 block never holds an IPv4 source", match: Fixture.match { $0.sourceIPs = [CIDR("::/0")!] }, plaintext: false, tls: false, tlsAlt: false),
    .init(name: "destinationIps", match: Fixture.match { $0.destinationIPs = [CIDR("10.0.0.2/32")!] }, plaintext: true, tls: true, tlsAlt: false),
    .init(name: "notDestinationIps", match: Fixture.match { $0.notDestinationIPs = [CIDR("10.0.0.2/32")!] }, plaintext: false, tls: false, tlsAlt: true),
    .init(name: "destinationIps CIDR range", match: Fixture.match { $0.destinationIPs = [CIDR("10.0.0.0/24")!] }, plaintext: true, tls: true, tlsAlt: true),
    .init(name: "destinationIps narrow range", match: Fixture.match { $0.destinationIPs = [CIDR("10.0.0.4/31")!] }, plaintext: false, tls: false, tlsAlt: true),
    .init(name: "destinationPorts", match: Fixture.match { $0.destinationPorts = [8080] }, plaintext: true, tls: true, tlsAlt: false),
    .init(name: "notDestinationPorts", match: Fixture.match { $0.notDestinationPorts = [8080] }, plaintext: false, tls: false, tlsAlt: true),
    .init(name: "values OR within a field", match: Fixture.match { $0.destinationPorts = [1, 9090] }, plaintext: false, tls: false, tlsAlt: true),
    .init(name: "fields AND within a match", match: Fixture.match { $0.principals = [.presence]; $0.destinationPorts = [8080] }, plaintext: false, tls: true, tlsAlt: false),
    .init(name: "positive and not- of one field", match: Fixture.match { $0.namespaces = [.presence]; $0.notNamespaces = [.exact("ns-alt")] }, plaintext: false, tls: true, tlsAlt: false),
]

@Suite("Evaluator")
struct EvaluatorTests {
    @Test("every match field and its not- form", arguments: fieldCases)
    func field(_ c: FieldCase) {
        let policy = Fixture.policy("p", rules: [[[c.match]]])
        #expect(Fixture.decide([policy], Fixture.plaintext).allowed == c.plaintext, "plaintext")
        #expect(Fixture.decide([policy], Fixture.tls).allowed == c.tls, "tls")
        #expect(Fixture.decide([policy], Fixture.tlsAlt).allowed == c.tlsAlt, "tlsAlt")
    }

    struct StringCase: Sendable, CustomTestStringConvertible {
        var match: StringMatch
        var value: String?
        var expected: Bool
        var testDescription: String { "\(match) vs \(value ?? "nil")" }
    }

    @Test(
        "string matches: exact, prefix, suffix, presence",
        arguments: [
            StringCase(match: .exact("foo"), value: "foo", expected: true),
            StringCase(match: .exact("foo"), value: "not", expected: false),
            StringCase(match: .exact("foo"), value: "", expected: false),
            StringCase(match: .prefix("foo"), value: "foobar", expected: true),
            StringCase(match: .prefix("foo"), value: "notfoo", expected: false),
            StringCase(match: .prefix("foo"), value: "", expected: false),
            StringCase(match: .suffix("foo"), value: "barfoo", expected: true),
            StringCase(match: .suffix("foo"), value: "foonot", expected: false),
            StringCase(match: .suffix("foo"), value: nil, expected: false),
            StringCase(match: .presence, value: "foo", expected: true),
            StringCase(match: .presence, value: "", expected: false),
            StringCase(match: .presence, value: nil, expected: false),
        ])
    func string(_ c: StringCase) {
        #expect(c.match.matches(c.value) == c.expected)
    }

    struct ShapeCase: Sendable, CustomTestStringConvertible {
        var name: String
        var rules: [[[PolicyMatch]]]
        var matches: Bool
        var testDescription: String { name }
    }

    @Test(
        "empty rules vs empty rule vs empty clause vs empty match",
        arguments: [
            ShapeCase(name: "no rules never match", rules: [], matches: false),
            ShapeCase(name: "an empty rule matches", rules: [[]], matches: true),
            ShapeCase(name: "an empty clause matches", rules: [[[]]], matches: true),
            ShapeCase(name: "an all-empty match is skipped", rules: [[[PolicyMatch()]]], matches: false),
            ShapeCase(
                name: "an empty match beside a real one is skipped",
                rules: [[[PolicyMatch(), Fixture.match { $0.destinationPorts = [8080] }]]], matches: true),
            ShapeCase(
                name: "an empty rule after a failing rule matches",
                rules: [[[Fixture.match { $0.destinationPorts = [1] }]], []], matches: true),
        ])
    func shape(_ c: ShapeCase) {
        let decision = Fixture.decide([Fixture.policy("p", rules: c.rules)], Fixture.plaintext)
        #expect(decision.allowed == c.matches)
    }

    @Test("nesting: rules OR, clauses AND, matches OR")
    func nesting() {
        let nsA = Fixture.match { $0.namespaces = [.exact("a")] }
        let nsB = Fixture.match { $0.namespaces = [.exact("b")] }
        let port80 = Fixture.match { $0.destinationPorts = [80] }
        let policy = Fixture.policy("nested", rules: [[[nsA, nsB], [port80]]])
        func from(_ namespace: String, port: Int) -> ConnectionAttributes {
            Fixture.connection(identity: Fixture.identity("td", namespace, "sa"), destination: "10.0.0.2:\(port)")
        }
        #expect(Fixture.decide([policy], from("a", port: 80)).allowed)
        #expect(Fixture.decide([policy], from("b", port: 80)).allowed)
        #expect(!Fixture.decide([policy], from("bad", port: 80)).allowed)
        #expect(!Fixture.decide([policy], from("b", port: 12345)).allowed)

        let multi = Fixture.policy("multi", rules: [[[nsA]], [[nsB]]])
        #expect(Fixture.decide([multi], from("a", port: 1)).allowed)
        let second = Fixture.decide([multi], from("b", port: 1))
        #expect(second.allowed && second.rule == 1)
        #expect(!Fixture.decide([multi], from("c", port: 1)).allowed)
    }

    struct OrderCase: Sendable, CustomTestStringConvertible {
        var name: String
        var policies: [AuthorizationPolicy]
        var connection: ConnectionAttributes
        var allowed: Bool
        var policy: String?
        var rule: Int?
        var reason: String
        var testDescription: String { name }
    }

    static let anything: [[[PolicyMatch]]] = [[]]
    static let port8080: [[[PolicyMatch]]] = [[[Fixture.match { $0.destinationPorts = [8080] }]]]
    static let port1: [[[PolicyMatch]]] = [[[Fixture.match { $0.destinationPorts = [1] }]]]
    static let anyIdentity: [[[PolicyMatch]]] = [[[Fixture.match { $0.principals = [.presence] }]]]
    static let noIdentity: [[[PolicyMatch]]] = [[[Fixture.match { $0.notPrincipals = [.presence] }]]]

    static let orderCases: [OrderCase] = [
        .init(name: "no policy: allow", policies: [], connection: Fixture.plaintext, allowed: true, reason: "no policy applies"),
        .init(
            name: "a DENY that does not match and no ALLOW: allow",
            policies: [Fixture.policy("d", .deny, rules: port1)], connection: Fixture.plaintext, allowed: true,
            reason: "no ALLOW policy applies"),
        .init(
            name: "a matching DENY denies, naming policy and rule",
            policies: [Fixture.policy("d", .deny, rules: port1 + port8080)], connection: Fixture.plaintext, allowed: false,
            policy: "ns/d", rule: 1, reason: "DENY policy ns/d rule 1 matches"),
        .init(
            name: "deny over allow",
            policies: [Fixture.policy("a", rules: anything), Fixture.policy("d", .deny, rules: port8080)],
            connection: Fixture.tls, allowed: false, policy: "ns/d", rule: 0, reason: "DENY"),
        .init(
            name: "ALLOW policies exist but none matches: default deny",
            policies: [Fixture.policy("a1", rules: port1), Fixture.policy("a2", rules: anyIdentity)],
            connection: Fixture.plaintext, allowed: false, reason: "none matches (2: ns/a1, ns/a2)"),
        .init(
            name: "a matching ALLOW allows",
            policies: [Fixture.policy("a1", rules: port1), Fixture.policy("a2", rules: port1 + port8080)],
            connection: Fixture.plaintext, allowed: true, policy: "ns/a2", rule: 1, reason: "ALLOW policy ns/a2 rule 1"),
        .init(
            name: "dry-run DENY is not enforced",
            policies: [Fixture.policy("d", .deny, dryRun: true, rules: anything)], connection: Fixture.tls, allowed: true,
            reason: "no policy applies"),
        .init(
            name: "dry-run ALLOW does not make an allow-list",
            policies: [Fixture.policy("a", dryRun: true, rules: port1)], connection: Fixture.tls, allowed: true,
            reason: "no policy applies"),
        .init(
            name: "require identity: plaintext denied by ALLOW principals *",
            policies: [Fixture.policy("mtls", rules: anyIdentity)], connection: Fixture.plaintext, allowed: false,
            reason: "none matches"),
        .init(
            name: "require identity: mTLS allowed by ALLOW principals *",
            policies: [Fixture.policy("mtls", rules: anyIdentity)], connection: Fixture.tls, allowed: true, policy: "ns/mtls",
            rule: 0, reason: "ALLOW"),
        .init(
            name: "require identity: DENY notPrincipals * blocks plaintext",
            policies: [Fixture.policy("plain", .deny, rules: noIdentity)], connection: Fixture.plaintext, allowed: false,
            policy: "ns/plain", rule: 0, reason: "DENY"),
        .init(
            name: "require identity: DENY notPrincipals * lets mTLS through",
            policies: [Fixture.policy("plain", .deny, rules: noIdentity)], connection: Fixture.tls, allowed: true,
            reason: "no ALLOW policy applies"),
        .init(
            name: "an identity without mTLS is not trusted",
            policies: [Fixture.policy("mtls", rules: anyIdentity)],
            connection: Fixture.connection(identity: Fixture.identity("td", "namespace", "account"), mtls: false),
            allowed: false, reason: "none matches"),
        .init(
            name: "Global scope applies from any namespace",
            policies: [Fixture.policy("g", namespace: "other", scope: .global, .deny, rules: anything)],
            connection: Fixture.tls, allowed: false, policy: "other/g", rule: 0, reason: "DENY"),
        .init(
            name: "Namespace scope of another namespace does not apply",
            policies: [Fixture.policy("n", namespace: "other", .deny, rules: anything)], connection: Fixture.tls,
            allowed: true, reason: "no policy applies"),
        .init(
            name: "a selector matching the workload's labels applies",
            policies: [Fixture.policy("s", scope: .workloadSelector(["app": "server"]), .deny, rules: anything)],
            connection: Fixture.tls, allowed: false, policy: "ns/s", rule: 0, reason: "DENY"),
        .init(
            name: "a selector needs all its labels",
            policies: [Fixture.policy("s", scope: .workloadSelector(["app": "server", "tier": "front"]), .deny, rules: anything)],
            connection: Fixture.tls, allowed: true, reason: "no policy applies"),
        .init(
            name: "a selector in another namespace does not apply",
            policies: [Fixture.policy("s", namespace: "other", scope: .workloadSelector(["app": "server"]), .deny, rules: anything)],
            connection: Fixture.tls, allowed: true, reason: "no policy applies"),
        .init(
            name: "a selector in the root namespace applies in every namespace",
            policies: [
                Fixture.policy("s", namespace: "istio-system", scope: .workloadSelector(["app": "server"]), .deny, rules: anything)
            ],
            connection: Fixture.tls, allowed: false, policy: "istio-system/s", rule: 0, reason: "DENY"),
        .init(
            name: "a policy the workload lists applies",
            policies: [Fixture.policy("listed", scope: .workloadSelector([:]), .deny, rules: anything)],
            connection: Fixture.tls, allowed: false, policy: "ns/listed", rule: 0, reason: "DENY"),
        .init(
            name: "a label-less selector policy the workload does not list does not apply",
            policies: [Fixture.policy("unlisted", scope: .workloadSelector([:]), .deny, rules: anything)],
            connection: Fixture.tls, allowed: true, reason: "no policy applies"),
        .init(
            name: "global, namespace and selector policies combine",
            policies: [
                Fixture.policy("g", namespace: "istio-system", scope: .global, rules: port1),
                Fixture.policy("n", rules: port1),
                Fixture.policy("s", scope: .workloadSelector(["tier": "back"]), rules: port8080),
            ],
            connection: Fixture.tls, allowed: true, policy: "ns/s", rule: 0, reason: "ALLOW"),
    ]

    @Test("decision order and scope", arguments: orderCases)
    func order(_ c: OrderCase) {
        let decision = Fixture.decide(c.policies, c.connection)
        #expect(decision.allowed == c.allowed)
        #expect(decision.policy == c.policy)
        #expect(decision.rule == c.rule)
        #expect(decision.reason.contains(c.reason), "\(decision.reason)")
    }

    @Test("dry-run matches are reported with what enforcing them would do")
    func dryRunReport() {
        let index = PolicyIndex([
            Fixture.policy("d", .deny, dryRun: true, rules: Self.anything), Fixture.policy("a", rules: Self.anything),
        ])
        let evaluation = index.evaluate(Fixture.tls, destination: Fixture.server)
        #expect(evaluation.decision.allowed)
        #expect(evaluation.dryRunMatches == [.init(policy: "ns/d", action: .deny, rule: 0)])
        #expect(evaluation.dryRunDecision?.allowed == false)
        #expect(evaluation.dryRunDecision?.policy == "ns/d")
    }

    @Test("an unknown destination is denied; a known one is refreshed from the mesh")
    func destinationLookup() {
        let deny = Fixture.policy("s", scope: .workloadSelector(["app": "new"]), .deny, rules: Self.anything)
        let index = PolicyIndex([deny])
        var relabelled = Fixture.server
        relabelled.labels = ["app": "new"]
        let mesh = MeshSnapshot(workloads: [relabelled], services: [], policies: [])
        // The connection carries the old labels; the mesh's current ones decide.
        #expect(!index.evaluate(Fixture.tls, mesh: mesh).decision.allowed)
        var unknown = Fixture.tls
        unknown.destinationWorkload = nil
        unknown.destinationAddress = SocketAddr("10.9.9.9:80")!
        let decision = index.evaluate(unknown, mesh: mesh).decision
        #expect(!decision.allowed)
        #expect(decision.reason.contains("not a workload"))
    }

    @Test("the index only looks at applicable policies")
    func indexScopes() {
        var policies: [AuthorizationPolicy] = []
        for i in 0..<200 {
            policies.append(Fixture.policy("other-\(i)", namespace: "other-\(i % 7)", .deny, rules: Self.anything))
            policies.append(
                Fixture.policy("sel-\(i)", scope: .workloadSelector(["app": "x-\(i)"]), .deny, rules: Self.anything))
        }
        policies.append(Fixture.policy("mine", rules: Self.port8080))
        let index = PolicyIndex(policies)
        #expect(index.applicable(to: Fixture.server).map(\.key) == ["ns/mine"])
        #expect(Fixture.decide(policies, Fixture.tls).policy == "ns/mine")
    }
}
