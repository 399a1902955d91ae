import Foundation
public import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import AmbitRuntime
public import DNSProxy
import NodeProxy

/// Settings of in-pod capture (`capture` config key `inPod`).
public struct InPodConfig: DefaultedConfig, Sendable {
    /// Capture inside pod network namespaces. Off by default: it needs root and changes the
    /// pods' firewall rules.
    public var enabled = false
    /// `SO_MARK` on every proxy socket inside a pod; the redirect rules skip packets that
    /// carry it. istio-cni's value, 0x539 (1337).
    public var mark: UInt32 = 0x539
    /// The outbound listener inside each pod (REDIRECT target of the pod's outbound TCP).
    public var outboundPort: UInt16 = 15001
    /// The plaintext inbound listener inside each pod (REDIRECT target of inbound TCP).
    public var inboundPort: UInt16 = 15006
    /// The HBONE port the inbound rule leaves alone (the `hbone` plugin listens there).
    public var hbonePort: UInt16 = 15008
    /// Where the pods to capture come from: `mesh` (local workloads' `netns` in the mesh,
    /// and `/pods` on the admin server) or `zds` (istio-cni's node agent hands over each
    /// pod's namespace on ``zdsSocket``).
    public var source = PodSourceKind.mesh
    /// istio-cni's ZDS socket (SOCK_SEQPACKET), which the proxy connects to when
    /// ``source`` is `zds`.
    public var zdsSocket = "/var/run/ztunnel/ztunnel.sock"
    /// Install and remove the redirect rules. Off: something else (istio-cni) owns them and
    /// the proxy only opens its listeners. Absent: on with `source: mesh`, off with
    /// `source: zds` (istio-cni installs them before it sends the pod).
    public var installRules: Bool?
    /// The program that installs the rules: `iptables` (istio-cni's chains, through
    /// `iptables-restore` and `ip6tables-restore`) or `nftables` (one `inet` table,
    /// `ambit-inpod`, through `nft`).
    public var backend = "iptables"
    /// The `iptables` command (`-save` and `-restore` are derived from it, and the IPv6
    /// programs by writing `ip6tables` for `iptables`), e.g. `iptables-legacy` where the
    /// pod uses the legacy back end.
    public var iptables = "iptables"
    /// The `nft` command, for the `nftables` backend.
    public var nft = "nft"
    /// Capture IPv6 as well: IPv6 rules beside the IPv4 ones and listeners on `::` beside
    /// `0.0.0.0`, whenever the kernel has IPv6 (a pod whose IPv6 is only switched off
    /// gets them too, so switching it on cannot bypass the mesh). Off: IPv4 only, as
    /// istio-cni with IPv6 disabled.
    public var ipv6 = true
    /// How often to check that every pod's namespace still exists and retry failed pods.
    public var recheckInterval = ConfigDuration(.seconds(2))
    /// The DNS proxy inside each pod (on by default): UDP and TCP on `127.0.0.1:<port>`,
    /// where the pod's DNS is redirected (istio-cni's rules, or Ambit's with
    /// ``installRules``); mesh service names answered from the mesh, the rest forwarded.
    public var dns = DNSProxyConfig()

    public init() {}

    /// Where pods come from (`inPod.source`).
    public enum PodSourceKind: String, Sendable, CaseIterable, Decodable {
        /// The mesh's `netns` fields and the admin server's `/pods`.
        case mesh
        /// istio-cni's ZDS socket.
        case zds
    }

    /// Whether the proxy installs the pods' redirect rules: ``installRules``, else on for
    /// `source: mesh` and off for `source: zds`.
    public var installsRules: Bool { installRules ?? (source == .mesh) }

