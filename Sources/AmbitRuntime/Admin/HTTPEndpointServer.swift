public import Logging
import NIOConcurrencyHelpers
public import NIOCore
import NIOHTTP1
import NIOPosix
public import Kernel

/// Answers one request; the future may complete on any event loop.
public typealias HTTPEndpointResponder = @Sendable (HTTPEndpointRequest, any EventLoop) -> EventLoopFuture<HTTPEndpointResponse>

/// A small HTTP/1.1 server for the node's control endpoints (admin, readiness): NIOHTTP1
/// with pipelining assistance (so keep-alive and pipelined requests are answered in
/// order) and protocol-error handling (malformed requests get 400 and are closed). It
/// remembers its connections so `close()` also ends idle keep-alive ones.
///
/// Plugins serving a small HTTP surface (the telemetry plugin's `/metrics`) reuse it.
///
/// Thread-safe.
public final class HTTPEndpointServer: Sendable {
    /// The address actually bound.
    public let localAddress: SocketAddr
    private let serverChannel: any Channel
    private let connections: NIOLockedValueBox<[ObjectIdentifier: any Channel]>

    private init(serverChannel: any Channel, localAddress: SocketAddr, connections: NIOLockedValueBox<[ObjectIdentifier: any Channel]>) {
        self.serverChannel = serverChannel
        self.localAddress = localAddress
        self.connections = connections
    }

    /// Binds `address` (port 0 for an ephemeral port) and answers every request with
    /// `responder`, which is called on the connection's event loop and must not block.
    public static func start(
        address: SocketAddr, group: any EventLoopGroup, logger: Logger, responder: @escaping HTTPEndpointResponder
    ) async throws -> HTTPEndpointServer {
        let connections = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 64)
            .childChannelInitializer { channel in
                let id = ObjectIdentifier(channel)
                connections.withLockedValue { $0[id] = channel }
                channel.closeFuture.whenComplete { _ in
                    _ = connections.withLockedValue { $0.removeValue(forKey: id) }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(
                        HTTPEndpointHandler(responder: responder, logger: logger))
                }
            }
            .bind(to: address.nioAddress())
            .get()
        guard let local = SocketAddr(channel.localAddress) else {
            try? await channel.close()
            throw ChannelError.unknownLocalAddress
        }
        return HTTPEndpointServer(serverChannel: channel, localAddress: local, connections: connections)
    }

    /// Stops accepting, then closes every open connection, including requests in flight.
    public func close() async {
        try? await serverChannel.close()
        let open = connections.withLockedValue { Array($0.values) }
        for connection in open {
            try? await connection.close()
        }
    }
}

/// Turns decoded HTTP request parts into responder calls and writes the answers.
private final class HTTPEndpointHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let responder: HTTPEndpointResponder
    private let logger: Logger
    private var head: HTTPRequestHead?
    private var failed = false

    init(responder: @escaping HTTPEndpointResponder, logger: Logger) {
        self.responder = responder
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            // Tolerated and dropped: no route reads a body, and dropping keeps memory flat.
            break
        case .end:
            guard let head else { return }
            self.head = nil
            let request = HTTPEndpointRequest(method: head.method, uri: head.uri)
            let keepAlive = head.isKeepAlive
            let version = head.version
            logger.trace("admin request", metadata: ["method": "\(head.method.rawValue)", "uri": "\(head.uri)"])
            responder(request, context.eventLoop)
                .hop(to: context.eventLoop)
                .assumeIsolated()
                .whenComplete { result in
                    let response: HTTPEndpointResponse
                    switch result {
                    case .success(let answer):
                        response = answer
                    case .failure(let error):
                        response = HTTPEndpointResponse(.internalServerError, "internal error: \(error)\n")
                    }
                    self.write(
                        response, for: request, version: version, keepAlive: keepAlive, context: context)
                }
        }
    }

    private func write(
        _ response: HTTPEndpointResponse, for request: HTTPEndpointRequest, version: HTTPVersion, keepAlive: Bool,
        context: ChannelHandlerContext
    ) {
        // The connection broke (or a protocol error was answered) while the route worked;
        // writing now would only fail.
        guard !failed, context.channel.isActive else { return }
        var headers = response.headers
        let body = context.channel.allocator.buffer(string: response.body)
        headers.replaceOrAdd(name: "Content-Type", value: response.contentType)
        headers.replaceOrAdd(name: "Content-Length", value: String(body.readableBytes))
        headers.replaceOrAdd(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let head = HTTPResponseHead(version: version, status: response.status, headers: headers)
        context.write(Self.wrapOutboundOut(.head(head)), promise: nil)
        // HEAD: same headers as GET, no body (the Content-Length describes the GET body).
        if request.method != .HEAD {
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let afterSent = response.afterSent
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil)))
            .assumeIsolated()
            .whenComplete { _ in
                if !keepAlive { context.close(promise: nil) }
                afterSent?()
            }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // HTTPServerProtocolErrorHandler, ahead of us, has already answered parse errors
        // with 400; whatever the error, this connection is done.
        if !(error is HTTPParserError) {
            logger.debug("admin connection error", metadata: ["error": "\(error)"])
        }
        failed = true
        context.close(promise: nil)
    }
}
