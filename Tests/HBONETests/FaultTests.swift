import Capture
import Foundation
import HBONE
import AmbitRuntime
import Kernel
import NIOCore
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A destination application that accepts one connection, reads `readBefore` bytes, sends
/// `replyBytes` deterministic bytes, then resets the connection (SO_LINGER 0).
final class ResetAfterServer: @unchecked Sendable {
    private let fd: Int32
    let address: SocketAddr

    init(ip: String) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = try SocketAddr(ip: IPAddress(ip)!, port: 0).nioAddress()
        guard bound.withSockAddr({ bind(fd, $0, socklen_t($1)) }) == 0, listen(fd, 4) == 0 else {
            close(fd)
            throw TestFailure("cannot listen on \(ip)")
        }
        // sockaddr_in: family (2 bytes), then the port in network order.
        var raw = [UInt8](repeating: 0, count: 128)
        var length = socklen_t(raw.count)
        let named = raw.withUnsafeMutableBytes {
            getsockname(fd, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
        guard named == 0 else {
            close(fd)
            throw TestFailure("getsockname: errno \(errno)")
        }
        self.fd = fd
        self.address = SocketAddr(ip: IPAddress(ip)!, port: UInt16(raw[2]) << 8 | UInt16(raw[3]))
    }

    /// Serves one connection as described; returns how many bytes it read.
    func serveOnce(readBefore: Int, replyBytes: Int) -> Int {
        let connection = accept(fd, nil, nil)
        guard connection >= 0 else { return 0 }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 65536)
        var total = 0
        while total < readBefore {
            let got = read(connection, &buffer, buffer.count)
            if got <= 0 { break }
            total += got
        }
        let reply = HashServer.pattern(offset: 0, count: replyBytes)
        _ = reply.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        // Give the reply a moment to leave before the reset discards what is unsent.
        usleep(100_000)
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(connection, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(connection)
        return total
    }

    deinit { close(fd) }
}

/// How a raw client connection ended.
enum ConnectionEnd: Equatable, CustomStringConvertible {
    case reset, eof, timedOut, error(Int32)
    var description: String {
        switch self {
        case .reset: "reset"
        case .eof: "end of stream"
        case .timedOut: "still open"
        case .error(let code): "errno \(code)"
        }
    }
}

extension HBONENetworkTests {
    @Suite("Faults", .serialized)
    struct FaultTests {
        /// Promise: when the destination application resets mid-transfer, the client of the
        /// tunnel sees its connection end promptly — as a reset, never a clean end of stream
        /// that would read as a complete transfer — the bytes it got before are exactly what
        /// the application sent, both proxies release the connection, and the next tunnel works.
        @Test("destination application reset mid-transfer over HBONE: the client sees a reset, nothing hangs")
        func destinationReset() async throws {
            let nodes = try await HostileNodes()
            let app = try ResetAfterServer(ip: HostileMesh.server)
            let socks = nodes.a.socks
            let target = SOCKS5Request(address: .ip(app.address.ip), port: app.address.port)
            // The application reads what the client sends, answers part of a reply, then
            // resets; the client has finished sending by then and only reads, so the end it
            // sees is the proxy's doing, not a failed write of its own.
            let request = 256 * 1024
            let served = Task.detached { app.serveOnce(readBefore: request, replyBytes: 5000) }
            let started = Date()
            let (received, end) = try await offload { () -> ([UInt8], ConnectionEnd) in
                let client = try SOCKS5Client(
                    proxy: socks, source: IPAddress(HostileMesh.client), request: target, timeoutSeconds: 10)
                guard client.reply == .succeeded else { throw TestFailure("SOCKS reply \(client.reply)") }
                try client.send(HashServer.pattern(offset: 0, count: request))
                return client.receiveUntilEnd()
            }
            let seconds = Date().timeIntervalSince(started)
            let read = await served.value
            report(
                "destination reset: application read \(read) bytes then reset; client got \(received.count) bytes "
                    + "and saw \(end) after \(String(format: "%.2f", seconds)) s")
            #expect(end == .reset, "the client must not see a clean end after an upstream reset")
            #expect(Array(received) == HashServer.pattern(offset: 0, count: received.count))
            #expect(seconds < 10)
            #expect(await eventually { nodes.b.node.connections.count == 0 && nodes.a.node.connections.count == 0 })
            let after = try await nodes.measuredUpload(seconds: 0.2)
            #expect(after.bytes > 0)
            try await nodes.stop()
        }

