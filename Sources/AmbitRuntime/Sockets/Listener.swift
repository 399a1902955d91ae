#if canImport(Glibc)
import Glibc
#endif
public import NIOCore
import NIOPosix
public import Kernel

/// Options for a listening socket.
public struct ListenerOptions: Sendable {
    /// Where to listen; port 0 picks a free ephemeral port (see ``TCPListener/localAddress``).
    public var address: SocketAddr
    /// `SO_REUSEPORT`: let several listeners (one per event loop, or a restarted proxy next
    /// to the draining one) share the port.
    public var reusePort: Bool
    /// `SO_MARK` for the listening socket; accepted sockets inherit it.
    public var mark: UInt32?
    /// `IP_TRANSPARENT`: accept connections addressed to any IP (TPROXY capture).
    public var transparent: Bool
    /// The kernel's accept queue length.
    public var backlog: Int32
    /// Listen inside this network namespace (a pod's, for in-pod capture) instead of the
    /// proxy's own; its ``NetworkNamespace/mark`` applies when ``mark`` is nil. Nil: the
    /// proxy's namespace.
    /// It must be one this runtime opened (a ``NetworkNamespace``).
    public var namespace: (any NetworkNamespaceHandle)?
    /// `IPV6_V6ONLY` on an IPv6 listener: accept IPv6 connections only, so an IPv4 listener
    /// on the same port can sit beside it and IPv4 peers never appear as IPv4-mapped IPv6
    /// addresses. Off: the system's default (Linux: `net.ipv6.bindv6only`, normally 0, so
    /// `::` takes both families). Ignored for IPv4 addresses.
    public var ipv6Only: Bool = false

    /// Options for `address`; the rest default to a plain listener.
    public init(
        address: SocketAddr, reusePort: Bool = false, mark: UInt32? = nil, transparent: Bool = false,
        backlog: Int32 = 1024, namespace: (any NetworkNamespaceHandle)? = nil
    ) {
        self.address = address
        self.reusePort = reusePort
        self.mark = mark
        self.transparent = transparent
        self.backlog = backlog
        self.namespace = namespace
    }

    /// Options for `address` with the namespace, mark and transparency of `placement`
    /// (a pod's listener: inside its namespace, marked).
    public init(address: SocketAddr, placement: SocketPlacement, reusePort: Bool = false, backlog: Int32 = 1024) {
        self.init(
            address: address, reusePort: reusePort, mark: placement.mark, transparent: placement.transparent,
            backlog: backlog, namespace: placement.namespace)
    }
}

/// A bound TCP listener.
///
/// Accepted channels have `allowRemoteHalfClosure` on (the relay forwards half-closes),
/// `TCP_NODELAY` set (the relay forwards whatever it has, so Nagle would only add delay)
/// and `autoRead` on, so a handshake handler can read at once;
/// ``Relay/join(downstream:upstream:record:registry:initialData:)`` turns `autoRead` off
/// when it takes over.
///
/// Thread-safe: every member may be used from any thread.
public final class TCPListener: Sendable {
    private let channel: any Channel

    /// The address actually bound, with the real port when port 0 was asked for.
    public let localAddress: SocketAddr

    private init(channel: any Channel, localAddress: SocketAddr) {
        self.channel = channel
        self.localAddress = localAddress
    }

    /// Binds and starts accepting.
    ///
    /// - Parameters:
    ///   - options: where and how to listen.
    ///   - group: the event loops that accepted connections are spread over.
    ///   - childInitializer: sets up each accepted channel, on that channel's event loop,
    ///     before it becomes active. A failed future closes the connection.
    /// - Throws: ``SocketError`` with code ``SocketError/Code/bindFailed`` when a socket
    ///   option cannot be set or the address cannot be bound.
    public static func bind(
        _ options: ListenerOptions, group: any EventLoopGroup,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> TCPListener {
        if let handle = options.namespace {
            guard let namespace = handle as? NetworkNamespace else { throw NetworkNamespace.notOpenedHere(handle) }
            return try await bind(options, in: namespace, group: group, childInitializer: childInitializer)
        }
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: options.backlog)
            // A restarted proxy must be able to listen again while old connections sit in TIME_WAIT.
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: true)
        if options.reusePort {
            bootstrap = bootstrap.serverChannelOption(SocketOptions.reusePort, value: 1)
        }
        if let mark = options.mark {
            // Linux copies the listener's mark to each accepted socket (SocketTests checks
            // it), so accepting costs no extra syscall.
            bootstrap = bootstrap.serverChannelOption(SocketOptions.mark, value: SocketOptions.markValue(mark))
        }
        if options.transparent {
            bootstrap = bootstrap.serverChannelOption(SocketOptions.transparent(for: options.address.ip), value: 1)
        }
        if options.ipv6Only && !options.address.ip.isIPv4 {
            bootstrap = bootstrap.serverChannelOption(
                ChannelOptions.Types.SocketOption(
                    level: SocketOptionLevel(IPPROTO_IPV6), name: SocketOptionName(IPV6_V6ONLY)), value: 1)
        }
        bootstrap = bootstrap.childChannelInitializer(childInitializer)

