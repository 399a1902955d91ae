import Crypto
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Synchronization
import AmbitRuntime

// Real-socket scaffolding for the relay and socket tests: a deterministic byte stream,
// an endpoint handler that sends and hashes it, and a client → proxy → server fixture.

struct TestTimeout: Error, CustomStringConvertible {
    var what: String
    var description: String { "timed out waiting for \(what)" }
}

/// Waits for `future`, failing after `limit` so a hung relay fails the test instead of
/// hanging the suite.
func value<T: Sendable>(
    of future: EventLoopFuture<T>, within limit: TimeAmount = .seconds(30), _ what: String
) async throws -> T {
    let bounded = future.eventLoop.makePromise(of: T.self)
    let timer = future.eventLoop.scheduleTask(in: limit) { bounded.fail(TestTimeout(what: what)) }
    future.whenComplete { result in
        timer.cancel()
        bounded.completeWith(result)
    }
    return try await bounded.futureResult.get()
}

/// Polls `condition` every few milliseconds until it holds or `limit` passes.
func eventually(
    within limit: Duration = .seconds(10), _ condition: @Sendable () -> Bool
) async -> Bool {
    let clock = ContinuousClock()
    let end = clock.now.advanced(by: limit)
    while clock.now < end {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}

/// Waits until `sample` stops changing for `quiet`, returning the settled value, or nil if it
/// keeps changing until `limit`.
func settledValue(
    quiet: Duration = .milliseconds(400), within limit: Duration = .seconds(20), _ sample: @Sendable () -> UInt64
) async -> UInt64? {
    let clock = ContinuousClock()
    let end = clock.now.advanced(by: limit)
    var last = sample()
    var since = clock.now
    while clock.now < end {
        try? await Task.sleep(for: .milliseconds(20))
        let current = sample()
        if current != last {
            last = current
            since = clock.now
        } else if since.duration(to: clock.now) >= quiet {
            return current
        }
    }
    return nil
}

let loopback = IPAddress("127.0.0.1")!

/// A reproducible pseudo-random byte stream (xorshift64*): the receiver's hash is compared
/// with the sender's, so any lost, duplicated or reordered byte shows.
struct PatternStream {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed | 1
    }

    /// Appends `count` bytes (a multiple of 8) of the stream to `buffer`.
    mutating func write(_ count: Int, into buffer: inout ByteBuffer) {
        precondition(count % 8 == 0)
        var state = self.state
        buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
            let words = raw.bindMemory(to: UInt64.self)
            for index in 0..<(count / 8) {
                state ^= state >> 12
                state ^= state << 25
                state ^= state >> 27
                words[index] = state &* 0x2545_F491_4F6C_DD1D
            }
            return count
        }
        self.state = state
    }
}

/// Live counters of a ``PatternPeer``, readable from the test while bytes flow.
final class PeerProgress: Sendable {
    private let sentBytes = Atomic<Int>(0)
    private let receivedBytes = Atomic<Int>(0)
    private let unwritable = Atomic<Bool>(false)
    private let eof = Atomic<Bool>(false)

    var sent: Int { sentBytes.load(ordering: .relaxed) }
    var received: Int { receivedBytes.load(ordering: .relaxed) }
    /// Whether the peer's channel has ever reported itself unwritable.
    var becameUnwritable: Bool { unwritable.load(ordering: .relaxed) }

    func addSent(_ count: Int) { sentBytes.add(count, ordering: .relaxed) }
    func addReceived(_ count: Int) { receivedBytes.add(count, ordering: .relaxed) }
    func markUnwritable() { unwritable.store(true, ordering: .relaxed) }
    func markEOF() { eof.store(true, ordering: .relaxed) }
    /// Whether the input saw EOF while the output was still open (NIO reports no EOF event
    /// on a channel whose output is already shut: it closes it instead).
    var sawEOF: Bool { eof.load(ordering: .relaxed) }
}

/// What one endpoint sent and received, reported when its channel closes.
struct PeerReport: Sendable {
    var sentBytes: Int
    var sentDigest: SHA256Digest
    var receivedBytes: Int
    var receivedDigest: SHA256Digest
    /// The input got EOF while the output was open (see ``PeerProgress/sawEOF``).
    var sawEOF: Bool
    /// Bytes received when EOF came.
    var receivedAtEOF: Int
    /// Bytes sent when EOF came.
    var sentAtEOF: Int
    var error: String?
}

