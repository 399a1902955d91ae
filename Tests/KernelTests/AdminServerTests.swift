#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Testing
import TestSupport

@testable import Kernel
import AmbitRuntime

// MARK: - A small blocking HTTP/1.1 client over a real socket

/// A TCP connection with a receive timeout, so a broken server fails the test instead of
/// hanging it. Blocking on purpose: it is the simplest client that can also send
/// malformed and pipelined requests byte for byte.
private final class TestConnection: @unchecked Sendable {
    struct Failure: Error, CustomStringConvertible { var description: String }

    private let socket: BlockingSocket
    private var buffered: [UInt8] = []

    init(to address: SocketAddr, timeoutSeconds: Int = 5) throws {
        socket = try BlockingSocket(connectingTo: address, timeoutSeconds: timeoutSeconds)
    }

    func send(_ text: String) async throws { try await send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) async throws { try await offload { try self.sendBlocking(bytes) } }

    func readToEnd() async throws -> String { try await offload { try self.readToEndBlocking() } }

    func readResponse(bodyExpected: Bool = true) async throws -> Response {
        try await offload { try self.readResponseBlocking(bodyExpected: bodyExpected) }
    }

    private func sendBlocking(_ bytes: [UInt8]) throws {
        try socket.send(bytes)
    }

    /// Reads more bytes; returns false at end of stream (or reset), throws on timeout.
    private func fill() throws -> Bool {
        let chunk = try socket.receive(maximum: 4096)
        buffered += chunk
        return !chunk.isEmpty
    }

    /// Everything until the peer closes.
    private func readToEndBlocking() throws -> String {
        while try fill() {}
        defer { buffered = [] }
        return String(decoding: buffered, as: UTF8.self)
    }

    struct Response {
        var status: Int
        var headers: [String: String]
        var body: String
    }

    /// One response, framed by Content-Length (the servers always send it).
    private func readResponseBlocking(bodyExpected: Bool) throws -> Response {
        let separator = Array("\r\n\r\n".utf8)
        var headerEnd: Int?
        while headerEnd == nil {
            if let range = buffered.firstRange(of: separator) {
                headerEnd = range.upperBound
            } else if try !fill() {
                throw Failure(description: "connection closed before a response head")
            }
        }
        let headText = String(decoding: buffered[..<headerEnd!], as: UTF8.self)
        var lines = headText.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        let statusLine = lines.removeFirst().split(separator: " ")
        guard statusLine.count >= 2, let status = Int(statusLine[1]) else {
            throw Failure(description: "bad status line in \(headText)")
        }
        var headers: [String: String] = [:]
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = bodyExpected ? Int(headers["content-length"] ?? "0") ?? 0 : 0
        while buffered.count < headerEnd! + length {
            guard try fill() else { throw Failure(description: "connection closed inside a body") }
        }
        let body = String(decoding: buffered[headerEnd!..<(headerEnd! + length)], as: UTF8.self)
        buffered.removeFirst(headerEnd! + length)
        return Response(status: status, headers: headers, body: body)
    }
}

private func request(_ method: String, _ target: String, close: Bool = false, body: String? = nil) -> String {
    var text = "\(method) \(target) HTTP/1.1\r\nHost: localhost\r\n"
    if close { text += "Connection: close\r\n" }
    if let body { text += "Content-Length: \(body.utf8.count)\r\n\r\n\(body)" } else { text += "\r\n" }
    return text
}

// MARK: - Fixtures

private final class AdminFixture: Sendable {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let control = LogLevelControl(.info)
    let quits = NIOLockedValueBox(0)
    let logger = Logger(label: "admin-test") { _ in SwiftLogNoOpLogHandler() }

    var endpoints: AdminEndpoints {
        AdminEndpoints(
            configDump: {
                // Suspends, so the server really has to wait for the async endpoint.
                try? await Task.sleep(for: .milliseconds(20))
                return #"{"workloads":[{"name":"a\"b"}]}"#
            },
            plugins: { #"[{"id":"capture"}]"# },
            logLevel: control,
            quit: { self.quits.withLockedValue { $0 += 1 } })
    }

    func shutdown() async {
        try? await group.shutdownGracefully()
    }
}

private func withAdminServer(_ body: (AdminServer, AdminFixture) async throws -> Void) async throws {
    let fixture = AdminFixture()
    let server: AdminServer
    do {
        server = try await AdminServer.start(
            address: SocketAddr(ip: .v4(0x7f00_0001), port: 0), endpoints: fixture.endpoints,
            group: fixture.group, logger: fixture.logger)
    } catch {
        await fixture.shutdown()
        throw error
    }
    do {
        try await body(server, fixture)
    } catch {
        await server.close()
        await fixture.shutdown()
        throw error
    }
    await server.close()
    await fixture.shutdown()
}

// MARK: - Tests

@Suite("Admin server")
struct AdminServerTests {
    @Test("GET /config_dump and /plugins return the endpoints' JSON")
    func jsonRoutes() async throws {
        try await withAdminServer { server, _ in
            let connection = try TestConnection(to: server.localAddress)
            try await connection.send(request("GET", "/config_dump"))
            let dump = try await connection.readResponse()
            #expect(dump.status == 200)
            #expect(dump.headers["content-type"] == "application/json")
            let object = try JSONSerialization.jsonObject(with: Data(dump.body.utf8)) as? [String: Any]
            #expect((object?["workloads"] as? [[String: String]])?.first?["name"] == "a\"b")

            // Same connection: keep-alive works.
            try await connection.send(request("GET", "/plugins"))
            let plugins = try await connection.readResponse()
            #expect(plugins.status == 200)
            #expect(plugins.headers["content-type"] == "application/json")
            #expect(plugins.body == "[{\"id\":\"capture\"}]\n")
        }
    }

