public import Kernel
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif
import AmbitRuntime
import NodeProxy

/// Settings of the plaintext inbound listener (`capture` config key `inbound`).
public struct InboundPlaintextConfig: DefaultedConfig, Sendable {
    /// Listen or not. Off by default: without in-pod redirection (or a fixed `destination`)
    /// nothing arrives here.
    public var enabled = false
    /// Listen address; port 0 picks a free port.
    public var address = SocketAddr(ip: .v4(0), port: 15006)
    /// Send every connection to this local workload address. Absent: the connection's
    /// original destination (`SO_ORIGINAL_DST`, set by in-pod REDIRECT rules), or, when it
    /// was not redirected, the address it arrived on.
    public var destination: SocketAddr?

    public init() {}
}

/// The plaintext inbound path: plain TCP from outside the mesh (or from a workload that
/// does not speak HBONE) to a local workload. There is no peer identity; the connection
/// still goes through the policy role (a deny closes it) and telemetry, like an HBONE
/// stream, through the kernel's ``InboundPath``.
///
/// Thread-safe.
final class InboundPlaintext: Sendable {
    private let config: InboundPlaintextConfig
    private let inbound: InboundPath
    private let logger: Logger
    private let mesh: MeshStore
    private let nodeName: String

    init(config: InboundPlaintextConfig, context: PluginContext, dialer: TCPDialer) {
        self.mesh = context.mesh
        self.nodeName = context.nodeName
        self.config = config
        self.inbound = InboundPath(context: context, dialer: dialer)
        self.logger = context.logger
    }

    /// Sets up one accepted connection: reads stay off until the relay takes over.
    ///
    /// - Parameter pod: under in-pod capture, the pod whose namespace the listener is in:
    ///   the destination must be one of its addresses, and the workload is dialed from
    ///   inside that namespace (`placement`).
    func accept(_ channel: any Channel, pod: CapturedPods.Pod? = nil) -> EventLoopFuture<Void> {
        let eventLoop = channel.eventLoop
        guard let client = SocketAddr(channel.remoteAddress), let local = SocketAddr(channel.localAddress) else {
            return eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
        }
        do {
            try channel.syncOptions?.setOption(.autoRead, value: false)
        } catch {
            return eventLoop.makeFailedFuture(error)
        }
        let fixed = config.destination.map { eventLoop.makeSucceededFuture(Optional($0)) }
        let inbound = self.inbound
        let logger = self.logger
        let mesh = self.mesh
        let nodeName = self.nodeName
        // The connection is registered (and so read) only once this future completes: the
        // relay is installed by then, so no byte arrives before it.
        return (fixed ?? Self.originalDestination(of: channel)).flatMap { original -> EventLoopFuture<ConnectionRecord> in
            let destination = original ?? local
            // Not redirected and no fixed destination: the destination is this listener
            // itself, which would loop.
            if destination == local {
                logger.info(
                    "inbound plaintext refused: connection was not redirected (no original destination); set `inbound.destination` to forward without redirection",
                    metadata: ["source": "\(client)", "local": "\(local)"])
                return eventLoop.makeFailedFuture(
                    ConnectionRefusal(.selfCall, "\(local) is this proxy's own listener"))
            }
            // The pod's own workload: its addresses are on its own network.
            if let pod, pod.workload(in: mesh.snapshot, node: nodeName)?.workloadIPs.contains(destination.ip) != true {
                logger.info(
                    "inbound plaintext refused: destination is not the pod whose namespace it arrived in",
                    metadata: ["source": "\(client)", "destination": "\(destination)", "pod": "\(pod.uid)"])
                return eventLoop.makeFailedFuture(
                    ConnectionRefusal(.unknownDestination, "\(destination) is not an address of pod \(pod.uid)"))
            }
            let request = InboundRequest(source: client, destination: destination, peerIdentity: nil, route: "plaintext")
            return inbound.admit(request, on: eventLoop).flatMapResult { $0 }
        }.flatMap { record in
            inbound.connect(record, on: eventLoop, in: pod?.placement ?? .node).map { upstream in
                inbound.relay(downstream: channel, upstream: upstream, record: record)
            }
        }
    }

    /// Where the client meant to connect before a REDIRECT rule sent it here:
    /// `SO_ORIGINAL_DST` for IPv4, `IP6T_SO_ORIGINAL_DST` for IPv6 (the in-pod IPv6
    /// listeners accept IPv6 only, so an IPv6 socket never carries a mapped IPv4
    /// connection). Nil when the socket option is unavailable (no conntrack entry: the
    /// connection was not redirected).
    static func originalDestination(of channel: any Channel) -> EventLoopFuture<SocketAddr?> {
        #if os(Linux)
        guard let provider = channel as? any SocketOptionProvider, let local = SocketAddr(channel.localAddress) else {
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        // Both options are number 80, at SOL_IP (linux/netfilter_ipv4.h) and SOL_IPV6
        // (linux/netfilter_ipv6/ip6_tables.h), and answer with a sockaddr_in / sockaddr_in6.
        let originalDestination = SocketOptionName(80)
        if local.ip.isIPv4 {
            let future: EventLoopFuture<sockaddr_in> = provider.unsafeGetSocketOption(
                level: SocketOptionLevel(IPPROTO_IP), name: originalDestination)
            return future.map { address -> SocketAddr? in
                SocketAddr(
                    ip: .v4(UInt32(bigEndian: address.sin_addr.s_addr)), port: UInt16(bigEndian: address.sin_port))
            }.recover { _ in nil }
        }
        let future: EventLoopFuture<sockaddr_in6> = provider.unsafeGetSocketOption(
            level: SocketOptionLevel(IPPROTO_IPV6), name: originalDestination)
        return future.map { address -> SocketAddr? in
            guard Int32(address.sin6_family) == AF_INET6 else { return nil }
            let bytes = withUnsafeBytes(of: address.sin6_addr) { Array($0) }
            return IPAddress(bytes: bytes).map { SocketAddr(ip: $0, port: UInt16(bigEndian: address.sin6_port)) }
        }.recover { _ in nil }
        #else
        return channel.eventLoop.makeSucceededFuture(nil)
        #endif
    }
}
