import Logging
public import NIOCore
public import Kernel
public import AmbitRuntime

/// One connection arriving for a local workload, as the inbound path sees it before it
/// decides anything.
public struct InboundRequest: Sendable {
    /// The original client: the HBONE `forwarded` address, or the TCP peer for plaintext.
    public var source: SocketAddr
    /// The workload address the connection is for (`ip:port`).
    public var destination: SocketAddr
    /// The peer's authenticated identity (HBONE mTLS); nil for plaintext.
    public var peerIdentity: SpiffeID?
    /// How the connection arrived, for records and logs: `hbone` or `plaintext`.
    public var route: String
    /// The service hostname the peer says the application addressed (HBONE
    /// `forwarded: host=`). It only names the reported service
    /// (``InboundPath/reportedService(of:port:forwardedHost:in:)``), nothing else.
    public var forwardedHost: String?
    /// The tunnel's `:authority` when the connection arrived in one (for the access log's
    /// `dst.hbone_addr`).
    public var tunnelAuthority: String?
    /// The service the connection was addressed to, when the peer named one (an HBONE
    /// hostname authority); the record's destination service for telemetry.
    public var service: Service?
    /// The local address of the tunnel's connection when it arrived in one (`ip:15008`, the
    /// access log's `dst.addr`, as ztunnel logs it).
    public var tunnelAddress: SocketAddr?
    /// True when the connection came through a network gateway (an HBONE
    /// `x-forwarded-network` other than the node's): its TCP peer is the gateway, so the
    /// source workload is not looked up by that address (ztunnel's rule).
    public var viaNetworkGateway: Bool

    /// Creates a request.
    public init(
        source: SocketAddr, destination: SocketAddr, peerIdentity: SpiffeID?, route: String,
        forwardedHost: String? = nil, tunnelAuthority: String? = nil, service: Service? = nil,
        tunnelAddress: SocketAddr? = nil, viaNetworkGateway: Bool = false
    ) {
        self.tunnelAddress = tunnelAddress
        self.viaNetworkGateway = viaNetworkGateway
        self.source = source
        self.destination = destination
        self.peerIdentity = peerIdentity
        self.route = route
        self.forwardedHost = forwardedHost
        self.tunnelAuthority = tunnelAuthority
        self.service = service
    }
}

/// The inbound path shared by every way a connection can reach a local workload (an HBONE
/// stream, a plaintext capture): resolve the destination workload, refuse self-calls,
/// consult the policy chain, dial the workload, relay, report telemetry.
///
/// Thread-safe. ``admit(_:)`` is async (policy plugins may wait); ``connect(_:on:)`` and
/// ``relay(downstream:upstream:record:)`` are event-loop calls.
public final class InboundPath: Sendable {
    private let context: PluginContext
    private let dialer: TCPDialer

    /// An inbound path for the plugin owning `context`, dialing workloads with `dialer`.
    public init(context: PluginContext, dialer: TCPDialer) {
        self.context = context
        self.dialer = dialer
    }

    private var logger: Logger { context.logger }

    /// Resolves the destination workload and asks the policy chain (every enabled policy
    /// plugin in manifest order; the first deny wins). Returns the connection's record (not
    /// yet registered; it carries the attributes so a policy change can re-evaluate it) or
    /// why it is refused. Refusals are logged here; denials are reported to telemetry.
    public func admit(_ request: InboundRequest) async -> Result<ConnectionRecord, ConnectionRefusal> {
        switch prepare(request) {
        case .refused(let refusal):
            return .failure(refusal)
        case .ready(let record, let attributes):
            let decision = await context.policyChain.authorize(attributes)
            return finish(record, decision: decision, request: request)
        }
    }

    /// ``admit(_:)`` without suspending, when the policy chain can decide at once (no
    /// policy plugin, or only ``ImmediateConnectionAuthorizer``s that answer now): call it
    /// on the connection's event loop and fall back to ``admit(_:)`` when it returns nil.
    public func admitImmediately(_ request: InboundRequest) -> Result<ConnectionRecord, ConnectionRefusal>? {
        switch prepare(request) {
        case .refused(let refusal):
            return .failure(refusal)
        case .ready(let record, let attributes):
            guard let decision = context.policyChain.authorizeImmediately(attributes) else { return nil }
            return finish(record, decision: decision, request: request)
        }
    }

    /// Admits `request` on `eventLoop`: at once when the chain can decide at once, else
    /// through a task.
    public func admit(_ request: InboundRequest, on eventLoop: any EventLoop) -> EventLoopFuture<Result<ConnectionRecord, ConnectionRefusal>> {
        if let now = admitImmediately(request) { return eventLoop.makeSucceededFuture(now) }
        return eventLoop.makeFutureWithTask { await self.admit(request) }
    }

    private enum Prepared {
        case refused(ConnectionRefusal)
        case ready(ConnectionRecord, ConnectionAttributes)
    }

