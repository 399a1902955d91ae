public import NIOHTTP1

/// One HTTP request as the admin, readiness and metrics routes see it: bodies are read
/// and dropped, since no route takes one.
public struct HTTPEndpointRequest: Sendable {
    /// The request method.
    public var method: HTTPMethod
    /// The path without the query, e.g. `/logging`.
    public var path: String
    /// Query parameters, percent-decoded; the last occurrence of a name wins.
    public var query: [String: String]

    /// Splits `uri` into path and query.
    public init(method: HTTPMethod, uri: String) {
        self.method = method
        if let mark = uri.firstIndex(of: "?") {
            path = String(uri[..<mark])
            query = Self.parseQuery(uri[uri.index(after: mark)...])
        } else {
            path = uri
            query = [:]
        }
    }

    /// `a=1&b=two+words&c=%2F` → `["a": "1", "b": "two words", "c": "/"]`.
    static func parseQuery(_ query: Substring) -> [String: String] {
        var result: [String: String] = [:]
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = percentDecoded(parts[0])
            result[name] = parts.count > 1 ? percentDecoded(parts[1]) : ""
        }
        return result
    }

    /// Decodes `%XX` and `+`; a malformed escape is kept literally rather than rejected,
    /// because the value is validated by the route anyway.
    static func percentDecoded(_ text: Substring) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
            } else if byte == UInt8(ascii: "%"), iterator.count >= 2,
                let high = iterator[iterator.startIndex].asciiHexValue,
                let low = iterator[iterator.startIndex + 1].asciiHexValue
            {
                bytes.append(high << 4 | low)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

}

/// A complete response; every route's body is text held in memory.
public struct HTTPEndpointResponse: Sendable {
    /// The status.
    public var status: HTTPResponseStatus
    /// The `Content-Type` header.
    public var contentType: String
    /// The body (not sent for `HEAD`).
    public var body: String
    /// Extra headers.
    public var headers: HTTPHeaders
    /// Runs once the response has been written (e.g. `/quitquitquit` starts the drain
    /// only after the caller got its answer).
    public var afterSent: (@Sendable () -> Void)?

    /// Creates a response.
    public init(
        _ status: HTTPResponseStatus, _ body: String, contentType: String = "text/plain; charset=utf-8",
        headers: HTTPHeaders = [:], afterSent: (@Sendable () -> Void)? = nil
    ) {
        self.status = status
        self.body = body
        self.contentType = contentType
        self.headers = headers
        self.afterSent = afterSent
    }

    /// 404 naming the path.
    public static func notFound(_ request: HTTPEndpointRequest) -> Self {
        Self(.notFound, "no such endpoint: \(request.path)\n")
    }

    /// 405 with an `Allow` header.
    public static func methodNotAllowed(_ request: HTTPEndpointRequest, allowed: [HTTPMethod]) -> Self {
        let names = allowed.map(\.rawValue).joined(separator: ", ")
        return Self(
            .methodNotAllowed, "\(request.method.rawValue) not allowed on \(request.path); use \(names)\n",
            headers: ["Allow": names])
    }
}

/// One admin route a plugin adds, e.g. the capture plugin's `/pods`.
public struct AdminRoute: Sendable {
    /// The exact path, e.g. `/pods`.
    public var path: String
    /// The methods it answers; others get 405.
    public var methods: [HTTPMethod]
    /// One line for the admin index: what it does.
    public var summary: String
    /// Answers one request (query parameters carry the arguments; bodies are not read).
    public var handler: @Sendable (HTTPEndpointRequest) async -> HTTPEndpointResponse

    /// Creates a route.
    public init(
        path: String, methods: [HTTPMethod], summary: String,
        handler: @escaping @Sendable (HTTPEndpointRequest) async -> HTTPEndpointResponse
    ) {
        self.path = path
        self.methods = methods
        self.summary = summary
        self.handler = handler
    }
}

/// A plugin that adds routes to the node's admin server (port 15000, localhost). Routes
/// must not shadow the kernel's (`/config_dump`, `/plugins`, `/logging`, `/quitquitquit`).
public protocol AdminRouteProvider: Sendable {
    /// The plugin's routes; read on every admin request, so they may change over time.
    var adminRoutes: [AdminRoute] { get }
}

/// A plugin that adds a section of its own to `/config_dump` (as a ztunnel admin handler
/// adds one), e.g. a discovery client's connection state. The section appears under
/// ``configDumpKey`` beside the kernel's keys; a key the kernel already writes
/// (`workloads`, `services`, `policies`, `certificates`, `workloadState`, `plugins`, …)
/// is not overwritten: that section is left out.
public protocol ConfigDumpSectionProvider: Sendable {
    /// The top-level key, e.g. `xds`.
    var configDumpKey: String { get }
    /// The section, encoded as JSON with the rest of the dump. Called from the admin
    /// server's tasks, concurrently with everything else: thread-safe. Never put secrets
    /// (keys, token contents) in it.
    func configDumpSection() async -> any Encodable & Sendable
}
