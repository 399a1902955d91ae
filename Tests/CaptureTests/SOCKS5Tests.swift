#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Capture
import Foundation
import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import TestSupport
import AmbitRuntime

// MARK: - A blocking TCP client with timeouts

/// A raw TCP connection: the SOCKS5 client side is written byte for byte, so the tests
/// control fragmentation and can send anything.
private final class RawConnection: Sendable {
    private let socket: BlockingSocket

    init(to address: SocketAddr, timeoutSeconds: Int = 5) throws {
        socket = try BlockingSocket(connectingTo: address, timeoutSeconds: timeoutSeconds)
    }

    func send(_ bytes: [UInt8]) async throws { try await offload { try self.socket.send(bytes) } }

    func receive(_ count: Int) async throws -> [UInt8] { try await offload { try self.socket.receive(exactly: count) } }

    func receiveUntilClosed() async throws -> [UInt8] { try await offload { try self.socket.receiveToEnd() } }

    /// Leaves: closes the socket at once, abortively (RST). A handler holding reads while
    /// it connects sees a reset at once; a plain FIN only when it reads again.
    func close() { socket.closeNow(reset: true) }
}

// MARK: - Echo upstream and a minimal relay

private final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

/// Forwards everything read to the partner and closes it on EOF: enough relay for tests
/// (no backpressure, no half-close).
private final class ForwardHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let partner: any Channel

    init(partner: any Channel) { self.partner = partner }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner.writeAndFlush(Self.unwrapInboundIn(data), promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        partner.close(promise: nil)
        context.fireChannelInactive()
    }
}

private struct SomeOtherError: Error {}

/// An echo server, a SOCKS5 server whose delegate connects to the requested destination,
/// and what the delegate saw.
private final class SOCKS5Fixture: Sendable {
    enum Delegate: Sendable {
        /// Connects with `ClientBootstrap` (resolving names) and relays.
        case connect
        /// Fails with this error without connecting.
        case fail(any Error & Sendable)
        /// Like `connect`, but waits this long first.
        case connectAfter(TimeAmount)
        /// Like `connect`, but only once the server has seen the client's connection
        /// close: the handler must notice the departure while the delegate is pending.
        case connectAfterClientLeaves
    }

    let group: MultiThreadedEventLoopGroup
    let echo: any Channel
    let echoV6: (any Channel)?
    let socks: any Channel
    /// Every request the delegate received.
    let requests: NIOLockedValueBox<[SOCKS5Request]>
    /// Every bound address the delegate reported.
    let boundAddresses: NIOLockedValueBox<[SocketAddr]>
    /// How often the handler called `cancel` instead of `start`.
    let cancels: NIOLockedValueBox<Int>

    var echoAddress: SocketAddr { SocketAddr(echo.localAddress)! }
    var socksAddress: SocketAddr { SocketAddr(socks.localAddress)! }

    private init(
        group: MultiThreadedEventLoopGroup, echo: any Channel, echoV6: (any Channel)?, socks: any Channel,
        requests: NIOLockedValueBox<[SOCKS5Request]>, boundAddresses: NIOLockedValueBox<[SocketAddr]>,
        cancels: NIOLockedValueBox<Int>
    ) {
        self.cancels = cancels
        self.requests = requests
        self.boundAddresses = boundAddresses
        self.group = group
        self.echo = echo
        self.echoV6 = echoV6
        self.socks = socks
    }

    static func start(
        delegate: Delegate = .connect, handshakeTimeout: TimeAmount = .seconds(5), withIPv6: Bool = false
    ) async throws -> SOCKS5Fixture {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        do {
            let echoBootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(EchoHandler())
                    }
                }
            let echo = try await echoBootstrap.bind(host: "127.0.0.1", port: 0).get()
            let echoV6 = withIPv6 ? try await echoBootstrap.bind(host: "::1", port: 0).get() : nil

