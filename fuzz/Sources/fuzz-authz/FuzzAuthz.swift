import Authorization
import FuzzSupport
import Kernel

/// Istio `AuthorizationPolicy` and `PeerAuthentication` YAML → Ambit policies (the
/// translation), then the evaluator over the result, PeerAuthentication-derived policies
/// included.
///
/// Invariants: parsing returns policies or throws ``ConfigErrors`` with at least one
/// error; every connection evaluated gets a decision, and a policy set with no ALLOW or
/// DENY policy applying allows (Istio's order).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: fuzzBytes(data, size), as: UTF8.self)
    let loaded: LoadedPolicies
    do {
        loaded = try IstioPolicyFile.parse(yaml: text, file: "policy.yaml", rootNamespace: "istio-system")
    } catch {
        invariant(!error.errors.isEmpty, "ConfigErrors without an error")
        _ = "\(error)"
        return 0
    }
    _ = loaded.warnings.map(\.description)
    let index = PolicyIndex(
        loaded.policies, peerAuthentications: loaded.peerAuthentications, rootNamespace: "istio-system")
    // Destinations the policies can select: each policy's namespace, with its selector's labels.
    var destinations: [Workload] = [
        Workload(uid: "w0", name: "w0", namespace: "default", workloadIPs: [IPAddress("10.0.0.1")!])
    ]
    for (number, policy) in loaded.policies.prefix(8).enumerated() {
        var labels: [String: String] = [:]
        if case .workloadSelector(let selector) = policy.scope { labels = selector }
        destinations.append(
            Workload(
                uid: "w\(number + 1)", name: "w\(number + 1)", namespace: policy.namespace,
                workloadIPs: [IPAddress("10.0.1.\(number + 1)")!], labels: labels,
                authorizationPolicies: [policy.key]))
    }
    for (number, peer) in loaded.peerAuthentications.prefix(8).enumerated() {
        destinations.append(
            Workload(
                uid: "p\(number)", name: "p\(number)", namespace: peer.namespace,
                workloadIPs: [IPAddress("10.0.2.\(number + 1)")!], labels: peer.selector ?? [:]))
    }
    let sources: [(SpiffeID?, String)] = [
        (nil, "10.0.0.9"), (SpiffeID(trustDomain: "cluster.local", namespace: "default", serviceAccount: "sa"), "10.1.2.3"),
        (SpiffeID(trustDomain: "td", namespace: "ns-a", serviceAccount: "x"), "fd00::7"),
    ]
    let peerPorts: [UInt16] = loaded.peerAuthentications.prefix(4).flatMap { Array($0.portLevel.keys) }
    for destination in destinations {
        for (identity, address) in sources {
            for port in [UInt16(80), 443, 9090] + peerPorts {
                let attributes = ConnectionAttributes(
                    sourceIdentity: identity, sourceAddress: SocketAddr(ip: IPAddress(address)!, port: 40000),
                    sourceWorkload: nil, destinationAddress: SocketAddr(ip: destination.workloadIPs[0], port: port),
                    destinationWorkload: destination, isMutualTLS: identity != nil)
                let evaluation = index.evaluate(attributes, destination: destination)
                _ = "\(evaluation.decision)"
                _ = index.explain(attributes, destination: destination).map(\.summary)
            }
        }
    }
    return 0
}
