import Kernel
import Testing

/// A resource kind the store was not written for (HTTP routes come this way later).
private struct TestRoute: MeshResource {
    static var kind: String { "test-route" }
    var name: String
    var backend: String
    var resourceKey: String { name }
}

private func workload(
    _ index: Int, ips: [String], services: [String] = [], network: String = "", mode: NetworkMode = .standard
) -> Workload {
    Workload(
        uid: "c//v1/Pod/ns/w\(index)", name: "w\(index)", namespace: "ns", workloadIPs: ips.map { IPAddress($0)! },
        network: network,
        services: Dictionary(uniqueKeysWithValues: services.map { (NamespacedHostname(namespace: "ns", hostname: $0), [80: 8080]) }),
        networkMode: mode)
}

private func service(_ host: String, vips: [String], cidrs: [String] = []) -> Service {
    Service(
        name: host, namespace: "ns", hostname: host, vips: vips.map { NetworkAddress(ip: IPAddress($0)!) }, ports: [80: 8080],
        cidrVIPs: cidrs.map { NetworkCIDR(cidr: CIDR($0)!) })
}

/// Every answer a snapshot gives about `addresses` and `services`, for comparing a
/// snapshot made by deltas with one built from scratch.
private func answers(_ mesh: MeshSnapshot, addresses: [String], services: [String]) -> [String] {
    var out: [String] = []
    out += mesh.workloads.values.map { "w \($0.uid) \($0.workloadIPs) \($0.services.keys.sorted())" }.sorted()
    out += mesh.services.values.map { "s \($0.namespacedHostname) \($0.vips)" }.sorted()
    for text in addresses {
        let ip = IPAddress(text)!
        out.append("at \(text): \(mesh.workload(at: ip)?.uid ?? "-") \(mesh.service(at: ip)?.hostname ?? "-")")
        out.append("any network at \(text): \(mesh.workloads(at: ip).map(\.uid))")
    }
    for host in services {
        out.append("endpoints \(host): \(mesh.endpoints(of: NamespacedHostname(namespace: "ns", hostname: host)).map(\.uid))")
        out.append("hostname \(host): \(mesh.services(hostname: host).map(\.namespacedHostname))")
    }
    return out
}

/// The same answers computed naively from the plain lists (the rules the indexes keep: the
/// greatest uid owns a shared address, host-network workloads own none; the greatest name
/// a shared VIP, else the longest block, then the greatest name; endpoints in uid order).
private func referenceAnswers(_ workloads: [Workload], _ services: [Service], addresses: [String], hosts: [String]) -> [String] {
    var out: [String] = []
    out += workloads.map { "w \($0.uid) \($0.workloadIPs) \($0.services.keys.sorted())" }.sorted()
    out += services.map { "s \($0.namespacedHostname) \($0.vips)" }.sorted()
    for text in addresses {
        let ip = IPAddress(text)!
        let byAddress = workloads.filter { $0.workloadIPs.contains(ip) && $0.networkMode != .hostNetwork }
        let owner = byAddress.filter { $0.network == "" }.map(\.uid).max()
        let exact = services.filter { $0.vips.contains(NetworkAddress(ip: ip)) }.max { $0.namespacedHostname < $1.namespacedHostname }
        let block = services.flatMap { service in
            service.cidrVIPs.filter { $0.cidr.contains(ip) }.map { (service, $0.cidr.prefixLength) }
        }.max { ($0.1, $0.0.namespacedHostname) < ($1.1, $1.0.namespacedHostname) }?.0
        out.append("at \(text): \(owner ?? "-") \((exact ?? block)?.hostname ?? "-")")
        out.append("any network at \(text): \(byAddress.map(\.uid).sorted())")
    }
    for host in hosts {
        let name = NamespacedHostname(namespace: "ns", hostname: host)
        out.append("endpoints \(host): \(workloads.filter { $0.services[name] != nil }.map(\.uid).sorted())")
        out.append("hostname \(host): \(services.filter { $0.hostname == host }.map(\.namespacedHostname).sorted())")
    }
    return out
}