    /// Config values that cannot work.
    public func validate() -> [ConfigProblem] {
        var problems: [ConfigProblem] = []
        if source == .zds {
            if zdsSocket.isEmpty { problems.append(ConfigProblem(at: "zdsSocket", "must name istio-cni's socket")) }
            if zdsSocket.utf8.count > 107 {
                problems.append(ConfigProblem(at: "zdsSocket", "is longer than a unix socket path may be (107 bytes)"))
            }
        }
        if mark == 0 { problems.append(ConfigProblem(at: "mark", "must not be 0 (the redirect rules match on it)")) }
        let ports = [outboundPort, inboundPort, hbonePort]
        if Set(ports).count != ports.count {
            problems.append(ConfigProblem("outboundPort, inboundPort and hbonePort must differ"))
        }
        if ports.contains(0) { problems.append(ConfigProblem("ports must not be 0")) }
        if dns.enabled && ports.contains(dns.port) {
            problems.append(ConfigProblem(at: "dns.port", "must differ from outboundPort, inboundPort and hbonePort"))
        }
        if iptables.isEmpty { problems.append(ConfigProblem(at: "iptables", "must name a command")) }
        if nft.isEmpty { problems.append(ConfigProblem(at: "nft", "must name a command")) }
        if InPodBackend(rawValue: backend) == nil {
            problems.append(
                ConfigProblem(
                    at: "backend",
                    "unknown backend \"\(backend)\"; expected one of \(InPodBackend.allCases.map(\.rawValue).joined(separator: ", "))"))
        }
        return problems
    }
}

/// In-pod capture: the pods to capture come from pod sources (the `netns` of local
/// workloads in the mesh, origin `config`; pods added through the admin server's `/pods`,
/// origin `admin`), which open each pod's network namespace and write it into the node's
/// ``CapturedPods``. The in-pod listeners (``InPodListeners``: the redirect rules, 15001
/// and 15006) follow that registry through a ``PodServerReconciler``, as the `hbone`
/// plugin's 15008 does through its own.
///
/// The sources recheck every ``InPodConfig/recheckInterval``: a namespace that
/// disappeared is released (its listeners closed; open connections keep running until
/// they end), one that failed to open is retried. Nothing is done to namespaces not
/// listed.
///
/// Thread-safe.
final class InPodCapture: Sendable {
    static let serverName = "capture"

    private let config: InPodConfig
    private let context: PluginContext
    private let admin = NIOLockedValueBox<[String: AdminPod]>([:])
    /// The mesh's `netns` pods.
    let configSource: PathPodSource
    /// Pods added through `/pods`.
    let adminSource: PathPodSource
    private let configFeed: PodFeed
    private let adminFeed: PodFeed
    /// istio-cni's pods, with `source: zds`.
    let zdsSource: ZDSPodSource?
    private let zdsFeed: PodFeed
    private let listeners: PodServerReconciler<InPodListeners>
    private let stopped = NIOLockedValueBox(false)

    /// One pod added through the admin server.
    struct AdminPod: Sendable {
        var netns: String
        var identity: SpiffeID?
    }

    init(
        config: InPodConfig, context: PluginContext, outbound: OutboundPath, inbound: InboundPlaintext,
        dnsMetrics: SharedDNSMetrics
    ) {
        self.config = config
        self.context = context
        let interval = Duration.nanoseconds(max(config.recheckInterval.timeAmount.nanoseconds, 10_000_000))
        configSource = PathPodSource(
            origin: "config", mark: config.mark, recheckInterval: interval, logger: context.logger
        ) { [context] in
            var wanted: [String: String] = [:]
            for workload in context.mesh.snapshot.workloads.values where context.isLocal(workload) {
                if let netns = workload.netns, !netns.isEmpty { wanted[workload.uid] = context.resolvePath(netns) }
            }
            return wanted
        }
        let admin = self.admin
        adminSource = PathPodSource(
            origin: "admin", mark: config.mark, recheckInterval: interval, logger: context.logger
        ) {
            admin.withLockedValue { $0.mapValues(\.netns) }
        }
        configFeed = context.pods.feed(origin: "config")
        adminFeed = context.pods.feed(origin: "admin")
        zdsFeed = context.pods.feed(origin: "zds")
        zdsSource =
            config.source == .zds
            ? ZDSPodSource(
                socketPath: context.resolvePath(config.zdsSocket), mark: config.mark, pods: context.pods,
                readiness: context.readiness, logger: context.logger)
            : nil
        listeners = PodServerReconciler(
            server: InPodListeners(
                dnsMetrics: dnsMetrics, config: config, context: context, outbound: outbound, inbound: inbound),
            pods: context.pods, retryInterval: interval, logger: context.logger)
    }

    private var logger: Logger { context.logger }

    /// Pods the local config declares are pending from the start: readiness must not
    /// report ready before their listeners are up.
    func provision() {
        // A pod's IPs live in its namespace: nothing is served for them in the node's.
        context.pods.claimAllLocalWorkloads()
        if let zdsSource {
            zdsSource.announce()
        } else {
            configSource.announce(into: configFeed)
        }
    }

