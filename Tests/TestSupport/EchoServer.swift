import AmbitRuntime
public import Kernel
import NIOConcurrencyHelpers
public import NIOCore
import NIOPosix

/// A real TCP backend for tests: optionally greets with `<name>: `, echoes everything,
/// and closes its side after the client half-closes.
public final class EchoServer: Sendable {
    /// Where it listens.
    public let address: SocketAddr
    private let channel: any Channel
    private let accepted: NIOLockedValueBox<Int>

    /// Connections accepted so far.
    public var acceptedCount: Int { accepted.withLockedValue { $0 } }

    private final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let greeting: String?
        init(greeting: String?) { self.greeting = greeting }

        func channelActive(context: ChannelHandlerContext) {
            if let greeting {
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: greeting)), promise: nil)
            }
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.writeAndFlush(data, promise: nil)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event { context.close(promise: nil) }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }

    private init(address: SocketAddr, channel: any Channel, accepted: NIOLockedValueBox<Int>) {
        self.address = address
        self.channel = channel
        self.accepted = accepted
    }

    /// Starts a server on `address` (port 0 for an ephemeral port). With a `name`, each
    /// connection first receives `"<name>: "`.
    public static func start(
        _ address: String = "127.0.0.1:0", name: String? = nil, group: any EventLoopGroup
    ) async throws -> EchoServer {
        let counter = NIOLockedValueBox(0)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                counter.withLockedValue { $0 += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(greeting: name.map { "\($0): " }))
                }
            }
            .bind(to: try SocketAddr(address)!.nioAddress())
            .get()
        return EchoServer(address: SocketAddr(channel.localAddress)!, channel: channel, accepted: counter)
    }

    /// Stops listening and closes the listening socket.
    public func close() async {
        try? await channel.close()
    }
}

