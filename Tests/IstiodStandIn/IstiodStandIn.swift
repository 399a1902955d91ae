import Foundation
public import GRPCCore
import GRPCNIOTransportHTTP2
public import IstioXDSAPI
import NIOConcurrencyHelpers
import NIOPosix
public import SwiftProtobuf

/// A stand-in for istiod in tests: a real delta ADS server
/// (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`)
/// over TLS, built from the same generated code as the client, that serves scripted
/// Workload API resources.
///
/// It keeps what istiod keeps for a wildcard subscriber: per type URL the resources in
/// force (name → version and body). On the first request of a type on a stream it sends
/// every resource whose version differs from the client's `initial_resource_versions`
/// and, as removed, the names the client holds that it does not; afterwards each
/// ``push(_:upserting:removing:)`` goes to every stream subscribed to that type. Callers
/// must present `authorization: Bearer <token>` with one of ``tokens``, or the stream is
/// refused with UNAUTHENTICATED. Every request is recorded (``requests``), so tests check
/// node ids, initial versions, ACKs and NACKs.
///
/// ``stop()`` takes the server away (its streams end, its listener closes and further
/// connects are refused, as while istiod's pod restarts) and ``start()`` serves again on
/// the same address with the same resources, as a restarted istiod does;
/// ``closeStreams()`` ends every stream cleanly (status OK) and keeps serving.
public final class IstiodStandIn: Sendable {
    /// One request the server received.
    public struct ReceivedRequest: Sendable {
        /// The stream it came on (counted from 1 over the server's life).
        public var stream: Int
        /// The request.
        public var request: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest
        /// Whether it was the first of its type on its stream.
        public var initial: Bool
    }

    /// One stream as the server saw it open.
    public struct StreamInfo: Sendable {
        /// Its number.
        public var id: Int
        /// The `authorization` header.
        public var authorization: String?
        /// The `clusterid` header.
        public var clusterID: String?
    }

    /// A resource in force.
    public struct Entry: Sendable {
        /// Its version.
        public var version: String
        /// Its body (`Resource.resource`).
        public var body: Google_Protobuf_Any
    }

    private struct StreamState {
        var queue: AsyncStream<Envoy_Service_Discovery_V3_DeltaDiscoveryResponse>.Continuation
        var subscribed: Set<String> = []
    }

    private struct State {
        var resources: [String: [String: Entry]] = [:]
        var streams: [Int: StreamState] = [:]
        var infos: [StreamInfo] = []
        var requests: [ReceivedRequest] = []
        var requestObservers: [@Sendable (ReceivedRequest) -> Void] = []
        var nextStream = 1
        var nextNonce = 1
        var server: GRPCServer<HTTP2ServerTransport.Posix>?
        var serving: Task<Void, any Error>?
        var port: Int?
        var tokens: Set<String>
        /// Types whose initial responses are held back, and the requests waiting.
        var held: Set<String> = []
        var waiting: [(stream: Int, request: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest)] = []
        /// Set while ``stop()`` runs: new streams are refused.
        var stopping = false
    }

    /// The address to listen on (port 0 the first time: a free one, kept for restarts).
    public let host: String
    private let certificateChainPEM: [String]
    private let privateKeyPEM: String
    private let services: [any RegistrableRPCService]
    private let state: NIOLockedValueBox<State>

    /// Creates a stand-in serving `certificateChainPEM` (leaf first) with
    /// `privateKeyPEM` on `host`, accepting bearer `tokens`. `services` are served on the
    /// same port beside ADS, as istiod serves its CA API (`istio.v1.auth.IstioCertificateService`)
    /// on 15012 too.
    public init(
        host: String, certificateChainPEM: [String], privateKeyPEM: String, tokens: Set<String>,
        services: [any RegistrableRPCService] = []
    ) {
        self.host = host
        self.certificateChainPEM = certificateChainPEM
        self.privateKeyPEM = privateKeyPEM
        self.services = services
        self.state = NIOLockedValueBox(State(tokens: tokens))
    }

