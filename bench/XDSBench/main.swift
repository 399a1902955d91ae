// The xDS path at scale (issue 18): the istiod stand-in pushes N workloads, M services and
// P policies over delta ADS (TLS, loopback 127.0.13.1) to a node running the real `xds`
// plugin, and this measures what a node pays: the initial sync (push → applied in the
// mesh store → ACK received by istiod), the resident memory it keeps per workload, and
// one-workload updates and removals (push → applied → ACK). Not a test: run
// `swift run -c release ambit-xds-bench [--workloads N] [--services M] [--policies P]
// [--updates U] [--removals R]` and read the numbers (BENCHMARKS.md, "xDS at scale").
import AmbitRuntime
import CAmbitSystem
import Certificates
import Foundation
import IstioXDSAPI
import IstiodStandIn
import Kernel
import Logging
import NIOConcurrencyHelpers
import SwiftProtobuf
import TestSupport
import XDS

#if canImport(Glibc)
import Glibc
#endif

// MARK: Options

struct Options {
    var workloads = 10_000
    var services = 1_000
    var policies = 100
    var updates = 200
    var removals = 20

    init(_ arguments: [String]) {
        var rest = arguments.dropFirst()
        while let flag = rest.popFirst() {
            guard let text = rest.popFirst(), let value = Int(text), value >= 0 else {
                usage("\(flag) needs a non-negative number")
            }
            switch flag {
            case "--workloads": workloads = value
            case "--services": services = max(1, value)
            case "--policies": policies = value
            case "--updates": updates = value
            case "--removals": removals = value
            default: usage("unknown flag \(flag)")
            }
        }
        removals = min(removals, workloads)
    }
}

func usage(_ problem: String) -> Never {
    FileHandle.standardError.write(
        Data(
            """
            ambit-xds-bench: \(problem)
            usage: ambit-xds-bench [--workloads N] [--services M] [--policies P] [--updates U] [--removals R]

            """.utf8))
    exit(2)
}

let addressURL = WorkloadAPI.addressTypeURL
let authorizationURL = WorkloadAPI.authorizationTypeURL
let host = "127.0.13.1"
let istiodName = "istiod.istio-system.svc"

// MARK: The mesh istiod serves

/// Four bytes of an IPv4 address.
func ipv4(_ value: UInt32) -> Data { withUnsafeBytes(of: value.bigEndian) { Data($0) } }

func serviceName(_ index: Int) -> (namespace: String, hostname: String) {
    let namespace = "ns-\(index % 10)"
    return (namespace, "svc-\(index).\(namespace).svc.cluster.local")
}

/// Service `index`: one VIP in 10.96/12, port 80 → 8080.
func service(_ index: Int) -> (name: String, body: Google_Protobuf_Any) {
    let (namespace, hostname) = serviceName(index)
    var s = Istio_Workload_Service()
    s.name = "svc-\(index)"
    s.namespace = namespace
    s.hostname = hostname
    var vip = Istio_Workload_NetworkAddress()
    vip.address = ipv4(0x0A60_0000 + UInt32(index))
    s.addresses = [vip]
    var port = Istio_Workload_Port()
    port.servicePort = 80
    port.targetPort = 8080
    s.ports = [port]
    var address = Istio_Workload_Address()
    address.service = s
    return ("\(namespace)/\(hostname)", IstiodStandIn.body(address))
}

/// The workloads' shape: each backs one of `services` services.
struct Workloads: Sendable {
    var services: Int

    func uid(_ index: Int) -> String { "Kubernetes//Pod/ns-\((index % services) % 10)/pod-\(index)" }

    /// Workload `index`: an HBONE pod on one node in twenty, backing service
    /// `index % services`, at `ip` (10.0/8 by default).
    func body(_ index: Int, ip: UInt32? = nil) -> Google_Protobuf_Any {
        let backs = index % services
        let (namespace, hostname) = serviceName(backs)
        var w = Istio_Workload_Workload()
        w.uid = uid(index)
        w.name = "pod-\(index)"
        w.namespace = namespace
        w.serviceAccount = "sa-\(index % 50)"
        w.addresses = [ipv4(ip ?? (0x0A00_0000 + UInt32(index)))]
        w.tunnelProtocol = .hbone
        w.node = "node-\(index % 20)"
        w.clusterID = "Kubernetes"
        w.trustDomain = "cluster.local"
        w.canonicalName = "app-\(backs)"
        w.canonicalRevision = "v1"
        w.workloadName = "app-\(backs)"
        w.workloadType = .pod
        var port = Istio_Workload_Port()
        port.servicePort = 80
        port.targetPort = 8080
        var ports = Istio_Workload_PortList()
        ports.ports = [port]
        w.services["\(namespace)/\(hostname)"] = ports
        var address = Istio_Workload_Address()
        address.workload = w
        return IstiodStandIn.body(address)
    }
}

