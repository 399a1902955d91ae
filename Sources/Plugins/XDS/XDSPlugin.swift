import CoreMetrics
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import IstioXDSAPI
public import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import NIOSSL
import ServiceLifecycle
import SwiftProtobuf

/// Discovery from istiod's Workload API over delta xDS, as ztunnel takes it: the
/// ``PluginRole/discovery`` provider for a node proxy run under Istio's control plane.
///
/// Manifest entry (every key optional; paths relative to the manifest):
/// ```yaml
/// - id: xds
///   config:
///     address: istiod.istio-system.svc:15012          # host:port (https:// accepted)
///     rootCertificate: /var/run/secrets/istio/root-cert.pem  # PEM roots istiod's certificate must chain to
///     tokenFile: /var/run/secrets/tokens/istio-token   # bearer token, re-read on every connect
///     clusterId: Kubernetes                            # the clusterid header
///     serverName: istiod.istio-system.svc              # name to verify (default: the address's host)
/// ```
///
/// **The stream.** One gRPC stream
/// `envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources` over
/// TLS (HTTP/2, no client certificate), verified against `rootCertificate` and
/// `serverName`, with `authorization: Bearer <token>` and `clusterid` metadata. It
/// subscribes by wildcard to `istio.workload.Address` (workloads by uid, services by
/// `namespace/hostname`) and `istio.security.Authorization` (policies by
/// `namespace/name`); the node id and metadata are ztunnel's (``XDSNodeIdentity``, from
/// `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`, `NODE_NAME` and `ISTIO_META_*`).
///
/// **Pushes.** Each response is converted (``WorkloadAPI``) and applied to the mesh
/// store as one delta from origin `xds`, `removed_resources` included, then ACKed. A
/// resource that cannot be converted is NACKed by name and reason in `error_detail`
/// while the rest of the push is applied; its last good version stays in force.
///
/// **Reconnects.** After an error the stream is opened again after 10 ms, doubling up to
/// 15 s while it keeps failing, and at once (10 ms) after the server ends a stream it
/// answered on cleanly or as a restarting server does; each new
/// stream sends `initial_resource_versions` (minus the names rejected), so istiod
/// resends only what changed and reports what was removed meanwhile. The mesh keeps its
/// last good state throughout.
///
/// **Readiness.** `/healthz/ready` lists `xds istio.workload.Address` and
/// `xds istio.security.Authorization` until the first response of each type has been
/// applied and its ACK (or NACK) sent.
///
/// **Observability.** One log line per change of the connection's state (not per
/// retry); `/config_dump` key `xds` (address, state, last error, and per type the last
/// nonce, versions and rejected resources); metrics `istio_xds_connection_terminations_total{reason}`
/// (`ConnectionError`, `Error`, `Reconnect`, `Complete`), `istio_xds_message_total{url}`
/// and `istio_xds_message_bytes_total{url}`, as ztunnel names them.
public final class XDSPlugin: Plugin, DiscoverySource, ConfigDumpSectionProvider {
    /// `config:` of the manifest entry.
    public struct Config: DefaultedConfig, Sendable {
        /// istiod's `host:port`; an `https://` prefix is accepted and dropped.
        public var address: String = "istiod.istio-system.svc:15012"
        /// PEM file with the roots istiod's serving certificate must chain to.
        public var rootCertificate: String = "/var/run/secrets/istio/root-cert.pem"
        /// File holding the bearer token (a projected service-account token), re-read on
        /// every connect.
        public var tokenFile: String = "/var/run/secrets/tokens/istio-token"
        /// The `clusterid` header.
        public var clusterId: String = "Kubernetes"
        /// The name istiod's certificate must carry (and the SNI); nil: the address's
        /// host when it is a DNS name, chain-only verification when it is an IP address.
        public var serverName: String?

        public init() {}

        /// The parsed address, nil when malformed.
        public var endpoint: XDSEndpoint? { XDSEndpoint(address) }

        public func validate() -> [ConfigProblem] {
            var problems: [ConfigProblem] = []
            if endpoint == nil {
                problems.append(ConfigProblem(at: "address", "expected host:port, got \"\(address)\""))
            }
            if rootCertificate.isEmpty { problems.append(ConfigProblem(at: "rootCertificate", "must not be empty")) }
            if tokenFile.isEmpty { problems.append(ConfigProblem(at: "tokenFile", "must not be empty")) }
            if clusterId.isEmpty { problems.append(ConfigProblem(at: "clusterId", "must not be empty")) }
            if serverName?.isEmpty == true {
                problems.append(
                    ConfigProblem(at: "serverName", "must not be empty; leave it out for the address's host"))
            }
            return problems
        }
    }

