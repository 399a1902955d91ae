import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOSSL
import ServiceLifecycle
import AmbitRuntime

/// The HBONE server: terminates mTLS + HTTP/2 from other proxies on 15008 and hands each
/// CONNECT stream to the node's ``TunnelTerminator``.
///
/// The server keeps the transport: where it listens (per local HBONE workload and per
/// captured pod, or one fixed address), the handshake guard, TLS, HTTP/2 and the CONNECT
/// framing. The terminator decides the rest: for each connection, whose certificate is
/// presented and which trust domain peers must be in (the node proxy: the local workload
/// at the address the connection arrived on); for each stream, what the authority may be
/// and where the bytes go. Which identities may connect is left to the policy role.
///
/// Thread-safe.
final class HBONEServer: Sendable {
    private let config: HBONEConfig
    private let context: PluginContext
    private let identity: IdentityHolder
    private let tls: HBONETLSContexts
    private let terminator: TerminatorHolder
    /// Everything that changes, behind one lock, so draining, binding and registering a
    /// connection see one another: a listener bound or a connection accepted while the
    /// server drains is stopped or told to go away at once.
    private let state = NIOLockedValueBox(State())
    /// Keeps a listener inside every captured pod's namespace (in-pod capture); nil with a
    /// fixed address or the server off.
    private let podListeners: PodServerReconciler<HBONEPodListener>?
    let handshakes: PendingHandshakes

    private struct State {
        /// Node-level listeners by address.
        var listeners: [SocketAddr: TCPListener] = [:]
        /// Open TLS connections.
        var connections: [ObjectIdentifier: any Channel] = [:]
        /// Addresses whose bind failed, so a failure is logged once, not on every mesh update.
        var failedBinds: Set<SocketAddr> = []
        var draining = false
    }

    static let readinessComponent = "hbone server"

    init(
        config: HBONEConfig, context: PluginContext, identity: IdentityHolder, terminator: TerminatorHolder,
        tls: HBONETLSContexts
    ) {
        self.config = config
        self.context = context
        self.identity = identity
        self.terminator = terminator
        self.tls = tls
        let handshakes = PendingHandshakes(
            limit: config.server.maxPendingHandshakes, timeout: config.server.handshakeTimeout.timeAmount)
        self.handshakes = handshakes
        if config.server.enabled && config.server.address == nil {
            // Declared to the pod registry now, before any pod source adds a pod.
            let accept = AcceptInPod()
            podListeners = PodServerReconciler(
                server: HBONEPodListener(
                    port: config.server.port, group: context.eventLoopGroup, logger: context.logger, accept: accept),
                pods: context.pods, retryInterval: .seconds(2), logger: context.logger)
            accept.server.withLockedValue { $0 = WeakServer(self) }
        } else {
            podListeners = nil
        }
    }

    private var logger: Logger { context.logger }

    /// The bound listener addresses.
    var addresses: [SocketAddr] {
        state.withLockedValue { $0.listeners.values.map(\.localAddress) }.sorted { "\($0)" < "\($1)" }
    }


    /// Open TLS connections (for tests and `/config_dump`-style introspection).
    var connectionCount: Int { state.withLockedValue { $0.connections.count } }

    // MARK: Lifecycle

    /// Listens until graceful shutdown: on the fixed address, or per local HBONE workload
    /// following mesh updates.
    func run() async throws {
        if let address = config.server.address {
            do {
                try await bind(address)
            } catch {
                throw PluginError(.unavailable, plugin: HBONEPlugin.id, "cannot listen for HBONE on \(address): \(error)")
            }
            context.readiness.markReady(Self.readinessComponent)
            try? await gracefulShutdown()
        } else {
            // The pod listeners live exactly as long as the mesh follower (a child task).
            await withTaskGroup(of: Void.self) { group in
                if let podListeners { group.addTask { await podListeners.run() } }
                var first = true
                for await snapshot in context.mesh.updates().cancelOnGracefulShutdown() {
                    await reconcile(snapshot)
                    if first {
                        first = false
                        context.readiness.markReady(Self.readinessComponent)
                    }
                }
                group.cancelAll()
            }
        }
        await stopListening()
    }