/// Policy `index`: an ALLOW policy for its namespace admitting one service account.
func policy(_ index: Int) -> (name: String, body: Google_Protobuf_Any) {
    let namespace = "ns-\(index % 10)"
    var a = Istio_Security_Authorization()
    a.name = "policy-\(index)"
    a.namespace = namespace
    a.scope = .namespace
    a.action = .allow
    var principal = Istio_Security_StringMatch()
    principal.exact = "spiffe://cluster.local/ns/\(namespace)/sa/sa-\(index % 50)"
    var match = Istio_Security_Match()
    match.principals = [principal]
    var clause = Istio_Security_Clause()
    clause.matches = [match]
    var rule = Istio_Security_Rule()
    rule.clauses = [clause]
    a.rules = [rule]
    return ("\(namespace)/policy-\(index)", IstiodStandIn.body(a))
}

// MARK: Measuring

/// The process's resident set (VmRSS), in KiB; 0 where /proc is not there.
func residentKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
    return 0
}

/// Gives freed heap back to the system (glibc keeps it otherwise), so RSS shows what is
/// live rather than what malloc kept.
func trimHeap() {
    _ = ambit_malloc_trim()
}

func milliseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e3 + Double(duration.components.attoseconds) / 1e15
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    guard !values.isEmpty else { return .nan }
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int((Double(sorted.count - 1) * p).rounded()))]
}

func format(_ ms: Double) -> String {
    if ms.isNaN { return "-" }
    if ms >= 100 { return String(format: "%.0f ms", ms) }
    if ms >= 1 { return String(format: "%.2f ms", ms) }
    return String(format: "%.0f µs", ms * 1e3)
}

/// Instants pushed by callbacks (the mesh store's observer, the stand-in's request
/// observer), awaited in order by the benchmark.
final class Signals: Sendable {
    let stream: AsyncStream<(ContinuousClock.Instant, String)>
    private let continuation: AsyncStream<(ContinuousClock.Instant, String)>.Continuation

    init() { (stream, continuation) = AsyncStream.makeStream(of: (ContinuousClock.Instant, String).self) }

    func signal(_ tag: String) { continuation.yield((ContinuousClock.now, tag)) }
}

// MARK: The run

