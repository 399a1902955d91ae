#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
public import NIOCore
public import Kernel

/// Linux socket options the node proxy needs and NIO has no names for, as NIO channel
/// options, plus a read-back of the packet mark.
///
/// The values are Linux's; other systems reject them when they are set, which is what
/// we want there (capture only exists on Linux).
public enum SocketOptions {
    /// `SO_MARK`: the firewall mark on every packet the socket sends. Capture rules use it
    /// to let the proxy's own traffic out without being redirected back into the proxy.
    /// Needs `CAP_NET_ADMIN`.
    public static let mark = ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: Constants.soMark)

    /// `SO_REUSEPORT`: several listeners share one port and the kernel spreads connections
    /// across them.
    public static let reusePort = ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SO_REUSEPORT)

    /// `IP_TRANSPARENT` (`IPV6_TRANSPARENT` for IPv6): bind to and accept for addresses that
    /// are not local, the basis of TPROXY capture and of spoofing the workload's source
    /// address upstream. Needs `CAP_NET_ADMIN`.
    public static func transparent(for family: IPAddress) -> ChannelOptions.Types.SocketOption {
        family.isIPv4
            ? .init(level: SocketOptionLevel(IPPROTO_IP), name: Constants.ipTransparent)
            : .init(level: SocketOptionLevel(IPPROTO_IPV6), name: Constants.ipv6Transparent)
    }

    /// `IP_FREEBIND` (`IPV6_FREEBIND`): bind to an address that is not (yet) configured on
    /// this host; with transparency it lets the proxy borrow a pod's address.
    public static func freeBind(for family: IPAddress) -> ChannelOptions.Types.SocketOption {
        family.isIPv4
            ? .init(level: SocketOptionLevel(IPPROTO_IP), name: Constants.ipFreeBind)
            : .init(level: SocketOptionLevel(IPPROTO_IPV6), name: Constants.ipv6FreeBind)
    }

    /// The option value for a mark; `setsockopt` takes an `int`, the kernel a `u32`.
    public static func markValue(_ mark: UInt32) -> SocketOptionValue {
        SocketOptionValue(Int32(bitPattern: mark))
    }

    /// Reads the socket's `SO_MARK` back with `getsockopt`.
    ///
    /// Thread-safe: may be called from any thread; the future completes on the channel's
    /// event loop, failing when the channel is not a socket or is closed.
    public static func mark(of channel: any Channel) -> EventLoopFuture<UInt32> {
        channel.getOption(mark).map { UInt32(truncatingIfNeeded: Int32(truncatingIfNeeded: $0)) }
    }

    /// Linux's numbers, spelled from the C library where it has them.
    private enum Constants {
        #if os(Linux)
        static let soMark = SocketOptionName(SO_MARK)
        static let ipTransparent = SocketOptionName(IP_TRANSPARENT)
        static let ipv6Transparent = SocketOptionName(IPV6_TRANSPARENT)
        static let ipFreeBind = SocketOptionName(IP_FREEBIND)
        static let ipv6FreeBind = SocketOptionName(IPV6_FREEBIND)
        #else
        static let soMark: SocketOptionName = 36
        static let ipTransparent: SocketOptionName = 19
        static let ipv6Transparent: SocketOptionName = 75
        static let ipFreeBind: SocketOptionName = 15
        static let ipv6FreeBind: SocketOptionName = 78
        #endif
    }
}
