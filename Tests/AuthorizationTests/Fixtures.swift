import Authorization
import AmbitRuntime
import Kernel

/// Workloads, connections and policy builders shared by the tests.
enum Fixture {
    static let server = Workload(
        uid: "Kubernetes//v1/Pod/ns/server", name: "server", namespace: "ns", workloadIPs: [IPAddress("10.0.0.2")!],
        labels: ["app": "server", "tier": "back"], authorizationPolicies: ["ns/listed"])

    static func identity(_ trustDomain: String, _ namespace: String, _ account: String) -> SpiffeID {
        SpiffeID(trustDomain: trustDomain, namespace: namespace, serviceAccount: account)
    }

    static func connection(
        identity: SpiffeID?, source: String = "10.0.0.1:1234", destination: String = "10.0.0.2:8080",
        mtls: Bool? = nil, to workload: Workload = server
    ) -> ConnectionAttributes {
        ConnectionAttributes(
            sourceIdentity: identity, sourceAddress: SocketAddr(source)!, sourceWorkload: nil,
            destinationAddress: SocketAddr(destination)!, destinationWorkload: workload,
            isMutualTLS: mtls ?? (identity != nil))
    }

    /// No identity, from 10.0.0.1 to 10.0.0.2:8080.
    static let plaintext = connection(identity: nil)
    /// td/ns/namespace/sa/account, from 10.0.0.1 to 10.0.0.2:8080.
    static let tls = connection(identity: identity("td", "namespace", "account"))
    /// td-alt/ns/ns-alt/sa/sa-alt, from 10.0.0.3 to 10.0.0.4:9090.
    static let tlsAlt = connection(
        identity: identity("td-alt", "ns-alt", "sa-alt"), source: "10.0.0.3:1234", destination: "10.0.0.4:9090")

    static func policy(
        _ name: String, namespace: String = "ns", scope: AuthorizationPolicy.Scope = .namespace,
        _ action: AuthorizationPolicy.Action = .allow, dryRun: Bool = false, rules: [[[PolicyMatch]]]
    ) -> AuthorizationPolicy {
        AuthorizationPolicy(name: name, namespace: namespace, scope: scope, action: action, dryRun: dryRun, rules: rules)
    }

    static func match(_ build: (inout PolicyMatch) -> Void) -> PolicyMatch {
        var match = PolicyMatch()
        build(&match)
        return match
    }

    static func decide(_ policies: [AuthorizationPolicy], _ connection: ConnectionAttributes, root: String = "istio-system")
        -> AuthorizationDecision
    {
        PolicyIndex(policies, rootNamespace: root).evaluate(connection, destination: connection.destinationWorkload!).decision
    }
}
