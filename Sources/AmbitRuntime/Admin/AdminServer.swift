public import Logging
public import NIOCore
import NIOHTTP1
public import Kernel

/// Why an admin action was refused; the message is sent to the caller with status 400.
public struct AdminFailure: Error, Sendable, CustomStringConvertible {
    /// What was wrong and what to send instead, e.g. the accepted level names.
    public var message: String

    /// Creates a failure.
    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// What the admin server exposes, supplied by the kernel. The server owns no state of
/// its own; every route calls one of these.
///
/// Threading: each closure may be called concurrently from event-loop threads or tasks.
/// The async ones run in a task, so they may wait; the others are called on an event
/// loop and must not block.
public struct AdminEndpoints: Sendable {
    /// `GET /config_dump`: the node's state as JSON text.
    public var configDump: @Sendable () async -> String
    /// `GET /plugins`: the enabled plugins as JSON text.
    public var plugins: @Sendable () async -> String
    /// `POST /logging?level=`: sets the level by name; returns the new level's name, or a
    /// failure whose message lists the accepted names.
    public var setLogLevel: @Sendable (String) -> Result<String, AdminFailure>
    /// `GET /logging`: the current level's name.
    public var currentLogLevel: @Sendable () -> String
    /// `POST /quitquitquit`: starts the graceful drain; called after the answer is sent.
    public var quit: @Sendable () -> Void
    /// Routes added by plugins (``AdminRouteProvider``), looked up on every request.
    public var routes: @Sendable () -> [AdminRoute]

    /// Creates endpoints from closures.
    public init(
        configDump: @escaping @Sendable () async -> String,
        plugins: @escaping @Sendable () async -> String,
        setLogLevel: @escaping @Sendable (String) -> Result<String, AdminFailure>,
        currentLogLevel: @escaping @Sendable () -> String,
        quit: @escaping @Sendable () -> Void,
        routes: @escaping @Sendable () -> [AdminRoute] = { [] }
    ) {
        self.configDump = configDump
        self.plugins = plugins
        self.setLogLevel = setLogLevel
        self.currentLogLevel = currentLogLevel
        self.quit = quit
        self.routes = routes
    }

    /// Creates endpoints whose `/logging` reads and sets `logLevel`.
    public init(
        configDump: @escaping @Sendable () async -> String,
        plugins: @escaping @Sendable () async -> String,
        logLevel: LogLevelControl,
        quit: @escaping @Sendable () -> Void
    ) {
        self.init(
            configDump: configDump, plugins: plugins,
            setLogLevel: { name in
                guard let level = logLevel.set(levelNamed: name) else {
                    return .failure(
                        AdminFailure(
                            "unknown log level \"\(name)\"; use one of \(LogLevelControl.levelNames.joined(separator: ", ")) (or warn)"
                        ))
                }
                return .success(level.rawValue)
            },
            currentLogLevel: { logLevel.level.rawValue },
            quit: quit)
    }
}

/// The node's admin HTTP server (port 15000, bind it to localhost only: it can change the
/// log level and shut the node down).
///
/// Routes:
/// - `GET /` — plain-text index of the routes;
/// - `GET /config_dump` — ``AdminEndpoints/configDump`` (application/json);
/// - `GET /plugins` — ``AdminEndpoints/plugins`` (application/json);
/// - `GET /logging` — the current level; `POST /logging?level=<name>` — sets it (200 with
///   the new level, 400 naming the accepted levels);
/// - `POST /quitquitquit` — answers `OK` then calls ``AdminEndpoints/quit``.
///
/// `HEAD` is accepted wherever `GET` is. Other paths answer 404, other methods 405 with an
/// `Allow` header. Keep-alive and pipelined requests are served in order; request bodies
/// are read and ignored; malformed HTTP gets 400 and the connection is closed.
///
/// Threading: thread-safe; ``close()`` may be called from any task.
public final class AdminServer: Sendable {
    private let server: HTTPEndpointServer

    private init(server: HTTPEndpointServer) { self.server = server }

