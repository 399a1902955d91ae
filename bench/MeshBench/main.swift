// The mesh store's cost of a full load and of one update, at several mesh sizes (issue
// 16: "the cost of one update does not grow with the mesh"). Not a test: run
// `swift run -c release ambit-mesh-bench` and read the numbers (BENCHMARKS.md).
import Foundation
import Kernel

/// A mesh of `count` workloads in 100 services (one VIP each), two addresses per workload
/// on one node in twenty: the shape of a cluster, not of a test.
func content(workloads count: Int, variant: Int = 0) -> (workloads: [Workload], services: [Service]) {
    let services = (0..<100).map { index in
        Service(
            name: "svc-\(index)", namespace: "ns-\(index % 10)", hostname: "svc-\(index).ns-\(index % 10).svc.cluster.local",
            vips: [NetworkAddress(ip: .v4(0x0A60_0000 + UInt32(index)))], ports: [80: 8080])
    }
    let workloads = (0..<count).map { index in
        let service = services[index % services.count]
        return Workload(
            uid: "Kubernetes//Pod/ns-\(index % 10)/pod-\(index)", name: "pod-\(index)", namespace: "ns-\(index % 10)",
            serviceAccount: "sa-\(index % 50)", workloadIPs: [.v4(0x0A00_0000 + UInt32(index) + UInt32(variant) * 0x0010_0000)],
            tunnelProtocol: .hbone, node: "node-\(index % 20)", services: [service.namespacedHostname: [80: 8080]],
            labels: ["app": "app-\(index % 100)"])
    }
    return (workloads, services)
}

func nanoseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e9 + Double(duration.components.attoseconds) / 1e9
}

func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted[sorted.count / 2]
}

func format(_ nanos: Double) -> String {
    if nanos >= 1e6 { return String(format: "%.1f ms", nanos / 1e6) }
    if nanos >= 1e3 { return String(format: "%.1f µs", nanos / 1e3) }
    return String(format: "%.0f ns", nanos)
}

let clock = ContinuousClock()
print("workloads | full load (replace into an empty store) | rebuild from scratch (MeshSnapshot(init)) | one workload update, median of 2,000 (p99) | same, a reader holding each previous snapshot | file reload with one change (diff + apply)")
print("---|---|---|---|---|---")
for size in [1_000, 10_000, 100_000] {
    let mesh = content(workloads: size)
    // Full load: one origin's whole content into an empty store (what a first xDS push or
    // the mesh file at start costs).
    var loads: [Double] = []
    var store = MeshStore()
    for _ in 0..<3 {
        store = MeshStore()
        let origin = store.origin(named: "bench")
        let start = clock.now
        store.replace(with: MeshContent(workloads: mesh.workloads, services: mesh.services, policies: []), from: origin)
        loads.append(nanoseconds(clock.now - start))
    }
    var rebuilds: [Double] = []
    for _ in 0..<3 {
        let start = clock.now
        let snapshot = MeshSnapshot(workloads: mesh.workloads, services: mesh.services, policies: [])
        rebuilds.append(nanoseconds(clock.now - start))
        precondition(snapshot.workloads.count == size)
    }
    let origin = store.origin(named: "bench")
    // One update: a workload moves to another address (an xDS delta of one resource).
    func updates(holdingSnapshots: Bool, series: UInt32) -> [Double] {
        var times: [Double] = []
        var held: [MeshSnapshot] = []
        for round in 0..<2_000 {
            var moved = mesh.workloads[(round * 7919) % size]
            moved.workloadIPs = [.v4(0x0B00_0000 + series << 16 + UInt32(round))]
            var delta = MeshDelta()
            delta.upsert(moved)
            if holdingSnapshots { held.append(store.snapshot) }
            let start = clock.now
            let next = store.apply(delta, from: origin)
            times.append(nanoseconds(clock.now - start))
            precondition(next.workload(at: moved.workloadIPs[0])?.uid == moved.uid)
            if held.count > 8 { held.removeFirst() }
        }
        return times
    }
    let plain = updates(holdingSnapshots: false, series: 1)
    let held = updates(holdingSnapshots: true, series: 2)
    // A mesh file reloaded with one workload changed: the source diffs its whole content
    // (O(file)), the store applies one change.
    var edited = mesh.workloads
    var reloads: [Double] = []
    for round in 0..<5 {
        edited[round].workloadIPs = [.v4(0x0C00_0000 + UInt32(round))]
        let start = clock.now
        let (_, changes) = store.replace(with: MeshContent(workloads: edited, services: mesh.services, policies: []), from: origin)
        reloads.append(nanoseconds(clock.now - start))
        precondition(changes >= 1)
    }
    let p99 = { (values: [Double]) in values.sorted()[values.count * 99 / 100] }
    print(
        "\(size) | \(format(median(loads))) | \(format(median(rebuilds))) | \(format(median(plain))) (\(format(p99(plain)))) | \(format(median(held))) (\(format(p99(held)))) | \(format(median(reloads)))"
    )
}
