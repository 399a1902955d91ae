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
    /// `POST /logging?level=<directive>[&reset]`: applies a directive in ztunnel's form
    /// (see ``LogLevelControl/apply(directive:reset:)``); returns the levels now in force
    /// as ``LogLevelControl/directive`` writes them, or a failure saying what was wrong.
    public var setLogLevel: @Sendable (_ directive: String, _ reset: Bool) -> Result<String, AdminFailure>
    /// `GET /logging`: the levels in force, e.g. `hbone=debug,info`.
    public var currentLogLevel: @Sendable () -> String
    /// `POST /quitquitquit`: starts the graceful drain; called after the answer is sent.
    public var quit: @Sendable () -> Void
    /// Routes added by plugins (``AdminRouteProvider``), looked up on every request.
    public var routes: @Sendable () -> [AdminRoute]

    /// Creates endpoints from closures.
    public init(
        configDump: @escaping @Sendable () async -> String,
        plugins: @escaping @Sendable () async -> String,
        setLogLevel: @escaping @Sendable (_ directive: String, _ reset: Bool) -> Result<String, AdminFailure>,
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
            setLogLevel: { directive, reset in logLevel.change(directive: directive, reset: reset) },
            currentLogLevel: { logLevel.directive },
            quit: quit)
    }
}

extension LogLevelControl {
    /// ``apply(directive:reset:)`` as the admin server answers it: the levels now in force,
    /// or a failure naming the bad clause and the accepted forms.
    public func change(directive: String, reset: Bool) -> Result<String, AdminFailure> {
        if let problem = apply(directive: directive, reset: reset) {
            return .failure(
                AdminFailure(
                    "\(problem); use level=<level> or level=<scope>:<level>,<level> (levels: \(LogLevelControl.levelNames.joined(separator: ", ")), warn, off; scopes: \(knownScopes.joined(separator: ", ")))"
                ))
        }
        return .success(self.directive)
    }
}

/// The node's admin HTTP server (port 15000, bind it to localhost only: it can change the
/// log level and shut the node down).
///
/// Routes:
/// - `GET /` — plain-text index of the routes;
/// - `GET /config_dump` — ``AdminEndpoints/configDump`` (application/json);
/// - `GET /plugins` — ``AdminEndpoints/plugins`` (application/json);
/// - `GET /logging` — the levels in force; `POST /logging?level=<directive>[&reset]` —
///   changes them as ztunnel does (`level=hbone:debug,info`; `reset` first returns to the
///   starting level), 200 with `current log level is <directive>`, 400 naming the bad
///   clause; `POST /logging` without a level lists them, as `istioctl ztunnel-config log`
///   expects;
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
          GET  /config_dump               node state in ztunnel's shape (istioctl ztunnel-config reads it) as JSON
          GET  /plugins                   enabled plugins as JSON
          GET  /logging                   current log levels (default and per scope)
          POST /logging?level=<levels>    set levels: <level> or <scope>:<level>,<level>; &reset first
                                          restores the starting level (\(LogLevelControl.levelNames.joined(separator: ", ")))
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
            func levels(_ directive: String) -> HTTPEndpointResponse {
                HTTPEndpointResponse(.ok, "current log level is \(directive)\n")
            }
            switch request.method {
            case .GET, .HEAD:
                return now(levels(endpoints.currentLogLevel()))
            case .POST:
                let directive = request.query["level"] ?? ""
                let reset = request.query["reset"] != nil
                guard !directive.isEmpty || reset else { return now(levels(endpoints.currentLogLevel())) }
                switch endpoints.setLogLevel(directive, reset) {
                case .success(let inForce):
                    logger.notice(
                        "log levels changed through the admin server",
                        metadata: ["levels": "\(inForce)", "request": "\(directive)", "reset": "\(reset)"])
                    return now(levels(inForce))
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