    /// Binds and starts serving. Use port 0 for an ephemeral port (tests) and read
    /// ``localAddress``.
    public static func start(
        address: SocketAddr, endpoints: AdminEndpoints, group: any EventLoopGroup, logger: Logger
    ) async throws -> AdminServer {
        let server = try await HTTPEndpointServer.start(address: address, group: group, logger: logger) {
            request, eventLoop in
            route(request, endpoints: endpoints, eventLoop: eventLoop, logger: logger)
        }
        logger.info("admin server listening", metadata: ["address": "\(server.localAddress)"])
        return AdminServer(server: server)
    }

    /// The address actually bound.
    public var localAddress: SocketAddr { server.localAddress }

    /// Stops accepting and closes open connections.
    public func close() async { await server.close() }

    static let index = """
        Ambit admin
          GET  /config_dump               node state (workloads, services, policies, certificates) as JSON
          GET  /plugins                   enabled plugins as JSON
          GET  /logging                   current log level
          POST /logging?level=<level>     set the log level: \(LogLevelControl.levelNames.joined(separator: ", "))
          POST /quitquitquit              start a graceful drain

        """

    private static func route(
        _ request: HTTPEndpointRequest, endpoints: AdminEndpoints, eventLoop: any EventLoop, logger: Logger
    ) -> EventLoopFuture<HTTPEndpointResponse> {
        let isRead = request.method == .GET || request.method == .HEAD
        func now(_ response: HTTPEndpointResponse) -> EventLoopFuture<HTTPEndpointResponse> {
            eventLoop.makeSucceededFuture(response)
        }
        func json(_ produce: @escaping @Sendable () async -> String) -> EventLoopFuture<HTTPEndpointResponse> {
            eventLoop.makeFutureWithTask {
                let text = await produce()
                return HTTPEndpointResponse(
                    .ok, text.hasSuffix("\n") ? text : text + "\n", contentType: "application/json")
            }
        }

        switch request.path {
        case "/":
            guard isRead else { return now(.methodNotAllowed(request, allowed: [.GET, .HEAD])) }
            let extra = endpoints.routes().map { route in
                let methods = route.methods.map { "\($0)" }.joined(separator: ",")
                func pad(_ text: String, _ width: Int) -> String {
                    text + String(repeating: " ", count: max(1, width - text.count))
                }
                return "  \(pad(methods, 5))\(pad(route.path, 32))\(route.summary)\n"
            }.joined()
            return now(HTTPEndpointResponse(.ok, index + extra))
        case "/config_dump":
            guard isRead else { return now(.methodNotAllowed(request, allowed: [.GET, .HEAD])) }
            return json(endpoints.configDump)
        case "/plugins":
            guard isRead else { return now(.methodNotAllowed(request, allowed: [.GET, .HEAD])) }
            return json(endpoints.plugins)
        case "/logging":
            switch request.method {
            case .GET, .HEAD:
                return now(HTTPEndpointResponse(.ok, endpoints.currentLogLevel() + "\n"))
            case .POST:
                guard let name = request.query["level"] else {
                    return now(
                        HTTPEndpointResponse(
                            .badRequest,
                            "missing level: use POST /logging?level=<\(LogLevelControl.levelNames.joined(separator: "|"))>\n"))
                }
                switch endpoints.setLogLevel(name) {
                case .success(let level):
                    logger.notice("log level changed through the admin server", metadata: ["level": "\(level)"])
                    return now(HTTPEndpointResponse(.ok, level + "\n"))
                case .failure(let failure):
                    return now(HTTPEndpointResponse(.badRequest, failure.message + "\n"))
                }
            default:
                return now(.methodNotAllowed(request, allowed: [.GET, .HEAD, .POST]))
            }
        case "/quitquitquit":
            guard request.method == .POST else { return now(.methodNotAllowed(request, allowed: [.POST])) }
            logger.notice("graceful drain requested through the admin server")
            return now(HTTPEndpointResponse(.ok, "OK\n", afterSent: endpoints.quit))
        default:
            guard let route = endpoints.routes().first(where: { $0.path == request.path }) else {
                return now(.notFound(request))
            }
            guard route.methods.contains(request.method) else {
                return now(.methodNotAllowed(request, allowed: route.methods))
            }
            return eventLoop.makeFutureWithTask { await route.handler(request) }
        }
    }
}
