import AmbitRuntime
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TestSupport

/// Many light SOCKS5 clients at once, on NIO: each sends the greeting and CONNECT in one
/// write, then a unique payload, half-closes, and checks the hash backend's reply.
enum ConcurrentSOCKSClients {
    struct Results: Sendable {
        var succeeded = 0
        var failures: [String] = []
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let target: SocketAddr
        let payload: [UInt8]
        let expected: String
        let done: EventLoopPromise<Void>
        var received: [UInt8] = []
        var sentPayload = false

        init(target: SocketAddr, payload: [UInt8], done: EventLoopPromise<Void>) {
            self.target = target
            self.payload = payload
            self.expected = "\(payload.count) \(sha256Hex(payload))"
            self.done = done
        }

        func channelActive(context: ChannelHandlerContext) {
            var request: [UInt8] = [5, 1, 0, 5, 1, 0, 1] + target.ip.bytes
            request += [UInt8(target.port >> 8), UInt8(target.port & 0xff)]
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: request)), promise: nil)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            received += buffer.readBytes(length: buffer.readableBytes) ?? []
            if !sentPayload && received.count >= 12 {
                guard received[0..<2] == [5, 0], received[3] == 0 else {
                    done.fail(TestFailure("SOCKS refused: \(received.prefix(4))"))
                    context.close(promise: nil)
                    return
                }
                sentPayload = true
                received.removeFirst(12)
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: payload)), promise: nil)
                context.close(mode: .output, promise: nil)
            }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event { finish(context) }
        }

        func channelInactive(context: ChannelHandlerContext) {
            finish(context)
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            done.fail(error)
            context.close(promise: nil)
        }

        private func finish(_ context: ChannelHandlerContext) {
            let text = String(decoding: received, as: UTF8.self)
            if sentPayload && text == expected {
                done.succeed(())
            } else {
                done.fail(TestFailure("got \"\(text.prefix(80))\", expected \"\(expected)\""))
            }
            context.close(promise: nil)
        }
    }

    static func run(
        count: Int, proxy: SocketAddr, source: IPAddress, target: SocketAddr, payloadSize: Int,
        group: any EventLoopGroup
    ) async throws -> Results {
        let results = NIOLockedValueBox(Results())
        var futures: [EventLoopFuture<Void>] = []
        for index in 0..<count {
            let loop = group.next()
            let done = loop.makePromise(of: Void.self)
            var payload = [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: payloadSize)
            withUnsafeBytes(of: UInt32(index).bigEndian) { payload.replaceSubrange(0..<4, with: $0) }
            let finalPayload = payload
            let connect = ClientBootstrap(group: loop)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .connectTimeout(.seconds(30))
                .bind(to: try SocketAddress(ipAddress: "\(source)", port: 0))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            Handler(target: target, payload: finalPayload, done: done))
                    }
                }
                .connect(to: try proxy.nioAddress())
            connect.whenFailure { done.fail($0) }
            // A stuck connection fails the test instead of hanging it.
            let timeout = loop.scheduleTask(in: .seconds(60)) { done.fail(TestFailure("connection \(index) timed out")) }
            futures.append(
                done.futureResult.always { _ in timeout.cancel() }.map {
                    results.withLockedValue { $0.succeeded += 1 }
                }.recover { error in
                    results.withLockedValue { $0.failures.append("\(index): \(error)") }
                })
        }
        for future in futures { try await future.get() }
        return results.withLockedValue { $0 }
    }
}