            let requests = NIOLockedValueBox<[SOCKS5Request]>([])
            let bound = NIOLockedValueBox<[SocketAddr]>([])
            let cancels = NIOLockedValueBox(0)
            let onRequest: @Sendable (SOCKS5Request, any Channel) -> EventLoopFuture<SOCKS5Connected> = {
                request, client in
                requests.withLockedValue { $0.append(request) }
                switch delegate {
                case .fail(let error):
                    return client.eventLoop.makeFailedFuture(error)
                case .connect, .connectAfter, .connectAfterClientLeaves:
                    var delay = TimeAmount.zero
                    if case .connectAfter(let wait) = delegate { delay = wait }
                    let host: String
                    switch request.address {
                    case .ip(let ip): host = ip.description
                    case .domain(let name): host = name
                    }
                    // Same event loop as the client, so the relay is set up synchronously.
                    let ready =
                        if case .connectAfterClientLeaves = delegate {
                            client.closeFuture
                        } else {
                            client.eventLoop.scheduleTask(in: delay) {}.futureResult
                        }
                    return ready
                        .flatMap { ClientBootstrap(group: client.eventLoop).connect(host: host, port: Int(request.port)) }
                        .flatMapErrorThrowing { error in
                            throw SOCKS5Error(.connectionRefused, "connect to \(request): \(error)")
                        }
                        .map { upstream in
                            let boundAddress = SocketAddr(upstream.localAddress)!
                            bound.withLockedValue { $0.append(boundAddress) }
                            return SOCKS5Connected(
                                boundAddress: boundAddress,
                                start: { early in
                                    do {
                                        try client.pipeline.syncOperations.addHandler(ForwardHandler(partner: upstream))
                                        try upstream.pipeline.syncOperations.addHandler(ForwardHandler(partner: client))
                                    } catch {
                                        client.close(promise: nil)
                                        upstream.close(promise: nil)
                                    }
                                    if let early { upstream.writeAndFlush(early, promise: nil) }
                                },
                                cancel: {
                                    cancels.withLockedValue { $0 += 1 }
                                    upstream.close(promise: nil)
                                })
                        }
                }
            }
            let socks = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            SOCKS5ServerHandler(
                                handshakeTimeout: handshakeTimeout,
                                logger: Logger(label: "socks5-test") { _ in SwiftLogNoOpLogHandler() },
                                onRequest: onRequest))
                    }
                }
                .bind(host: "127.0.0.1", port: 0).get()
            return SOCKS5Fixture(
                group: group, echo: echo, echoV6: echoV6, socks: socks, requests: requests, boundAddresses: bound,
                cancels: cancels)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    func shutdown() async {
        try? await socks.close()
        try? await echo.close()
        try? await echoV6?.close()
        try? await group.shutdownGracefully()
    }
}

private func withFixture(
    delegate: SOCKS5Fixture.Delegate = .connect, handshakeTimeout: TimeAmount = .seconds(5), withIPv6: Bool = false,
    _ body: (SOCKS5Fixture) async throws -> Void
) async throws {
    let fixture = try await SOCKS5Fixture.start(
        delegate: delegate, handshakeTimeout: handshakeTimeout, withIPv6: withIPv6)
    do {
        try await body(fixture)
    } catch {
        await fixture.shutdown()
        throw error
    }
    await fixture.shutdown()
}

// MARK: - Wire helpers

private let greeting: [UInt8] = [5, 1, 0]

private func connectRequest(_ address: SocketAddr) -> [UInt8] {
    [5, 1, 0, address.ip.isIPv4 ? 1 : 4] + address.ip.bytes + portBytes(address.port)
}

private func domainRequest(_ name: String, port: UInt16) -> [UInt8] {
    [5, 1, 0, 3, UInt8(name.utf8.count)] + Array(name.utf8) + portBytes(port)
}

private func portBytes(_ port: UInt16) -> [UInt8] { [UInt8(port >> 8), UInt8(port & 0xff)] }