    /// The connection's state, as `/config_dump` shows it.
    public enum ConnectionState: String, Sendable, Encodable {
        /// Opening a stream (the first, or again after a clean close).
        case connecting
        /// A stream is open and istiod has answered on it.
        case connected
        /// The last attempt failed; waiting to try again.
        case retrying
        /// Shut down.
        case stopped
    }

    /// What `/config_dump` shows under `xds`, and what tests look at.
    public struct Status: Sendable, Encodable {
        /// istiod's address.
        public var address: String
        /// The name its certificate is verified against, if any.
        public var serverName: String?
        /// The node id sent.
        public var nodeID: String
        /// The connection's state.
        public var state: ConnectionState
        /// Why the last stream ended or could not be opened; nil once connected again.
        public var lastError: String?
        /// Streams opened (attempts, successful or not).
        public var attempts: Int
        /// Streams on which istiod answered.
        public var connections: Int
        /// Per type URL: versions, last nonce, rejected resources.
        public var types: [String: XDSSubscriptions.TypeState]
        /// Whether the first response of each type has been applied and answered.
        public var synced: Bool
    }

    public static let id = "xds"
    public static let summary = "workloads, services and policies from istiod's Workload API (delta xDS over TLS)"
    public static var provides: Set<PluginRole> { [.discovery] }

    /// The first wait after a failed stream, doubled per failure up to ``maxBackoff``.
    public static let initialBackoff: Duration = .milliseconds(10)
    /// The longest wait between attempts.
    public static let maxBackoff: Duration = .seconds(15)
    /// The largest response taken (ztunnel's: 200 MiB).
    static let maxMessageBytes = 200 * 1024 * 1024

    /// The decoded config.
    public let config: Config
    /// Who this node says it is.
    public let identity: XDSNodeIdentity
    private let context: PluginContext
    private let endpoint: XDSEndpoint
    private let rootPath: String
    private let tokenPath: String
    private let state: NIOLockedValueBox<State>
    private let metrics = NIOLockedValueBox<Metrics?>(nil)

    private struct State {
        var subscriptions = XDSSubscriptions()
        var connection: ConnectionState = .connecting
        var lastError: String?
        var attempts = 0
        var connections = 0
        /// Types whose first reply has been sent: readiness no longer waits for them.
        var ready: Set<String> = []
    }

    private struct Metrics {
        var terminations: [TerminationReason: Counter]
        var messages: [String: Counter]
        var bytes: [String: Counter]
    }

    /// Why a stream ended, as `istio_xds_connection_terminations_total{reason}` names it.
    enum TerminationReason: String, CaseIterable {
        /// The stream could not be opened (istiod unreachable, TLS failure).
        case connectionError = "ConnectionError"
        /// istiod ended the stream with an error status.
        case error = "Error"
        /// The stream ended the way streams end when istiod restarts or rebalances
        /// (cancelled, unknown, deadline, a closing transport): reconnect at once.
        case reconnect = "Reconnect"
        /// istiod ended the stream cleanly.
        case complete = "Complete"
    }

    /// Builds the plugin; the node identity is read from the process environment.
    public init(config: Config, context: PluginContext) throws {
        guard let endpoint = config.endpoint else {
            throw PluginError(
                .invalidConfiguration, plugin: Self.id, "address: expected host:port, got \"\(config.address)\"")
        }
        self.config = config
        self.context = context
        self.endpoint = endpoint
        self.rootPath = context.resolvePath(config.rootCertificate)
        self.tokenPath = context.resolvePath(config.tokenFile)
        self.identity = XDSNodeIdentity(
            environment: ProcessInfo.processInfo.environment, fallbackNodeName: context.nodeName)
        self.state = NIOLockedValueBox(State())
    }

    public var discoveryOrigin: String { "xds \(endpoint)" }

    /// The readiness component of one type: `xds istio.workload.Address`.
    public static func readinessComponent(_ typeURL: String) -> String {
        "xds " + typeURL.replacingOccurrences(of: "type.googleapis.com/", with: "")
    }

    /// The name verified in istiod's certificate: `serverName`, else a DNS host.
    var verifiedName: String? {
        config.serverName ?? (IPAddress(endpoint.host) == nil ? endpoint.host : nil)
    }

    /// The current state.
    public var status: Status {
        state.withLockedValue { state in
            Status(
                address: endpoint.description, serverName: verifiedName, nodeID: identity.id, state: state.connection,
                lastError: state.lastError, attempts: state.attempts, connections: state.connections,
                types: state.subscriptions.types, synced: state.subscriptions.isSynced)
        }
    }