    /// Runs the sources and the listeners until cancelled (graceful shutdown) or stopped.
    func run() async {
        let observer = context.mesh.observe { [configSource] _ in configSource.kick() }
        await withTaskGroup(of: Void.self) { group in
            if let zdsSource {
                // istio-cni says which pods there are; the mesh's netns fields do not.
                group.addTask { [zdsFeed] in await zdsSource.run(feeding: zdsFeed) }
            } else {
                group.addTask { [configSource, configFeed] in await configSource.run(feeding: configFeed) }
            }
            group.addTask { [adminSource, adminFeed] in await adminSource.run(feeding: adminFeed) }
            group.addTask { [listeners] in await listeners.run() }
            await group.next()
            group.cancelAll()
        }
        context.mesh.removeObserver(observer)
    }

    /// Stops the sources and closes every pod's listeners (from `drain`/`cleanup`). Rules
    /// stay: the pods' traffic must not bypass the mesh while the proxy restarts (a
    /// restarted proxy finds and rebuilds them).
    func closeAll() async {
        stopped.withLockedValue { $0 = true }
        configSource.stop()
        adminSource.stop()
        zdsSource?.stop()
        await listeners.shutdown()
    }

    /// One pass of both sources and the listeners, in that order.
    func reconcile() async {
        guard !stopped.withLockedValue({ $0 }) else { return }
        if zdsSource == nil { await configSource.reconcile(feeding: configFeed) }
        await adminSource.reconcile(feeding: adminFeed)
        await listeners.reconcileNow()
    }

    /// The pods wanted now: local workloads with a `netns`, plus those added through the
    /// admin server (which win for a uid in both).
    private func wanted() -> [String: String] {
        configSource.wanted().merging(adminSource.wanted()) { _, admin in admin }
    }

    // MARK: Connections

