// Decision time of the Authorization plugin's evaluator with N policies of 10 rules each
// in the destination's namespace, plus the same with N unrelated policies elsewhere.
// Not a test: run `swift run -c release ambit-policy-bench` and read the numbers.
import Authorization
import Kernel

let destination = Workload(
    uid: "bench//v1/Pod/bench/server", name: "server", namespace: "bench", workloadIPs: [IPAddress("10.0.0.2")!],
    labels: ["app": "server"])
let mesh = MeshSnapshot(workloads: [destination], services: [], policies: [])

/// N ALLOW policies, each with 10 rules of (principal AND port) that the probe does not
/// match, so every rule of every policy is evaluated (the worst case: default deny).
func policies(count: Int, namespace: String) -> [AuthorizationPolicy] {
    (0..<count).map { p in
        let rules: [[[PolicyMatch]]] = (0..<10).map { r in
            var who = PolicyMatch()
            who.principals = [.exact("cluster.local/ns/client-\(p)/sa/sa-\(r)"), .prefix("other.domain/ns/x-\(r)/")]
            var port = PolicyMatch()
            port.destinationPorts = [UInt16(9000 + r)]
            return [[who], [port]]
        }
        return AuthorizationPolicy(name: "allow-\(p)", namespace: namespace, scope: .namespace, action: .allow, rules: rules)
    }
}

let probe = ConnectionAttributes(
    sourceIdentity: SpiffeID(trustDomain: "cluster.local", namespace: "client", serviceAccount: "default"),
    sourceAddress: SocketAddr("10.0.0.1:40000")!, sourceWorkload: nil,
    destinationAddress: SocketAddr("10.0.0.2:8080")!, destinationWorkload: destination, isMutualTLS: true)

func measure(_ label: String, _ index: PolicyIndex, iterations: Int) {
    var denied = 0
    for _ in 0..<min(iterations, 100) where !index.evaluate(probe, mesh: mesh).decision.allowed { denied += 1 }
    let clock = ContinuousClock()
    let start = clock.now
    for _ in 0..<iterations where !index.evaluate(probe, mesh: mesh).decision.allowed { denied += 1 }
    let elapsed = clock.now - start
    let nanos = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
    let perDecision = nanos / Double(iterations)
    let shown = perDecision >= 1e6 ? "\((perDecision / 1e4).rounded() / 100) ms" : perDecision >= 1e3 ? "\((perDecision / 10).rounded() / 100) µs" : "\(Int(perDecision)) ns"
    print("\(label + String(repeating: " ", count: max(1, 58 - label.count)))\(shown) per decision (\(iterations) decisions, \(denied > 0 ? "DENY" : "ALLOW"))")
}

print("ambit policy bench: 10 rules per policy, each rule = principal clause AND port clause; no rule matches (worst case)")
for count in [10, 1_000, 10_000] {
    let index = PolicyIndex(policies(count: count, namespace: "bench"))
    measure("\(count) ALLOW policies in the destination's namespace", index, iterations: max(20, 2_000_000 / (count * 10)))
}
for count in [10, 1_000, 10_000] {
    let related = policies(count: 10, namespace: "bench")
    let unrelated = policies(count: count, namespace: "elsewhere")
    let index = PolicyIndex(related + unrelated)
    measure("10 in the namespace + \(count) in another namespace", index, iterations: 200_000)
}
var first = policies(count: 10_000, namespace: "bench")
var any = PolicyMatch()
any.destinationPorts = [8080]
first[0].rules[0] = [[any]]
measure("10000 ALLOW policies, the first one matches", PolicyIndex(first), iterations: 200_000)
