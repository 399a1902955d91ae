public import CoreMetrics
public import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
public import Prometheus
import ServiceLifecycle
public import AmbitRuntime

/// Istio's standard TCP metrics in Prometheus format and a per-connection access log.
///
/// A ``TelemetrySink``: the capture and tunnel paths report each connection's opening,
/// closing, denial or failure; the plugin keeps ``IstioTCPMetrics`` and serves them with
/// the process metrics on `address` (default `0.0.0.0:15020`) at `/metrics` and
/// `/stats/prometheus`, like ztunnel.
///
/// The scrape also carries `ambit_policy_failures_total{plugin, reason}` (policy plugin
/// decisions that threw or missed the deadline; see ``PolicyGuard``) and the metrics
/// other plugins record through ``PluginContext/metrics``: the plugin is the node's
/// ``MetricsBackend``.
///
/// Each plugin instance has its own `PrometheusCollectorRegistry` rather than
/// bootstrapping swift-metrics' global `MetricsSystem`: several nodes in one process
/// (the in-process tests, the demo) each scrape only their own connections, and series
/// can be removed (the global factory API cannot unregister). Code that wants to record
/// its own metrics into the same scrape through the swift-metrics API can use
/// ``metricsFactory`` (and a composed binary may bootstrap `MetricsSystem` with it).
public final class TelemetryPlugin: Plugin, TelemetrySink, MetricsBackend {
    /// `telemetry` plugin configuration.
    public struct Config: DefaultedConfig, Sendable {
        /// Where `/metrics` and `/stats/prometheus` are served; port 0 picks a free port
        /// (see ``TelemetryPlugin/metricsAddress``).
        public var address: SocketAddr = SocketAddr(ip: .v4(0), port: 15020)
        /// How often the byte counters of open connections are added to the metrics.
        /// Scrapes flush too, so this bounds staleness only between scrapes.
        public var flushInterval: ConfigDuration = ConfigDuration(.seconds(2))
        /// How long the series of a workload (or service) that left the mesh stay in the
        /// scrape, so Prometheus sees their last values before they disappear.
        public var seriesGracePeriod: ConfigDuration = ConfigDuration(.seconds(300))
        /// The access log.
        public var accessLog: AccessLogConfig = AccessLogConfig()

        /// `accessLog:` settings.
        public struct AccessLogConfig: DefaultedConfig, Sendable {
            /// Off by default: one line per connection is a lot on a busy node.
            public var enabled: Bool = false
            /// `text` or `json`, like the node's logs.
            public var format: LogFormat = .text
            /// A file to append to (relative to the manifest); stderr when absent.
            public var path: String?

            public init() {}
        }

        public init() {}

        /// `flushInterval` 0 would flush in a busy loop.
        public func validate() -> [ConfigProblem] {
            flushInterval.duration > .zero ? [] : [ConfigProblem(at: "flushInterval", "must be positive")]
        }
    }

    public static let id = "telemetry"
    public static let summary = "Istio standard TCP metrics (Prometheus on :15020) and access logs"
    public static let provides: Set<PluginRole> = [.telemetry]

    /// The registry the scrape renders: Istio's TCP metrics, process and build metrics,
    /// and whatever is recorded through ``metricsFactory``.
    public let registry = PrometheusCollectorRegistry()
    /// The TCP metrics this plugin keeps.
    public let tcpMetrics: IstioTCPMetrics

    private let config: Config
    private let context: PluginContext
    private let process: ProcessMetrics
    private let policyFailures: PolicyFailureMetrics
    private let pluginMetricNames = PluginMetricNames()
    private let accessLog: NIOLockedValueBox<AccessLogWriter?> = NIOLockedValueBox(nil)
    private let server: NIOLockedValueBox<HTTPEndpointServer?> = NIOLockedValueBox(nil)

    public init(config: Config, context: PluginContext) throws {
        self.config = config
        self.context = context
        self.tcpMetrics = IstioTCPMetrics(registry: registry, gracePeriod: config.seriesGracePeriod.duration)
        self.process = ProcessMetrics(registry: registry)
        self.policyFailures = PolicyFailureMetrics(registry: registry)
    }

    /// A swift-metrics factory recording into this plugin's registry, so the values show
    /// up in this node's scrape.
    public var metricsFactory: PrometheusMetricsFactory {
        var factory = PrometheusMetricsFactory(registry: registry)
        // ztunnel's buckets for the DNS proxy's upstream latency (zt:src/dns/metrics.rs).
        factory.durationHistogramBuckets["istio_dns_upstream_request_duration_seconds"] = [
            .microseconds(500), .milliseconds(1), .milliseconds(10), .milliseconds(100), .seconds(1), .seconds(5),
        ]
        return factory
    }