private func expectedReply(_ code: UInt8, bound: SocketAddr?) -> [UInt8] {
    guard let bound else { return [5, code, 0, 1, 0, 0, 0, 0, 0, 0] }
    return [5, code, 0, bound.ip.isIPv4 ? 1 : 4] + bound.ip.bytes + portBytes(bound.port)
}

private func replyLength(for bound: SocketAddr) -> Int { bound.ip.isIPv4 ? 10 : 22 }

/// Sends a message through the tunnel and expects it back from the echo server.
private func expectEcho(_ connection: RawConnection, _ text: String = "hello through socks") async throws {
    let bytes = Array(text.utf8)
    try await connection.send(bytes)
    #expect(try await connection.receive(bytes.count) == bytes)
}

/// A local port nobody listens on.
private func closedPort(group: any EventLoopGroup) async throws -> UInt16 {
    let channel = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).get()
    let port = UInt16(channel.localAddress!.port!)
    try await channel.close()
    return port
}

/// Polls `condition` for up to two seconds.
private func waitFor(_ condition: @Sendable () -> Bool, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    // A deadline, not a delay: generous, since the suite runs beside CPU-heavy flood tests.
    let deadline = ContinuousClock.now + .seconds(10)
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("condition not met within 10 s", sourceLocation: sourceLocation)
            return
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}

// MARK: - Handler over real sockets

