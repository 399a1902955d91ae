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