    /// One connection redirected to the pod's outbound listener.
    static func acceptOutbound(
        _ channel: any Channel, pod: CapturedPods.Pod, context: PluginContext, outbound: OutboundPath, logger: Logger
    ) -> EventLoopFuture<Void> {
        let uid = pod.uid
        let placement = pod.placement
        let eventLoop = channel.eventLoop
        guard let local = SocketAddr(channel.localAddress), let client = SocketAddr(channel.remoteAddress) else {
            return eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
        }
        do {
            try channel.syncOptions?.setOption(.autoRead, value: false)
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
        return InboundPlaintext.originalDestination(of: channel).flatMap { original -> EventLoopFuture<OutboundConnection> in
            guard let original, original != local else {
                logger.info(
                    "outbound refused: connection to the outbound listener was not redirected",
                    metadata: ["pod": "\(uid)", "source": "\(client)", "local": "\(local)"])
                return eventLoop.makeFailedFuture(
                    ConnectionRefusal(.selfCall, "\(local) is this proxy's own listener"))
            }
            guard let workload = pod.workload(in: context.mesh.snapshot, node: context.nodeName) else {
                logger.warning(
                    "outbound refused: the pod's workload is not (yet) in the mesh",
                    metadata: ["pod": "\(uid)", "destination": "\(original)"])
                return eventLoop.makeFailedFuture(
                    ConnectionRefusal(
                        .unknownDestination, "the workload of pod \(pod.workloadInfo.map { "\($0)" } ?? uid) is not in the mesh"))
            }
            return outbound.connectCaptured(from: channel, source: workload, destination: original, placement: placement)
        }.map { connected in
            connected.start(nil)
        }
    }

    // MARK: Admin

    /// `/pods`: list (GET), add (POST `?uid=&netns=[&identity=]`), remove (DELETE `?uid=`).
    var adminRoute: AdminRoute {
        AdminRoute(
            path: "/pods", methods: [.GET, .HEAD, .POST, .DELETE],
            summary: "in-pod capture: list; POST ?uid=&netns=[&identity=] adds a pod; DELETE ?uid= removes it"
        ) { [self] request in
            await handle(request)
        }
    }

    private func handle(_ request: HTTPEndpointRequest) async -> HTTPEndpointResponse {
        switch request.method {
        case .POST:
            guard let uid = request.query["uid"], !uid.isEmpty else {
                return HTTPEndpointResponse(.badRequest, "missing uid: POST /pods?uid=<workload uid>&netns=<path>\n")
            }
            guard let netns = request.query["netns"], netns.hasPrefix("/") else {
                return HTTPEndpointResponse(
                    .badRequest, "missing or relative netns: POST /pods?uid=\(uid)&netns=<absolute path>\n")
            }
            var identity: SpiffeID?
            if let text = request.query["identity"] {
                do {
                    identity = try SpiffeID(parsing: text)
                } catch {
                    return HTTPEndpointResponse(.badRequest, "identity \"\(text)\": \(error)\n")
                }
            }
            if let identity, let workload = context.mesh.snapshot.workloads[uid], workload.identity != identity {
                return HTTPEndpointResponse(
                    .conflict, "pod \(uid) has identity \(workload.identity) in the mesh, not \(identity)\n")
            }
            if let workload = context.mesh.snapshot.workloads[uid], !context.isLocal(workload) {
                return HTTPEndpointResponse(
                    .conflict, "workload \(uid) runs on node \(workload.node), not on \(context.nodeName)\n")
            }
            admin.withLockedValue { $0[uid] = AdminPod(netns: netns, identity: identity) }
            await reconcile()
            let status = podStatus(uid)
            return HTTPEndpointResponse(
                status.state == "captured" ? .ok : .internalServerError, status.json + "\n",
                contentType: "application/json")
        case .DELETE:
            guard let uid = request.query["uid"], !uid.isEmpty else {
                return HTTPEndpointResponse(.badRequest, "missing uid: DELETE /pods?uid=<workload uid>\n")
            }
            let removed = admin.withLockedValue { $0.removeValue(forKey: uid) != nil }
            guard removed else {
                if configSource.wanted()[uid] != nil {
                    return HTTPEndpointResponse(
                        .conflict, "pod \(uid) comes from the local config (workload netns); remove it there\n")
                }
                return HTTPEndpointResponse(.notFound, "no pod \(uid) was added through /pods\n")
            }
            await reconcile()
            return HTTPEndpointResponse(.ok, "pod \(uid) released\n")
        default:
            let wanted = wanted()
            var lines = wanted.keys.sorted().map { podStatus($0, wanted: wanted).json }
            let fromZDS = context.pods.pods.values.filter { $0.origin == "zds" && wanted[$0.uid] == nil }
            lines += fromZDS.sorted { $0.uid < $1.uid }.map(zdsPodStatus)
            return HTTPEndpointResponse(.ok, "[" + lines.joined(separator: ",\n ") + "]\n", contentType: "application/json")
        }
    }

    private struct PodStatus {
        var state: String
        var json: String
    }

    private func podStatus(_ uid: String, wanted: [String: String]? = nil) -> PodStatus {
        let fromAdmin = admin.withLockedValue { $0[uid] != nil }
        let source = fromAdmin ? adminSource : configSource
        let opened = source.status(uid)
        let served = listeners.serving(uid: uid)
        let netns = opened.path ?? (wanted ?? self.wanted())[uid] ?? ""
        let failure = opened.failure ?? (served == nil ? listeners.failure(uid: uid) : nil)
        let state: String
        if served != nil && opened.path != nil {
            state = "captured"
        } else if opened.gone {
            state = "gone"
        } else if failure != nil {
            state = "failed"
        } else {
            state = "pending"
        }
        var fields = [
            "\"uid\": \(Self.quote(uid))", "\"netns\": \(Self.quote(netns))",
            "\"origin\": \(Self.quote(fromAdmin ? "admin" : "config"))", "\"state\": \(Self.quote(state))",
        ]
        if let served {
            fields.append("\"listeners\": [\(served.listeners.map { Self.quote("\($0.localAddress)") }.joined(separator: ", "))]")
        }
        if let failure { fields.append("\"error\": \(Self.quote(failure))") }
        return PodStatus(state: state, json: "{" + fields.joined(separator: ", ") + "}")
    }

    /// One pod istio-cni sent: its namespace, who it is, its mesh workload (once known).
    private func zdsPodStatus(_ pod: CapturedPods.Pod) -> String {
        let served = listeners.serving(uid: pod.uid)
        let failures = context.pods.failures(uid: pod.uid)
        let state = served != nil && failures.isEmpty ? "captured" : failures.isEmpty ? "pending" : "failed"
        var fields = [
            "\"uid\": \(Self.quote(pod.uid))", "\"netns\": \(Self.quote(pod.namespace.path))",
            "\"origin\": \"zds\"", "\"state\": \(Self.quote(state))",
        ]
        if let info = pod.workloadInfo {
            fields.append(
                "\"workloadInfo\": {\"name\": \(Self.quote(info.name)), \"namespace\": \(Self.quote(info.namespace)), "
                    + "\"serviceAccount\": \(Self.quote(info.serviceAccount))}")
        }
        let workload = pod.workload(in: context.mesh.snapshot, node: context.nodeName)
        fields.append("\"workload\": \(workload.map { Self.quote($0.uid) } ?? "null")")
        if let served {
            fields.append("\"listeners\": [\(served.listeners.map { Self.quote("\($0.localAddress)") }.joined(separator: ", "))]")
        }
        if !failures.isEmpty {
            let text = failures.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "; ")
            fields.append("\"error\": \(Self.quote(text))")
        }
        return "{" + fields.joined(separator: ", ") + "}"
    }