@Suite("SOCKS5 server handler")
struct SOCKS5ServerHandlerTests {
    @Test("IPv4 CONNECT: exact replies, then bytes flow both ways")
    func ipv4Connect() async throws {
        try await withFixture { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting)
            #expect(try await client.receive(2) == [5, 0])
            try await client.send(connectRequest(fixture.echoAddress))
            let reply = try await client.receive(10)
            let bound = try #require(fixture.boundAddresses.withLockedValue { $0.first })
            #expect(reply == expectedReply(0, bound: bound))
            #expect(fixture.requests.withLockedValue { $0 } == [SOCKS5Request(address: .ip(fixture.echoAddress.ip), port: fixture.echoAddress.port)])
            try await expectEcho(client)
            try await expectEcho(client, String(repeating: "x", count: 100_000))
        }
    }

    @Test("IPv6 CONNECT to [::1]", .enabled(if: ipv6LoopbackAvailable(), "no IPv6 loopback"))
    func ipv6Connect() async throws {
        try await withFixture(withIPv6: true) { fixture in
            let target = try #require(SocketAddr(fixture.echoV6?.localAddress))
            #expect(!target.ip.isIPv4)
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting + connectRequest(target))
            #expect(try await client.receive(2) == [5, 0])
            let reply = try await client.receive(22)
            let bound = try #require(fixture.boundAddresses.withLockedValue { $0.first })
            #expect(reply == expectedReply(0, bound: bound))
            #expect(reply[3] == 4)
            try await expectEcho(client)
        }
    }

    @Test("domain CONNECT: the delegate resolves localhost")
    func domainConnect() async throws {
        try await withFixture { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting)
            #expect(try await client.receive(2) == [5, 0])
            try await client.send(domainRequest("localhost", port: fixture.echoAddress.port))
            let head = try await client.receive(4)
            #expect(head[0...2] == [5, 0, 0])
            _ = try await client.receive(head[3] == 1 ? 6 : 18)
            #expect(
                fixture.requests.withLockedValue { $0 }
                    == [SOCKS5Request(address: .domain("localhost"), port: fixture.echoAddress.port)])
            try await expectEcho(client)
        }
    }

    @Test("greeting and request split into single bytes")
    func singleBytes() async throws {
        try await withFixture { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            for byte in greeting + connectRequest(fixture.echoAddress) {
                try await client.send([byte])
                try await Task.sleep(for: .milliseconds(2))
            }
            #expect(try await client.receive(2) == [5, 0])
            let reply = try await client.receive(10)
            let bound = try #require(fixture.boundAddresses.withLockedValue { $0.first })
            #expect(reply == expectedReply(0, bound: bound))
            try await expectEcho(client)
        }
    }

    @Test("bytes sent before the reply reach upstream first")
    func earlyData() async throws {
        try await withFixture { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            let early = Array("early bytes".utf8)
            try await client.send(greeting + connectRequest(fixture.echoAddress) + early)
            #expect(try await client.receive(2) == [5, 0])
            #expect(try await client.receive(10)[1] == 0)
            #expect(try await client.receive(early.count) == early)
            try await expectEcho(client)
        }
    }

    @Test("a non-SOCKS5 greeting is closed without a reply")
    func badVersion() async throws {
        try await withFixture { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send([4, 1, 0, 80, 127, 0, 0, 1, 0])
            #expect(try await client.receiveUntilClosed() == [])
            let http = try RawConnection(to: fixture.socksAddress)
            try await http.send(Array("GET / HTTP/1.1\r\n\r\n".utf8))
            #expect(try await http.receiveUntilClosed() == [])
            #expect(fixture.requests.withLockedValue { $0 }.isEmpty)
        }
    }

    @Test("no acceptable method: 05 FF and close", arguments: [[5, 1, 2], [5, 0], [5, 3, 1, 2, 0x80]] as [[UInt8]])
    func noAcceptableMethod(greeting: [UInt8]) async throws {
        try await withFixture { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting)
            #expect(try await client.receiveUntilClosed() == [5, 0xFF])
        }
    }

    @Test("BIND and UDP ASSOCIATE: reply 07 and close", arguments: [2, 3] as [UInt8])
    func unsupportedCommand(command: UInt8) async throws {
        try await withFixture { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting + [5, command, 0, 1, 0, 0, 0, 0, 0, 0])
            #expect(try await client.receiveUntilClosed() == [5, 0] + expectedReply(7, bound: nil))
            #expect(fixture.requests.withLockedValue { $0 }.isEmpty)
        }
    }

    @Test("unknown address type: reply 08 and close")
    func badAddressType() async throws {
        try await withFixture { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting + [5, 1, 0, 9, 1, 2, 3, 4, 0, 80])
            #expect(try await client.receiveUntilClosed() == [5, 0] + expectedReply(8, bound: nil))
        }
    }

    @Test("empty domain or reserved byte set: reply 01 and close", arguments: [[5, 1, 0, 3, 0, 0, 80], [5, 1, 1, 1, 127, 0, 0, 1, 0, 80]] as [[UInt8]])
    func malformedRequest(request: [UInt8]) async throws {
        try await withFixture { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting + request)
            #expect(try await client.receiveUntilClosed() == [5, 0] + expectedReply(1, bound: nil))
        }
    }

    @Test("upstream refuses: reply 05 and close")
    func connectionRefused() async throws {
        try await withFixture { fixture in
            let port = try await closedPort(group: fixture.group)
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting + connectRequest(SocketAddr(ip: .v4(0x7f00_0001), port: port)))
            #expect(try await client.receiveUntilClosed() == [5, 0] + expectedReply(5, bound: nil))
        }
    }

    @Test("delegate errors map to their reply, others to general failure")
    func delegateFailures() async throws {
        try await withFixture(delegate: .fail(SOCKS5Error(.notAllowed, "policy says no"))) { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting + connectRequest(fixture.echoAddress))
            #expect(try await client.receiveUntilClosed() == [5, 0] + expectedReply(2, bound: nil))
        }
        try await withFixture(delegate: .fail(SomeOtherError())) { fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting + connectRequest(fixture.echoAddress))
            #expect(try await client.receiveUntilClosed() == [5, 0] + expectedReply(1, bound: nil))
        }
    }

    @Test("an incomplete handshake is closed after the timeout")
    func handshakeTimeout() async throws {
        try await withFixture(handshakeTimeout: .milliseconds(200)) { fixture in
            let start = ContinuousClock.now
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send([5, 1])
            #expect(try await client.receiveUntilClosed() == [])
            #expect(ContinuousClock.now - start < .seconds(3))

            let silent = try RawConnection(to: fixture.socksAddress)
            #expect(try await silent.receiveUntilClosed() == [])
        }
    }

    @Test("a slow upstream hits the handshake timeout: reply 01, close, then cancel")
    func timeoutWhileConnecting() async throws {
        try await withFixture(delegate: .connectAfter(.milliseconds(500)), handshakeTimeout: .milliseconds(150)) {
            fixture in
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting + connectRequest(fixture.echoAddress))
            #expect(try await client.receiveUntilClosed() == [5, 0] + expectedReply(1, bound: nil))
            try await waitFor { fixture.cancels.withLockedValue { $0 } == 1 }
        }
    }

    @Test("a client leaving while the delegate connects gets its upstream cancelled")
    func clientLeavesWhileConnecting() async throws {
        // The delegate connects only after the client's departure reached the server, so
        // the outcome does not depend on how busy the machine is: a handler that missed
        // the departure would start the relay (no cancel) or time out (no bound address).
        try await withFixture(delegate: .connectAfterClientLeaves) { fixture in
            var client: RawConnection? = try RawConnection(to: fixture.socksAddress)
            try await client!.send(greeting + connectRequest(fixture.echoAddress))
            #expect(try await client!.receive(2) == [5, 0])
            client?.close()
            client = nil
            try await waitFor { fixture.cancels.withLockedValue { $0 } == 1 }
            #expect(fixture.boundAddresses.withLockedValue { $0.count } == 1)
        }
    }

    @Test("oversized or trailing garbage never crashes the server")
    func garbage() async throws {
        try await withFixture { fixture in
            var generator = SplitMix64(seed: 42)
            for _ in 0..<20 {
                let client = try RawConnection(to: fixture.socksAddress)
                let length = Int(generator.next() % 2000) + 1
                var bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
                // Half the cases start like a valid greeting, to reach the request parser.
                if generator.next() % 2 == 0 { bytes = greeting + bytes }
                try await client.send(bytes)
                _ = try await client.receiveUntilClosed()
            }
            let client = try RawConnection(to: fixture.socksAddress)
            try await client.send(greeting + connectRequest(fixture.echoAddress))
            #expect(try await client.receive(2) == [5, 0])
            #expect(try await client.receive(10)[1] == 0)
            try await expectEcho(client)
        }
    }

    @Test(
        "curl through the SOCKS5 port", .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/curl"), "no curl"))
    func curl() async throws {
        try await withFixture { fixture in
            let http = try await ReadinessServer.start(
                address: SocketAddr(ip: .v4(0x7f00_0001), port: 0), readiness: Readiness(), draining: { false },
                group: fixture.group, logger: Logger(label: "curl-test") { _ in SwiftLogNoOpLogHandler() })
            do {
                let port = http.localAddress.port
                let proxy = "127.0.0.1:\(fixture.socksAddress.port)"
                let viaIP = try await runCurl(["--socks5", proxy, "http://127.0.0.1:\(port)/healthz/ready"])
                #expect(viaIP == "ready\n")
                let viaName = try await runCurl(["--socks5-hostname", proxy, "http://localhost:\(port)/healthz/ready"])
                #expect(viaName == "ready\n")
                #expect(fixture.requests.withLockedValue { $0.last?.address } == .domain("localhost"))
            } catch {
                await http.close()
                throw error
            }
            await http.close()
        }
    }
}