    /// Stops accepting and tells every peer with GOAWAY that no new streams will be taken;
    /// open streams go on until the kernel's drain deadline.
    func drain() async {
        let open = state.withLockedValue { state in
            state.draining = true
            return Array(state.connections.values)
        }
        await stopListening()
        for channel in open { Self.sendGoAway(channel) }
    }

    private static func sendGoAway(_ channel: any Channel) {
        channel.eventLoop.execute {
            let goAway = HTTP2Frame(
                streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil))
            channel.writeAndFlush(goAway, promise: nil)
        }
    }

    /// Closes every listener and connection.
    func close() async {
        await stopListening()
        let open = state.withLockedValue { Array($0.connections.values) }
        for channel in open { channel.close(promise: nil) }
        for channel in open { try? await channel.closeFuture.get() }
    }

    private func stopListening() async {
        let all = state.withLockedValue { state in
            defer { state.listeners = [:] }
            return Array(state.listeners.values)
        }
        for listener in all { await listener.stopAccepting() }
        await podListeners?.shutdown()
    }

    /// Listens on `<ip>:<port>` for every IP of every local HBONE workload and stops
    /// listening where none is left. A failed bind is logged and retried on the next update.
    func reconcile(_ snapshot: MeshSnapshot) async {
        guard !state.withLockedValue({ $0.draining }) else { return }
        var wanted = Set<SocketAddr>()
        // Pods captured in their own namespaces get their listener there (podListeners);
        // on an in-pod node every local workload does (or has none yet).
        let allInPod = context.pods.claimsAllLocalWorkloads
        for workload in snapshot.workloads.values
        where !allInPod && context.isLocal(workload) && workload.tunnelProtocol == .hbone && workload.netns == nil
            && !context.pods.isClaimed(uid: workload.uid)
        {
            for ip in workload.workloadIPs { wanted.insert(SocketAddr(ip: ip, port: config.server.port)) }
        }
        let current = Set(state.withLockedValue { Array($0.listeners.keys) })
        for address in current.subtracting(wanted) {
            if let listener = state.withLockedValue({ $0.listeners.removeValue(forKey: address) }) {
                await listener.stopAccepting()
                logger.info("HBONE listener closed", metadata: ["address": "\(address)"])
            }
        }
        for address in wanted.subtracting(current).sorted(by: { "\($0)" < "\($1)" }) {
            do {
                try await bind(address)
                state.withLockedValue { _ = $0.failedBinds.remove(address) }
            } catch {
                if state.withLockedValue({ $0.failedBinds.insert(address).inserted }) {
                    logger.error(
                        "cannot listen for HBONE; will retry on every mesh update (logged once)",
                        metadata: ["address": "\(address)", "error": "\(error)"])
                }
            }
        }
    }

    private func bind(_ address: SocketAddr) async throws {
        let listener = try await TCPListener.bind(ListenerOptions(address: address), group: context.eventLoopGroup) {
            [self] channel in
            self.initializeConnection(channel)
        }
        let kept = state.withLockedValue { state -> Bool in
            guard !state.draining else { return false }
            state.listeners[address] = listener
            return true
        }
        guard kept else {
            // The server began draining while this bind was under way.
            await listener.stopAccepting()
            return
        }
        logger.info("HBONE listening", metadata: ["address": "\(listener.localAddress)"])
    }


    // MARK: Connections

    /// Admits the connection under the pending-handshake cap and deadline, asks the
    /// terminator whom the server is for it, fetches that identity's certificate (the
    /// connection is not registered, so nothing is read, until it is there), then installs
    /// TLS, HTTP/2 and the connection handler.
    fileprivate func initializeConnection(_ channel: any Channel, pod: CapturedPods.Pod? = nil) -> EventLoopFuture<Void> {
        let eventLoop = channel.eventLoop
        guard let local = SocketAddr(channel.localAddress), let remote = SocketAddr(channel.remoteAddress) else {
            return eventLoop.makeFailedFuture(HBONEError(.connectionClosed, "accepted connection has no addresses"))
        }
        let logger = self.logger
        let timeout = config.server.handshakeTimeout
        guard
            let slot = handshakes.admit(
                channel,
                onTimeout: {
                    logger.debug(
                        "HBONE connection closed: TLS handshake not finished in time",
                        metadata: ["peer": "\(remote)", "local": "\(local)", "timeout": "\(timeout)"])
                })
        else {
            // Logged sparingly: under a flood a line per connection would be a second flood.
            let refused = handshakes.snapshot.refused
            if refused == 1 || refused % 1000 == 0 {
                logger.warning(
                    "HBONE connections refused: too many TLS handshakes pending",
                    metadata: [
                        "limit": "\(handshakes.limit)", "refusedSoFar": "\(refused)", "peer": "\(remote)",
                    ])
            }
            return eventLoop.makeFailedFuture(
                HBONEError(.refused, "more than \(handshakes.limit) TLS handshakes pending"))
        }
        guard let terminator = terminator.terminator else {
            return eventLoop.makeFailedFuture(HBONEError(.connectionClosed, "no tunnel terminator"))
        }
        // The pod's mesh workload, when the pod names it another way (ZDS): a pod whose
        // workload the mesh does not have yet is named by its own uid, which matches no
        // workload, so the terminator refuses.
        let podWorkload = pod.map { $0.workload(in: context.mesh.snapshot, node: context.nodeName)?.uid ?? $0.uid }
        let connection = AcceptedTunnelConnection(
            local: local, remote: remote, pod: podWorkload, placement: pod?.placement ?? .node)
        let server: TunnelServerIdentity
        switch terminator.serverIdentity(for: connection) {
        case .success(let chosen):
            server = chosen
        case .failure(let refusal):
            logger.info(
                "HBONE connection refused: \(refusal.message)",
                metadata: ["local": "\(local)", "peer": "\(remote)", "reason": "\(refusal.code)"])
            return eventLoop.makeFailedFuture(HBONEError(.connectionClosed, refusal.message))
        }
        guard let provider = identity.provider else {
            return eventLoop.makeFailedFuture(HBONEError(.certificate, "no identity provider"))
        }
        let tls = self.tls
        return eventLoop.makeFutureWithTask {
            let certificate = try await provider.certificate(for: server.identity, priority: .onDemand)
            return try tls.material(for: certificate, side: .server)
        }.flatMapErrorThrowing { error in
            logger.error(
                "HBONE connection refused: no certificate for the identity the server presents",
                metadata: [
                    "workload": "\(server.workload?.uid ?? "none")", "identity": "\(server.identity)", "error": "\(error)",
                ])
            throw error
        }.flatMapThrowing { material in
            try self.install(
                on: channel, material: material, state: ServerConnectionState(connection: connection, server: server),
                terminator: terminator, slot: slot)
        }
    }

    private func install(
        on channel: any Channel, material: HBONETLSContexts.Material, state: ServerConnectionState,
        terminator: any TunnelTerminator, slot: PendingHandshakes.Slot
    ) throws {
        // TLS needs both directions of the socket; a half-closed peer is a closed peer.
        try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: false)
        let logger = self.logger
        let remote = state.remote
        let trustDomain = state.server.peerTrustDomain
        let served = state.server.workload?.uid ?? "\(state.server.identity)"
        let roots = material.roots
        let ssl = NIOSSLServerHandler(context: material.context, customVerificationCallback: { certificates, promise in
            promise.completeWithTask {
                switch await SpiffePeerVerifier.verify(
                    chain: certificates, roots: roots, requirement: .trustDomain(trustDomain))
                {
                case .success(let peer):
                    state.peer = peer
                    return .certificateVerified
                case .failure(let error):
                    logger.info(
                        "HBONE client certificate rejected",
                        metadata: ["peer": "\(remote)", "workload": "\(served)", "reason": "\(error)"])
                    return .failed
                }
            }
        })
        let http2 = NIOHTTP2Handler(
            mode: .server, eventLoop: channel.eventLoop,
            connectionConfiguration: HBONEHTTP2.connectionConfiguration(config, side: .server),
            streamConfiguration: HBONEHTTP2.streamConfiguration(config)
        ) { [self] stream in
            self.initializeStream(stream, state: state, terminator: terminator)
        }
        let id = ObjectIdentifier(channel)
        let serverState = self.state
        let events = HBONEConnectionEvents(
            ready: { slot.established() },
            closed: { error in
                serverState.withLockedValue { _ = $0.connections.removeValue(forKey: id) }
                if let error, !HBONEServer.isOrdinaryClose(error) {
                    logger.info("HBONE connection ended", metadata: ["peer": "\(remote)", "error": "\(error)"])
                }
            })
        var connectionLogger = logger
        connectionLogger[metadataKey: "peer"] = "\(remote)"
        let handler = HBONEConnectionHandler(
            connectionWindow: config.http2.connectionWindow,
            keepaliveInterval: config.http2.keepaliveInterval.timeAmount,
            keepaliveTimeout: config.http2.keepaliveTimeout.timeAmount,
            // The handshake deadline runs from accept, in `handshakes`.
            handshakeTimeout: nil, isClient: false, logger: connectionLogger, events: events)
        try channel.pipeline.syncOperations.addHandlers([ssl, handler.frameWatcher, http2, handler])
        let draining = serverState.withLockedValue { state -> Bool in
            state.connections[id] = channel
            return state.draining
        }
        // Accepted while the server drains (before its listener closed): it has not
        // handshaken yet, so closing it loses nothing; the peer dials elsewhere.
        if draining { channel.eventLoop.execute { channel.close(promise: nil) } }
    }

    static func isOrdinaryClose(_ error: any Error) -> Bool {
        if let error = error as? ChannelError, error == .ioOnClosedChannel || error == .eof { return true }
        if let error = error as? NIOSSLError, case .uncleanShutdown = error { return true }
        return false
    }

    // MARK: Streams

    private func initializeStream(
        _ stream: any Channel, state: ServerConnectionState, terminator: any TunnelTerminator
    ) -> EventLoopFuture<Void> {
        stream.eventLoop.makeCompletedFuture {
            // Reads are driven by the bridge, then by the relay: nothing is pulled off the
            // stream before someone can take it.
            try stream.syncOptions?.setOption(.autoRead, value: false)
            let bridge = HBONEStreamBridge(logger: logger) { [self] headers, bridge, channel in
                self.handleRequest(headers, bridge: bridge, stream: channel, state: state, terminator: terminator)
            }
            try stream.pipeline.syncOperations.addHandler(bridge)
        }
    }

    /// Checks one CONNECT's framing (400 when it is not a plain CONNECT to `ip:port` or
    /// `hostname:port`) and
    /// hands it to the terminator, which answers through an ``HBONEStreamResponder``.
    private func handleRequest(
        _ headers: HPACKHeaders, bridge: HBONEStreamBridge, stream: any Channel, state: ServerConnectionState,
        terminator: any TunnelTerminator
    ) {
        let parsed = Result { () throws(HBONEConnectRequest.Rejection) in
            try HBONEConnectRequest.parse(headers: headers.map { (name: $0.name, value: $0.value) })
        }
        func responder(baggage: [String: String]) -> HBONEStreamResponder {
            HBONEStreamResponder(bridge: bridge, stream: stream, state: state, logger: logger, headers: headers, baggage: baggage)
        }
        switch parsed {
        case .failure(let rejection):
            responder(baggage: [:]).reject(status: rejection.status, reason: rejection.reason)
        case .success(let request):
            let streamRequest = TunnelStreamRequest(
                connection: state.connection, server: state.server, peerIdentity: state.peer,
                authority: request.authority,
                // The source is the connection's peer, never `forwarded: for=`: any holder of a
                // mesh certificate could name any address there (ztunnel's inbound ignores it
                // too).
                source: state.remote, forwardedFor: request.forwardedFor, baggage: request.baggage, route: "hbone",
                connectTimeout: config.server.connectTimeout.timeAmount, forwardedHost: request.forwardedHost,
                forwardedNetwork: request.forwardedNetwork)
            terminator.terminate(streamRequest, responder: responder(baggage: request.baggage))
        }
    }
}