@MainActor
func main() async throws {
    let options = Options(CommandLine.arguments)
    let workloads = Workloads(services: options.services)
    let clock = ContinuousClock()
    var logger = Logger(label: "ambit-xds-bench")
    logger.logLevel = ProcessInfo.processInfo.environment["XDS_BENCH_LOG"].flatMap(Logger.Level.init(rawValue:)) ?? .critical

    let dir = try TemporaryDirectory()
    defer { dir.remove() }
    let root = try CertificateAuthority.makeRoot(trustDomain: "cluster.local")
    _ = try CertificateAuthority.write(root, to: dir.path + "/ca", force: false)
    let authority = try CertificateAuthority.load(directory: dir.path + "/ca", trustDomain: "cluster.local")
    let serving = try authority.issueServingCertificate(names: [istiodName], lifetime: .seconds(3600))
    try dir.write("root-cert.pem", try String(contentsOfFile: dir.path + "/ca/root-cert.pem", encoding: .utf8))
    try dir.write("token", "bench-token\n")

    let istiod = IstiodStandIn(
        host: host, certificateChainPEM: serving.chainPEM, privateKeyPEM: serving.keyPEM, tokens: ["bench-token"])
    let port = try await istiod.start()
    // Both initial responses wait until the node has asked and the baseline is taken.
    istiod.hold(addressURL)
    istiod.hold(authorizationURL)

    let node = try await RunningNode.start(
        manifest: """
            node: {name: node-0, drainDeadline: 1s}
            admin: {address: "\(host):0", readinessAddress: "\(host):0"}
            plugins:
              - id: xds
                config:
                  address: "\(host):\(port)"
                  rootCertificate: root-cert.pem
                  tokenFile: token
                  clusterId: Kubernetes
                  serverName: \(istiodName)
            """,
        registry: PluginRegistry([PluginType(XDSPlugin.self)]), logger: logger, directory: dir, timeout: .seconds(30)
    ) { $0.plugin(XDSPlugin.self) != nil }

    let signals = Signals()
    var events = signals.stream.makeAsyncIterator()
    node.node.mesh.observe { _ in signals.signal("applied") }
    istiod.observeRequests { received in
        guard !received.initial else { return }
        signals.signal(received.request.typeURL == addressURL ? "ack-address" : "ack-authorization")
    }
    guard
        await eventually(timeout: .seconds(30), interval: .milliseconds(5), { @Sendable in istiod.requests.count(where: \.initial) >= 2 })
    else {
        print("the node did not subscribe within 30 s (pending: \(node.node.readiness.pending))")
        exit(1)
    }

    // MARK: Initial sync

    let build = clock.now
    var addresses: [(name: String, version: String, body: Google_Protobuf_Any)] = []
    addresses.reserveCapacity(options.workloads + options.services)
    for index in 0..<options.services {
        let s = service(index)
        addresses.append((s.name, "1", s.body))
    }
    for index in 0..<options.workloads { addresses.append((workloads.uid(index), "1", workloads.body(index))) }
    istiod.set(addressURL, upserting: addresses)
    istiod.set(authorizationURL, upserting: (0..<options.policies).map { let p = policy($0); return (p.name, "1", p.body) })
    let buildTime = clock.now - build
    addresses = []

    trimHeap()
    let rssBefore = residentKiB()
    let heapBefore = ambit_heap_in_use()

    let syncStart = clock.now
    istiod.release(addressURL)
    istiod.release(authorizationURL)
    // The mesh publishes once per response (Address, then Authorization when it holds
    // policies); the ACKs come in either order.
    var appliedAt: [ContinuousClock.Instant] = []
    var ackAddress: ContinuousClock.Instant?
    var ackAuthorization: ContinuousClock.Instant?
    let expectedPublishes = (options.workloads + options.services > 0 ? 1 : 0) + (options.policies > 0 ? 1 : 0)
    while ackAddress == nil || ackAuthorization == nil || appliedAt.count < expectedPublishes {
        guard let (instant, tag) = await events.next(isolation: #isolation) else { fatalError("signal stream ended") }
        switch tag {
        case "applied": appliedAt.append(instant)
        case "ack-address": ackAddress = instant
        default: ackAuthorization = instant
        }
    }
    let syncACK = max(ackAddress!, ackAuthorization!) - syncStart
    let syncApplied = (appliedAt.max() ?? syncStart) - syncStart
    let addressApplied = (appliedAt.min() ?? syncStart) - syncStart
    guard await eventually(timeout: .seconds(5), interval: .milliseconds(1), { @Sendable in node.node.readiness.isReady }) else {
        print("the node is not ready after the sync (pending: \(node.node.readiness.pending))")
        exit(1)
    }
    let readyTime = clock.now - syncStart
    let mesh = node.node.mesh.snapshot
    guard mesh.workloads.count == options.workloads, mesh.services.count == options.services,
        mesh.policies.count == options.policies
    else {
        print(
            "the mesh holds \(mesh.workloads.count) workloads, \(mesh.services.count) services, "
                + "\(mesh.policies.count) policies; expected \(options.workloads), \(options.services), \(options.policies)")
        exit(1)
    }

    let rssAfterUntrimmed = residentKiB()
    trimHeap()
    let rssAfter = residentKiB()
    let heapAfter = ambit_heap_in_use()
    let heapPerResource =
        options.workloads > 0 && heapBefore >= 0 ? Double(heapAfter - heapBefore) / Double(options.workloads + options.services) : .nan
    let bytesPerWorkload =
        options.workloads > 0 ? Double(rssAfter - rssBefore) * 1024 / Double(options.workloads + options.services) : .nan

    // MARK: One-workload updates

    /// One push of `upserts`/`removals`; returns (push → applied, push → ACK) in ms.
    func timedPush(
        _ events: inout AsyncStream<(ContinuousClock.Instant, String)>.Iterator,
        upserting upserts: [(name: String, version: String, body: Google_Protobuf_Any)] = [], removing removals: [String] = []
    ) async -> (applied: Double, ack: Double) {
        let start = clock.now
        istiod.push(addressURL, upserting: upserts, removing: removals)
        var applied: ContinuousClock.Instant?
        var ack: ContinuousClock.Instant?
        while applied == nil || ack == nil {
            guard let (instant, tag) = await events.next(isolation: #isolation) else { fatalError("signal stream ended") }
            switch tag {
            case "applied": applied = applied ?? instant
            case "ack-address": ack = instant
            default: break
            }
        }
        return (milliseconds(applied! - start), milliseconds(ack! - start))
    }

    var updateApplied: [Double] = []
    var updateACK: [Double] = []
    if options.workloads > 0 {
        for round in 0..<options.updates {
            // A different workload each time (spread over the mesh), moved to an address of
            // its own in 11/8 so the store sees a change.
            let index = (round * 7_919) % options.workloads
            let body = workloads.body(index, ip: 0x0B00_0000 + UInt32(round))
            let timing = await timedPush(&events, upserting: [(workloads.uid(index), "u\(round)", body)])
            updateApplied.append(timing.applied)
            updateACK.append(timing.ack)
        }
    }

    var removalApplied: [Double] = []
    var removalACK: [Double] = []
    for round in 0..<options.removals {
        let index = options.workloads - 1 - round
        let timing = await timedPush(&events, removing: [workloads.uid(index)])
        removalApplied.append(timing.applied)
        removalACK.append(timing.ack)
    }
    let remaining = node.node.mesh.snapshot.workloads.count
    guard remaining == options.workloads - options.removals else {
        print("after \(options.removals) removals the mesh holds \(remaining) workloads")
        exit(1)
    }

    await node.stopQuietly()
    await istiod.stop()

    // MARK: Report

    let rows: [(String, String, String)] = [
        (
            "initial sync: push → Address applied", format(milliseconds(addressApplied)),
            "\(options.workloads) workloads + \(options.services) services in one response"
        ),
        ("initial sync: push → all applied", format(milliseconds(syncApplied)), "+ \(options.policies) policies"),
        ("initial sync: push → both ACKs at istiod", format(milliseconds(syncACK)), "target < 1 s"),
        ("initial sync: push → /healthz/ready", format(milliseconds(readyTime)), "polled every 1 ms"),
        (
            "RSS kept per resource", String(format: "%.0f B", bytesPerWorkload),
            "(\(rssAfter) − \(rssBefore) KiB) / \(options.workloads + options.services); target < 2 KiB per workload"
        ),
        (
            "heap in use per resource", String(format: "%.0f B", heapPerResource),
            "live malloc bytes (mallinfo2), without the allocator's free and fragmented pages"
        ),
        (
            "in-line size of one Workload / Service", "\(MemoryLayout<Workload>.stride) / \(MemoryLayout<Service>.stride) B",
            "what each table entry holding one carries before its heap parts"
        ),
        ("RSS after sync, not trimmed", "\(rssAfterUntrimmed) KiB", "what glibc kept of the transient buffers too"),
        (
            "one-workload update: push → applied", "\(format(percentile(updateApplied, 0.5))) / \(format(percentile(updateApplied, 0.99)))",
            "p50 / p99 of \(updateApplied.count); target < 1 ms"
        ),
        (
            "one-workload update: push → ACK", "\(format(percentile(updateACK, 0.5))) / \(format(percentile(updateACK, 0.99)))",
            "p50 / p99"
        ),
        (
            "one-workload removal: push → applied", "\(format(percentile(removalApplied, 0.5))) / \(format(removalApplied.max() ?? .nan))",
            "p50 / max of \(removalApplied.count)"
        ),
        (
            "one-workload removal: push → ACK", "\(format(percentile(removalACK, 0.5))) / \(format(removalACK.max() ?? .nan))",
            "p50 / max"
        ),
    ]
    print("ambit-xds-bench: \(options.workloads) workloads, \(options.services) services, \(options.policies) policies (built in \(format(milliseconds(buildTime))))")
    print("| measure | value | notes |")
    print("|---|---|---|")
    for (measure, value, note) in rows { print("| \(measure) | \(value) | \(note) |") }

    func rounded(_ value: Double, _ places: Double = 1_000) -> Double { value.isNaN ? -1 : (value * places).rounded() / places }
    let json: [String: Any] = [
        "workloads": options.workloads, "services": options.services, "policies": options.policies,
        "sync_address_applied_ms": rounded(milliseconds(addressApplied)),
        "sync_applied_ms": rounded(milliseconds(syncApplied)), "sync_ack_ms": rounded(milliseconds(syncACK)),
        "sync_ready_ms": rounded(milliseconds(readyTime)),
        "rss_before_kib": rssBefore, "rss_after_kib": rssAfter, "rss_after_untrimmed_kib": rssAfterUntrimmed,
        "rss_bytes_per_resource": rounded(bytesPerWorkload, 1),
        "heap_bytes_per_resource": rounded(heapPerResource, 1),
        "update_applied_p50_ms": rounded(percentile(updateApplied, 0.5)),
        "update_applied_p99_ms": rounded(percentile(updateApplied, 0.99)),
        "update_ack_p50_ms": rounded(percentile(updateACK, 0.5)), "update_ack_p99_ms": rounded(percentile(updateACK, 0.99)),
        "removal_applied_p50_ms": rounded(percentile(removalApplied, 0.5)),
        "removal_ack_p50_ms": rounded(percentile(removalACK, 0.5)), "updates": updateApplied.count,
        "removals": removalApplied.count,
    ]
    let data = try JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

try await main()
