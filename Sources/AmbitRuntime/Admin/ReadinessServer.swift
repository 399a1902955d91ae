public import Logging
public import NIOCore
import NIOHTTP1
public import Kernel

/// The readiness probe server (port 15021, like ztunnel's, reachable by the kubelet).
///
/// `GET /healthz/ready` (or `HEAD`) answers 200 `ready` when ``Readiness`` has nothing
/// pending and the node is not draining; otherwise 500 with `not ready: draining` or
/// `not ready, pending: a, b`, so an operator sees what the node still waits for. Other
/// paths answer 404, other methods 405. It shares the admin server's HTTP handling:
/// keep-alive, tolerated bodies, 400 and close on malformed HTTP.
///
/// Threading: thread-safe; `draining` is called on an event loop and must not block.
public final class ReadinessServer: Sendable {
    private let server: HTTPEndpointServer

    private init(server: HTTPEndpointServer) { self.server = server }

    /// Binds and starts serving. Use port 0 for an ephemeral port and read
    /// ``localAddress``.
    public static func start(
        address: SocketAddr, readiness: Readiness, draining: @escaping @Sendable () -> Bool,
        group: any EventLoopGroup, logger: Logger
    ) async throws -> ReadinessServer {
        let server = try await HTTPEndpointServer.start(address: address, group: group, logger: logger) {
            request, eventLoop in
            eventLoop.makeSucceededFuture(route(request, readiness: readiness, draining: draining))
        }
        logger.info("readiness server listening", metadata: ["address": "\(server.localAddress)"])
        return ReadinessServer(server: server)
    }

    /// The address actually bound.
    public var localAddress: SocketAddr { server.localAddress }

    /// Stops accepting and closes open connections.
    public func close() async { await server.close() }

    static func route(
        _ request: HTTPEndpointRequest, readiness: Readiness, draining: @Sendable () -> Bool
    ) -> HTTPEndpointResponse {
        guard request.path == "/healthz/ready" else { return .notFound(request) }
        guard request.method == .GET || request.method == .HEAD else {
            return .methodNotAllowed(request, allowed: [.GET, .HEAD])
        }
        if draining() {
            return HTTPEndpointResponse(.internalServerError, "not ready: draining\n")
        }
        // One snapshot, so the status and the list agree.
        let pending = readiness.pending
        if pending.isEmpty {
            return HTTPEndpointResponse(.ok, "ready\n")
        }
        return HTTPEndpointResponse(.internalServerError, "not ready, pending: \(pending.joined(separator: ", "))\n")
    }
}