/// How the HBONE server answers a stream for the terminator: the HTTP status for each
/// refusal is this table (401 denied, 503 unreachable, 400 otherwise); 200 carries the
/// destination workload's baggage when there is one.
struct HBONEStreamResponder: TunnelStreamResponder {
    /// The stream's handler: used on the stream's event loop only, as the role requires.
    private let boundBridge: NIOLoopBound<HBONEStreamBridge>
    let stream: any Channel
    let state: ServerConnectionState
    let logger: Logger
    /// The request's headers and baggage, for the log line of a rejection only: an
    /// accepted stream never formats them.
    let headers: HPACKHeaders
    let baggage: [String: String]

    init(
        bridge: HBONEStreamBridge, stream: any Channel, state: ServerConnectionState, logger: Logger,
        headers: HPACKHeaders, baggage: [String: String]
    ) {
        self.boundBridge = NIOLoopBound(bridge, eventLoop: stream.eventLoop)
        self.stream = stream
        self.state = state
        self.logger = logger
        self.headers = headers
        self.baggage = baggage
    }

    private var bridge: HBONEStreamBridge { boundBridge.value }
    var eventLoop: any EventLoop { stream.eventLoop }
    var isActive: Bool { stream.isActive }

    /// The HTTP status HBONE answers a refusal with (``HBONEPlugin/status(for:)``).
    static func status(for refusal: ConnectionRefusal) -> Int {
        HBONEPlugin.status(for: refusal)
    }