    /// The bound port, once started.
    public var port: Int? { state.withLockedValue { $0.port } }

    /// The tokens accepted.
    public var tokens: Set<String> {
        get { state.withLockedValue { $0.tokens } }
        set { state.withLockedValue { $0.tokens = newValue } }
    }

    /// Every request received, in order.
    public var requests: [ReceivedRequest] { state.withLockedValue { $0.requests } }

    /// Calls `observer` with every request from now on, as it is received (benchmarks time
    /// ACKs with it rather than polling ``requests``). It runs under the stand-in's lock:
    /// keep it short and do not call the stand-in from it.
    public func observeRequests(_ observer: @escaping @Sendable (ReceivedRequest) -> Void) {
        state.withLockedValue { $0.requestObservers.append(observer) }
    }

    /// Every stream opened (accepted or refused), in order.
    public var streams: [StreamInfo] { state.withLockedValue { $0.infos } }

    /// The number of streams open now.
    public var openStreams: Int { state.withLockedValue { $0.streams.count } }

    /// Starts serving: on `requested` when given, else again on the port of the last run
    /// (after ``stop()``), else on a free one. Returns the port.
    @discardableResult
    public func start(on requested: Int? = nil) async throws -> Int {
        let port = requested ?? state.withLockedValue { $0.port } ?? 0
        let transport = HTTP2ServerTransport.Posix(
            address: host.contains(":") ? .ipv6(host: host, port: port) : .ipv4(host: host, port: port),
            transportSecurity: .tls(
                certificateChain: certificateChainPEM.map { .bytes(Array($0.utf8), format: .pem) },
                privateKey: .bytes(Array(privateKeyPEM.utf8), format: .pem)),
            eventLoopGroup: .singleton)
        let server = GRPCServer(transport: transport, services: [AggregatedDiscovery(standIn: self)] + services)
        let serving = Task { try await server.serve() }
        let listening = try await transport.listeningAddress
        let bound = listening.ipv4?.port ?? listening.ipv6?.port ?? port
        state.withLockedValue {
            $0.server = server
            $0.serving = serving
            $0.port = bound
        }
        return bound
    }

    /// Stops serving: the listener closes, every stream ends, and streams opened meanwhile
    /// are refused (UNAVAILABLE). Resources are kept.
    public func stop() async {
        let (server, serving) = state.withLockedValue { state in
            state.stopping = true
            return (state.server, state.serving)
        }
        // Listener first (and GOAWAY to every connection), so a client reconnecting as
        // its stream ends finds nobody; then the streams.
        server?.beginGracefulShutdown()
        let queues = state.withLockedValue { state in
            defer { state.streams = [:] }
            return state.streams.values.map(\.queue)
        }
        for queue in queues { queue.finish() }
        _ = try? await serving?.value
        state.withLockedValue { state in
            state.server = nil
            state.serving = nil
            state.stopping = false
        }
    }

    /// Ends every open stream cleanly (status OK), as istiod does when it rebalances.
    public func closeStreams() {
        let queues = state.withLockedValue { state in
            defer { state.streams = [:] }
            return state.streams.values.map(\.queue)
        }
        for queue in queues { queue.finish() }
    }

    /// The resources in force for `typeURL`.
    public func resources(_ typeURL: String) -> [String: Entry] {
        state.withLockedValue { $0.resources[typeURL] ?? [:] }
    }

    /// Changes the resources in force without telling anyone (e.g. while stopped).
    public func set(
        _ typeURL: String, upserting upserts: [(name: String, version: String, body: Google_Protobuf_Any)] = [],
        removing removals: [String] = []
    ) {
        state.withLockedValue { state in
            for upsert in upserts {
                state.resources[typeURL, default: [:]][upsert.name] = Entry(version: upsert.version, body: upsert.body)
            }
            for name in removals { state.resources[typeURL]?[name] = nil }
        }
    }

