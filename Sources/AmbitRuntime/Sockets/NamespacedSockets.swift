#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import CAmbitSystem
import NIOCore
import NIOPosix
import Kernel

/// Raw-descriptor steps for sockets made inside another network namespace, which NIO's
/// bootstraps cannot create: the descriptor is made with
/// ``NetworkNamespace/makeSocket(domain:type:protocol:)``, set up and bound or connected
/// here, then handed to NIO (`withBoundSocket`, `withConnectedSocket`).
enum NamespacedSockets {
    #if os(Linux)
    /// A listening socket bound to `options.address` inside `namespace`.
    static func listeningSocket(_ options: ListenerOptions, in namespace: NetworkNamespace) throws -> Int32 {
        let address = options.address
        let fd = try namespace.makeSocket(domain: address.ip.isIPv4 ? AF_INET : AF_INET6, type: Int32(SOCK_STREAM.rawValue))
        do {
            try set(fd, SOL_SOCKET, SO_REUSEADDR, 1, what: "SO_REUSEADDR", at: address)
            if options.reusePort { try set(fd, SOL_SOCKET, SO_REUSEPORT, 1, what: "SO_REUSEPORT", at: address) }
            if options.ipv6Only && !address.ip.isIPv4 {
                try set(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1, what: "IPV6_V6ONLY", at: address)
            }
            try place(fd, mark: options.mark ?? namespace.mark, transparent: options.transparent, at: address)
            guard bind(fd, address) == 0 else {
                throw SocketError(
                    code: .bindFailed,
                    message: "cannot listen on \(address) in \(namespace): \(NetworkNamespace.errnoText())")
            }
            guard Glibc.listen(fd, options.backlog) == 0 else {
                throw SocketError(
                    code: .bindFailed,
                    message: "cannot listen on \(address) in \(namespace): \(NetworkNamespace.errnoText())")
            }
            return fd
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// `SO_MARK` and, when asked, `IP_TRANSPARENT` / `IPV6_TRANSPARENT` on a socket about
    /// to be bound to `address` (listening and UDP sockets alike).
    private static func place(_ fd: Int32, mark: UInt32?, transparent: Bool, at address: SocketAddr) throws {
        if let mark { try set(fd, SOL_SOCKET, SO_MARK, Int32(bitPattern: mark), what: "SO_MARK", at: address) }
        guard transparent else { return }
        if address.ip.isIPv4 {
            try set(fd, Int32(IPPROTO_IP), IP_TRANSPARENT, 1, what: "IP_TRANSPARENT", at: address)
        } else {
            try set(fd, Int32(IPPROTO_IPV6), IPV6_TRANSPARENT, 1, what: "IPV6_TRANSPARENT", at: address)
        }
    }

    /// A UDP socket bound to `address` inside `namespace`, with `mark` (else the
    /// namespace's) and, when asked, `IP_TRANSPARENT`: ready for `DatagramBootstrap`'s
    /// `withBoundSocket`.
    static func datagramSocket(
        boundTo address: SocketAddr, mark: UInt32?, transparent: Bool, in namespace: NetworkNamespace
    ) throws -> Int32 {
        let fd = try namespace.makeSocket(domain: address.ip.isIPv4 ? AF_INET : AF_INET6, type: Int32(SOCK_DGRAM.rawValue))
        do {
            try set(fd, SOL_SOCKET, SO_REUSEADDR, 1, what: "SO_REUSEADDR", at: address)
            try place(fd, mark: mark ?? namespace.mark, transparent: transparent, at: address)
            guard bind(fd, address) == 0 else {
                throw SocketError(
                    code: .bindFailed,
                    message: "cannot bind UDP \(address) in \(namespace): \(NetworkNamespace.errnoText())")
            }
            return fd
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Starts a non-blocking connect to `destination` from a socket made inside
    /// `namespace`. Returns the descriptor and whether the connect already completed.
    static func startConnect(
        to destination: SocketAddr, options: DialerOptions, in namespace: NetworkNamespace
    ) throws -> (fd: Int32, connected: Bool) {
        let fd = try namespace.makeSocket(
            domain: destination.ip.isIPv4 ? AF_INET : AF_INET6, type: Int32(SOCK_STREAM.rawValue))
        do {
            if let mark = options.mark ?? namespace.mark {
                try set(fd, SOL_SOCKET, SO_MARK, Int32(bitPattern: mark), what: "SO_MARK", at: destination)
            }
            try set(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, what: "TCP_NODELAY", at: destination)
            if options.transparent {
                if destination.ip.isIPv4 {
                    try set(fd, Int32(IPPROTO_IP), IP_TRANSPARENT, 1, what: "IP_TRANSPARENT", at: destination)
                    try set(fd, Int32(IPPROTO_IP), IP_FREEBIND, 1, what: "IP_FREEBIND", at: destination)
                } else {
                    try set(fd, Int32(IPPROTO_IPV6), IPV6_TRANSPARENT, 1, what: "IPV6_TRANSPARENT", at: destination)
                    try set(fd, Int32(IPPROTO_IPV6), IPV6_FREEBIND, 1, what: "IPV6_FREEBIND", at: destination)
                }
            }
            if let source = options.sourceAddress {
                guard bind(fd, SocketAddr(ip: source, port: 0)) == 0 else {
                    throw SocketError(
                        code: .connectFailed,
                        message: "cannot bind source \(source) to connect to \(destination) in \(namespace): \(NetworkNamespace.errnoText())")
                }
            }
            let connected: Bool
            if connect(fd, destination) == 0 {
                connected = true
            } else if errno == EINPROGRESS {
                connected = false
            } else {
                throw connectError(errno, to: destination, in: namespace)
            }
            return (fd, connected)
        } catch {
            Glibc.close(fd)
            throw error
        }
    }

    /// Waits (blocking; call it off the event loops) until the connect started on `fd`
    /// finishes or `timeout` passes. Closes `fd` when it fails.
    static func finishConnect(fd: Int32, to destination: SocketAddr, timeout: TimeAmount, in namespace: NetworkNamespace) throws {
        var pollFD = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        let milliseconds = Int32(clamping: max(1, timeout.nanoseconds / 1_000_000))
        var ready: Int32
        repeat {
            ready = poll(&pollFD, 1, milliseconds)
        } while ready < 0 && errno == EINTR
        guard ready > 0 else {
            Glibc.close(fd)
            if ready == 0 {
                throw SocketError(
                    code: .connectTimedOut,
                    message: "connect to \(destination) in \(namespace) timed out after \(milliseconds) ms")
            }
            throw connectError(errno, to: destination, in: namespace)
        }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw connectError(code, to: destination, in: namespace)
        }
        if error != 0 {
            Glibc.close(fd)
            throw connectError(error, to: destination, in: namespace)
        }
    }

    /// Checks without waiting whether the connect started on `fd` has finished: the
    /// result (closing `fd` on failure), or nil while it is still in progress.
    static func connectFinishedNow(fd: Int32, to destination: SocketAddr, in namespace: NetworkNamespace) -> Result<Int32, SocketError>? {
        var pollFD = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
        guard poll(&pollFD, 1, 0) == 1 else { return nil }
        var error: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0 { error = errno }
        if error != 0 {
            Glibc.close(fd)
            return .failure(connectError(error, to: destination, in: namespace))
        }
        return .success(fd)
    }

    private static func connectError(_ code: Int32, to destination: SocketAddr, in namespace: NetworkNamespace) -> SocketError {
        let text = String(cString: strerror(code))
        if code == ECONNREFUSED {
            return SocketError(
                code: .connectionRefused,
                message: "connect to \(destination) in \(namespace) refused: nothing is listening there",
                underlying: IOError(errnoCode: code, reason: "connect"))
        }
        return SocketError(
            code: .connectFailed, message: "connect to \(destination) in \(namespace) failed: \(text)",
            underlying: IOError(errnoCode: code, reason: "connect"))
    }

    private static func set(
        _ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, what: String, at address: SocketAddr
    ) throws {
        var value = value
        guard setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size)) == 0 else {
            throw SocketError(
                code: .bindFailed,
                message: "cannot set \(what) on a socket for \(address): \(NetworkNamespace.errnoText())"
                    + (what == "SO_MARK" || what.hasSuffix("TRANSPARENT") ? " (needs CAP_NET_ADMIN)" : ""))
        }
    }

    /// bind(2) to `address`.
    private static func bind(_ fd: Int32, _ address: SocketAddr) -> Int32 {
        let bytes = address.ip.bytes
        return bytes.withUnsafeBufferPointer { ambit_bind_ip(fd, $0.baseAddress, Int32($0.count), address.port) }
    }

    /// connect(2) to `address`.
    private static func connect(_ fd: Int32, _ address: SocketAddr) -> Int32 {
        let bytes = address.ip.bytes
        return bytes.withUnsafeBufferPointer { ambit_connect_ip(fd, $0.baseAddress, Int32($0.count), address.port) }
    }
    #endif
}
