public import NIOCore
import NIOPosix
public import Kernel

/// How the proxy opens upstream connections.
public struct DialerOptions: Sendable {
    /// `SO_MARK`, so capture rules let the proxy's own connections out unredirected.
    public var mark: UInt32?
    /// How long a connect may take before it fails with ``SocketError/Code/connectTimedOut``.
    public var connectTimeout: TimeAmount
    /// The local address to bind before connecting (any port); must be of the
    /// destination's family.
    public var sourceAddress: IPAddress?
    /// `IP_TRANSPARENT` and `IP_FREEBIND`, so ``sourceAddress`` may be an address that is
    /// not this host's (connecting as the workload).
    public var transparent: Bool
    /// Connect from inside this network namespace (a pod's, for in-pod capture) instead of
    /// the proxy's own; its ``NetworkNamespace/mark`` applies when ``mark`` is nil. Nil: the
    /// proxy's namespace.
    /// A namespace must be one this runtime opened (a ``NetworkNamespace``); any other
    /// handle fails the connect.
    public var namespace: (any NetworkNamespaceHandle)?

    /// Options with everything defaulted: no mark, a 5 s timeout, the kernel's choice of
    /// source address, the proxy's own namespace.
    public init(
        mark: UInt32? = nil, connectTimeout: TimeAmount = .seconds(5), sourceAddress: IPAddress? = nil,
        transparent: Bool = false, namespace: (any NetworkNamespaceHandle)? = nil
    ) {
        self.mark = mark
        self.connectTimeout = connectTimeout
        self.sourceAddress = sourceAddress
        self.transparent = transparent
        self.namespace = namespace
    }
}

/// Opens upstream TCP connections for the relay.
///
/// Connected channels have `allowRemoteHalfClosure` on, `autoRead` off (the relay reads
/// only when the other side can take the bytes) and `TCP_NODELAY` set.
///
/// Thread-safe: a value type with no shared state; ``connect(to:on:)`` may be called from
/// any thread.
public struct TCPDialer: Sendable {
    /// The options every connection gets.
    public var options: DialerOptions

    /// A dialer with `options`.
    public init(options: DialerOptions = DialerOptions()) {
        self.options = options
    }

    /// This dialer, making its sockets where `placement` says: inside its namespace (if
    /// any), with its mark unless the dialer has one of its own, transparent if either
    /// asks for it. ``SocketPlacement/node``: unchanged.
    public func placed(_ placement: SocketPlacement) -> TCPDialer {
        var copy = self
        if let namespace = placement.namespace { copy.options.namespace = namespace }
        if copy.options.mark == nil { copy.options.mark = placement.mark }
        copy.options.transparent = copy.options.transparent || placement.transparent
        return copy
    }

    /// Connects to `destination` from `eventLoop`, which then owns the channel. Dial on the
    /// downstream channel's loop so the relay runs without thread hops.
    ///
    /// - Returns: the active channel, or a failed future with a ``SocketError``
    ///   (``SocketError/Code/connectionRefused``, ``SocketError/Code/connectTimedOut``,
    ///   ``SocketError/Code/connectFailed``, ``SocketError/Code/invalidAddress``). The future
    ///   completes on `eventLoop`.
    public func connect(to destination: SocketAddr, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        if let handle = options.namespace {
            guard let namespace = handle as? NetworkNamespace else {
                return eventLoop.makeFailedFuture(NetworkNamespace.notOpenedHere(handle))
            }
            return connect(to: destination, on: eventLoop, in: namespace)
        }
        let target: SocketAddress
        var source: SocketAddress?
        do {
            target = try destination.nioAddress()
            if let sourceAddress = options.sourceAddress {
                guard sourceAddress.isIPv4 == destination.ip.isIPv4 else {
                    throw SocketError(
                        code: .invalidAddress,
                        message: "cannot connect from \(sourceAddress) to \(destination): address families differ")
                }
                source = try SocketAddr(ip: sourceAddress, port: 0).nioAddress()
            }
        } catch {
            return eventLoop.makeFailedFuture(SocketError.connect(to: destination, failedWith: error))
        }

        var bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(options.connectTimeout)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.autoRead, value: false)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        if let mark = options.mark {
            bootstrap = bootstrap.channelOption(SocketOptions.mark, value: SocketOptions.markValue(mark))
        }
        if options.transparent {
            bootstrap = bootstrap
                .channelOption(SocketOptions.transparent(for: destination.ip), value: 1)
                .channelOption(SocketOptions.freeBind(for: destination.ip), value: 1)
        }
        if let source {
            bootstrap = bootstrap.bind(to: source)
        }
        return bootstrap.connect(to: target).flatMapErrorThrowing { error in
            throw SocketError.connect(to: destination, failedWith: error)
        }
    }

    /// Connects from inside `namespace`: the socket is made there and the connect started
    /// on the calling thread; a connect that does not complete at once is waited for on
    /// NIO's blocking thread pool. The connected descriptor then joins `eventLoop`.
    private func connect(
        to destination: SocketAddr, on eventLoop: any EventLoop, in namespace: NetworkNamespace
    ) -> EventLoopFuture<any Channel> {
        #if os(Linux)
        let options = self.options
        let started: (fd: Int32, connected: Bool)
        do {
            started = try NamespacedSockets.startConnect(to: destination, options: options, in: namespace)
        } catch {
            return eventLoop.makeFailedFuture(SocketError.connect(to: destination, failedWith: error))
        }
        let connected: EventLoopFuture<Int32>
        if started.connected {
            connected = eventLoop.makeSucceededFuture(started.fd)
        } else if let done = NamespacedSockets.connectFinishedNow(fd: started.fd, to: destination, in: namespace) {
            // Local destinations (the pod's own application) are usually connected by the
            // time the kernel returns from connect: no thread hop.
            switch done {
            case .success(let fd): connected = eventLoop.makeSucceededFuture(fd)
            case .failure(let error): connected = eventLoop.makeFailedFuture(error)
            }
        } else {
            let fd = started.fd
            connected = NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
                try NamespacedSockets.finishConnect(
                    fd: fd, to: destination, timeout: options.connectTimeout, in: namespace)
                return fd
            }
        }
        return connected.flatMap { fd in
            ClientBootstrap(group: eventLoop)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .channelOption(.autoRead, value: false)
                .withConnectedSocket(fd)
        }.flatMapErrorThrowing { error in
            throw SocketError.connect(to: destination, failedWith: error)
        }
        #else
        return eventLoop.makeFailedFuture(
            SocketError(code: .connectFailed, message: "network namespaces exist on Linux only"))
        #endif
    }
}
