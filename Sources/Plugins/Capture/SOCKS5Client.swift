public import Kernel

#if canImport(Glibc)
import Glibc
#endif

/// A minimal blocking SOCKS5 client (no authentication, CONNECT), for diagnostics,
/// `ambit demo` and tests. Not for use on an event loop: every call blocks the thread.
///
/// Sendable so a test can hand it between threads: a send and a receive may run on
/// different threads at once (independent socket calls); ``close()`` must not race them.
public final class SOCKS5Client: @unchecked Sendable {
    /// Why a client call failed.
    public struct Failure: Error, CustomStringConvertible {
        /// What failed, with errno where there is one.
        public var description: String
        init(_ description: String) { self.description = description }
    }

    private var fd: Int32

    /// The reply the proxy gave to the CONNECT.
    public let reply: SOCKS5Reply
    /// The bound address the proxy reported.
    public let boundAddress: SocketAddr?
    /// This client's own address (what the proxy sees as the source).
    public let localAddress: SocketAddr?

    /// Connects to `proxy` (optionally from `source`), performs the handshake for
    /// `request`, and returns the client whatever the reply; check ``reply``. After a
    /// refusal the proxy closes the connection.
    public init(proxy: SocketAddr, source: IPAddress? = nil, request: SOCKS5Request, timeoutSeconds: Int = 5) throws {
        fd = try Self.open(proxy: proxy, source: source, timeoutSeconds: timeoutSeconds)
        localAddress = Self.localAddress(of: fd)
        var bytes: [UInt8] = [5, 1, 0, 5, 1, 0]
        switch request.address {
        case .ip(let ip):
            bytes += [ip.isIPv4 ? 1 : 4] + ip.bytes
        case .domain(let name):
            bytes += [3, UInt8(truncatingIfNeeded: name.utf8.count)] + Array(name.utf8)
        }
        bytes += [UInt8(request.port >> 8), UInt8(request.port & 0xff)]
        do {
            try Self.writeAll(fd, bytes)
            let method = try Self.readExactly(fd, 2)
            guard method == [5, 0] else { throw Failure("proxy refused the no-auth method: \(method)") }
            let head = try Self.readExactly(fd, 4)
            guard head[0] == 5 else { throw Failure("bad reply version \(head[0])") }
            reply = SOCKS5Reply(rawValue: head[1])
            let length: Int
            switch head[3] {
            case 1: length = 4
            case 4: length = 16
            default: throw Failure("bad reply address type \(head[3])")
            }
            let tail = try Self.readExactly(fd, length + 2)
            let port = UInt16(tail[length]) << 8 | UInt16(tail[length + 1])
            boundAddress = IPAddress(bytes: tail[0..<length]).map { SocketAddr(ip: $0, port: port) }
        } catch {
            Glibc.close(fd)
            fd = -1
            throw error
        }
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
    }

    /// Sends all of `bytes`.
    public func send(_ bytes: [UInt8]) throws {
        try Self.writeAll(fd, bytes)
    }

    /// Reads what is available, up to `maximum` bytes; empty at end of stream.
    public func receive(maximum: Int = 65536) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: maximum)
        let count = read(fd, &buffer, maximum)
        if count < 0 { throw Failure("read failed: errno \(errno)") }
        return Array(buffer[0..<count])
    }

    /// Reads exactly `count` bytes.
    public func receive(exactly count: Int) throws -> [UInt8] {
        try Self.readExactly(fd, count)
    }

    /// Reads until the proxy closes its side.
    public func receiveToEnd() throws -> [UInt8] {
        var all: [UInt8] = []
        while true {
            let chunk = try receive()
            if chunk.isEmpty { return all }
            all += chunk
        }
    }

    /// Half-closes: no more data from this side.
    public func finishSending() {
        shutdown(fd, Int32(SHUT_WR))
    }

    /// Closes the connection.
    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// One request/response: connect, send `payload`, half-close, read to the end.
    public static func exchange(
        proxy: SocketAddr, source: IPAddress? = nil, request: SOCKS5Request, payload: [UInt8]
    ) throws -> (reply: SOCKS5Reply, response: [UInt8]) {
        let client = try SOCKS5Client(proxy: proxy, source: source, request: request)
        guard client.reply == .succeeded else { return (client.reply, []) }
        try client.send(payload)
        client.finishSending()
        return (client.reply, try client.receiveToEnd())
    }

    private static func open(proxy: SocketAddr, source: IPAddress?, timeoutSeconds: Int) throws -> Int32 {
        let family = proxy.ip.isIPv4 ? AF_INET : AF_INET6
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure("socket: errno \(errno)") }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        do {
            if let source {
                try withSockaddr(SocketAddr(ip: source, port: 0)) { address, length in
                    guard bind(fd, address, length) == 0 else { throw Failure("bind \(source): errno \(errno)") }
                }
            }
            try withSockaddr(proxy) { address, length in
                guard connect(fd, address, length) == 0 else { throw Failure("connect \(proxy): errno \(errno)") }
            }
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    private static func localAddress(of fd: Int32) -> SocketAddr? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { return nil }
        switch Int32(storage.ss_family) {
        case AF_INET:
            let address = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
            }
            return SocketAddr(ip: .v4(UInt32(bigEndian: address.sin_addr.s_addr)), port: UInt16(bigEndian: address.sin_port))
        case AF_INET6:
            var address = withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee }
            }
            let ip = IPAddress(bytes: withUnsafeBytes(of: &address.sin6_addr) { Array($0) })
            return ip.map { SocketAddr(ip: $0, port: UInt16(bigEndian: address.sin6_port)) }
        default:
            return nil
        }
    }

    private static func withSockaddr(
        _ address: SocketAddr, _ body: (UnsafePointer<sockaddr>, socklen_t) throws -> Void
    ) throws {
        let bytes = address.ip.bytes
        if address.ip.isIPv4 {
            var storage = sockaddr_in()
            storage.sin_family = sa_family_t(AF_INET)
            storage.sin_port = address.port.bigEndian
            withUnsafeMutableBytes(of: &storage.sin_addr) { for i in 0..<4 { $0[i] = bytes[i] } }
            try withUnsafePointer(to: &storage) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body($0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        } else {
            var storage = sockaddr_in6()
            storage.sin6_family = sa_family_t(AF_INET6)
            storage.sin6_port = address.port.bigEndian
            withUnsafeMutableBytes(of: &storage.sin6_addr) { for i in 0..<16 { $0[i] = bytes[i] } }
            try withUnsafePointer(to: &storage) {
                try $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    try body($0, socklen_t(MemoryLayout<sockaddr_in6>.size))
                }
            }
        }
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written <= 0 { throw Failure("write failed: errno \(errno)") }
            offset += written
        }
    }

    private static func readExactly(_ fd: Int32, _ count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: count)
        while result.count < count {
            let got = read(fd, &buffer, count - result.count)
            if got < 0 { throw Failure("read failed: errno \(errno)") }
            if got == 0 { throw Failure("connection closed after \(result.count) of \(count) bytes") }
            result += buffer[0..<got]
        }
        return result
    }
}