        let channel: any Channel
        do {
            channel = try await bootstrap.bind(to: options.address.nioAddress()).get()
        } catch {
            let privileged = options.transparent || options.mark != nil
            throw SocketError(
                code: .bindFailed,
                message: "cannot listen on \(options.address): \(error)"
                    + (privileged ? " (transparent sockets and marks need CAP_NET_ADMIN)" : ""),
                underlying: error)
        }
        guard let local = SocketAddr(channel.localAddress) else {
            channel.close(promise: nil)
            throw SocketError(code: .bindFailed, message: "listener on \(options.address) has no IP local address")
        }
        return TCPListener(channel: channel, localAddress: local)
    }

    /// Whether this kernel has IPv6 (it was not booted with `ipv6.disable=1`): the sysctl
    /// tree IPv6 registers exists.
    public static var kernelHasIPv6: Bool {
        access("/proc/sys/net/ipv6", F_OK) == 0
    }

    /// Listens on `port` of every address of both families: `0.0.0.0` and, when `ipv6` is
    /// on and the kernel has IPv6, `::` with ``ListenerOptions/ipv6Only`` (a socket per
    /// family, so IPv4 connections keep plain IPv4 addresses). In-pod listeners use it to
    /// serve dual-stack pods.
    ///
    /// - Returns: the IPv4 listener, then the IPv6 one when opened.
    /// - Throws: what ``bind(_:group:childInitializer:)`` throws; a listener already
    ///   opened is closed first.
    public static func bindEachFamily(
        port: UInt16, placement: SocketPlacement, ipv6: Bool = true, group: any EventLoopGroup,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> [TCPListener] {
        var addresses = [SocketAddr(ip: .v4(0), port: port)]
        if ipv6 && kernelHasIPv6 { addresses.append(SocketAddr(ip: .v6(0, 0), port: port)) }
        var listeners: [TCPListener] = []
        do {
            for address in addresses {
                var options = ListenerOptions(address: address, placement: placement)
                options.ipv6Only = true
                listeners.append(try await bind(options, group: group, childInitializer: childInitializer))
            }
        } catch {
            for listener in listeners { await listener.stopAccepting() }
            throw error
        }
        return listeners
    }

    /// A listener inside `namespace`: the socket is made there, bound and listening, then
    /// handed to NIO.
    private static func bind(
        _ options: ListenerOptions, in namespace: NetworkNamespace, group: any EventLoopGroup,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> TCPListener {
        #if os(Linux)
        let fd = try NamespacedSockets.listeningSocket(options, in: namespace)
        let bootstrap = ServerBootstrap(group: group)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.autoRead, value: true)
            .childChannelInitializer(childInitializer)
        let channel: any Channel
        do {
            channel = try await bootstrap.withBoundSocket(fd).get()
        } catch {
            // NIO closes the descriptor when it took it; a failure before that leaves it open.
            _ = Glibc.close(fd)
            throw SocketError(
                code: .bindFailed, message: "cannot listen on \(options.address) in \(namespace): \(error)",
                underlying: error)
        }
        guard let local = SocketAddr(channel.localAddress) else {
            channel.close(promise: nil)
            throw SocketError(code: .bindFailed, message: "listener on \(options.address) has no IP local address")
        }
        return TCPListener(channel: channel, localAddress: local)
        #else
        throw SocketError(code: .bindFailed, message: "network namespaces exist on Linux only")
        #endif
    }

    /// Stops accepting: closes the listening socket and returns once it is closed. Already
    /// accepted channels are untouched. Idempotent.
    public func stopAccepting() async {
        channel.close(promise: nil)
        try? await channel.closeFuture.get()
    }
}