    /// Changes the resources in force and pushes the change to every stream subscribed
    /// to `typeURL`. Returns the nonces sent.
    @discardableResult
    public func push(
        _ typeURL: String, upserting upserts: [(name: String, version: String, body: Google_Protobuf_Any)] = [],
        removing removals: [String] = []
    ) -> [String] {
        state.withLockedValue { state in
            for upsert in upserts {
                state.resources[typeURL, default: [:]][upsert.name] = Entry(version: upsert.version, body: upsert.body)
            }
            for name in removals { state.resources[typeURL]?[name] = nil }
            var nonces: [String] = []
            for (_, stream) in state.streams.sorted(by: { $0.key < $1.key }) where stream.subscribed.contains(typeURL) {
                var response = Envoy_Service_Discovery_V3_DeltaDiscoveryResponse()
                response.typeURL = typeURL
                response.nonce = Self.nonce(&state)
                response.systemVersionInfo = "push-\(response.nonce)"
                response.resources = upserts.map { Self.resource(name: $0.name, version: $0.version, body: $0.body) }
                response.removedResources = removals
                nonces.append(response.nonce)
                stream.queue.yield(response)
            }
            return nonces
        }
    }

    /// Sends `response` as it is (nonce filled in when empty) to every stream subscribed
    /// to its type, for responses no well-behaved istiod sends. Returns the nonces.
    @discardableResult
    public func send(raw response: Envoy_Service_Discovery_V3_DeltaDiscoveryResponse) -> [String] {
        state.withLockedValue { state in
            var nonces: [String] = []
            for (_, stream) in state.streams.sorted(by: { $0.key < $1.key })
            where stream.subscribed.contains(response.typeURL) {
                var copy = response
                if copy.nonce.isEmpty { copy.nonce = Self.nonce(&state) }
                nonces.append(copy.nonce)
                stream.queue.yield(copy)
            }
            return nonces
        }
    }

    private static func nonce(_ state: inout State) -> String {
        defer { state.nextNonce += 1 }
        return "n\(state.nextNonce)"
    }

    static func resource(name: String, version: String, body: Google_Protobuf_Any)
        -> Envoy_Service_Discovery_V3_Resource
    {
        var resource = Envoy_Service_Discovery_V3_Resource()
        resource.name = name
        resource.version = version
        resource.resource = body
        return resource
    }

    // MARK: The stream

    /// Opens a stream: checks the token, then registers the stream's send queue.
    fileprivate func open(metadata: Metadata) throws(RPCError) -> (
        Int, AsyncStream<Envoy_Service_Discovery_V3_DeltaDiscoveryResponse>
    ) {
        let authorization = metadata[stringValues: "authorization"].first(where: { _ in true })
        let clusterID = metadata[stringValues: "clusterid"].first(where: { _ in true })
        let (queue, continuation) = AsyncStream.makeStream(of: Envoy_Service_Discovery_V3_DeltaDiscoveryResponse.self)
        let outcome = state.withLockedValue { state -> Result<Int, RPCError> in
            let id = state.nextStream
            state.nextStream += 1
            state.infos.append(StreamInfo(id: id, authorization: authorization, clusterID: clusterID))
            if state.stopping { return .failure(RPCError(code: .unavailable, message: "istiod stand-in is stopping")) }
            guard let authorization, authorization.hasPrefix("Bearer "),
                state.tokens.contains(String(authorization.dropFirst("Bearer ".count)))
            else {
                return .failure(
                    RPCError(code: .unauthenticated, message: "authentication failure: no valid bearer token"))
            }
            state.streams[id] = StreamState(queue: continuation)
            return .success(id)
        }
        switch outcome {
        case .success(let id): return (id, queue)
        case .failure(let error): throw error
        }
    }