@Suite("Mesh store: deltas from several sources")
struct MeshStoreDeltaTests {
    @Test("upserts and removals by key keep every index as a snapshot built from scratch has it")
    func incrementalIndexesMatchRebuild() {
        var rng = SplitMix64(seed: 42)
        let store = MeshStore()
        let origin = store.origin(named: "source")
        let addresses = (1...12).map { "10.0.0.\($0)" }
        let hosts = ["a", "b", "c", "d"]
        var workloads: [Int: Workload] = [:]
        var services: [String: Service] = [:]
        for step in 0..<600 {
            var delta = MeshDelta()
            for _ in 0..<Int(rng.next() % 4 + 1) {
                switch rng.next() % 5 {
                case 0, 1:
                    // Addresses overlap on purpose: the owner of a shared address is the greatest uid.
                    let index = Int(rng.next() % 20)
                    let ips = (0..<Int(rng.next() % 3)).map { _ in addresses[Int(rng.next() % UInt64(addresses.count))] }
                    let member = (0..<Int(rng.next() % 3)).map { _ in hosts[Int(rng.next() % UInt64(hosts.count))] }
                    let made = workload(
                        index, ips: Array(Set(ips)), services: Array(Set(member)), network: rng.next() % 4 == 0 ? "east" : "",
                        mode: rng.next() % 4 == 0 ? .hostNetwork : .standard)
                    workloads[index] = made
                    delta.upsert(made)
                case 2:
                    let index = Int(rng.next() % 20)
                    workloads[index] = nil
                    delta.remove(Workload.self, key: "c//v1/Pod/ns/w\(index)")
                case 3:
                    let host = hosts[Int(rng.next() % UInt64(hosts.count))]
                    let blocks = [[], ["10.0.0.0/29"], ["10.0.0.8/30"], ["10.0.0.0/28", "10.0.0.4/30"]]
                    let made = service(
                        host, vips: rng.next() % 3 == 0 ? [] : [addresses[Int(rng.next() % UInt64(addresses.count))]],
                        cidrs: blocks[Int(rng.next() % UInt64(blocks.count))])
                    services[host] = made
                    delta.upsert(made)
                default:
                    let host = hosts[Int(rng.next() % UInt64(hosts.count))]
                    services[host] = nil
                    delta.remove(Service.self, key: NamespacedHostname(namespace: "ns", hostname: host))
                }
            }
            let incremental = store.apply(delta, from: origin)
            let same = answers(incremental, addresses: addresses, services: hosts)
                == referenceAnswers(Array(workloads.values), Array(services.values), addresses: addresses, hosts: hosts)
            #expect(same, "step \(step)")
            if !same { return }
        }
    }

