import Foundation
import AmbitRuntime
public import Kernel
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// A plain blocking TCP client socket for tests: what a test writes is exactly what goes
/// on the wire, and every receive times out, so a server that never answers fails the
/// test instead of hanging it. Use it from one thread at a time; from async tests wrap
/// calls in ``offload(_:)`` so they never block a Swift concurrency thread.
public final class BlockingSocket: @unchecked Sendable {
    // A `var` so failed inits can mark it closed: a class init that throws after every
    // property is set still runs `deinit`, and a second close would hit whatever
    // descriptor another thread opened meanwhile (NIO then crashes on EBADF).
    private var fd: Int32

    /// Connects to `address`, optionally from `source`, with `TCP_NODELAY` so small
    /// writes leave as separate segments.
    public init(connectingTo address: SocketAddr, from source: IPAddress? = nil, timeoutSeconds: Int = 5) throws {
        let nio = try address.nioAddress()
        fd = socket(address.ip.isIPv4 ? AF_INET : AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        if let source {
            let local = try SocketAddr(ip: source, port: 0).nioAddress()
            guard local.withSockAddr({ bind(fd, $0, socklen_t($1)) }) == 0 else {
                close(fd)
                fd = -1
                throw TestFailure("bind \(source): errno \(errno)")
            }
        }
        guard nio.withSockAddr({ connect(fd, $0, socklen_t($1)) }) == 0 else {
            close(fd)
            fd = -1
            throw TestFailure("connect to \(address): errno \(errno)")
        }
    }

    deinit { if fd >= 0 { close(fd) } }

    /// Closes the socket now, rather than when the last reference goes (which a closure
    /// still held by a thread pool can delay); with `reset`, abortively (RST, SO_LINGER 0).
    /// Call it once no other call is running.
    public func closeNow(reset: Bool = false) {
        if fd >= 0 {
            if reset {
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            }
            close(fd)
            fd = -1
        }
    }

    /// Sends all of `bytes`.
    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            guard sent > 0 else { throw TestFailure("send: errno \(errno)") }
            offset += sent
        }
    }

    /// Sends UTF-8 text.
    public func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// What is available, up to `maximum` bytes; empty at end of stream or reset;
    /// throws on timeout.
    public func receive(maximum: Int = 65536) throws -> [UInt8] {
        var chunk = [UInt8](repeating: 0, count: maximum)
        let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if got > 0 { return Array(chunk[..<got]) }
        if got == 0 || errno == ECONNRESET { return [] }
        throw TestFailure("recv: errno \(errno) (timed out?)")
    }

    /// Exactly `count` bytes; throws if the peer closes first or nothing comes in time.
    public func receive(exactly count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        while result.count < count {
            let chunk = try receive(maximum: count - result.count)
            guard !chunk.isEmpty else {
                throw TestFailure("closed after \(result.count) of \(count) bytes: \(result)")
            }
            result += chunk
        }
        return result
    }

    /// Everything until the peer closes (a reset counts as closed); throws on timeout,
    /// which is how a test sees that the peer did *not* close.
    public func receiveToEnd() throws -> [UInt8] {
        var result: [UInt8] = []
        while true {
            let chunk = try receive()
            if chunk.isEmpty { return result }
            result += chunk
        }
    }

    /// Half-closes: no more data from this side.
    public func finishSending() {
        shutdown(fd, Int32(SHUT_WR))
    }
}

/// Runs blocking calls on a thread of their own: blocking a Swift concurrency thread
/// would starve in-process servers' async work (2 cores, 2 cooperative threads).
public func offload<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}

/// True when this machine can bind `::1`.
public func ipv6LoopbackAvailable() -> Bool {
    let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    guard let address = try? SocketAddress(ipAddress: "::1", port: 0) else { return false }
    return address.withSockAddr { bind(fd, $0, socklen_t($1)) } == 0
}