    private static func quote(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

// MARK: - Pod sources

/// A pod source whose pods name their network namespaces by path (the mesh's `netns`,
/// `/pods?netns=`): it opens each namespace, adds the pod, and on every pass releases pods
/// whose namespace disappeared or whose path changed, and retries those that failed.
///
/// A namespace that disappeared while captured is `gone`: not retried (nor pending) until
/// its path names a namespace again.
///
/// Thread-safe.
final class PathPodSource: PodSource {
    private struct Opened: Sendable {
        var path: String
        var namespace: NetworkNamespace
    }

    private struct State: Sendable {
        var opened: [String: Opened] = [:]
        var failures = PodFailures()
        var gone: [String: String] = [:]
        var announced: Set<String> = []
        var kick: AsyncStream<Void>.Continuation?
        var stopped = false
    }

    let origin: String
    /// The pods wanted now: uid to absolute namespace path.
    let wanted: @Sendable () -> [String: String]
    private let mark: UInt32
    private let recheckInterval: Duration
    private let logger: Logger
    private let state = NIOLockedValueBox(State())
    private let passes = SerialAsyncQueue()

    init(
        origin: String, mark: UInt32, recheckInterval: Duration, logger: Logger,
        wanted: @escaping @Sendable () -> [String: String]
    ) {
        self.origin = origin
        self.mark = mark
        self.recheckInterval = recheckInterval
        self.logger = logger
        self.wanted = wanted
    }

    /// Announces every wanted pod as expected (readiness waits for it).
    func announce(into feed: PodFeed) {
        let uids = wanted().keys
        state.withLockedValue { $0.announced.formUnion(uids) }
        for uid in uids { feed.expect(uid: uid) }
    }

    func run(feeding feed: PodFeed) async {
        let (kicks, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let stopped = state.withLockedValue { state -> Bool in
            state.kick = continuation
            return state.stopped
        }
        if stopped { return }
        let interval = recheckInterval
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    continuation.yield()
                }
            }
            continuation.yield()
            for await _ in kicks {
                if Task.isCancelled { break }
                await reconcile(feeding: feed)
            }
            group.cancelAll()
        }
    }

    /// Asks for a pass soon (the mesh changed).
    func kick() {
        _ = state.withLockedValue { $0.kick?.yield() }
    }

    /// Ends ``run(feeding:)``; no pass runs after it.
    func stop() {
        state.withLockedValue { state in
            state.stopped = true
            state.kick?.finish()
        }
    }

    /// Where pod `uid` stands in this source: the path of its open namespace, why it
    /// could not be opened, whether it is gone.
    func status(_ uid: String) -> (path: String?, failure: String?, gone: Bool) {
        state.withLockedValue { ($0.opened[uid]?.path, $0.failures[uid: uid], $0.gone[uid] != nil) }
    }

    /// One pass, after any pass in progress.
    func reconcile(feeding feed: PodFeed) async {
        await passes.run { self.pass(feed) }
    }

