import Crypto
import Foundation
import Kernel
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif
import AmbitRuntime

// Every test runs client → TCPListener → Relay → TCPDialer → server over real loopback
// sockets (see RelayFixture). Serialized: the backpressure test reads timing-sensitive
// plateaus and the byte-exactness test wants both cores.
@Suite(.serialized, .timeLimit(.minutes(3)))
struct RelayTests {
    private static let mebibyte = 1 << 20

    @Test(arguments: [LoopPlacement.sameLoop, .otherLoop])
    func transfersBothWaysConcurrentlyByteExact(placement: LoopPlacement) async throws {
        // Cross-loop proves the hop path; the full 64 MiB each way runs on the common path.
        let size = (placement == .sameLoop ? 64 : 16) * Self.mebibyte
        try await RelayFixture.with(placement: placement) { channel, report in
            try channel.pipeline.syncOperations.addHandler(
                PatternPeer(sendBytes: size, seed: 2, finish: .halfClose, report: report))
        } _: { fixture in
            let clientReport = fixture.group.next().makePromise(of: PeerReport.self)
            _ = try await fixture.connectClient {
                PatternPeer(sendBytes: size, seed: 1, finish: .halfClose, report: clientReport)
            }
            let client = try await value(of: clientReport.futureResult, within: .seconds(120), "client report")
            let server = try await value(of: fixture.serverReport.futureResult, "server report")
            let relayed = try await value(of: fixture.relayed.futureResult, "relayed connection")
            try await value(of: relayed.done, "relay end")

            #expect(client.error == nil)
            #expect(server.error == nil)
            #expect(client.sentBytes == size)
            #expect(server.receivedBytes == size)
            #expect(server.receivedDigest == client.sentDigest)
            #expect(server.sentBytes == size)
            #expect(client.receivedBytes == size)
            #expect(client.receivedDigest == server.sentDigest)
            #expect(relayed.record.bytes.sent == UInt64(size))
            #expect(relayed.record.bytes.received == UInt64(size))
            #expect(relayed.record.failure == nil)
            #expect(fixture.registry.count == 0)
        }
    }

    @Test(arguments: [PatternPeer.Finish.halfClose, .close])
    func halfCloseLetsTheResponseFollowTheRequestsEOF(serverFinish: PatternPeer.Finish) async throws {
        let request = 1 * Self.mebibyte
        let response = 4 * Self.mebibyte
        try await RelayFixture.with { channel, report in
            // The server answers only after it has seen the request's EOF.
            try channel.pipeline.syncOperations.addHandler(
                PatternPeer(sendBytes: response, seed: 4, finish: serverFinish, sendAfterEOF: true, report: report))
        } _: { fixture in
            let clientReport = fixture.group.next().makePromise(of: PeerReport.self)
            let clientProgress = PeerProgress()
            // The client reads nothing at first, so the response backs up into the proxy and
            // the server's EOF reaches it while bytes are still queued towards the client:
            // the half-close must not cut them off.
            let clientChannel = try await fixture.connectClient(autoRead: false) {
                PatternPeer(sendBytes: request, seed: 3, finish: .halfClose, progress: clientProgress, report: clientReport)
            }
            let relayed = try await value(of: fixture.relayed.futureResult, "relayed connection")
            #expect(await eventually { clientProgress.sent == request })
            #expect(await settledValue { relayed.record.bytes.received } != nil)
            #expect(relayed.record.bytes.received > 0)
            try await clientChannel.setOption(.autoRead, value: true).get()

            let client = try await value(of: clientReport.futureResult, "client report")
            let server = try await value(of: fixture.serverReport.futureResult, "server report")
            try await value(of: relayed.done, "relay end")

            #expect(server.sawEOF)
            #expect(server.receivedAtEOF == request)
            #expect(server.sentAtEOF == 0)
            #expect(server.receivedDigest == client.sentDigest)
            // The client's output is shut, so its EOF shows as a clean close, not an event.
            #expect(client.receivedBytes == response)
            #expect(client.receivedDigest == server.sentDigest)
            #expect(client.error == nil)
            #expect(relayed.record.bytes.sent == UInt64(request))
            #expect(relayed.record.bytes.received == UInt64(response))
            #expect(relayed.record.failure == nil)
            #expect(!relayed.downstream.isActive)
            #expect(!relayed.upstream.isActive)
            #expect(fixture.registry.count == 0)
        }
    }

    /// The server's receive buffer in the backpressure test, fixed so the bound below is
    /// tight (autotuning may grow it to `tcp_rmem[2]`, 32 MiB on some hosts).
    private static let serverReceiveBuffer = 256 * 1024