    @Test("GET / lists the endpoints")
    func index() async throws {
        try await withAdminServer { server, _ in
            let connection = try TestConnection(to: server.localAddress)
            try await connection.send(request("GET", "/"))
            let response = try await connection.readResponse()
            #expect(response.status == 200)
            #expect(response.headers["content-type"]?.hasPrefix("text/plain") == true)
            for route in ["/config_dump", "/plugins", "/logging", "/quitquitquit"] {
                #expect(response.body.contains(route))
            }
        }
    }

    @Test("GET and POST /logging read and change the levels, in istioctl's form too")
    func logging() async throws {
        try await withAdminServer { server, fixture in
            let connection = try TestConnection(to: server.localAddress)
            func post(_ query: String) async throws -> TestConnection.Response {
                try await connection.send(request("POST", "/logging" + query))
                return try await connection.readResponse()
            }
            try await connection.send(request("GET", "/logging"))
            #expect(try await connection.readResponse().body == "current log level is info\n")

            let changed = try await post("?level=debug")
            #expect(changed.status == 200)
            #expect(changed.body == "current log level is debug\n")
            #expect(fixture.control.level == .debug)

            #expect(try await post("?level=warn").body == "current log level is warning\n")
            #expect(fixture.control.level == .warning)

            let bad = try await post("?level=shouty")
            #expect(bad.status == 400)
            #expect(bad.body.contains("shouty") && bad.body.contains("debug"))
            #expect(fixture.control.level == .warning)

            // No level (what `istioctl ztunnel-config log` sends without flags): the levels.
            let listed = try await post("")
            #expect(listed.status == 200 && listed.body == "current log level is warning\n")
            #expect(try await post("?level=").body == "current log level is warning\n")

            // `istioctl ztunnel-config log --level hbone:debug,info`.
            let scoped = try await post("?level=hbone:debug,info")
            #expect(scoped.status == 200)
            #expect(scoped.body == "current log level is hbone=debug,info\n")
            #expect(fixture.control.level(forScope: "hbone") == .debug)
            #expect(fixture.control.level(forScope: "capture") == .info)
            #expect(try await post("?level=hbone%3Atrace").body == "current log level is hbone=trace,info\n")

            // `istioctl ztunnel-config log -r` sends `level=info&reset`.
            fixture.control.level = .error
            #expect(try await post("?level=info&reset").body == "current log level is info\n")
            #expect(fixture.control.level(forScope: "hbone") == .info)
            #expect(try await post("?level=hbone:debug").status == 200)
            #expect(try await post("?reset").body == "current log level is info\n", "reset alone: the starting level")

            try await connection.send(request("GET", "/logging"))
            #expect(try await connection.readResponse().body == "current log level is info\n")
        }
    }

    @Test("POST /quitquitquit answers OK, then quits")
    func quit() async throws {
        try await withAdminServer { server, fixture in
            let connection = try TestConnection(to: server.localAddress)
            try await connection.send(request("POST", "/quitquitquit"))
            let response = try await connection.readResponse()
            #expect(response.status == 200)
            #expect(response.body == "OK\n")
            // The quit runs after the write completes; allow it a moment.
            let deadline = ContinuousClock.now + .seconds(2)
            while fixture.quits.withLockedValue({ $0 }) == 0 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(fixture.quits.withLockedValue { $0 } == 1)
        }
    }

    @Test("unknown paths are 404, wrong methods 405 with Allow")
    func errors() async throws {
        try await withAdminServer { server, fixture in
            let connection = try TestConnection(to: server.localAddress)
            try await connection.send(request("GET", "/nope"))
            #expect(try await connection.readResponse().status == 404)

            try await connection.send(request("GET", "/quitquitquit"))
            let wrong = try await connection.readResponse()
            #expect(wrong.status == 405)
            #expect(wrong.headers["allow"] == "POST")
            #expect(fixture.quits.withLockedValue { $0 } == 0)

            try await connection.send(request("DELETE", "/config_dump"))
            #expect(try await connection.readResponse().status == 405)

            try await connection.send(request("PUT", "/logging?level=debug"))
            #expect(try await connection.readResponse().status == 405)
            #expect(fixture.control.level == .info)
        }
    }

