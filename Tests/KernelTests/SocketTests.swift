import Foundation
import Kernel
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif
import AmbitRuntime

// Listener and dialer on real loopback sockets. Tests that set SO_MARK or IP_TRANSPARENT
// need CAP_NET_ADMIN: they run as root here and in CI.
@Suite(.timeLimit(.minutes(1)))
struct SocketTests {
    private static func withGroup<T: Sendable>(_ body: (MultiThreadedEventLoopGroup) async throws -> T) async throws -> T {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            let result = try await body(group)
            try await group.shutdownGracefully()
            return result
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    private static func echoListener(
        _ options: ListenerOptions = ListenerOptions(address: SocketAddr(ip: loopback, port: 0)),
        group: any EventLoopGroup, accepted: EventLoopPromise<any Channel>? = nil
    ) async throws -> TCPListener {
        try await TCPListener.bind(options, group: group) { channel in
            channel.eventLoop.makeCompletedFuture(withResultOf: {
                try channel.pipeline.syncOperations.addHandler(Echo())
                accepted?.succeed(channel)
            })
        }
    }

    /// Sends `text` over a fresh client connection (or `channel`) and waits for the echo.
    private static func roundTrip(_ text: String, over channel: any Channel) async throws -> String {
        let reply = channel.eventLoop.makePromise(of: String.self)
        let expected = text.utf8.count
        try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.addHandler(Collect(expected: expected, done: reply))
        }.get()
        // Dialed channels leave reading to their user (the relay); this one just wants the reply.
        try await channel.setOption(.autoRead, value: true).get()
        try await channel.writeAndFlush(ByteBuffer(string: text)).get()
        return try await value(of: reply.futureResult, within: .seconds(5), "echo of \(text)")
    }

    private static func connect(to address: SocketAddr, group: any EventLoopGroup) async throws -> any Channel {
        try await TCPDialer().connect(to: address, on: group.next()).get()
    }

    @Test
    func listenerBindsAnEphemeralPortAndReportsIt() async throws {
        try await Self.withGroup { group in
            let listener = try await Self.echoListener(group: group)
            #expect(listener.localAddress.ip == loopback)
            #expect(listener.localAddress.port != 0)
            let client = try await Self.connect(to: listener.localAddress, group: group)
            #expect(SocketAddr(client.remoteAddress) == listener.localAddress)
            #expect(try await Self.roundTrip("ping", over: client) == "ping")
            try await client.close()
            await listener.stopAccepting()
        }
    }