    private func pass(_ feed: PodFeed) {
        guard !state.withLockedValue({ $0.stopped }) else { return }
        let wanted = wanted()
        let opened = state.withLockedValue { $0.opened }

        for (uid, pod) in opened.sorted(by: { $0.key < $1.key }) {
            if !pod.namespace.isStillMounted {
                logger.notice(
                    "pod network namespace disappeared; releasing the pod",
                    metadata: ["pod": "\(uid)", "netns": "\(pod.path)"])
                state.withLockedValue { state in
                    state.opened[uid] = nil
                    state.gone[uid] = pod.path
                    state.announced.remove(uid)
                }
                feed.remove(uid: uid)
            } else if wanted[uid] != pod.path {
                logger.info("pod no longer captured; removing its rules and listeners", metadata: ["pod": "\(uid)"])
                state.withLockedValue { state in
                    state.opened[uid] = nil
                    state.announced.remove(uid)
                }
                feed.remove(uid: uid)
            }
        }
        // No longer wanted: not pending, no failure to report.
        let stale = state.withLockedValue { state -> Set<String> in
            state.failures.keep { wanted[$0] != nil }
            state.gone = state.gone.filter { wanted[$0.key] == $0.value }
            let stale = state.announced.filter { wanted[$0] == nil }
            state.announced.subtract(stale)
            return stale
        }
        for uid in stale.sorted() { feed.remove(uid: uid) }

        for (uid, path) in wanted.sorted(by: { $0.key < $1.key }) where state.withLockedValue({ $0.opened[uid] == nil }) {
            if state.withLockedValue({ $0.gone[uid] == path }) {
                // Still the old, deleted namespace (or none): wait for a new one.
                guard let fresh = try? NetworkNamespace(path: path), fresh.isStillMounted else { continue }
                state.withLockedValue { _ = $0.gone.removeValue(forKey: uid) }
            }
            state.withLockedValue { _ = $0.announced.insert(uid) }
            feed.expect(uid: uid)
            do {
                let namespace = try NetworkNamespace(path: path, mark: mark)
                state.withLockedValue { state in
                    state.opened[uid] = Opened(path: path, namespace: namespace)
                    state.failures.clear(uid)
                }
                feed.add(CapturedPods.Pod(uid: uid, namespace: namespace, mark: mark))
            } catch {
                let message = "\(error)"
                if state.withLockedValue({ $0.failures.record(message, for: uid) }) {
                    logger.error(
                        "cannot capture pod; retrying every \(recheckInterval)",
                        metadata: ["pod": "\(uid)", "netns": "\(path)", "error": "\(message)"])
                }
            }
        }
    }
}

// MARK: - In-pod listeners

/// What in-pod capture runs inside each captured pod: the redirect rules (unless
/// ``InPodConfig/installRules`` is off) and the outbound (15001) and plaintext inbound
/// (15006) listeners, placed in the pod's namespace with its mark, on `0.0.0.0` and (with
/// ``InPodConfig/ipv6``) `::`.
struct InPodListeners: PodServer {
    /// One pod's listeners.
    struct Serving: Sendable {
        var listeners: [TCPListener]
        var rulesInstalled: Bool
        /// The pod's DNS proxies, when ``InPodConfig/dns`` is on: on `127.0.0.1` and, in a
        /// dual-stack pod, on `::1` (where the IPv6 redirect of port 53 lands).
        var dns: [DNSProxyServer]
    }

    /// The DNS proxies' metrics, shared with the plugin's node-level proxy.
    let dnsMetrics: SharedDNSMetrics

    let name = InPodCapture.serverName
    let config: InPodConfig
    let context: PluginContext
    let outbound: OutboundPath
    let inbound: InboundPlaintext

    /// DNS capture stays off until the DNS proxy listens in the pod (`captureDNS`,
    /// `dnsPort`: set them from its config).
    private var rules: InPodRules {
        InPodRules(
            backend: InPodBackend(rawValue: config.backend) ?? .iptables, iptables: config.iptables, nft: config.nft,
            mark: config.mark, outboundPort: config.outboundPort, inboundPort: config.inboundPort,
            hbonePort: config.hbonePort, captureDNS: config.dns.enabled, dnsPort: config.dns.port, ipv6: config.ipv6)
    }