    /// The bound on what the relay may have forwarded into a server that reads nothing:
    /// the upstream socket's send buffer (at most the kernel's autotuning maximum,
    /// `tcp_wmem[2]`), plus the server's receive buffer (as the kernel reports it, twice
    /// what was asked), plus the relay's own queue (high water mark + one read cycle
    /// ≤ 512 KiB) and a slack of 512 KiB for the kernel overshooting its limits by a
    /// segment or two. An unbounded relay would forward all 48 MiB instead.
    private static func forwardingBound(serverReceiveBuffer: Int) throws -> UInt64 {
        let text = try String(contentsOfFile: "/proc/sys/net/ipv4/tcp_wmem", encoding: .utf8)
        let sendBufferMaximum = try #require(text.split(whereSeparator: \.isWhitespace).last.flatMap { UInt64($0) })
        return sendBufferMaximum + UInt64(serverReceiveBuffer) + UInt64(Self.mebibyte)
    }

    @Test(arguments: [LoopPlacement.sameLoop, .otherLoop])
    func stalledServerStallsTheClientInsteadOfGrowingTheProxy(placement: LoopPlacement) async throws {
        let total = 48 * Self.mebibyte
        try await RelayFixture.with(placement: placement) { channel, report in
            // Reads nothing until the test says so; answers (with nothing) after the EOF.
            try channel.syncOptions!.setOption(.autoRead, value: false)
            try channel.syncOptions!.setOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(Self.serverReceiveBuffer))
            try channel.pipeline.syncOperations.addHandler(
                PatternPeer(sendBytes: 0, seed: 6, finish: .halfClose, sendAfterEOF: true, report: report))
        } _: { fixture in
            let clientReport = fixture.group.next().makePromise(of: PeerReport.self)
            let clientProgress = PeerProgress()
            _ = try await fixture.connectClient {
                PatternPeer(
                    sendBytes: total, seed: 5, finish: .halfClose, progress: clientProgress, report: clientReport)
            }
            let relayed = try await value(of: fixture.relayed.futureResult, "relayed connection")
            let serverChannel = try await value(of: fixture.serverChannel.futureResult, "server connection")
            let receiveBuffer = try await serverChannel.getOption(.socketOption(.so_rcvbuf)).get()
            let bound = try Self.forwardingBound(serverReceiveBuffer: Int(receiveBuffer))
            try #require(bound < UInt64(total) / 2, "kernel socket buffers too large for this test to tell")

            #expect(await eventually { clientProgress.becameUnwritable }, "the client never felt backpressure")
            let plateau = try #require(
                await settledValue { relayed.record.bytes.sent }, "bytes forwarded upstream never stopped growing")
            #expect(plateau <= bound, "forwarded \(plateau) bytes into a server that reads nothing (bound \(bound))")
            #expect(clientProgress.sent < total)
            // Reads stopped because upstream is over its high water mark, and the relay's own
            // queue on it is bounded by that mark plus one read cycle.
            #expect(!relayed.upstream.isWritable)
            let queued = try await relayed.upstream.getOption(.bufferedWritableBytes).get()
            #expect(queued <= 512 * 1024, "relay queued \(queued) bytes on the upstream channel")
            // Still stalled a moment later: the plateau is not a pause between bursts.
            try await Task.sleep(for: .milliseconds(200))
            #expect(relayed.record.bytes.sent == plateau)

            try await serverChannel.setOption(.autoRead, value: true).get()

