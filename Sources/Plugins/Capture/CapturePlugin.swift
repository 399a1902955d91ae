public import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle
import AmbitRuntime
public import DNSProxy
import NodeProxy

/// Captures application connections and sends them through the node's outbound path.
///
/// Two modes, usable together:
/// - an explicit SOCKS5 listener (no authentication; IPv4, IPv6 and domain destinations).
///   The client's source IP identifies the source workload;
/// - in-pod capture (``InPodConfig``, off by default): redirect rules and listeners inside
///   each local pod's network namespace, the way istio-cni + ztunnel do it; the pod
///   identifies the source workload, `SO_ORIGINAL_DST` the destination.
///
/// The forwarding decision picks the destination; plain-TCP destinations are relayed
/// directly, HBONE destinations go through the tunnel-dialer role (the `hbone` plugin);
/// without one they are refused with a log line saying so.
public final class CapturePlugin: Plugin, CaptureSource, AdminRouteProvider {
    /// `capture` plugin configuration.
    public struct Config: DefaultedConfig, Sendable {
        /// The SOCKS5 listener.
        public var socks5: SOCKS5Config = SOCKS5Config()
        /// Upstream connect timeout.
        public var connectTimeout: ConfigDuration = ConfigDuration(.seconds(5))
        /// SO_MARK on upstream sockets, so in-pod redirection never recaptures them.
        public var upstreamMark: UInt32?
        /// The plaintext inbound listener (off by default).
        public var inbound: InboundPlaintextConfig = InboundPlaintextConfig()
        /// In-pod capture (off by default).
        public var inPod: InPodConfig = InPodConfig()
        /// A DNS proxy in the node's own namespace, for workloads not captured in-pod (off
        /// unless `address` is set): clients are found by their source address.
        public var dns: NodeDNSProxyConfig = NodeDNSProxyConfig()

        /// SOCKS5 settings.
        public struct SOCKS5Config: DefaultedConfig, Sendable {
            /// Listen or not.
            public var enabled: Bool = true
            /// Listen address; port 0 picks a free port (see ``CapturePlugin/captureAddresses``).
            public var address: SocketAddr = SocketAddr(ip: .v4(0x7f00_0001), port: 15080)
            /// How long a client may take to finish the SOCKS5 handshake.
            public var handshakeTimeout: ConfigDuration = ConfigDuration(.seconds(10))

            public init() {}
        }

        public init() {}
    }

    public static let id = "capture"
    public static let summary = "captures application traffic (SOCKS5 on 127.0.0.1:15080) into the outbound path"
    public static let provides: Set<PluginRole> = [.capture]
    public static let requires: Set<PluginRole> = [.discovery]

    private let config: Config
    private let context: PluginContext
    private let listeners = NIOLockedValueBox<[TCPListener]>([])
    private let outbound: OutboundPath
    private let inbound: InboundPlaintext
    private let inboundAddress = NIOLockedValueBox<SocketAddr?>(nil)
    private let nodeDNS = NIOLockedValueBox<DNSProxyServer?>(nil)
    private let dnsMetrics = SharedDNSMetrics()

    /// The node-level DNS proxy's UDP address, once listening.
    public var dnsAddress: SocketAddr? { nodeDNS.withLockedValue { $0?.udpAddress } }
    private let inPod: InPodCapture?

    public init(config: Config, context: PluginContext) throws {
        self.config = config
        self.context = context
        self.outbound = OutboundPath(
            context: context,
            dialer: TCPDialer(
                options: DialerOptions(
                    mark: config.upstreamMark, connectTimeout: config.connectTimeout.timeAmount)))
        self.inbound = InboundPlaintext(
            config: config.inbound, context: context,
            dialer: TCPDialer(
                options: DialerOptions(
                    mark: config.upstreamMark, connectTimeout: config.connectTimeout.timeAmount)))
        self.inPod =
            config.inPod.enabled
            ? InPodCapture(
                config: config.inPod, context: context, outbound: outbound, inbound: inbound, dnsMetrics: dnsMetrics)
            : nil
    }

    private var socksComponent: String { "capture socks5 listener \(config.socks5.address)" }
    private var inboundComponent: String { "capture inbound listener \(config.inbound.address)" }

