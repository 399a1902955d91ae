import NIOCore
import NIOPosix

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

    /// Options with everything defaulted: no mark, a 5 s timeout, the kernel's choice of
    /// source address.
    public init(
        mark: UInt32? = nil, connectTimeout: TimeAmount = .seconds(5), sourceAddress: IPAddress? = nil,
        transparent: Bool = false
    ) {
        self.mark = mark
        self.connectTimeout = connectTimeout
        self.sourceAddress = sourceAddress
        self.transparent = transparent
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

    /// Connects to `destination` from `eventLoop`, which then owns the channel. Dial on the
    /// downstream channel's loop so the relay runs without thread hops.
    ///
    /// - Returns: the active channel, or a failed future with a ``SocketError``
    ///   (``SocketError/Code/connectionRefused``, ``SocketError/Code/connectTimedOut``,
    ///   ``SocketError/Code/connectFailed``, ``SocketError/Code/invalidAddress``). The future
    ///   completes on `eventLoop`.
    public func connect(to destination: SocketAddr, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
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
}
