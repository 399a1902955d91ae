public import Kernel
public import Logging
public import NIOCore

/// Turns one query's bytes into the bytes of its answer: parse, answer from the mesh or
/// forward upstream, count, and fit the answer to the transport. What both servers (UDP
/// and TCP) run for each message; usable without sockets for tests and fuzzing.
///
/// Thread-safe: immutable; ``answer(_:transport:from:on:)`` may run concurrently.
public struct DNSQueryHandler: Sendable {
    /// Answers from the mesh.
    public var resolver: MeshDNSResolver
    /// Where other queries go.
    public var forwarder: DNSForwarder
    /// The current mesh.
    public var mesh: @Sendable () -> MeshSnapshot
    /// The workload behind a client address; nil: unknown (SERVFAIL).
    public var client: @Sendable (SocketAddr) -> DNSClientInfo?
    /// Where queries are counted; nil: nowhere.
    public var metrics: DNSMetrics?
    /// Debug lines per query, warnings for upstream failures.
    public var logger: Logger

    /// A handler from its parts.
    public init(
        resolver: MeshDNSResolver, forwarder: DNSForwarder, mesh: @escaping @Sendable () -> MeshSnapshot,
        client: @escaping @Sendable (SocketAddr) -> DNSClientInfo?, metrics: DNSMetrics?, logger: Logger
    ) {
        self.resolver = resolver
        self.forwarder = forwarder
        self.mesh = mesh
        self.client = client
        self.metrics = metrics
        self.logger = logger
    }

    /// The largest UDP answer for `query`: 512 bytes, or the client's EDNS payload size
    /// when larger.
    public static func udpLimit(for query: DNSMessage?) -> Int {
        max(512, Int(query?.edns?.udpPayloadSize ?? 0))
    }

    /// The answer to `bytes`, a query from `source` over `transport`; nil: no answer
    /// (not even a header could be read).
    public func answer(_ bytes: [UInt8], transport: DNSTransport, from source: SocketAddr, on eventLoop: any EventLoop) async -> [UInt8]? {
        let query: DNSMessage
        do {
            query = try DNSMessage(parsing: bytes)
        } catch {
            guard let header = DNSMessage.header(of: bytes) else {
                logger.debug("DNS query dropped: no header", metadata: ["source": "\(source)", "bytes": "\(bytes.count)"])
                return nil
            }
            logger.debug("malformed DNS query", metadata: ["source": "\(source)", "error": "\(error)"])
            return MeshDNSResolver.error(.formatError, toHeader: header).serialized()
        }
        let client = client(source)
        let labels = DNSMetrics.Labels(type: query.questions.first?.type, transport: transport, client: client)
        metrics?.request(labels)
        let limit = transport == .udp ? Self.udpLimit(for: query) : Int(UInt16.max)
        switch resolver.resolve(query, client: client, mesh: mesh()) {
        case .answer(let response):
            logger.debug(
                "DNS answer from the mesh",
                metadata: [
                    "source": "\(source)", "question": "\(query.questions.first.map { "\($0.name) \($0.type)" } ?? "")",
                    "rcode": "\(response.header.responseCode)", "answers": "\(response.answers.count)",
                ])
            return Self.fitted(response, limit: limit)
        case .forward:
            let started = ContinuousClock.now
            do {
                let answer = try await forwarder.forward(query, transport: transport, on: eventLoop)
                metrics?.upstream(labels, duration: ContinuousClock.now - started, succeeded: true)
                logger.debug(
                    "DNS query forwarded",
                    metadata: [
                        "source": "\(source)", "upstream": "\(answer.upstream)",
                        "rcode": "\(answer.message.header.responseCode)", "answers": "\(answer.message.answers.count)",
                    ])
                if answer.bytes.count <= limit { return answer.bytes }
                return Self.fitted(answer.message, limit: limit)
            } catch {
                metrics?.upstream(labels, duration: ContinuousClock.now - started, succeeded: false)
                logger.warning("DNS forwarding failed", metadata: ["source": "\(source)", "error": "\(error)"])
                return MeshDNSResolver.error(.serverFailure, to: query).serialized()
            }
        }
    }

    /// `response` serialised, or when that exceeds `limit`, with TC set and every record
    /// dropped (the question and EDNS kept), so the client asks again over TCP. The result
    /// is at most `limit` bytes for any `limit` of 512 or more.
    public static func fitted(_ response: DNSMessage, limit: Int) -> [UInt8] {
        let bytes = response.serialized()
        if bytes.count <= limit { return bytes }
        var cut = response
        cut.header.truncated = true
        cut.answers = []
        cut.authorities = []
        cut.additionals = []
        if cut.questions.count > 1 { cut.questions = [] }
        let short = cut.serialized()
        if short.count <= limit { return short }
        cut.questions = []
        cut.edns = nil
        return cut.serialized()
    }
}