    public var configDumpKey: String { "xds" }

    public func configDumpSection() -> any Encodable & Sendable { status }

    // MARK: Lifecycle

    /// Checks the root certificate, registers readiness for both types and the metrics.
    /// istiod itself is not contacted here: an unreachable istiod leaves the node
    /// running, not ready, and retrying.
    public func provision() async throws {
        do throws(XDSClientError) {
            _ = try loadRoots()
        } catch {
            throw error.pluginError
        }
        for typeURL in XDSSubscriptions.typeURLs { context.readiness.expect(Self.readinessComponent(typeURL)) }
        let factory = context.metrics
        metrics.withLockedValue {
            $0 = Metrics(
                terminations: Dictionary(
                    uniqueKeysWithValues: TerminationReason.allCases.map {
                        (
                            $0,
                            Counter(
                                label: "istio_xds_connection_terminations_total", dimensions: [("reason", $0.rawValue)],
                                factory: factory)
                        )
                    }),
                messages: Dictionary(
                    uniqueKeysWithValues: XDSSubscriptions.typeURLs.map {
                        ($0, Counter(label: "istio_xds_message_total", dimensions: [("url", $0)], factory: factory))
                    }),
                bytes: Dictionary(
                    uniqueKeysWithValues: XDSSubscriptions.typeURLs.map {
                        (
                            $0,
                            Counter(label: "istio_xds_message_bytes_total", dimensions: [("url", $0)], factory: factory)
                        )
                    }))
        }
        context.logger.info(
            "xDS client configured",
            metadata: [
                "address": "\(endpoint)", "server_name": "\(verifiedName ?? "-")", "node_id": "\(identity.id)",
                "cluster_id": "\(config.clusterId)",
            ])
    }

    /// Keeps a stream to istiod open until graceful shutdown, reconnecting with backoff.
    public func run() async throws {
        let origin = context.mesh.origin(named: context.pluginID)
        await cancelWhenGracefulShutdown { [self] in
            var backoff = Self.initialBackoff
            while !Task.isCancelled {
                let ending = await stream(origin: origin)
                if Task.isCancelled { break }
                record(ending.reason)
                let wait: Duration
                switch ending.reason {
                case .complete where ending.answered, .reconnect:
                    // The ordinary end of a stream (istiod restarting, rebalancing): again
                    // at once, after the 10 ms ztunnel waits too, so a server that keeps
                    // closing cannot make this a busy loop.
                    backoff = Self.initialBackoff
                    wait = Self.initialBackoff
                case .complete, .connectionError, .error:
                    // A stream that ended without an answer backs off like a failure.
                    if ending.answered { backoff = Self.initialBackoff }
                    wait = backoff
                    backoff = min(Self.maxBackoff, backoff * 2)
                }
                transition(to: ending.reason == .complete ? .connecting : .retrying, error: ending.error, retryIn: wait)
                do { try await Task.sleep(for: wait) } catch { break }
            }
        }
        state.withLockedValue { $0.connection = .stopped }
    }

    // MARK: One stream

    private struct Ending {
        var reason: TerminationReason
        var error: String?
        /// Whether istiod answered on the stream (then the next failure starts the
        /// backoff from the beginning).
        var answered: Bool
    }

    /// A request to write, and what to do once it is written.
    private struct Outgoing: Sendable {
        var request: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest
        var written: (@Sendable () -> Void)?
    }