    func start(_ pod: CapturedPods.Pod) async throws -> Serving {
        let uid = pod.uid
        let placement = pod.placement
        var listeners: [TCPListener] = []
        do {
            if config.installsRules { try await rules.install(in: pod.namespace.path) }
            let (outbound, inbound, context) = (self.outbound, self.inbound, self.context)
            let logger = context.logger
            func listen(
                _ port: UInt16, _ accept: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
            ) async throws {
                listeners += try await TCPListener.bindEachFamily(
                    port: port, placement: placement, ipv6: config.ipv6, group: context.eventLoopGroup,
                    childInitializer: accept)
            }
            try await listen(config.outboundPort) { channel in
                InPodCapture.acceptOutbound(channel, pod: pod, context: context, outbound: outbound, logger: logger)
            }
            try await listen(config.inboundPort) { channel in inbound.accept(channel, pod: pod) }
        } catch {
            for listener in listeners { await listener.stopAccepting() }
            throw error
        }
        var dns: [DNSProxyServer] = []
        if config.dns.enabled {
            do {
                dns = try await startDNS(for: pod)
            } catch {
                for listener in listeners { await listener.stopAccepting() }
                throw error
            }
        }
        context.logger.info(
            "pod captured",
            metadata: [
                "pod": "\(uid)", "netns": "\(pod.namespace.path)",
                "listeners": "\(listeners.map { "\($0.localAddress)" }.joined(separator: ","))",
                "dns": "\(dns.isEmpty ? "off" : dns.map { "\($0.udpAddress)" }.joined(separator: ","))",
                "rules": "\(config.installsRules ? "installed" : "left to the operator")",
            ])
        return Serving(listeners: listeners, rulesInstalled: config.installsRules, dns: dns)
    }

    /// The pod's DNS proxy on 127.0.0.1 inside its namespace and, with ``InPodConfig/ipv6``
    /// on an IPv6 kernel, a second one on `::1` (the ip6tables/nftables redirect of port 53
    /// lands there); a pod whose loopback has no `::1` (IPv6 disabled in it) gets the IPv4
    /// one only, with a warning. Its client is the pod's workload (or, before the mesh has
    /// it, the namespace istio-cni named), and upstream queries leave from inside the pod,
    /// marked, so the redirect rules let them pass.
    private func startDNS(for pod: CapturedPods.Pod) async throws -> [DNSProxyServer] {
        var servers = [try await startDNS(for: pod, on: .v4(0x7F00_0001))]
        if config.ipv6 && TCPListener.kernelHasIPv6 {
            do {
                servers.append(try await startDNS(for: pod, on: .v6(0, 1)))
            } catch {
                context.logger.warning(
                    "no IPv6 DNS proxy in the pod: ::1 cannot be bound (IPv6 off in its namespace?)",
                    metadata: ["pod": "\(pod.uid)", "error": "\(error)"])
            }
        }
        return servers
    }

    private func startDNS(for pod: CapturedPods.Pod, on ip: IPAddress) async throws -> DNSProxyServer {
        let context = self.context
        let mesh = context.mesh
        let node = context.nodeName
        return try await DNSProxyServer.start(
            address: SocketAddr(ip: ip, port: config.dns.port), placement: pod.placement,
            group: context.eventLoopGroup, mesh: { mesh.snapshot },
            client: { _ in
                if let workload = pod.workload(in: mesh.snapshot, node: node) {
                    return DNSClientInfo(
                        namespace: workload.namespace, network: workload.network,
                        canonicalService: workload.canonicalName, canonicalRevision: workload.canonicalRevision)
                }
                return pod.workloadInfo.map { DNSClientInfo(namespace: $0.namespace) }
            },
            upstreams: config.dns.upstreamAddresses, metrics: dnsMetrics.get(context), logger: context.logger,
            options: DNSProxyServer.Options(config.dns))
    }

    /// Closes the pod's listeners (connections already relayed go on) and, when the pod
    /// left the registry and its namespace still exists, removes its rules.
    func stop(_ serving: Serving, pod: CapturedPods.Pod, reason: PodStopReason) async {
        for listener in serving.listeners { await listener.stopAccepting() }
        for server in serving.dns { await server.stop() }
        guard reason != .shutdown, serving.rulesInstalled,
            let namespace = pod.namespace as? NetworkNamespace, namespace.isStillMounted
        else { return }
        do {
            try await rules.remove(in: namespace.path)
        } catch {
            context.logger.error(
                "cannot remove the pod's redirect rules", metadata: ["pod": "\(pod.uid)", "error": "\(error)"])
        }
    }
}

/// The DNS proxies' metrics of one `capture` plugin, made on first use (after provision,
/// when the telemetry plugin's factory is known) and shared by the node-level proxy and
/// every pod's.
final class SharedDNSMetrics: Sendable {
    private let made = NIOLockedValueBox<DNSMetrics?>(nil)

    func get(_ context: PluginContext) -> DNSMetrics {
        made.withLockedValue { made in
            if let made { return made }
            let metrics = DNSMetrics(factory: context.metrics)
            made = metrics
            return metrics
        }
    }
}