    /// One request: the first of a type gets the initial response, the rest are
    /// recorded as ACKs and NACKs.
    fileprivate func received(_ request: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest, on stream: Int) {
        state.withLockedValue { state in
            guard var streamState = state.streams[stream] else { return }
            let initial = !streamState.subscribed.contains(request.typeURL) && request.responseNonce.isEmpty
            let received = ReceivedRequest(stream: stream, request: request, initial: initial)
            state.requests.append(received)
            for observer in state.requestObservers { observer(received) }
            guard initial else { return }
            streamState.subscribed.insert(request.typeURL)
            state.streams[stream] = streamState
            if state.held.contains(request.typeURL) {
                state.waiting.append((stream, request))
                return
            }
            Self.answer(request, on: streamState, &state)
        }
    }

    /// Sends the initial response to `request`: what differs from the versions it holds,
    /// and as removed what it holds that is gone.
    private static func answer(
        _ request: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest, on stream: StreamState, _ state: inout State
    ) {
        let held = request.initialResourceVersions
        let current = state.resources[request.typeURL] ?? [:]
        var response = Envoy_Service_Discovery_V3_DeltaDiscoveryResponse()
        response.typeURL = request.typeURL
        response.nonce = nonce(&state)
        response.systemVersionInfo = "initial-\(response.nonce)"
        response.resources = current.sorted { $0.key < $1.key }
            .filter { held[$0.key] != $0.value.version }
            .map { resource(name: $0.key, version: $0.value.version, body: $0.value.body) }
        response.removedResources = held.keys.filter { current[$0] == nil }.sorted()
        stream.queue.yield(response)
    }

    /// Holds back the initial responses of `typeURL` until ``release(_:)``, as an istiod
    /// still computing its first push does.
    public func hold(_ typeURL: String) {
        state.withLockedValue { _ = $0.held.insert(typeURL) }
    }

    /// Answers the initial requests of `typeURL` held back, and stops holding.
    public func release(_ typeURL: String) {
        state.withLockedValue { state in
            state.held.remove(typeURL)
            let waiting = state.waiting.filter { $0.request.typeURL == typeURL }
            state.waiting.removeAll { $0.request.typeURL == typeURL }
            for (stream, request) in waiting {
                guard let streamState = state.streams[stream] else { continue }
                Self.answer(request, on: streamState, &state)
            }
        }
    }

    /// Ends one stream's responses (its client is gone or done).
    fileprivate func finish(_ stream: Int) {
        state.withLockedValue { $0.streams[stream]?.queue }?.finish()
    }

    fileprivate func closed(_ stream: Int) {
        state.withLockedValue { _ = $0.streams.removeValue(forKey: stream) }
    }
}

/// The ADS service the stand-in registers.
private struct AggregatedDiscovery: Envoy_Service_Discovery_V3_AggregatedDiscoveryService.ServiceProtocol {
    let standIn: IstiodStandIn

    func deltaAggregatedResources(
        request: StreamingServerRequest<Envoy_Service_Discovery_V3_DeltaDiscoveryRequest>, context: ServerContext
    ) async throws -> StreamingServerResponse<Envoy_Service_Discovery_V3_DeltaDiscoveryResponse> {
        let (id, queue) = try standIn.open(metadata: request.metadata)
        return StreamingServerResponse { [standIn] writer in
            defer { standIn.closed(id) }
            // The request side is read apart, so the response ends as soon as its queue
            // does (a clean close, a stop) without waiting for the client's side.
            let reader = Task {
                defer { standIn.finish(id) }
                for try await message in request.messages { standIn.received(message, on: id) }
            }
            defer { reader.cancel() }
            for await response in queue { try await writer.write(response) }
            return [:]
        }
    }
}

extension IstiodStandIn {
    /// Packs a Workload API message as a resource body.
    public static func body(_ message: some SwiftProtobuf.Message) -> Google_Protobuf_Any {
        // Packing a generated message cannot fail.
        (try? Google_Protobuf_Any(message: message)) ?? Google_Protobuf_Any()
    }
}