    /// Opens one stream, runs it until it ends, and says how it ended.
    private func stream(origin: MeshOrigin) async -> Ending {
        let initial = state.withLockedValue { state in
            state.attempts += 1
            return state.subscriptions.initialRequests(node: identity.node)
        }
        let token: String
        let transport: HTTP2ClientTransport.Posix
        do {
            token = try readToken()
            transport = try HTTP2ClientTransport.Posix(
                target: endpoint.target, transportSecurity: transportSecurity(roots: try loadRoots()),
                config: .defaults { [verifiedName] config in
                    config.http2.authority = verifiedName
                    config.connection.keepalive = .init(
                        time: .seconds(30), timeout: .seconds(10), allowWithoutCalls: true)
                },
                eventLoopGroup: context.eventLoopGroup as? MultiThreadedEventLoopGroup ?? .singleton)
        } catch let error as XDSClientError {
            return Ending(reason: .connectionError, error: error.message, answered: false)
        } catch {
            return Ending(
                reason: .connectionError, error: "cannot set up the gRPC transport: \(error)", answered: false)
        }
        var metadata = Metadata()
        metadata.addString("Bearer \(token)", forKey: "authorization")
        metadata.addString(config.clusterId, forKey: "clusterid")
        var options = CallOptions.defaults
        options.waitForReady = false
        options.maxRequestMessageBytes = Self.maxMessageBytes
        options.maxResponseMessageBytes = Self.maxMessageBytes

        let answered = NIOLockedValueBox(false)
        let (outgoing, queue) = AsyncStream.makeStream(of: Outgoing.self)
        for request in initial { queue.yield(Outgoing(request: request)) }
        do {
            try await withGRPCClient(transport: transport) { client in
                let ads = Envoy_Service_Discovery_V3_AggregatedDiscoveryService.Client(wrapping: client)
                try await ads.deltaAggregatedResources(
                    metadata: metadata, options: options,
                    requestProducer: { writer in
                        for await item in outgoing {
                            // A failed write means the stream is gone; its response side says why.
                            do { try await writer.write(item.request) } catch { return }
                            item.written?()
                        }
                    },
                    onResponse: { [self] response in
                        defer { queue.finish() }
                        for try await message in response.messages {
                            if !answered.withLockedValue({ $0 }) {
                                answered.withLockedValue { $0 = true }
                                connected()
                            }
                            queue.yield(handle(message, origin: origin))
                        }
                    })
            }
            return Ending(reason: .complete, error: nil, answered: answered.withLockedValue { $0 })
        } catch let error as RPCError {
            let wasAnswered = answered.withLockedValue { $0 }
            return Ending(
                reason: Self.classify(error, answered: wasAnswered), error: describe(error), answered: wasAnswered)
        } catch {
            return Ending(reason: .error, error: "\(error)", answered: answered.withLockedValue { $0 })
        }
    }

    /// Applies one response and returns its reply, which marks the type ready once sent.
    private func handle(_ response: Envoy_Service_Discovery_V3_DeltaDiscoveryResponse, origin: MeshOrigin) -> Outgoing {
        let typeURL = response.typeURL
        metrics.withLockedValue { metrics in
            metrics?.messages[typeURL]?.increment()
            if let bytes: [UInt8] = try? response.serializedBytes() {
                metrics?.bytes[typeURL]?.increment(by: bytes.count)
            }
        }
        let outcome = state.withLockedValue { $0.subscriptions.handle(response) }
        let snapshot = context.mesh.apply(outcome.delta, from: origin)
        if !outcome.rejected.isEmpty {
            let note = "the other resources are applied, the rejected ones keep their last good version"
            context.logger.warning(
                "xDS push partly rejected (NACK); \(note)",
                metadata: [
                    "type": "\(typeURL)", "nonce": "\(response.nonce)", "rejected": "\(outcome.rejected.count)",
                    "errors": "\(outcome.reply.errorDetail.message)",
                ])
        } else if outcome.reply.hasErrorDetail {
            context.logger.warning("xDS response rejected (NACK): \(outcome.reply.errorDetail.message)")
        }
        context.logger.debug(
            "xDS push applied",
            metadata: [
                "type": "\(typeURL)", "nonce": "\(response.nonce)", "upserted": "\(outcome.upserted)",
                "removed": "\(outcome.removed)", "mesh_version": "\(snapshot.version)",
            ])
        guard XDSSubscriptions.typeURLs.contains(typeURL) else { return Outgoing(request: outcome.reply) }
        return Outgoing(request: outcome.reply, written: { [self] in markReady(typeURL) })
    }

    private func markReady(_ typeURL: String) {
        let (first, allReady) = state.withLockedValue { state -> (Bool, Bool) in
            let first = state.ready.insert(typeURL).inserted
            return (first, state.ready.count == XDSSubscriptions.typeURLs.count)
        }
        guard first else { return }
        context.readiness.markReady(Self.readinessComponent(typeURL))
        if allReady {
            let mesh = context.mesh.snapshot
            context.logger.info(
                "xDS synced: first response of every type applied and acknowledged",
                metadata: [
                    "workloads": "\(mesh.workloads.count)", "services": "\(mesh.services.count)",
                    "policies": "\(mesh.policies.count)",
                ])
        }
    }

    // MARK: State changes and logging

    /// The stream got its first response.
    private func connected() {
        let (previous, error) = state.withLockedValue { state -> (ConnectionState, String?) in
            defer {
                state.connection = .connected
                state.lastError = nil
                state.connections += 1
            }
            return (state.connection, state.lastError)
        }
        guard previous != .connected else { return }
        var metadata: Logger.Metadata = ["address": "\(endpoint)"]
        if let error { metadata["after"] = "\(error)" }
        context.logger.info("xDS connected", metadata: metadata)
    }

