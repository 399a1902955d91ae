public import CoreMetrics
import NIOConcurrencyHelpers

/// The DNS proxy's metrics, ztunnel's names and labels: `istio_dns_requests_total`,
/// `istio_dns_upstream_requests_total`, `istio_dns_upstream_failures_total` and the
/// histogram `istio_dns_upstream_request_duration_seconds`, each labelled
/// `request_query_type` (lowercase, e.g. `a`), `request_protocol` (`udp`, `tcp`),
/// `source_canonical_service` and `source_canonical_revision` (`unknown` when unknown).
///
/// The histogram's buckets (0.0005, 0.001, 0.01, 0.1, 1, 5 s) are the exporter's to set
/// (``upstreamDurationBuckets``); the telemetry plugin does. Metric handles are made once
/// per label set and kept. Thread-safe.
public final class DNSMetrics: Sendable {
    /// Counts every query the proxy handled (answered, refused or forwarded).
    public static let requestsName = "istio_dns_requests_total"
    /// Counts queries forwarded upstream.
    public static let upstreamRequestsName = "istio_dns_upstream_requests_total"
    /// Counts forwarded queries that got no answer.
    public static let upstreamFailuresName = "istio_dns_upstream_failures_total"
    /// How long forwarded queries took.
    public static let upstreamDurationName = "istio_dns_upstream_request_duration_seconds"
    /// ztunnel's buckets for ``upstreamDurationName``, in seconds.
    public static let upstreamDurationBuckets: [Double] = [0.0005, 0.001, 0.01, 0.1, 1, 5]

    /// Which series a query counts in.
    public struct Labels: Sendable, Hashable {
        /// `request_query_type`.
        public var queryType: String
        /// `request_protocol`.
        public var transport: String
        /// `source_canonical_service`.
        public var canonicalService: String
        /// `source_canonical_revision`.
        public var canonicalRevision: String

        /// Labels for a query of `type` over `transport` from `client`.
        public init(type: DNSRecordType?, transport: DNSTransport, client: DNSClientInfo?) {
            queryType = type.map { "\($0)".lowercased() } ?? "unknown"
            self.transport = transport.rawValue
            canonicalService = client.map(\.canonicalService).flatMap { $0.isEmpty ? nil : $0 } ?? "unknown"
            canonicalRevision = client.map(\.canonicalRevision).flatMap { $0.isEmpty ? nil : $0 } ?? "unknown"
        }

        var dimensions: [(String, String)] {
            [
                ("request_query_type", queryType), ("request_protocol", transport),
                ("source_canonical_service", canonicalService), ("source_canonical_revision", canonicalRevision),
            ]
        }
    }

    private struct Series {
        var requests: Counter
        var upstreamRequests: Counter
        var upstreamFailures: Counter
        var upstreamDuration: Timer
    }

    private let factory: any MetricsFactory
    private let series = NIOLockedValueBox<[Labels: Series]>([:])

    /// Metrics recorded through `factory` (a plugin's ``PluginContext/metrics``).
    public init(factory: any MetricsFactory) {
        self.factory = factory
    }

    private func series(_ labels: Labels) -> Series {
        series.withLockedValue { table in
            if let existing = table[labels] { return existing }
            let dimensions = labels.dimensions
            let made = Series(
                requests: Counter(label: Self.requestsName, dimensions: dimensions, factory: factory),
                upstreamRequests: Counter(label: Self.upstreamRequestsName, dimensions: dimensions, factory: factory),
                upstreamFailures: Counter(label: Self.upstreamFailuresName, dimensions: dimensions, factory: factory),
                upstreamDuration: Timer(label: Self.upstreamDurationName, dimensions: dimensions, factory: factory))
            table[labels] = made
            return made
        }
    }

    /// One query handled.
    public func request(_ labels: Labels) { series(labels).requests.increment() }

    /// One query forwarded, which took `duration` and `succeeded` or not.
    public func upstream(_ labels: Labels, duration: Duration, succeeded: Bool) {
        let series = series(labels)
        series.upstreamRequests.increment()
        series.upstreamDuration.recordNanoseconds(
            Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
        if !succeeded { series.upstreamFailures.increment() }
    }
}

/// How a query reached the proxy.
public enum DNSTransport: String, Sendable, Hashable {
    /// A UDP datagram.
    case udp
    /// A TCP connection, length-prefixed.
    case tcp
}