        /// Promise: a connection still open when the drain deadline passes (SIGTERM, on
        /// either proxy) is cut with a reset, so its client cannot take it for a complete
        /// transfer. Found by `Tests/reliability/faults` (sigterm_source): the relay closed
        /// both sides with a FIN.
        @Test("drain deadline on either proxy: a connection still open is reset, not ended cleanly")
        func drainDeadlineResets() async throws {
            let nodes = try await HostileNodes()
            // A listener that never accepts: the kernel takes the bytes, nothing answers.
            let silent = try ResetAfterServer(ip: HostileMesh.server)
            let socks = nodes.a.socks
            let target = SOCKS5Request(address: .ip(silent.address.ip), port: silent.address.port)
            for (name, node) in [("source", nodes.a), ("destination", nodes.b)] {
                let client = try await offload {
                    SequentialUse(try SOCKS5Client(
                        proxy: socks, source: IPAddress(HostileMesh.client), request: target, timeoutSeconds: 10))
                }
                #expect(client.value.reply == .succeeded)
                try await offload { try client.value.send(HashServer.pattern(offset: 0, count: 10_000)) }
                #expect(await eventually { nodes.a.node.connections.count == 1 && nodes.b.node.connections.count == 1 })
                let outcome = await node.node.connections.drain(deadline: .zero)
                let (received, end) = try await offload { client.value.receiveUntilEnd() }
                report("drain deadline on the \(name) proxy: \(outcome.forced) connection closed by force; client saw \(end)")
                #expect(outcome.forced == 1)
                #expect(end == .reset, "\(name) proxy: a connection cut at the drain deadline must reach the client as a reset")
                #expect(received.isEmpty)
                #expect(await eventually { nodes.a.node.connections.count == 0 && nodes.b.node.connections.count == 0 })
            }
            try await nodes.stop()
        }

        /// Promise: when the HBONE connection carrying a tunnel goes away while the tunnel is
        /// open (the destination proxy killed or shut down), the client sees a reset, also
        /// after it has half-closed and is waiting for the rest of the answer. Found by
        /// `Tests/reliability/faults` (sigterm_destination): NIOHTTP2 ends the streams of a
        /// closed connection as if they had finished, and the source proxy passed that on as
        /// a clean end of stream, truncating the answer silently.
        @Test("the HBONE connection under a half-closed tunnel closes: the client sees a reset")
        func carrierLostAfterHalfClose() async throws {
            let nodes = try await HostileNodes()
            let silent = try ResetAfterServer(ip: HostileMesh.server)
            let socks = nodes.a.socks
            let target = SOCKS5Request(address: .ip(silent.address.ip), port: silent.address.port)
            let client = try await offload {
                SequentialUse(try SOCKS5Client(
                    proxy: socks, source: IPAddress(HostileMesh.client), request: target, timeoutSeconds: 10))
            }
            #expect(client.value.reply == .succeeded)
            try await offload {
                try client.value.send(HashServer.pattern(offset: 0, count: 10_000))
                client.value.finishSending()
            }
            #expect(await eventually { nodes.b.node.connections.count == 1 })
            // The destination proxy's HBONE side goes away: its connections close (TLS
            // close_notify, then FIN) without resetting the streams they carry.
            await nodes.b.hbone.cleanup()
            let (received, end) = try await offload { client.value.receiveUntilEnd() }
            report("HBONE connection closed under a half-closed tunnel: client saw \(end)")
            #expect(end == .reset, "a tunnel whose carrying connection vanished must not end cleanly")
            #expect(received.isEmpty)
            #expect(await eventually { nodes.a.node.connections.count == 0 })
            try await nodes.stop()
        }
    }
}

extension SOCKS5Client {
    /// Reads until the connection ends and says how it ended (reset or clean end of stream).
    func receiveUntilEnd() -> ([UInt8], ConnectionEnd) {
        var result: [UInt8] = []
        while true {
            do {
                let chunk = try receive()
                if chunk.isEmpty { return (result, .eof) }
                result += chunk
            } catch {
                // The client's read error carries the errno in its message.
                let text = "\(error)"
                if text.hasSuffix("errno \(ECONNRESET)") { return (result, .reset) }
                if text.hasSuffix("errno \(EAGAIN)") || text.hasSuffix("errno \(EWOULDBLOCK)") { return (result, .timedOut) }
                return (result, .error(Int32(text.split(separator: " ").last.flatMap { Int32($0) } ?? -1)))
            }
        }
    }
}