    @Test("two sources side by side: neither overwrites the other; the first registered is in force, the other takes over when it goes")
    func twoSourcesConflictRule() {
        let store = MeshStore()
        let first = store.origin(named: "local-config")
        let second = store.origin(named: "xds")
        #expect(store.origins == ["local-config", "xds"])

        var fromFile = MeshDelta()
        fromFile.upsert(workload(1, ips: ["10.0.0.1"]))
        fromFile.upsert(workload(2, ips: ["10.0.0.2"]))
        store.apply(fromFile, from: first)
        var fromXDS = MeshDelta()
        fromXDS.upsert(workload(2, ips: ["10.0.0.22"]))  // the same key, another version
        fromXDS.upsert(workload(3, ips: ["10.0.0.3"]))
        let both = store.apply(fromXDS, from: second)

        #expect(both.workloads.count == 3)
        #expect(both.workloads["c//v1/Pod/ns/w2"]?.workloadIPs == [IPAddress("10.0.0.2")!])
        #expect(both.origin(of: Workload.self, key: "c//v1/Pod/ns/w2") == "local-config")
        #expect(both.origin(of: Workload.self, key: "c//v1/Pod/ns/w3") == "xds")
        #expect(both.workload(at: IPAddress("10.0.0.22")!) == nil, "the shadowed version is not indexed")
        #expect(store.conflicts == [
            MeshStore.Conflict(kind: "workload", key: "c//v1/Pod/ns/w2", inForce: "local-config", shadowed: ["xds"])
        ])

        // The file drops everything: the xds versions stay, w2's takes over.
        let (afterFile, changes) = store.replace(with: MeshContent(workloads: [], services: [], policies: []), from: first)
        #expect(changes == 2)
        #expect(afterFile.workloads.keys.sorted() == ["c//v1/Pod/ns/w2", "c//v1/Pod/ns/w3"])
        #expect(afterFile.workload(at: IPAddress("10.0.0.22")!)?.uid == "c//v1/Pod/ns/w2")
        #expect(afterFile.workload(at: IPAddress("10.0.0.2")!) == nil)
        #expect(afterFile.origin(of: Workload.self, key: "c//v1/Pod/ns/w2") == "xds")
        #expect(store.conflicts.isEmpty)
    }

    @Test("replace diffs against the source's last content: unchanged content publishes nothing, one change is one change")
    func replaceDiffs() {
        let store = MeshStore()
        let origin = store.origin(named: "file")
        let content = MeshContent(
            workloads: (0..<50).map { workload($0, ips: ["10.1.0.\($0)"], services: ["a"]) },
            services: [service("a", vips: ["10.96.0.1"])], policies: [])
        let (loaded, initial) = store.replace(with: content, from: origin)
        #expect(initial == 51)
        #expect(loaded.endpoints(of: NamespacedHostname(namespace: "ns", hostname: "a")).count == 50)

        let (again, none) = store.replace(with: content, from: origin)
        #expect(none == 0)
        #expect(again.version == loaded.version, "no change, no new version")

        var edited = (0..<50).map { workload($0, ips: ["10.1.0.\($0)"], services: ["a"]) }
        edited[7] = workload(7, ips: ["10.1.1.7"], services: ["a"])
        let (changed, one) = store.replace(with: MeshContent(workloads: edited, services: [service("a", vips: ["10.96.0.1"])], policies: []), from: origin)
        #expect(one == 1)
        #expect(changed.version == loaded.version + 1)
        #expect(changed.workload(at: IPAddress("10.1.1.7")!)?.name == "w7")
        #expect(changed.workload(at: IPAddress("10.1.0.7")!) == nil)
        #expect(loaded.workload(at: IPAddress("10.1.0.7")!)?.name == "w7", "an older snapshot keeps what it had")
    }

    @Test("a change hidden behind another source's version publishes nothing")
    func shadowedChangeIsQuiet() async {
        let store = MeshStore()
        let first = store.origin(named: "a")
        let second = store.origin(named: "b")
        var delta = MeshDelta()
        delta.upsert(workload(1, ips: ["10.0.0.1"]))
        store.apply(delta, from: first)
        let version = store.apply(delta, from: second).version
        var hidden = MeshDelta()
        hidden.upsert(workload(1, ips: ["10.0.0.9"]))
        #expect(store.apply(hidden, from: second).version == version)
        #expect(store.snapshot.workload(at: IPAddress("10.0.0.1")!) != nil)
    }

    @Test("a resource kind the store does not know is stored, replaced and removed by key, with its origin")
    func laterKinds() {
        let store = MeshStore()
        let origin = store.origin(named: "routes")
        var delta = MeshDelta()
        delta.upsert(TestRoute(name: "r1", backend: "a"))
        delta.upsert(TestRoute(name: "r2", backend: "b"))
        let first = store.apply(delta, from: origin)
        #expect(first.resources(of: TestRoute.self).count == 2)
        #expect(first.resources(of: TestRoute.self)["r1"]?.backend == "a")
        #expect(first.origin(of: TestRoute.self, key: "r2") == "routes")
        #expect(first.workloads.isEmpty)

        var content = MeshContent()
        content.set([TestRoute(name: "r1", backend: "c")])
        let (second, changes) = store.replace(with: content, from: origin)
        #expect(changes == 2)
        #expect(second.resources(of: TestRoute.self).keys == ["r1"])
        #expect(second.resources(of: TestRoute.self)["r1"]?.backend == "c")
        #expect(first.resources(of: TestRoute.self)["r1"]?.backend == "a")
    }

    @Test("publish still replaces the whole mesh and always makes a new version")
    func publishCompatibility() {
        let store = MeshStore()
        let one = store.publish(MeshSnapshot(workloads: [workload(1, ips: ["10.0.0.1"])], services: [], policies: []))
        let two = store.publish(MeshSnapshot(workloads: [workload(2, ips: ["10.0.0.2"])], services: [], policies: []))
        #expect(two.version == one.version + 1)
        #expect(two.workloads.keys == ["c//v1/Pod/ns/w2"])
        #expect(store.publish(two).version == two.version + 1)
    }
}