    @Test("bodies are tolerated, pipelined requests answered in order, HEAD has no body")
    func keepAliveAndPipelining() async throws {
        try await withAdminServer { server, _ in
            let connection = try TestConnection(to: server.localAddress)
            // Three requests in one write; the slow async one first.
            try await connection.send(
                request("GET", "/config_dump") + request("POST", "/logging?level=error", body: "ignored=1")
                    + request("HEAD", "/plugins"))
            let first = try await connection.readResponse()
            #expect(first.headers["content-type"] == "application/json")
            let second = try await connection.readResponse()
            #expect(second.body == "current log level is error\n")
            let third = try await connection.readResponse(bodyExpected: false)
            #expect(third.status == 200)
            #expect(third.headers["content-length"] == "19")

            // Connection: close is honoured.
            try await connection.send(request("GET", "/logging", close: true))
            let last = try await connection.readResponse()
            #expect(last.headers["connection"] == "close")
            #expect(try await connection.readToEnd() == "")
        }
    }

    @Test("malformed HTTP gets 400 and the connection is closed; the server keeps serving")
    func malformed() async throws {
        try await withAdminServer { server, _ in
            for garbage in ["\u{01}\u{02}garbage\r\n\r\n", "GET / HTTP/1.1\r\nHost localhost\r\nBad Header\r\n\r\n", "GET /\u{00} HTTP/9\r\n\r\n"] {
                let connection = try TestConnection(to: server.localAddress)
                try await connection.send(garbage)
                let answer = try await connection.readToEnd()
                #expect(answer.hasPrefix("HTTP/1.1 400"), "for \(garbage.debugDescription): \(answer)")
            }
            let connection = try TestConnection(to: server.localAddress)
            try await connection.send(request("GET", "/logging"))
            #expect(try await connection.readResponse().status == 200)
        }
    }

    @Test("close() ends idle keep-alive connections")
    func closeEndsConnections() async throws {
        let fixture = AdminFixture()
        let server = try await AdminServer.start(
            address: SocketAddr(ip: .v4(0x7f00_0001), port: 0), endpoints: fixture.endpoints,
            group: fixture.group, logger: fixture.logger)
        let connection = try TestConnection(to: server.localAddress)
        try await connection.send(request("GET", "/logging"))
        #expect(try await connection.readResponse().status == 200)
        await server.close()
        #expect(try await connection.readToEnd() == "")
        #expect(throws: (any Error).self) { try TestConnection(to: server.localAddress) }
        await fixture.shutdown()
    }
}

@Suite("Readiness server")
struct ReadinessServerTests {
    @Test("pending, then ready, then draining")
    func transitions() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let readiness = Readiness()
        let draining = NIOLockedValueBox(false)
        readiness.expect("capture")
        readiness.expect("hbone")
        let server: ReadinessServer
        do {
            server = try await ReadinessServer.start(
                address: SocketAddr(ip: .v4(0x7f00_0001), port: 0), readiness: readiness,
                draining: { draining.withLockedValue { $0 } }, group: group,
                logger: Logger(label: "readiness-test") { _ in SwiftLogNoOpLogHandler() })
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        do {
            let connection = try TestConnection(to: server.localAddress)
            try await connection.send(request("GET", "/healthz/ready"))
            var response = try await connection.readResponse()
            #expect(response.status == 500)
            #expect(response.body == "not ready, pending: capture, hbone\n")

            readiness.markReady("capture")
            try await connection.send(request("GET", "/healthz/ready"))
            response = try await connection.readResponse()
            #expect(response.status == 500)
            #expect(response.body == "not ready, pending: hbone\n")

            readiness.markReady("hbone")
            try await connection.send(request("GET", "/healthz/ready"))
            response = try await connection.readResponse()
            #expect(response.status == 200)
            #expect(response.body == "ready\n")

            draining.withLockedValue { $0 = true }
            try await connection.send(request("GET", "/healthz/ready"))
            response = try await connection.readResponse()
            #expect(response.status == 500)
            #expect(response.body == "not ready: draining\n")

            try await connection.send(request("GET", "/other"))
            #expect(try await connection.readResponse().status == 404)
            try await connection.send(request("POST", "/healthz/ready", body: "x"))
            #expect(try await connection.readResponse().status == 405)

            let broken = try TestConnection(to: server.localAddress)
            try await broken.send("NOT HTTP AT ALL\r\n\r\n")
            #expect(try await broken.readToEnd().hasPrefix("HTTP/1.1 400"))
        } catch {
            await server.close()
            try? await group.shutdownGracefully()
            throw error
        }
        await server.close()
        try await group.shutdownGracefully()
    }

    @Test("query strings are percent-decoded")
    func queryParsing() {
        let request = HTTPEndpointRequest(method: .GET, uri: "/logging?level=de%62ug&x=a+b&flag&bad=%zz&level=info")
        #expect(request.path == "/logging")
        #expect(request.query["level"] == "info")
        #expect(request.query["x"] == "a b")
        #expect(request.query["flag"] == "")
        #expect(request.query["bad"] == "%zz")
        #expect(HTTPEndpointRequest(method: .GET, uri: "/a?level=de%62ug").query["level"] == "debug")
    }
}
