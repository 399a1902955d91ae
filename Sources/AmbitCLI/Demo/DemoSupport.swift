import Foundation
import AmbitRuntime
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Demo only: a telemetry sink that keeps every closed connection so the demo can show
/// the route and byte counts the node recorded.
final class DemoRecorderPlugin: Plugin, TelemetrySink {
    struct Config: Decodable, Sendable {}
    static let id = "demo-recorder"
    static let summary = "demo only: records connection events for `ambit demo`'s table"
    static let provides: Set<PluginRole> = [.telemetry]

    private let closed = NIOLockedValueBox<[ConnectionRecord]>([])
    private let denied = NIOLockedValueBox<[ConnectionRecord]>([])

    init(config: Config, context: PluginContext) {}

    func connectionClosed(_ connection: ConnectionRecord) {
        closed.withLockedValue { $0.append(connection) }
    }

    func connectionDenied(_ connection: ConnectionRecord) {
        denied.withLockedValue { $0.append(connection) }
    }

    /// The closed record matching `predicate`, waiting up to 2 s for it.
    func waitForClosed(_ predicate: @Sendable (ConnectionRecord) -> Bool) async -> ConnectionRecord? {
        await wait { closed.withLockedValue { $0.first(where: predicate) } }
    }

    /// The denied record matching `predicate`, waiting up to 2 s for it.
    func waitForDenied(_ predicate: @Sendable (ConnectionRecord) -> Bool) async -> ConnectionRecord? {
        await wait { denied.withLockedValue { $0.first(where: predicate) } }
    }

    private func wait(_ find: () -> ConnectionRecord?) async -> ConnectionRecord? {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: .seconds(2))
        while clock.now < deadline {
            if let record = find() { return record }
            try? await Task.sleep(for: .milliseconds(5))
        }
        return find()
    }
}

/// A backend that answers `<name>: ` followed by everything it receives, and closes
/// when the client has finished sending.
enum NamedEchoServer {
    final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let name: String
        init(name: String) { self.name = name }

        func channelActive(context: ChannelHandlerContext) {
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "\(name): ")), promise: nil)
            context.fireChannelActive()
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            context.writeAndFlush(data, promise: nil)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case ChannelEvent.inputClosed = event {
                context.close(promise: nil)
            }
        }
    }

    static func start(name: String, address: SocketAddr, group: any EventLoopGroup) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Handler(name: name))
                }
            }
            .bind(to: try address.nioAddress())
            .get()
    }
}