    @Test
    func stopAcceptingRefusesNewConnectionsButKeepsAcceptedOnes() async throws {
        try await Self.withGroup { group in
            let accepted = group.next().makePromise(of: (any Channel).self)
            let listener = try await Self.echoListener(group: group, accepted: accepted)
            let client = try await Self.connect(to: listener.localAddress, group: group)
            let serverSide = try await value(of: accepted.futureResult, "accepted connection")

            await listener.stopAccepting()
            await listener.stopAccepting()  // idempotent

            let error = await #expect(throws: SocketError.self) {
                try await Self.connect(to: listener.localAddress, group: group)
            }
            #expect(error?.code == .connectionRefused)
            #expect(serverSide.isActive)
            #expect(try await Self.roundTrip("still here", over: client) == "still here")
            try await client.close()
        }
    }

    @Test
    func reusePortLetsTwoListenersShareAPort() async throws {
        try await Self.withGroup { group in
            let first = try await Self.echoListener(
                ListenerOptions(address: SocketAddr(ip: loopback, port: 0), reusePort: true), group: group)
            let second = try await Self.echoListener(
                ListenerOptions(address: first.localAddress, reusePort: true), group: group)
            #expect(second.localAddress == first.localAddress)

            // Without SO_REUSEPORT the same bind is refused, with a message naming the address.
            let error = await #expect(throws: SocketError.self) {
                try await Self.echoListener(ListenerOptions(address: first.localAddress), group: group)
            }
            #expect(error?.code == .bindFailed)
            #expect(error?.message.contains(first.localAddress.description) == true)

            // Either listener may take it; whichever does, it works.
            let client = try await Self.connect(to: first.localAddress, group: group)
            #expect(try await Self.roundTrip("shared", over: client) == "shared")
            try await client.close()
            await first.stopAccepting()
            await second.stopAccepting()
        }
    }

    @Test
    func marksAreSetOnDialedAndAcceptedSockets() async throws {
        try await Self.withGroup { group in
            let accepted = group.next().makePromise(of: (any Channel).self)
            let listener = try await Self.echoListener(
                ListenerOptions(address: SocketAddr(ip: loopback, port: 0), mark: 0x539), group: group,
                accepted: accepted)
            let dialer = TCPDialer(options: DialerOptions(mark: 0xfeed_0001))
            let client = try await dialer.connect(to: listener.localAddress, on: group.next()).get()
            let serverSide = try await value(of: accepted.futureResult, "accepted connection")

            #expect(try await SocketOptions.mark(of: client).get() == 0xfeed_0001)
            #expect(try await SocketOptions.mark(of: serverSide).get() == 0x539)
            // An unmarked dial really reads back 0, so the reads above are not vacuous.
            let plain = try await Self.connect(to: listener.localAddress, group: group)
            #expect(try await SocketOptions.mark(of: plain).get() == 0)

            #expect(try await client.getOption(.autoRead).get() == false)
            #expect(try await client.getOption(.allowRemoteHalfClosure).get() == true)
            #expect(try await client.getOption(.tcpOption(.tcp_nodelay)).get() != 0)
            try await client.close()
            try await plain.close()
            await listener.stopAccepting()
        }
    }

    @Test
    func dialerBindsTheSourceAddressAndCanBeTransparent() async throws {
        try await Self.withGroup { group in
            let accepted = group.next().makePromise(of: (any Channel).self)
            let listener = try await Self.echoListener(group: group, accepted: accepted)
            let source = IPAddress("127.0.0.2")!
            let dialer = TCPDialer(options: DialerOptions(sourceAddress: source, transparent: true))
            let client = try await dialer.connect(to: listener.localAddress, on: group.next()).get()
            let serverSide = try await value(of: accepted.futureResult, "accepted connection")

            #expect(SocketAddr(serverSide.remoteAddress)?.ip == source)
            #expect(try await client.getOption(SocketOptions.transparent(for: source)).get() == 1)
            #expect(try await client.getOption(SocketOptions.freeBind(for: source)).get() == 1)
            try await client.close()

            let mismatched = TCPDialer(options: DialerOptions(sourceAddress: IPAddress("::1")!))
            let error = await #expect(throws: SocketError.self) {
                try await mismatched.connect(to: listener.localAddress, on: group.next()).get()
            }
            #expect(error?.code == .invalidAddress)
            await listener.stopAccepting()
        }
    }

    /// A namespace name for this test process, `<prefix><pid>`, after deleting the ones an
    /// earlier test process left behind (killed or crashed before its `defer` ran): names
    /// with this prefix whose process is gone.
    private static func namespaceName(_ prefix: String) -> String {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/var/run/netns")) ?? []
        for name in names where name.hasPrefix(prefix) {
            guard let pid = pid_t(name.dropFirst(prefix.count)), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            try? ip("netns", "del", name)
        }
        return "\(prefix)\(getpid())"
    }

    /// Runs `ip` (the test needs root, as in CI).
    private static func ip(_ arguments: String...) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ip"] + arguments
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw SocketError(code: .bindFailed, message: "ip \(arguments.joined(separator: " ")) failed")
        }
    }

    @Test
    func listenerAndDialerWorkInsideAnotherNetworkNamespace() async throws {
        let name = Self.namespaceName("ambit-kt-")
        try Self.ip("netns", "add", name)
        defer { try? Self.ip("netns", "del", name) }
        try Self.ip("-n", name, "link", "set", "lo", "up")
        let namespace = try NetworkNamespace(path: "/var/run/netns/\(name)", mark: 0x539)
        defer { namespace.close() }
        #expect(namespace.isStillMounted)

        try await Self.withGroup { group in
            // Hold a port in the proxy's own namespace: the same address binds only if the
            // listener really is in the other namespace (and no other process on the machine
            // can take the port meanwhile, as it could with a connect-refused check).
            let holder = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).get()
            defer { holder.close(promise: nil) }
            let port = try #require(holder.localAddress?.port)
            let accepted = group.next().makePromise(of: (any Channel).self)
            let listener = try await Self.echoListener(
                ListenerOptions(address: SocketAddr(ip: loopback, port: UInt16(port)), namespace: namespace), group: group,
                accepted: accepted)
            #expect(listener.localAddress.port == UInt16(port))

            // A dialer placed in the namespace reaches it; both ends carry the namespace's mark.
            let client = try await TCPDialer().placed(SocketPlacement(namespace: namespace)).connect(to: listener.localAddress, on: group.next())
                .get()
            #expect(try await Self.roundTrip("inside", over: client) == "inside")
            #expect(try await SocketOptions.mark(of: client).get() == 0x539)
            let serverSide = try await value(of: accepted.futureResult, "accepted connection")
            #expect(try await SocketOptions.mark(of: serverSide).get() == 0x539)

            // Refusals inside the namespace are classified like any other.
            let refused = await #expect(throws: SocketError.self) {
                try await TCPDialer().placed(SocketPlacement(namespace: namespace)).connect(
                    to: SocketAddr(ip: loopback, port: 1), on: group.next()
                ).get()
            }
            #expect(refused?.code == .connectionRefused)
            #expect(refused?.message.contains(name) == true)
            try await client.close()
            await listener.stopAccepting()
        }
        try Self.ip("netns", "del", name)
        #expect(!namespace.isStillMounted)
    }

    /// The way istio-cni's ZDS hands a pod's namespace over: as a descriptor, no path.
    @Test
    func aNamespaceAdoptedFromADescriptorServesLikeOneOpenedByPath() async throws {
        let name = Self.namespaceName("ambit-kt-fd-")
        try Self.ip("netns", "add", name)
        defer { try? Self.ip("netns", "del", name) }
        try Self.ip("-n", name, "link", "set", "lo", "up")
        let byPath = try NetworkNamespace(path: "/var/run/netns/\(name)")
        defer { byPath.close() }
        let descriptor = open("/var/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        #expect(descriptor >= 0)
        let adopted = try NetworkNamespace(adopting: descriptor, name: "pod \(name) (from a descriptor)", mark: 0x539)
        defer { adopted.close() }
        #expect(adopted.isSame(as: byPath))
        #expect(adopted.adoptedFromDescriptor && !byPath.adoptedFromDescriptor)
        #expect(!adopted.isSame(as: try NetworkNamespace(path: "/proc/self/ns/net")))

        try await Self.withGroup { group in
            let accepted = group.next().makePromise(of: (any Channel).self)
            // A listener placed by path and a dialer placed by the adopted descriptor meet.
            let listener = try await Self.echoListener(
                ListenerOptions(address: SocketAddr(ip: loopback, port: 0), namespace: byPath), group: group,
                accepted: accepted)
            let client = try await TCPDialer().placed(SocketPlacement(namespace: adopted)).connect(to: listener.localAddress, on: group.next()).get()
            #expect(try await Self.roundTrip("adopted", over: client) == "adopted")
            #expect(try await SocketOptions.mark(of: client).get() == 0x539)
            _ = try await value(of: accepted.futureResult, "accepted connection")
            try await client.close()
            await listener.stopAccepting()
        }
    }

    @Test
    func adoptingADescriptorThatIsNotANetworkNamespaceFailsAndClosesIt() throws {
        let file = open("/etc/hostname", O_RDONLY | O_CLOEXEC)
        #expect(file >= 0)
        var before = stat()
        #expect(fstat(file, &before) == 0)
        let notNamespace = #expect(throws: SocketError.self) { try NetworkNamespace(adopting: file, name: "hostname") }
        #expect(notNamespace?.message.contains("not a network namespace") == true)
        // Closed: the number is free (or already reused by a concurrent test for another file).
        var after = stat()
        #expect(fstat(file, &after) != 0 || after.st_ino != before.st_ino, "the descriptor was closed")
        let closed = #expect(throws: SocketError.self) { try NetworkNamespace(adopting: -1, name: "nothing") }
        #expect(closed?.message.contains("nothing") == true)
    }

    @Test
    func openingSomethingThatIsNotANetworkNamespaceNamesThePath() throws {
        let missing = #expect(throws: SocketError.self) {
            try NetworkNamespace(path: "/var/run/netns/ambit-no-such-namespace")
        }
        #expect(missing?.message.contains("/var/run/netns/ambit-no-such-namespace") == true)
        let notNamespace = #expect(throws: SocketError.self) { try NetworkNamespace(path: "/etc/hostname") }
        #expect(notNamespace?.message.contains("not a network namespace") == true)
    }

    @Test
    func refusedDialFailsWithAClearError() async throws {
        try await Self.withGroup { group in
            let listener = try await Self.echoListener(group: group)
            let address = listener.localAddress
            await listener.stopAccepting()

            let error = await #expect(throws: SocketError.self) {
                try await Self.connect(to: address, group: group)
            }
            #expect(error?.code == .connectionRefused)
            #expect(error?.message.contains("\(address)") == true)
        }
    }

    @Test
    func dialTimesOutWhenTheListenerNeverAnswers() async throws {
        try await Self.withGroup { group in
            // A listener with a one-slot accept queue that never accepts: once the slot is
            // taken, Linux drops further SYNs, so a connect can only time out.
            let silent = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 0)
                .serverChannelOption(.autoRead, value: false)
                .bind(to: SocketAddr(ip: loopback, port: 0).nioAddress()).get()
            let address = try #require(SocketAddr(silent.localAddress))
            let dialer = TCPDialer(options: DialerOptions(connectTimeout: .milliseconds(300)))

            var fillers: [any Channel] = []
            var failure: SocketError?
            for _ in 0..<4 {
                do {
                    fillers.append(try await dialer.connect(to: address, on: group.next()).get())
                } catch let error as SocketError {
                    failure = error
                    break
                }
            }
            let error = try #require(failure, "every connect was accepted")
            #expect(error.code == .connectTimedOut)
            #expect(error.message.contains("timed out"))
            #expect(error.message.contains("\(address)"))
            for filler in fillers { try? await filler.close() }
            try await silent.close()
        }
    }
}

/// Writes back whatever it reads.
final class Echo: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

/// Collects `expected` bytes and completes `done` with them as text.
final class Collect: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let expected: Int
    private let done: EventLoopPromise<String>
    private var collected = ByteBuffer()

    init(expected: Int, done: EventLoopPromise<String>) {
        self.expected = expected
        self.done = done
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        collected.writeBuffer(&buffer)
        if collected.readableBytes >= expected {
            done.succeed(String(buffer: collected))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        done.fail(ChannelError.eof)
        context.fireChannelInactive()
    }
}