            let client = try await value(of: clientReport.futureResult, within: .seconds(60), "client report")
            let server = try await value(of: fixture.serverReport.futureResult, "server report")
            try await value(of: relayed.done, "relay end")
            #expect(server.receivedBytes == total)
            #expect(server.receivedDigest == client.sentDigest)
            #expect(relayed.record.bytes.sent == UInt64(total))
            #expect(client.error == nil)
            #expect(fixture.registry.count == 0)
        }
    }

    @Test(arguments: [LoopPlacement.sameLoop, .otherLoop])
    func serverResetMidTransferClosesTheClientAndEndsTheRelay(placement: LoopPlacement) async throws {
        try await RelayFixture.with(placement: placement) { channel, _ in
            try channel.pipeline.syncOperations.addHandler(ResetAfter(bytes: Self.mebibyte))
        } _: { fixture in
            let clientReport = fixture.group.next().makePromise(of: PeerReport.self)
            _ = try await fixture.connectClient {
                PatternPeer(sendBytes: 64 * Self.mebibyte, seed: 7, finish: .halfClose, report: clientReport)
            }
            let relayed = try await value(of: fixture.relayed.futureResult, "relayed connection")
            let client = try await value(of: clientReport.futureResult, within: .seconds(10), "client close")
            #expect(client.receivedBytes == 0)
            #expect(client.sentBytes < 64 * Self.mebibyte)

            let error = await #expect(throws: RelayError.self) {
                try await value(of: relayed.done, within: .seconds(10), "relay end")
            }
            #expect(error?.side == .upstream)
            #expect(relayed.record.failure != nil)
            #expect(!relayed.downstream.isActive)
            #expect(!relayed.upstream.isActive)
            #expect(fixture.registry.count == 0)
        }
    }

    @Test
    func registryHoldsTheOpenConnectionAndItsCloserResetsBothSides() async throws {
        let size = 1 * Self.mebibyte
        let serverProgress = PeerProgress()
        try await RelayFixture.with { channel, report in
            try channel.pipeline.syncOperations.addHandler(
                PatternPeer(sendBytes: size, seed: 9, finish: .none, progress: serverProgress, report: report))
        } _: { fixture in
            let clientReport = fixture.group.next().makePromise(of: PeerReport.self)
            let clientProgress = PeerProgress()
            let clientChannel = try await fixture.connectClient {
                PatternPeer(sendBytes: size, seed: 8, finish: .none, progress: clientProgress, report: clientReport)
            }
            let relayed = try await value(of: fixture.relayed.futureResult, "relayed connection")
            #expect(await eventually { clientProgress.received == size && serverProgress.received == size })

            // Open: registered, counters current while bytes are still allowed to flow.
            #expect(fixture.registry.count == 1)
            #expect(fixture.registry.records.map(\.id) == [relayed.record.id])
            #expect(relayed.record.bytes.sent == UInt64(size))
            #expect(relayed.record.bytes.received == UInt64(size))

            relayed.record.close()
            try await value(of: relayed.done, within: .seconds(5), "relay end")
            #expect(!relayed.downstream.isActive)
            #expect(!relayed.upstream.isActive)
            #expect(fixture.registry.count == 0)
            #expect(relayed.record.failure == nil)
            // The closer outlives the relay harmlessly.
            relayed.record.close()

            // Both ends see the connection end as a reset, never as EOF: a connection closed
            // by force (drain deadline, policy change) has not finished its transfer.
            let client = try await value(of: clientReport.futureResult, within: .seconds(5), "client close")
            let server = try await value(of: fixture.serverReport.futureResult, within: .seconds(5), "server close")
            #expect(!clientProgress.sawEOF && !serverProgress.sawEOF)
            #expect(client.error?.contains("reset by peer") == true, "client: \(client.error ?? "no error")")
            #expect(server.error?.contains("reset by peer") == true, "server: \(server.error ?? "no error")")
            try? await clientChannel.close()
            #expect(client.receivedDigest == server.sentDigest)
            #expect(server.receivedDigest == client.sentDigest)
        }
    }

    @Test
    func initialDataGoesUpstreamFirst() async throws {
        let greeting = ByteBuffer(string: "bytes the client sent during the handshake")
        let size = 256 * 1024
        try await RelayFixture.with(initialData: greeting) { channel, report in
            try channel.pipeline.syncOperations.addHandler(
                PatternPeer(sendBytes: 0, seed: 11, finish: .halfClose, sendAfterEOF: true, report: report))
        } _: { fixture in
            let clientReport = fixture.group.next().makePromise(of: PeerReport.self)
            _ = try await fixture.connectClient {
                PatternPeer(sendBytes: size, seed: 10, finish: .halfClose, report: clientReport)
            }
            _ = try await value(of: clientReport.futureResult, "client report")
            let server = try await value(of: fixture.serverReport.futureResult, "server report")
            let relayed = try await value(of: fixture.relayed.futureResult, "relayed connection")
            try await value(of: relayed.done, "relay end")

            var expected = ByteBuffer(buffer: greeting)
            var stream = PatternStream(seed: 10)
            stream.write(size, into: &expected)
            #expect(server.receivedBytes == expected.readableBytes)
            #expect(server.receivedDigest == SHA256.hash(data: Array(expected.readableBytesView)))
            #expect(relayed.record.bytes.sent == UInt64(expected.readableBytes))
        }
    }
}

/// A server that reads `bytes` and then resets the connection (SO_LINGER 0, close).
final class ResetAfter: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let threshold: Int
    private var received = 0
    private var reset = false

    init(bytes: Int) {
        threshold = bytes
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += unwrapInboundIn(data).readableBytes
        guard received >= threshold, !reset, let socket = context.channel as? any SocketOptionProvider else { return }
        reset = true
        let channel = context.channel
        socket.setSoLinger(linger(l_onoff: 1, l_linger: 0)).whenComplete { _ in channel.close(promise: nil) }
    }
}