    /// Everything before the policy decision: self-call, destination workload, locality,
    /// the record and the attributes policies see.
    private func prepare(_ request: InboundRequest) -> Prepared {
        let mesh = context.mesh.snapshot

        if Forwarding.proxyPorts.contains(request.destination.port) {
            return refused(
                .selfCall, "\(request.destination) is one of the proxy's own ports; refusing to connect to itself",
                request)
        }
        // The destination is looked up in its own network; the peer in the node's.
        guard let workload = context.localWorkload(at: request.destination.ip, in: mesh) else {
            if let remote = mesh.workloads(at: request.destination.ip).last {
                return refused(
                    .notLocal, "workload \(remote.uid) runs on node \(remote.node), not on \(context.nodeName)",
                    request)
            }
            return refused(.unknownDestination, "no workload of the mesh has address \(request.destination.ip)", request)
        }
        let sourceWorkload =
            request.viaNetworkGateway ? nil : mesh.workload(at: request.source.ip, network: context.nodeNetwork)
        let record = ConnectionRecord(
            governed: .inbound, source: request.source, destination: request.destination,
            sourceWorkload: sourceWorkload, destinationWorkload: workload,
            destinationService: request.service
                ?? Self.reportedService(
                    of: workload, port: request.destination.port, forwardedHost: request.forwardedHost, in: mesh),
            peerIdentity: request.peerIdentity, route: request.route, isMutualTLS: request.peerIdentity != nil,
            tunnelAuthority: request.tunnelAuthority, transportDestination: request.tunnelAddress)
        // What the policy chain sees is what the record holds (and re-evaluates later).
        return .ready(record, record.recordedAttributes)
    }

    private func refused(_ code: ConnectionRefusal.Code, _ message: String, _ request: InboundRequest) -> Prepared {
        .refused(refuse(code, message, request))
    }

    private func finish(
        _ record: ConnectionRecord, decision: AuthorizationDecision, request: InboundRequest
    ) -> Result<ConnectionRecord, ConnectionRefusal> {
        record.recordDecision(decision)
        if !decision.allowed {
            record.recordFailure("denied: \(decision)", flag: .denied)
            record.report(.denied, to: context.providers(of: (any TelemetrySink).self))
            let policy = decision.policy.map { "\($0)" }
            return .failure(refuse(.denied, "denied by policy: \(decision)", request, policy: policy))
        }
        return .success(record)
    }

    /// Dials the record's destination (the local workload) from `eventLoop`, placed as
    /// `placement` says (inside the destination pod's namespace, under in-pod capture), within
    /// `timeout` when given (else the dialer's). Fails with an
    /// ``ConnectionRefusal`` of code ``ConnectionRefusal/Code/connectFailed``.
    public func connect(
        _ record: ConnectionRecord, on eventLoop: any EventLoop, in placement: SocketPlacement = .node,
        timeout: TimeAmount? = nil
    ) -> EventLoopFuture<any Channel> {
        let logger = self.logger
        let sinks = context.providers(of: (any TelemetrySink).self)
        var dialer = self.dialer.placed(placement)
        if let timeout { dialer.options.connectTimeout = timeout }
        return dialer.connect(to: record.destination, on: eventLoop).flatMapErrorThrowing { error in
            logger.info(
                "inbound: local workload unreachable",
                metadata: ["destination": "\(record.destination)", "route": "\(record.route)", "error": "\(error)"])
            record.recordFailure("connect to \(record.destination) failed: \(error)", flag: .connectFailure)
            record.report(.failed, to: sinks)
            throw ConnectionRefusal(
                .connectFailed, "connect to \(record.destination) failed: \(error)", underlying: error)
        }
    }

    /// Relays between the arriving connection (`downstream`) and the local workload
    /// (`upstream`), registering the record and reporting it to every telemetry sink when it
    /// opens and when it closes. The future completes once both sides are closed.
    @discardableResult
    public func relay(downstream: any Channel, upstream: any Channel, record: ConnectionRecord) -> EventLoopFuture<Void> {
        context.relayReporting(downstream: downstream, upstream: upstream, record: record)
    }

    private func refuse(
        _ code: ConnectionRefusal.Code, _ message: String, _ request: InboundRequest, policy: String? = nil
    ) -> ConnectionRefusal {
        // Built only for a refusal: admitted connections pay nothing for log metadata.
        var metadata: Logger.Metadata = [
            "source": "\(request.source)", "destination": "\(request.destination)", "route": "\(request.route)",
            "reason": "\(code)",
        ]
        if let peer = request.peerIdentity { metadata["peer"] = "\(peer)" }
        if let policy { metadata["policy"] = "\(policy)" }
        logger.info("inbound connection refused: \(message)", metadata: metadata)
        return ConnectionRefusal(code, message)
    }
}