/// An endpoint that sends `sendBytes` of a ``PatternStream`` as fast as its channel takes
/// them, hashes everything it receives, and reports on close.
final class PatternPeer: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What to do with the output after the last byte is sent.
    enum Finish: Sendable {
        /// Leave it open.
        case none
        /// `shutdown(SHUT_WR)`: the other side sees EOF, our input stays open.
        case halfClose
        /// Close the whole connection once the bytes are out.
        case close
    }

    private let sendBytes: Int
    private let finish: Finish
    private let sendAfterEOF: Bool
    private var stream: PatternStream
    private var sentHash = SHA256()
    private var receivedHash = SHA256()
    private var sent = 0
    private var received = 0
    private var sawEOF = false
    private var receivedAtEOF = 0
    private var sentAtEOF = 0
    private var error: String?
    private var finished = false
    private let progress: PeerProgress
    private let report: EventLoopPromise<PeerReport>
    private static let chunk = 64 * 1024

    init(
        sendBytes: Int, seed: UInt64, finish: Finish, sendAfterEOF: Bool = false, progress: PeerProgress = PeerProgress(),
        report: EventLoopPromise<PeerReport>
    ) {
        self.sendBytes = sendBytes
        self.finish = finish
        self.sendAfterEOF = sendAfterEOF
        self.stream = PatternStream(seed: seed)
        self.progress = progress
        self.report = report
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { pump(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        pump(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        buffer.withUnsafeReadableBytes { receivedHash.update(bufferPointer: $0) }
        received += buffer.readableBytes
        progress.addReceived(buffer.readableBytes)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            pump(context)
        } else {
            progress.markUnwritable()
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            sawEOF = true
            progress.markEOF()
            receivedAtEOF = received
            sentAtEOF = sent
            pump(context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if self.error == nil { self.error = "\(error)" }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        report.succeed(
            PeerReport(
                sentBytes: sent, sentDigest: sentHash.finalize(), receivedBytes: received,
                receivedDigest: receivedHash.finalize(), sawEOF: sawEOF, receivedAtEOF: receivedAtEOF,
                sentAtEOF: sentAtEOF, error: error))
        context.fireChannelInactive()
    }

    private func pump(_ context: ChannelHandlerContext) {
        guard context.channel.isActive, !finished, !sendAfterEOF || sawEOF else { return }
        var wrote = false
        while sent < sendBytes && context.channel.isWritable {
            let size = min(Self.chunk, sendBytes - sent)
            var buffer = context.channel.allocator.buffer(capacity: size)
            stream.write(size, into: &buffer)
            buffer.withUnsafeReadableBytes { sentHash.update(bufferPointer: $0) }
            sent += size
            progress.addSent(size)
            context.write(wrapOutboundOut(buffer), promise: nil)
            wrote = true
        }
        if wrote { context.flush() }
        if !context.channel.isWritable { progress.markUnwritable() }
        guard sent == sendBytes else { return }
        finished = true
        switch finish {
        case .none:
            break
        case .halfClose, .close:
            // NIO turns a half-close of a channel whose input is already shut into a full
            // close, and a full close drops queued writes: let the queue drain first.
            let drained = context.eventLoop.makePromise(of: Void.self)
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(capacity: 0)), promise: drained)
            let mode: CloseMode = finish == .close ? .all : .output
            drained.futureResult.whenComplete { [channel = context.channel] _ in channel.close(mode: mode, promise: nil) }
        }
    }
}

/// One connection as the proxy in the fixture relays it.
struct RelayedConnection: Sendable {
    var record: ConnectionRecord
    var done: EventLoopFuture<Void>
    var downstream: any Channel
    var upstream: any Channel
}

/// Whether the fixture's proxy dials on the accepted channel's loop or on another one.
enum LoopPlacement: String, Sendable, CustomStringConvertible {
    case sameLoop, otherLoop
    var description: String { rawValue }
}

/// client → proxy (``TCPListener`` → ``TCPDialer`` → ``Relay``) → server, all on loopback,
/// for one relayed connection per fixture.
final class RelayFixture: Sendable {
    let group: MultiThreadedEventLoopGroup
    let registry: ConnectionRegistry
    let server: TCPListener
    let proxy: TCPListener
    /// The server's side of the connection, once accepted.
    let serverChannel: EventLoopPromise<any Channel>
    /// The relayed connection, once the proxy has dialed and joined.
    let relayed: EventLoopPromise<RelayedConnection>
    /// For a server-side ``PatternPeer`` to report to.
    let serverReport: EventLoopPromise<PeerReport>

    private init(
        group: MultiThreadedEventLoopGroup, registry: ConnectionRegistry, server: TCPListener, proxy: TCPListener,
        serverChannel: EventLoopPromise<any Channel>, relayed: EventLoopPromise<RelayedConnection>,
        serverReport: EventLoopPromise<PeerReport>
    ) {
        self.group = group
        self.registry = registry
        self.server = server
        self.proxy = proxy
        self.serverChannel = serverChannel
        self.relayed = relayed
        self.serverReport = serverReport
    }

    /// Runs `body` with a fresh fixture and always tears it down. `serverSetup` runs on each
    /// accepted server channel's loop, before it is active.
    static func with<T: Sendable>(
        placement: LoopPlacement = .sameLoop, initialData: ByteBuffer? = nil,
        serverSetup: @escaping @Sendable (any Channel, EventLoopPromise<PeerReport>) throws -> Void,
        _ body: (RelayFixture) async throws -> T
    ) async throws -> T {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        do {
            let fixture = try await start(
                group: group, placement: placement, initialData: initialData, serverSetup: serverSetup)
            do {
                let result = try await body(fixture)
                await fixture.stop()
                return result
            } catch {
                await fixture.stop()
                throw error
            }
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    private static func start(
        group: MultiThreadedEventLoopGroup, placement: LoopPlacement, initialData: ByteBuffer?,
        serverSetup: @escaping @Sendable (any Channel, EventLoopPromise<PeerReport>) throws -> Void
    ) async throws -> RelayFixture {
        let registry = ConnectionRegistry()
        let serverChannel = group.next().makePromise(of: (any Channel).self)
        let relayed = group.next().makePromise(of: RelayedConnection.self)
        let serverReport = group.next().makePromise(of: PeerReport.self)
        let server = try await TCPListener.bind(ListenerOptions(address: SocketAddr(ip: loopback, port: 0)), group: group) {
            channel in
            channel.eventLoop.makeCompletedFuture(withResultOf: {
                try serverSetup(channel, serverReport)
                serverChannel.succeed(channel)
            })
        }
        let target = server.localAddress
        let proxy = try await TCPListener.bind(ListenerOptions(address: SocketAddr(ip: loopback, port: 0)), group: group) {
            downstream in
            let dialLoop = placement == .sameLoop ? downstream.eventLoop : otherLoop(than: downstream.eventLoop, in: group)
            return TCPDialer().connect(to: target, on: dialLoop).map { upstream in
                let record = ConnectionRecord(
                    direction: .outbound, source: SocketAddr(downstream.remoteAddress) ?? target, destination: target,
                    sourceWorkload: nil, destinationWorkload: nil, route: "direct")
                let done = Relay.join(
                    downstream: downstream, upstream: upstream, record: record, registry: registry,
                    initialData: initialData)
                relayed.succeed(RelayedConnection(record: record, done: done, downstream: downstream, upstream: upstream))
            }.hop(to: downstream.eventLoop)
        }
        return RelayFixture(
            group: group, registry: registry, server: server, proxy: proxy, serverChannel: serverChannel, relayed: relayed,
            serverReport: serverReport)
    }

    /// Connects a client to the proxy with `handler` as its only handler.
    func connectClient(
        autoRead: Bool = true, _ makeHandler: @escaping @Sendable () -> any ChannelHandler
    ) async throws -> any Channel {
        try await ClientBootstrap(group: group)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.autoRead, value: autoRead)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture(withResultOf: {
                    try channel.pipeline.syncOperations.addHandler(makeHandler())
                })
            }
            .connect(to: proxy.localAddress.nioAddress()).get()
    }

    private func stop() async {
        await proxy.stopAccepting()
        await server.stopAccepting()
        serverChannel.fail(TestTimeout(what: "server connection"))
        relayed.fail(TestTimeout(what: "relayed connection"))
        serverReport.fail(TestTimeout(what: "server report"))
        try? await group.shutdownGracefully()
    }
}

/// An event loop of `group` other than `loop`.
func otherLoop(than loop: any EventLoop, in group: any EventLoopGroup) -> any EventLoop {
    for candidate in group.makeIterator() where candidate !== loop {
        return candidate
    }
    return loop
}