    func refuse(_ refusal: ConnectionRefusal) {
        reject(status: Self.status(for: refusal), reason: refusal.message)
    }

    func reject(status: Int, reason: String) {
        // Bounded: the header list may be up to server.maxHeaderListSize long.
        let authority = (headers.first(name: ":authority") ?? "").prefix(256)
        var metadata: Logger.Metadata = [
            "status": "\(status)", "reason": "\(reason)", "authority": "\(authority)",
            "peer": "\(state.peer.map { "\($0)" } ?? "unknown")", "from": "\(state.remote)",
        ]
        // The workload the peer says it sends for (its baggage), when it says.
        if let namespace = baggage["k8s.namespace.name"], let name = baggage["service.name"] {
            metadata["peerWorkload"] = "\(name.prefix(128)).\(namespace.prefix(128))"
        }
        logger.info("HBONE request rejected", metadata: metadata)
        let stream = self.stream
        let sent = stream.eventLoop.makePromise(of: Void.self)
        bridge.sendHeaders(HBONEHeaders.response(status: status, destination: nil), endStream: true, promise: sent)
        sent.futureResult.whenComplete { _ in stream.close(promise: nil) }
    }

    func accept() -> any Channel {
        bridge.sendHeaders(HBONEHeaders.response(status: 200, destination: state.server.workload), endStream: false)
        bridge.open()
        return stream
    }
}

