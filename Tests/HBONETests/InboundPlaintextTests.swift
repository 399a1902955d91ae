import Capture
import Foundation
import HBONE
import AmbitRuntime
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
import TestSupport

/// Sends `payload` over plain TCP, half-closes, and returns everything received until the
/// peer closes (empty when the connection is refused or closed at once).
func plainExchange(_ address: SocketAddr, _ payload: [UInt8]) async throws -> [UInt8] {
    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received = NIOLockedValueBox<[UInt8]>([])
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            let bytes = buffer.readBytes(length: buffer.readableBytes) ?? []
            received.withLockedValue { $0 += bytes }
        }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
        }
        func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
    }
    let collector = Collector()
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .channelOption(.allowRemoteHalfClosure, value: true)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) }
        }
        .connect(to: try address.nioAddress()).get()
    // A proxy that never answers fails the test instead of hanging it.
    let deadline = channel.eventLoop.scheduleTask(in: .seconds(15)) { channel.close(promise: nil) }
    defer { deadline.cancel() }
    try? await channel.writeAndFlush(ByteBuffer(bytes: payload))
    try? await channel.close(mode: .output)
    try? await channel.closeFuture.get()
    return collector.received.withLockedValue { $0 }
}

extension HBONENetworkTests {
    @Suite("inbound plaintext: plain TCP to a local workload through the policy role", .serialized)
    struct InboundPlaintextTests {
        @Test("fixed destination: relayed with no peer identity; a policy deny closes; an unredirected connection is refused")
        func plaintextInbound() async throws {
            let backend = try await HashServer(ip: TestMesh.serverB)
            let mesh = TestMesh.yaml(ports: [TestMesh.serverB: backend.address.port])
            let open = try await MeshNode(
                name: "node-b", mesh: mesh,
                captureExtra: ", inbound: {enabled: true, address: \"127.0.0.1:0\", destination: \"\(backend.address)\"}")
            let address = try #require(open.capture.inboundPlaintextAddress)
            let payload = Array("plain inbound".utf8)
            let reply = try await plainExchange(address, payload)
            #expect(String(decoding: reply, as: UTF8.self) == "\(payload.count) \(sha256Hex(payload))")
            #expect(await eventually { open.telemetry.closedRecords.count == 1 })
            let record = try #require(open.telemetry.closedRecords.first)
            #expect(record.route == "plaintext")
            #expect(record.direction == .inbound)
            #expect(record.peerIdentity == nil)
            #expect(!record.isMutualTLS)
            #expect(record.destinationWorkload?.name == "server-b")
            #expect(open.policy.seen.withLockedValue { $0.last?.sourceIdentity == nil && $0.last?.isMutualTLS == false })
            try await open.stop()

            // The same with the port denied by policy: closed, the workload never sees it.
            let before = backend.accepted.withLockedValue { $0 }
            let denied = try await MeshNode(
                name: "node-b", mesh: mesh, denyPorts: [backend.address.port],
                captureExtra: ", inbound: {enabled: true, address: \"127.0.0.1:0\", destination: \"\(backend.address)\"}")
            let deniedReply = try await plainExchange(try #require(denied.capture.inboundPlaintextAddress), payload)
            #expect(deniedReply.isEmpty)
            #expect(backend.accepted.withLockedValue { $0 } == before)
            try await denied.stop()

            // No fixed destination and no redirection: the destination would be the listener
            // itself, so the connection is refused rather than looped.
            let loop = try await MeshNode(
                name: "node-b", mesh: mesh, captureExtra: ", inbound: {enabled: true, address: \"\(TestMesh.serverB):0\"}")
            let loopReply = try await plainExchange(try #require(loop.capture.inboundPlaintextAddress), payload)
            #expect(loopReply.isEmpty)
            #expect(loop.node.connections.count == 0)
            try await loop.stop()
            await backend.close()
        }
    }
}