private func runCurl(_ arguments: [String]) async throws -> String {
    let (status, output) = try await offload { () throws -> (Int32, String) in
        try runCurlBlocking(arguments)
    }
    #expect(status == 0, "curl \(arguments)")
    return output
}

private func runCurlBlocking(_ arguments: [String]) throws -> (Int32, String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
    process.arguments = ["--silent", "--show-error", "--max-time", "10", "--noproxy", ""] + arguments
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

// MARK: - Parser on byte arrays

/// A deterministic generator, so a failing fuzz case reproduces.
private struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Feeds `bytes` in chunks the way the handler does (keeping unconsumed bytes) and
/// returns every step but `needMoreData`, plus the bytes left after the last step.
private func drive(_ bytes: [UInt8], chunks: [Int]? = nil) -> (steps: [SOCKS5Parser.Step], rest: [UInt8]) {
    var parser = SOCKS5Parser()
    var pending: [UInt8] = []
    var steps: [SOCKS5Parser.Step] = []
    var offset = 0
    var chunkIndex = 0
    while offset < bytes.count, !parser.isFinished {
        let size = chunks.map { $0[chunkIndex % $0.count] } ?? bytes.count
        chunkIndex += 1
        let end = min(bytes.count, offset + max(1, size))
        pending += bytes[offset..<end]
        offset = end
        while !parser.isFinished {
            let (step, consumed) = parser.parse(pending)
            precondition(consumed <= pending.count)
            pending.removeFirst(consumed)
            if step == .needMoreData { break }
            steps.append(step)
        }
    }
    return (steps, pending + bytes[offset...])
}

@Suite("SOCKS5 parser")
struct SOCKS5ParserTests {
    private let ipv4 = connectRequest(SocketAddr(ip: .v4(0x0a00_0001), port: 8080))

    @Test("a complete handshake in one buffer, with early data left over")
    func complete() {
        let (steps, rest) = drive(greeting + ipv4 + [1, 2, 3])
        #expect(steps == [.greetingAccepted, .request(SOCKS5Request(address: .ip(.v4(0x0a00_0001)), port: 8080))])
        #expect(rest == [1, 2, 3])
    }

    @Test("any fragmentation gives the same result")
    func fragmentation() {
        let bytes = greeting + domainRequest("example.com", port: 443)
        let expected: [SOCKS5Parser.Step] = [
            .greetingAccepted, .request(SOCKS5Request(address: .domain("example.com"), port: 443)),
        ]
        for chunk in 1...bytes.count {
            #expect(drive(bytes, chunks: [chunk]).steps == expected, "chunk size \(chunk)")
        }
        #expect(drive(bytes, chunks: [1, 3, 2, 7]).steps == expected)
    }

    @Test("IPv6 and the longest domain parse")
    func addressTypes() throws {
        let v6 = try #require(IPAddress("2001:db8::1"))
        #expect(
            drive(greeting + connectRequest(SocketAddr(ip: v6, port: 1))).steps.last
                == .request(SOCKS5Request(address: .ip(v6), port: 1)))
        let longest = String(repeating: "a", count: 255)
        #expect(
            drive(greeting + domainRequest(longest, port: 65535)).steps.last
                == .request(SOCKS5Request(address: .domain(longest), port: 65535)))
        // 255 methods, the acceptable one last: the largest possible greeting.
        let bigGreeting: [UInt8] = [5, 255] + Array(repeating: 0x80, count: 254) + [0]
        #expect(drive(bigGreeting + ipv4).steps.count == 2)
    }

    @Test("every truncation waits without consuming")
    func truncated() {
        for message in [greeting, greeting + ipv4, greeting + domainRequest("host", port: 1)] {
            for length in 0..<message.count {
                var parser = SOCKS5Parser()
                var input = Array(message[..<length])
                var step = parser.parse(input)
                if step.step == .greetingAccepted {
                    input.removeFirst(step.consumed)
                    step = parser.parse(input)
                }
                #expect(step.step == .needMoreData && step.consumed == 0, "prefix of \(length) bytes")
            }
        }
    }

    @Test("violations fail fast with the right answer")
    func violations() {
        func failure(_ bytes: [UInt8]) -> SOCKS5ParseFailure.Answer? {
            if case .failed(let failure) = drive(bytes).steps.last { return failure.answer }
            return nil
        }
        #expect(failure([4]) == SOCKS5ParseFailure.Answer.none)
        #expect(failure([0x16, 3, 1]) == SOCKS5ParseFailure.Answer.none)  // a TLS ClientHello
        #expect(failure([5, 0]) == .noAcceptableMethod)
        #expect(failure([5, 2, 1, 2]) == .noAcceptableMethod)
        #expect(failure(greeting + [4]) == .reply(.generalFailure))
        #expect(failure(greeting + [5, 2]) == .reply(.commandNotSupported))
        #expect(failure(greeting + [5, 3]) == .reply(.commandNotSupported))
        #expect(failure(greeting + [5, 0]) == .reply(.commandNotSupported))
        #expect(failure(greeting + [5, 1, 7]) == .reply(.generalFailure))
        #expect(failure(greeting + [5, 1, 0, 2]) == .reply(.addressTypeNotSupported))
        #expect(failure(greeting + [5, 1, 0, 3, 0]) == .reply(.generalFailure))
        #expect(failure(greeting + domainRequest("bad host", port: 80)) == .reply(.generalFailure))
        #expect(failure(greeting + domainRequest("nul\u{0}byte", port: 80)) == .reply(.generalFailure))
        #expect(failure(greeting + domainRequest("é.example", port: 80)) == .reply(.generalFailure))
    }

    @Test("after the handshake the parser refuses more input")
    func finished() {
        var parser = SOCKS5Parser()
        #expect(parser.parse(greeting).step == .greetingAccepted)
        #expect(!parser.isFinished)
        let request = parser.parse(ipv4)
        #expect(request.consumed == ipv4.count)
        #expect(parser.isFinished)
        let again = parser.parse(ipv4)
        #expect(again.consumed == 0)
        if case .failed = again.step {} else { Issue.record("expected a failure, got \(again.step)") }
    }

    @Test("random input never crashes and never buffers more than one message")
    func fuzz() {
        var generator = SplitMix64(seed: 0x50C5)
        for _ in 0..<5_000 {
            let length = Int(generator.next() % 700)
            var bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: generator.next()) }
            // Bias towards plausible prefixes so the deep states are reached too.
            switch generator.next() % 4 {
            case 0: bytes = greeting + bytes
            case 1: bytes = greeting + [5, 1, 0, UInt8(1 + generator.next() % 4)] + bytes
            default: break
            }
            let chunks = (0..<4).map { _ in Int(generator.next() % 40) + 1 }
            var parser = SOCKS5Parser()
            var pending: [UInt8] = []
            var offset = 0
            var chunkIndex = 0
            while offset < bytes.count, !parser.isFinished {
                let end = min(bytes.count, offset + chunks[chunkIndex % chunks.count])
                chunkIndex += 1
                pending += bytes[offset..<end]
                offset = end
                while !parser.isFinished {
                    let (step, consumed) = parser.parse(pending)
                    #expect(consumed >= 0 && consumed <= pending.count)
                    pending.removeFirst(consumed)
                    if step == .needMoreData {
                        #expect(pending.count < 262, "waiting with \(pending.count) bytes buffered")
                        break
                    }
                }
            }
        }
    }

    @Test("replies encode the bound address")
    func replyEncoding() throws {
        #expect(SOCKS5Reply.succeeded.encoded(boundAddress: SocketAddr("10.1.2.3:258")) == [5, 0, 0, 1, 10, 1, 2, 3, 1, 2])
        let v6 = try #require(SocketAddr("[::1]:80"))
        #expect(SOCKS5Reply.succeeded.encoded(boundAddress: v6) == [5, 0, 0, 4] + Array(repeating: 0, count: 15) + [1, 0, 80])
        #expect(SOCKS5Reply.connectionRefused.encoded(boundAddress: nil) == [5, 5, 0, 1, 0, 0, 0, 0, 0, 0])
    }
}