/// What the streams of one server connection share: where it arrived, whom the server is
/// for it (the terminator's choice) and, after the handshake, the peer's verified identity.
final class ServerConnectionState: Sendable {
    let connection: AcceptedTunnelConnection
    let server: TunnelServerIdentity
    private let peerBox = NIOLockedValueBox<SpiffeID?>(nil)

    init(connection: AcceptedTunnelConnection, server: TunnelServerIdentity) {
        self.connection = connection
        self.server = server
    }

    var remote: SocketAddr { connection.remote }

    /// Set by the verification callback, before any stream exists.
    var peer: SpiffeID? {
        get { peerBox.withLockedValue { $0 } }
        set { peerBox.withLockedValue { $0 = newValue } }
    }
}

/// The tunnel terminator, found in provision (after every plugin is built).
final class TerminatorHolder: Sendable {
    private let box = NIOLockedValueBox<(any TunnelTerminator)?>(nil)
    var terminator: (any TunnelTerminator)? {
        get { box.withLockedValue { $0 } }
        set { box.withLockedValue { $0 = newValue } }
    }
}

/// The identity provider, found in provision (after every plugin is built).
final class IdentityHolder: Sendable {
    private let box = NIOLockedValueBox<(any IdentityProvider)?>(nil)
    var provider: (any IdentityProvider)? {
        get { box.withLockedValue { $0 } }
        set { box.withLockedValue { $0 = newValue } }
    }
}