    /// The stream ended: logs only when the state or the error changes, so a long outage
    /// is one line, not one per retry.
    private func transition(to next: ConnectionState, error: String?, retryIn wait: Duration) {
        let (previous, previousError) = state.withLockedValue { state -> (ConnectionState, String?) in
            defer {
                state.connection = next
                state.lastError = error
            }
            return (state.connection, state.lastError)
        }
        let metadata: Logger.Metadata = ["address": "\(endpoint)", "retry_in": "\(wait)"]
        if next == .connecting {
            context.logger.info("xDS stream closed by istiod; reconnecting", metadata: metadata)
        } else if previous != next || previousError != error {
            let reason = error ?? "unknown error"
            let retry = "with backoff up to \(Self.maxBackoff)"
            switch previous {
            case .retrying:
                context.logger.warning("xDS still failing, now: \(reason); retrying \(retry)", metadata: metadata)
            case .connected:
                context.logger.warning(
                    "xDS stream to istiod lost: \(reason); reconnecting \(retry), keeping the last good mesh",
                    metadata: metadata)
            case .connecting, .stopped:
                context.logger.warning("xDS connection failed: \(reason); retrying \(retry)", metadata: metadata)
            }
        } else {
            context.logger.debug("xDS retry failed again", metadata: metadata)
        }
    }

    private func record(_ reason: TerminationReason) {
        metrics.withLockedValue { $0?.terminations[reason]?.increment() }
    }

    /// ztunnel's rule: a stream that never got going is a connection error; cancelled,
    /// unknown and deadline-exceeded streams, and a transport closing under a stream
    /// that worked, are the ordinary end of a stream (reconnect at once); any other
    /// status is an error (backoff).
    static func classify(_ error: RPCError, answered: Bool) -> TerminationReason {
        switch error.code {
        case .unavailable:
            if !answered { return .connectionError }
            let message = error.message.lowercased()
            return message.contains("closing") || message.contains("goaway") || message.contains("closed")
                ? .reconnect : .error
        case .unknown, .cancelled, .deadlineExceeded:
            return answered ? .reconnect : .connectionError
        default:
            return .error
        }
    }

    /// The error for logs and `/config_dump`, with what to check for the usual causes.
    private func describe(_ error: RPCError) -> String {
        var text = "\(error.code): \(error.message)"
        var cause: (any Error)? = error.cause
        var seen = 0
        while let next = cause, seen < 4 {
            text += " (\(next))"
            cause = (next as? RPCError)?.cause ?? (next as? RuntimeError)?.cause
            seen += 1
        }
        let lowered = text.lowercased()
        if lowered.contains("certificate") || lowered.contains("handshake") || lowered.contains("ssl") {
            text += "; istiod's certificate must chain to \(rootPath) and name \(verifiedName ?? "its address")"
        } else if error.code == .unauthenticated || error.code == .permissionDenied {
            text += "; check the token in \(tokenPath) and clusterId \(config.clusterId)"
        }
        return text
    }

    // MARK: Files and TLS

    private func readToken() throws(XDSClientError) -> String {
        let text: String
        do {
            text = try String(contentsOfFile: tokenPath, encoding: .utf8)
        } catch {
            throw XDSClientError("cannot read the token file \(tokenPath): \(error.localizedDescription)")
        }
        let token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !token.isEmpty else {
            throw XDSClientError("the token file \(tokenPath) is empty; write the node's token into it")
        }
        return token
    }

    /// Reads and checks the root certificate file (every connect, so a rotated root is
    /// taken).
    private func loadRoots() throws(XDSClientError) -> [UInt8] {
        let bytes: [UInt8]
        do {
            bytes = Array(try Data(contentsOf: URL(fileURLWithPath: rootPath)))
        } catch {
            throw XDSClientError("cannot read the root certificate \(rootPath): \(error.localizedDescription)")
        }
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMBytes(bytes)
        } catch {
            throw XDSClientError("the root certificate \(rootPath) is not PEM certificates: \(error)")
        }
        guard !certificates.isEmpty else {
            throw XDSClientError("the root certificate \(rootPath) holds no certificate")
        }
        return bytes
    }

    private func transportSecurity(roots: [UInt8]) -> HTTP2ClientTransport.Posix.TransportSecurity {
        .tls { tls in
            tls.trustRoots = .certificates([.bytes(roots, format: .pem)])
            tls.serverCertificateVerification = .fullVerification
        }
    }
}

/// A local reason a stream could not be opened (a file), or a provisioning error.
struct XDSClientError: Error, CustomStringConvertible {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}

extension XDSClientError {
    /// As the plugin error provisioning throws.
    var pluginError: PluginError { PluginError(.unavailable, plugin: XDSPlugin.id, message) }
}