    /// The factory behind another plugin's ``PluginContext/metrics``: its metrics land in
    /// this node's scrape, and a name that clashes with this plugin's own series
    /// (`istio_`, `ambit_`, `process_`) or is reused with another type or label set
    /// records nothing (logged once) instead of stopping the process.
    public func metricsFactory(for plugin: String) -> any MetricsFactory {
        PluginMetricsFactory(plugin: plugin, names: pluginMetricNames, prometheus: metricsFactory, logger: context.logger)
    }

    /// The bound metrics address once ``run()`` has started serving.
    public var metricsAddress: SocketAddr? { server.withLockedValue { $0?.localAddress } }

    private var listenerComponent: String { "telemetry metrics listener \(config.address)" }

    // MARK: Lifecycle

    public func provision() async throws {
        // A decoded config was validated with file and line; this catches one built in code.
        if let problem = config.validate().first {
            throw PluginError(.invalidConfiguration, plugin: Self.id, problem.description)
        }
        if config.accessLog.enabled {
            let path = config.accessLog.path.map(context.resolvePath)
            let writer = try AccessLogWriter(path: path)
            accessLog.withLockedValue { $0 = writer }
        }
        context.readiness.expect(listenerComponent)
    }

    public func run() async throws {
        let started: HTTPEndpointServer
        do {
            started = try await HTTPEndpointServer.start(
                address: config.address, group: context.eventLoopGroup, logger: context.logger
            ) { [self] request, eventLoop in
                respond(to: request, on: eventLoop)
            }
        } catch {
            throw PluginError(
                .unavailable, plugin: Self.id, "cannot serve metrics on \(config.address): \(error)")
        }
        server.withLockedValue { $0 = started }
        context.readiness.markReady(listenerComponent)
        context.logger.info("metrics listening", metadata: ["address": "\(started.localAddress)"])

        // Flush and sweep until shutdown. The metrics server stays up until cleanup, so
        // scrapes during the drain still see connections finishing.
        let interval = config.flushInterval.duration
        try? await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try await Task.sleep(for: interval)
                self.tick()
            }
        }
    }

    public func cleanup() async {
        tcpMetrics.flush()
        let running = server.withLockedValue { server in
            defer { server = nil }
            return server
        }
        await running?.close()
        let writer = accessLog.withLockedValue { writer in
            defer { writer = nil }
            return writer
        }
        writer?.close()
    }

    /// One periodic step: fold open connections' bytes in, drop departed series.
    public func tick(now: ContinuousClock.Instant = .now) {
        tcpMetrics.flush()
        tcpMetrics.sweep(mesh: context.mesh.snapshot, now: now)
    }

    // MARK: TelemetrySink

    public func connectionOpened(_ connection: ConnectionRecord) {
        tcpMetrics.opened(connection)
    }

    public func connectionClosed(_ connection: ConnectionRecord) {
        tcpMetrics.closed(connection)
        log(connection, "connection complete")
    }

    public func connectionDenied(_ connection: ConnectionRecord) {
        tcpMetrics.refused(connection, fallback: .denied)
        log(connection, "connection denied")
    }

    public func connectionFailed(_ connection: ConnectionRecord) {
        tcpMetrics.refused(connection, fallback: .connectFailure)
        log(connection, "connection failed")
    }

    private func log(_ connection: ConnectionRecord, _ outcome: String) {
        guard let writer = accessLog.withLockedValue({ $0 }) else { return }
        writer.write(AccessLog.line(for: connection, outcome: outcome, format: config.accessLog.format))
    }

    // MARK: Scrape

    /// The scrape body: flushes open connections' bytes, refreshes process metrics, and
    /// renders the registry in the Prometheus text format (0.0.4). Reads `/proc`; call
    /// it off the event loops.
    public func renderMetrics() -> String {
        tcpMetrics.flush()
        process.update()
        policyFailures.update(from: context.policyGuard, plugins: context.policyChain.links.map(\.id))
        return registry.emitToString()
    }

    /// The sample lines of `metric` (e.g. `istio_tcp_sent_bytes_total`) in the current
    /// scrape, sorted, for the demo and for tests.
    public func sampleLines(of metric: String) -> [String] {
        renderMetrics().split(separator: "\n")
            .filter { $0.hasPrefix(metric + "{") || $0.hasPrefix(metric + " ") }
            .map(String.init)
            .sorted()
    }

    private func respond(to request: HTTPEndpointRequest, on eventLoop: any EventLoop) -> EventLoopFuture<HTTPEndpointResponse> {
        guard request.path == "/metrics" || request.path == "/stats/prometheus" else {
            return eventLoop.makeSucceededFuture(.notFound(request))
        }
        guard request.method == .GET || request.method == .HEAD else {
            return eventLoop.makeSucceededFuture(.methodNotAllowed(request, allowed: [.GET, .HEAD]))
        }
        return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) { [self] in
            HTTPEndpointResponse(.ok, renderMetrics(), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
    }
}