    public func provision() async throws {
        // A decoded config was validated with file and line; this catches one built in code.
        let problems = config.inPod.validate().map { $0.under("inPod").description }
        if !problems.isEmpty {
            throw PluginError(.invalidConfiguration, plugin: Self.id, problems.joined(separator: "; "))
        }
        inPod?.provision()
        if config.socks5.enabled { context.readiness.expect(socksComponent) }
        if config.inbound.enabled { context.readiness.expect(inboundComponent) }
    }

    /// The plaintext inbound listener's bound address, once listening.
    public var inboundPlaintextAddress: SocketAddr? { inboundAddress.withLockedValue { $0 } }

    public var captureAddresses: [SocketAddr] {
        listeners.withLockedValue { $0.map(\.localAddress) }
    }

    public func run() async throws {
        if config.socks5.enabled {
            let outbound = self.outbound
            let timeout = config.socks5.handshakeTimeout.timeAmount
            let listener: TCPListener
            do {
                listener = try await TCPListener.bind(
                    ListenerOptions(address: config.socks5.address), group: context.eventLoopGroup
                ) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            SOCKS5ServerHandler(handshakeTimeout: timeout) { request, channel in
                                outbound.connect(request, from: channel)
                            })
                    }
                }
            } catch {
                throw PluginError(
                    .unavailable, plugin: Self.id,
                    "cannot listen for SOCKS5 on \(config.socks5.address): \(error)")
            }
            listeners.withLockedValue { $0.append(listener) }
            context.readiness.markReady(socksComponent)
            context.logger.info("SOCKS5 listening", metadata: ["address": "\(listener.localAddress)"])
        }
        if config.inbound.enabled {
            let inbound = self.inbound
            let listener: TCPListener
            do {
                listener = try await TCPListener.bind(
                    ListenerOptions(address: config.inbound.address), group: context.eventLoopGroup
                ) { channel in
                    inbound.accept(channel)
                }
            } catch {
                throw PluginError(
                    .unavailable, plugin: Self.id,
                    "cannot listen for inbound plaintext on \(config.inbound.address): \(error)")
            }
            listeners.withLockedValue { $0.append(listener) }
            inboundAddress.withLockedValue { $0 = listener.localAddress }
            context.readiness.markReady(inboundComponent)
            context.logger.info("inbound plaintext listening", metadata: ["address": "\(listener.localAddress)"])
        }
        if let address = config.dns.socketAddress {
            let context = self.context
            let mesh = context.mesh
            let server: DNSProxyServer
            do {
                server = try await DNSProxyServer.start(
                    address: address, placement: .node, group: context.eventLoopGroup, mesh: { mesh.snapshot },
                    client: { source in
                        // The client is the local workload at the query's source address.
                        context.localWorkload(at: source.ip, in: mesh.snapshot).map {
                            DNSClientInfo(
                                namespace: $0.namespace, network: $0.network, canonicalService: $0.canonicalName,
                                canonicalRevision: $0.canonicalRevision)
                        }
                    },
                    upstreams: config.dns.upstreamAddresses, metrics: dnsMetrics.get(context),
                    logger: context.logger, options: DNSProxyServer.Options(config.dns))
            } catch {
                throw PluginError(.unavailable, plugin: Self.id, "cannot listen for DNS on \(address): \(error)")
            }
            nodeDNS.withLockedValue { $0 = server }
            context.logger.info("DNS proxy listening", metadata: ["address": "\(server.udpAddress)"])
        }
        if let inPod {
            // The pod sources and listeners live until graceful shutdown (a child task).
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await inPod.run() }
                try? await gracefulShutdown()
                group.cancelAll()
            }
        } else {
            try? await gracefulShutdown()
        }
        await stopListening()
    }

    public func drain() async {
        await stopListening()
        await inPod?.closeAll()
    }

    public func cleanup() async {
        await inPod?.closeAll()
        await stopListening()
    }

    /// `/pods` when in-pod capture is on.
    public var adminRoutes: [AdminRoute] { inPod.map { [$0.adminRoute] } ?? [] }

    private func stopListening() async {
        for listener in listeners.withLockedValue({ $0 }) {
            await listener.stopAccepting()
        }
        let dns = nodeDNS.withLockedValue { server -> DNSProxyServer? in
            defer { server = nil }
            return server
        }
        await dns?.stop()
    }
}
