import Foundation
public import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import AmbitRuntime
import NodeProxy

/// Settings of in-pod capture (`capture` config key `inPod`).
public struct InPodConfig: Decodable, Sendable {
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
    /// Install and remove the redirect rules. Off: something else (istio-cni) owns them and
    /// the proxy only opens its listeners.
    public var installRules = true
    /// The `iptables` command (`-save` and `-restore` are derived from it), e.g.
    /// `iptables-legacy` where the pod uses the legacy back end.
    public var iptables = "iptables"
    /// How often to check that every pod's namespace still exists and retry failed pods.
    public var recheckInterval = ConfigDuration(.seconds(2))

    public init() {}

    private enum CodingKeys: String, CodingKey, CaseIterable {
        case enabled, mark, outboundPort, inboundPort, hbonePort, installRules, iptables, recheckInterval
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled) ?? enabled
        mark = try c.decodeIfPresent(UInt32.self, forKey: .mark) ?? mark
        outboundPort = try c.decodeIfPresent(UInt16.self, forKey: .outboundPort) ?? outboundPort
        inboundPort = try c.decodeIfPresent(UInt16.self, forKey: .inboundPort) ?? inboundPort
        hbonePort = try c.decodeIfPresent(UInt16.self, forKey: .hbonePort) ?? hbonePort
        installRules = try c.decodeIfPresent(Bool.self, forKey: .installRules) ?? installRules
        iptables = try c.decodeIfPresent(String.self, forKey: .iptables) ?? iptables
        recheckInterval = try c.decodeIfPresent(ConfigDuration.self, forKey: .recheckInterval) ?? recheckInterval
    }

    /// Config values that cannot work, each as one message.
    func problems() -> [String] {
        var problems: [String] = []
        if mark == 0 { problems.append("inPod.mark: must not be 0 (the redirect rules match on it)") }
        let ports = [outboundPort, inboundPort, hbonePort]
        if Set(ports).count != ports.count {
            problems.append("inPod: outboundPort, inboundPort and hbonePort must differ")
        }
        if ports.contains(0) { problems.append("inPod: ports must not be 0") }
        if iptables.isEmpty { problems.append("inPod.iptables: must name a command") }
        return problems
    }
}

/// In-pod capture: for every local workload whose pod network namespace the node knows
/// (`netns` in the local config, or added through the admin server's `/pods`), install the
/// redirect rules inside the namespace and open the outbound (15001) and plaintext inbound
/// (15006) listeners there, and register the pod with the kernel's ``CapturedPods`` so the
/// `hbone` plugin opens 15008 there too.
///
/// Pods are reconciled on every mesh update, every admin change and every
/// ``InPodConfig/recheckInterval``: a namespace that disappeared is released (its
/// listeners closed; open connections keep running until they end), a pod that failed is
/// retried. Nothing is done to namespaces not listed.
///
/// Thread-safe.
final class InPodCapture: Sendable {
    /// One pod added through the admin server.
    struct AdminPod: Sendable {
        var netns: String
        var identity: SpiffeID?
    }

    /// A pod whose namespace is open and listeners bound.
    struct ActivePod: Sendable {
        var netns: String
        var namespace: NetworkNamespace
        var listeners: [TCPListener]
        var rulesInstalled: Bool
    }

    private struct State {
        var admin: [String: AdminPod] = [:]
        var active: [String: ActivePod] = [:]
        /// Why a wanted pod is not active (the last failure), by uid.
        var failures: [String: String] = [:]
        /// Pods whose namespace disappeared while captured, with the path: not retried (nor
        /// pending) until that path names a namespace again.
        var gone: [String: String] = [:]
        var kick: AsyncStream<Void>.Continuation?
    }

    static let serverName = "capture"

    private let config: InPodConfig
    private let context: PluginContext
    private let outbound: OutboundPath
    private let inbound: InboundPlaintext
    private let rules: InPodRules
    private let state = NIOLockedValueBox(State())
    private let serial = SerialExecutor()

    init(config: InPodConfig, context: PluginContext, outbound: OutboundPath, inbound: InboundPlaintext) {
        self.config = config
        self.context = context
        self.outbound = outbound
        self.inbound = inbound
        self.rules = InPodRules(
            iptables: config.iptables, mark: config.mark, outboundPort: config.outboundPort,
            inboundPort: config.inboundPort, hbonePort: config.hbonePort)
    }

    private var logger: Logger { context.logger }

    func provision() {
        context.pods.declareServer(Self.serverName)
        // Pods the local config declares are pending from the start: readiness must not
        // report ready before their listeners are up.
        for uid in wanted(context.mesh.snapshot).keys {
            context.readiness.expect(CapturedPods.readinessComponent(uid: uid))
        }
    }

    // MARK: Reconciling