/// HTTP/2 settings from the config (ztunnel's defaults).
enum HBONEHTTP2 {
    enum Side { case client, server }

    static func connectionConfiguration(_ config: HBONEConfig, side: Side) -> NIOHTTP2Handler.ConnectionConfiguration {
        var configuration = NIOHTTP2Handler.ConnectionConfiguration()
        var settings: HTTP2Settings = [
            HTTP2Setting(parameter: .initialWindowSize, value: config.http2.streamWindow),
            HTTP2Setting(parameter: .maxFrameSize, value: config.http2.maxFrameSize),
        ]
        switch side {
        case .server:
            settings.append(HTTP2Setting(parameter: .maxConcurrentStreams, value: config.server.maxConcurrentStreams))
            settings.append(HTTP2Setting(parameter: .maxHeaderListSize, value: config.server.maxHeaderListSize))
        case .client:
            settings.append(HTTP2Setting(parameter: .enablePush, value: 0))
            settings.append(HTTP2Setting(parameter: .maxHeaderListSize, value: config.client.maxHeaderListSize))
        }
        configuration.initialSettings = settings
        configuration.targetWindowSize = config.http2.connectionWindow
        // Rapid-reset, CONTINUATION-flood, empty-frame and glitch limits keep NIOHTTP2's defaults.
        return configuration
    }

    static func streamConfiguration(_ config: HBONEConfig) -> NIOHTTP2Handler.StreamConfiguration {
        var configuration = NIOHTTP2Handler.StreamConfiguration()
        configuration.targetWindowSize = config.http2.streamWindow
        // The relay's credit scheme expects the same water marks as on sockets; NIOHTTP2's
        // 8 KiB default would flip writability on every chunk.
        configuration.outboundBufferSizeHighWatermark = Int(Relay.writeBufferWaterMark.high)
        configuration.outboundBufferSizeLowWatermark = Int(Relay.writeBufferWaterMark.low)
        return configuration
    }
}

// MARK: - In-pod listeners

/// The HBONE listener inside each captured pod: `0.0.0.0:<port>` and, when the kernel has
/// IPv6, `[::]:<port>` in the pod's namespace, its connections handled like the
/// node-level listeners' (with the pod named).
struct HBONEPodListener: PodServer {
    let name = "hbone"
    let port: UInt16
    let group: any EventLoopGroup
    let logger: Logger
    let accept: AcceptInPod

    func start(_ pod: CapturedPods.Pod) async throws -> [TCPListener] {
        let accept = self.accept
        let listeners = try await TCPListener.bindEachFamily(port: port, placement: pod.placement, group: group) {
            channel in
            accept(channel, pod: pod)
        }
        logger.info(
            "HBONE listening in pod",
            metadata: [
                "pod": "\(pod.uid)", "address": "\(listeners.map { "\($0.localAddress)" }.joined(separator: ","))",
                "netns": "\(pod.namespace.path)",
            ])
        return listeners
    }

    func stop(_ listeners: [TCPListener], pod: CapturedPods.Pod, reason: PodStopReason) async {
        for listener in listeners { await listener.stopAccepting() }
        logger.info("HBONE pod listener closed", metadata: ["pod": "\(pod.uid)"])
    }
}

/// The server a pod listener hands its connections to, held weakly (the server owns the
/// reconciler that owns the listeners).
final class AcceptInPod: Sendable {
    let server = NIOLockedValueBox<WeakServer?>(nil)

    func callAsFunction(_ channel: any Channel, pod: CapturedPods.Pod) -> EventLoopFuture<Void> {
        guard let server = server.withLockedValue({ $0?.server }) else {
            return channel.eventLoop.makeFailedFuture(HBONEError(.connectionClosed, "the HBONE server is gone"))
        }
        return server.initializeConnection(channel, pod: pod)
    }
}

struct WeakServer: Sendable {
    weak var server: HBONEServer?

    init(_ server: HBONEServer) {
        self.server = server
    }
}
