#if canImport(Glibc)
import Glibc
#endif
public import NIOCore
import NIOPosix
public import Kernel

/// UDP sockets placed like the TCP listeners and dialers: in a pod's network namespace,
/// with its `SO_MARK`, or in the proxy's own.
///
/// The channel reads and writes `AddressedEnvelope<ByteBuffer>`; a server answers each
/// datagram to its envelope's `remoteAddress`, a client sends to its peer's. Thread-safe:
/// a namespace with no state; ``bind(_:placement:group:initializer:)`` may be called from
/// any thread.
public enum DatagramSocket {
    /// Binds a UDP socket to `address` (port 0: an ephemeral port; an unspecified IP: every
    /// local address of the placement's namespace) where `placement` says, and returns its
    /// channel once `initializer` has set up its pipeline.
    ///
    /// - Parameters:
    ///   - address: the local address.
    ///   - placement: the namespace, mark and transparency of the socket.
    ///   - group: the event loops; one of them owns the channel.
    ///   - initializer: adds the channel's handlers before it becomes active.
    /// - Throws: ``SocketError`` with code ``SocketError/Code/bindFailed`` when the socket
    ///   cannot be made (a namespace this runtime did not open, no `CAP_NET_ADMIN` for a
    ///   mark) or bound (the address is in use or not local).
    public static func bind(
        _ address: SocketAddr, placement: SocketPlacement = .node, group: any EventLoopGroup,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> any Channel {
        if let handle = placement.namespace {
            guard let namespace = handle as? NetworkNamespace else { throw NetworkNamespace.notOpenedHere(handle) }
            #if os(Linux)
            let fd = try NamespacedSockets.datagramSocket(
                boundTo: address, mark: placement.mark, transparent: placement.transparent, in: namespace)
            do {
                return try await DatagramBootstrap(group: group).channelInitializer(initializer).withBoundSocket(fd).get()
            } catch {
                _ = Glibc.close(fd)
                throw SocketError(
                    code: .bindFailed, message: "cannot bind UDP \(address) in \(namespace): \(error)", underlying: error)
            }
            #else
            throw SocketError(code: .bindFailed, message: "network namespaces exist on Linux only")
            #endif
        }
        var bootstrap = DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelInitializer(initializer)
        if let mark = placement.mark {
            bootstrap = bootstrap.channelOption(SocketOptions.mark, value: SocketOptions.markValue(mark))
        }
        if placement.transparent {
            bootstrap = bootstrap.channelOption(SocketOptions.transparent(for: address.ip), value: 1)
        }
        do {
            return try await bootstrap.bind(to: address.nioAddress()).get()
        } catch {
            let privileged = placement.transparent || placement.mark != nil
            throw SocketError(
                code: .bindFailed,
                message: "cannot bind UDP \(address): \(error)"
                    + (privileged ? " (transparent sockets and marks need CAP_NET_ADMIN)" : ""),
                underlying: error)
        }
    }
}