    /// Reconciles until cancelled (graceful shutdown), then releases every pod.
    func run() async {
        let (kicks, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        state.withLockedValue { $0.kick = continuation }
        let observer = context.mesh.observe { _ in continuation.yield() }
        let interval = config.recheckInterval.timeAmount
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: UInt64(max(interval.nanoseconds, 10_000_000)))
                continuation.yield()
            }
        }
        continuation.yield()
        for await _ in kicks {
            if Task.isCancelled { break }
            await reconcile()
        }
        ticker.cancel()
        context.mesh.removeObserver(observer)
    }

    /// Stops the loop (from `drain`/`cleanup`).
    func stop() {
        state.withLockedValue { $0.kick?.finish() }
    }

    /// Closes every pod's listeners. Rules stay: the pods' traffic must not bypass the
    /// mesh while the proxy restarts (a restarted proxy finds and rebuilds them).
    func closeAll() async {
        await serial.run {
            for uid in state.withLockedValue({ Array($0.active.keys) }) {
                await self.release(uid, removeRules: false)
            }
        }
    }

    /// The pods wanted now: local workloads with a `netns`, plus those added through the
    /// admin server.
    private func wanted(_ snapshot: MeshSnapshot) -> [String: String] {
        var wanted: [String: String] = [:]
        for workload in snapshot.workloads.values where context.isLocal(workload) {
            if let netns = workload.netns, !netns.isEmpty { wanted[workload.uid] = context.resolvePath(netns) }
        }
        for (uid, pod) in state.withLockedValue({ $0.admin }) { wanted[uid] = pod.netns }
        return wanted
    }


    /// One pass: release pods that went away, set up pods that are wanted and not active.
    func reconcile() async {
        await serial.run { await self.reconcileOnce() }
    }

    private func reconcileOnce() async {
        let wanted = wanted(context.mesh.snapshot)
        let active = state.withLockedValue { $0.active }

        for (uid, pod) in active where !pod.namespace.isStillMounted {
            logger.notice(
                "pod network namespace disappeared; releasing the pod",
                metadata: ["pod": "\(uid)", "netns": "\(pod.netns)"])
            await release(uid, removeRules: false)
            state.withLockedValue { $0.gone[uid] = pod.netns }
        }
        for (uid, pod) in state.withLockedValue({ $0.active }) where wanted[uid] != pod.netns {
            logger.info("pod no longer captured; removing its rules and listeners", metadata: ["pod": "\(uid)"])
            await release(uid, removeRules: true)
        }
        // No longer wanted: not pending, no failure to report.
        let stale = state.withLockedValue { state -> [String] in
            let stale = state.failures.keys.filter { wanted[$0] == nil }
            for uid in stale { state.failures[uid] = nil }
            state.gone = state.gone.filter { wanted[$0.key] == $0.value }
            return stale
        }
        for uid in stale { context.readiness.markReady(CapturedPods.readinessComponent(uid: uid)) }

        for (uid, netns) in wanted.sorted(by: { $0.key < $1.key })
        where state.withLockedValue({ $0.active[uid] == nil }) {
            if state.withLockedValue({ $0.gone[uid] == netns }) {
                // Still the old, deleted namespace (or none): wait for a new one.
                guard let fresh = try? NetworkNamespace(path: netns), fresh.isStillMounted else { continue }
                fresh.close()
                state.withLockedValue { $0.gone[uid] = nil }
            }
            context.readiness.expect(CapturedPods.readinessComponent(uid: uid))
            do {
                try await setUp(uid, netns: netns)
                state.withLockedValue { $0.failures[uid] = nil }
            } catch {
                let message = "\(error)"
                let repeated = state.withLockedValue { state in
                    defer { state.failures[uid] = message }
                    return state.failures[uid] == message
                }
                if !repeated {
                    logger.error(
                        "cannot capture pod; retrying every \(config.recheckInterval)",
                        metadata: ["pod": "\(uid)", "netns": "\(netns)", "error": "\(message)"])
                }
            }
        }
    }

    /// Opens the namespace, installs the rules, binds the listeners, registers the pod.
    private func setUp(_ uid: String, netns: String) async throws {
        let namespace = try NetworkNamespace(path: netns, mark: config.mark)
        var listeners: [TCPListener] = []
        do {
            if config.installRules { try await rules.install(in: netns) }
            let outbound = self.outbound
            let context = self.context
            let logger = self.logger
            listeners.append(
                try await TCPListener.bind(
                    ListenerOptions(address: SocketAddr(ip: .v4(0), port: config.outboundPort), namespace: namespace),
                    group: context.eventLoopGroup
                ) { channel in
                    Self.acceptOutbound(
                        channel, pod: uid, namespace: namespace, context: context, outbound: outbound, logger: logger)
                })
            let inbound = self.inbound
            listeners.append(
                try await TCPListener.bind(
                    ListenerOptions(address: SocketAddr(ip: .v4(0), port: config.inboundPort), namespace: namespace),
                    group: context.eventLoopGroup
                ) { channel in
                    inbound.accept(channel, pod: (uid, namespace))
                })
        } catch {
            for listener in listeners { await listener.stopAccepting() }
            namespace.close()
            throw error
        }
        state.withLockedValue {
            $0.active[uid] = ActivePod(
                netns: netns, namespace: namespace, listeners: listeners, rulesInstalled: config.installRules)
        }
        context.pods.add(CapturedPods.Pod(uid: uid, namespace: namespace))
        context.pods.markListening(uid: uid, server: Self.serverName)
        logger.info(
            "pod captured",
            metadata: [
                "pod": "\(uid)", "netns": "\(netns)",
                "listeners": "\(listeners.map { "\($0.localAddress)" }.joined(separator: ","))",
                "rules": "\(config.installRules ? "installed" : "left to the operator")",
            ])
    }

    /// Closes a pod's listeners (connections already relayed go on), removes its rules if
    /// asked and the namespace still exists, and unregisters it.
    private func release(_ uid: String, removeRules: Bool) async {
        guard let pod = state.withLockedValue({ $0.active.removeValue(forKey: uid) }) else { return }
        context.pods.remove(uid: uid)
        for listener in pod.listeners { await listener.stopAccepting() }
        if removeRules && pod.rulesInstalled && pod.namespace.isStillMounted {
            do {
                try await rules.remove(in: pod.netns)
            } catch {
                logger.error(
                    "cannot remove the pod's redirect rules", metadata: ["pod": "\(uid)", "error": "\(error)"])
            }
        }
        pod.namespace.close()
    }

    // MARK: Connections

    /// One connection redirected to the pod's outbound listener.
    private static func acceptOutbound(
        _ channel: any Channel, pod uid: String, namespace: NetworkNamespace, context: PluginContext,
        outbound: OutboundPath, logger: Logger
    ) -> EventLoopFuture<Void> {
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
            guard let workload = context.mesh.snapshot.workloads[uid] else {
                logger.warning(
                    "outbound refused: the pod's workload is not (yet) in the mesh",
                    metadata: ["pod": "\(uid)", "destination": "\(original)"])
                return eventLoop.makeFailedFuture(
                    ConnectionRefusal(.unknownDestination, "workload \(uid) is not in the mesh"))
            }
            return outbound.connectCaptured(from: channel, source: workload, destination: original, namespace: namespace)
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
            state.withLockedValue { $0.admin[uid] = AdminPod(netns: netns, identity: identity) }
            await reconcile()
            let status = podStatus(uid)
            return HTTPEndpointResponse(
                status.state == "captured" ? .ok : .internalServerError, status.json + "\n",
                contentType: "application/json")
        case .DELETE:
            guard let uid = request.query["uid"], !uid.isEmpty else {
                return HTTPEndpointResponse(.badRequest, "missing uid: DELETE /pods?uid=<workload uid>\n")
            }
            let removed = state.withLockedValue { $0.admin.removeValue(forKey: uid) != nil }
            guard removed else {
                if wanted(context.mesh.snapshot)[uid] != nil {
                    return HTTPEndpointResponse(
                        .conflict, "pod \(uid) comes from the local config (workload netns); remove it there\n")
                }
                return HTTPEndpointResponse(.notFound, "no pod \(uid) was added through /pods\n")
            }
            await reconcile()
            return HTTPEndpointResponse(.ok, "pod \(uid) released\n")
        default:
            let wanted = wanted(context.mesh.snapshot)
            let lines = wanted.keys.sorted().map { podStatus($0).json }
            return HTTPEndpointResponse(.ok, "[" + lines.joined(separator: ",\n ") + "]\n", contentType: "application/json")
        }
    }

    private struct PodStatus {
        var state: String
        var json: String
    }

    private func podStatus(_ uid: String) -> PodStatus {
        let (active, failure, gone, admin) = state.withLockedValue {
            ($0.active[uid], $0.failures[uid], $0.gone[uid], $0.admin[uid])
        }
        let netns = active?.netns ?? admin?.netns ?? wanted(context.mesh.snapshot)[uid] ?? ""
        let state: String
        if active != nil {
            state = "captured"
        } else if gone != nil {
            state = "gone"
        } else if failure != nil {
            state = "failed"
        } else {
            state = "pending"
        }
        var fields = [
            "\"uid\": \(Self.quote(uid))", "\"netns\": \(Self.quote(netns))",
            "\"origin\": \(Self.quote(admin != nil ? "admin" : "config"))", "\"state\": \(Self.quote(state))",
        ]
        if let active {
            fields.append("\"listeners\": [\(active.listeners.map { Self.quote("\($0.localAddress)") }.joined(separator: ", "))]")
        }
        if let failure { fields.append("\"error\": \(Self.quote(failure))") }
        return PodStatus(state: state, json: "{" + fields.joined(separator: ", ") + "}")
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

/// Runs async bodies one at a time, in call order.
final class SerialExecutor: Sendable {
    private let state = NIOLockedValueBox<(busy: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func run<T: Sendable>(_ body: @Sendable () async -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let proceed = state.withLockedValue { state -> Bool in
                if state.busy {
                    state.waiters.append(continuation)
                    return false
                }
                state.busy = true
                return true
            }
            if proceed { continuation.resume() }
        }
        let result = await body()
        let next = state.withLockedValue { state -> CheckedContinuation<Void, Never>? in
            if state.waiters.isEmpty {
                state.busy = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
        return result
    }
}
