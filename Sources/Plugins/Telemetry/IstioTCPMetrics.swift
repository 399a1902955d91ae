public import Kernel
import NIOConcurrencyHelpers
public import Prometheus

/// Istio's standard TCP counters (ztunnel's four plus `istio_tcp_connections_failed_total`),
/// one series per ``IstioLabels`` set, kept in a Prometheus registry and fed by connection
/// events.
///
/// How bytes are counted: the relay already adds every chunk to the connection's own
/// ``ByteCounters`` (relaxed atomics owned by that connection, so no two event loops
/// share a cache line or a lock per chunk). This type never touches the relay: it reads
/// those counters in ``flush()`` (periodically, and before every scrape) and once more
/// when the connection closes, and adds the difference to the shared Prometheus
/// counters. So totals are exact to the byte at close, a long-lived connection's
/// counters move while it is open, and the hot path pays nothing for telemetry.
///
/// What the counters mean (Istio's, from the point of view of the connection's client,
/// whichever reporter): `istio_tcp_received_bytes_total` counts bytes from the client
/// towards the destination (the request), `istio_tcp_sent_bytes_total` the bytes back.
/// A connection is counted as opened with `response_flags="-"` and closed with its
/// outcome's flag (as ztunnel does), so a denied connection adds one to
/// `opened{…,response_flags="-"}` and one to `closed{…,response_flags="DENY"}`. A close
/// whose flag is not `-` (denied, or failed to connect: `CONNECT`, `IDENTITY_ERROR`,
/// `NETWORK_POLICY`, …) also adds one to `istio_tcp_connections_failed_total` under the
/// same labels, as ztunnel counts every flagged outcome there.
///
/// Cardinality: a series remembers the workloads and service its labels came from. Once
/// one of them has left the mesh (or changed a label the series carries) and no open
/// connection uses the series, ``sweep(mesh:now:)`` removes it from the registry after
/// the grace period, so departed workloads stop being scraped.
///
/// Thread-safe. The event methods take one short lock per connection event (never per
/// chunk) and are safe to call on event loops.
public final class IstioTCPMetrics: Sendable {
    /// The metric names, as Istio spells them.
    public enum Name {
        /// Connections opened.
        public static let opened = "istio_tcp_connections_opened_total"
        /// Connections closed.
        public static let closed = "istio_tcp_connections_closed_total"
        /// Bytes from the client towards the destination.
        public static let received = "istio_tcp_received_bytes_total"
        /// Bytes from the destination back to the client.
        public static let sent = "istio_tcp_sent_bytes_total"
        /// Connections closed with a response flag other than `-` (denied or failed).
        public static let failed = "istio_tcp_connections_failed_total"
    }

    private enum Kind: CaseIterable {
        case opened, closed, received, sent, failed

        var name: String {
            switch self {
            case .opened: Name.opened
            case .closed: Name.closed
            case .received: Name.received
            case .sent: Name.sent
            case .failed: Name.failed
            }
        }

        // Istio's own help texts, so HELP lines match what operators know.
        var help: String {
            switch self {
            case .opened: "The total number of TCP connections opened"
            case .closed: "The total number of TCP connections closed"
            case .received: "The size of total bytes received during request in case of a TCP connection"
            case .sent: "The size of total bytes sent during response in case of a TCP connection"
            case .failed: "The total number of TCP connections that were denied or failed to establish"
            }
        }
    }

    /// Something a series' labels were derived from: a workload (by uid) or a service
    /// (by `namespace/hostname`), with the fingerprint of what it contributed.
    private struct Origin: Sendable, Hashable {
        enum Kind: Sendable, Hashable { case workload, service }
        var kind: Kind
        var key: String
        var fingerprint: String
    }

    /// One label set's counters. A class so an open connection holds its series directly
    /// and its close and byte flushes need no lookup by label set (hashing 23 strings).
    /// Only touched under ``state``'s lock.
    private final class Series: @unchecked Sendable {
        let labels: IstioLabels
        var opened: Counter?
        var closed: Counter?
        var received: Counter?
        var sent: Counter?
        var failed: Counter?
        var origins: Set<Origin> = []
        /// Open connections counting on this series (their bytes still flow into it).
        var open = 0
        /// When an origin was first seen gone; nil while all are present.
        var departedSince: ContinuousClock.Instant?

        init(labels: IstioLabels) {
            self.labels = labels
        }

        var counters: [Counter] { [opened, closed, received, sent, failed].compactMap { $0 } }

        func counter(_ kind: Kind, in registry: PrometheusCollectorRegistry) -> Counter {
            let path: ReferenceWritableKeyPath<Series, Counter?> =
                switch kind {
                case .opened: \.opened
                case .closed: \.closed
                case .received: \.received
                case .sent: \.sent
                case .failed: \.failed
                }
            if let existing = self[keyPath: path] { return existing }
            let made = registry.makeCounter(descriptor: .named(kind.name, help: kind.help), labels: labels.pairs)
            self[keyPath: path] = made
            return made
        }
    }

    private struct Tracked: Sendable {
        var record: ConnectionRecord
        var series: Series
        var flushedSent: UInt64 = 0
        var flushedReceived: UInt64 = 0
    }

    private struct State: Sendable {
        var series: [IstioLabels: Series] = [:]
        var open: [UInt64: Tracked] = [:]
    }

    private let registry: PrometheusCollectorRegistry
    private let gracePeriod: Duration
    private let state = NIOLockedValueBox(State())

    /// Creates the counters in `registry`; series of departed workloads are removed
    /// `gracePeriod` after they left (see ``sweep(mesh:now:)``).
    public init(registry: PrometheusCollectorRegistry, gracePeriod: Duration) {
        self.registry = registry
        self.gracePeriod = gracePeriod
    }

    /// A connection started relaying: counts it opened and starts following its bytes.
    ///
    /// The label set is computed once here; the close reuses it (with the outcome's
    /// flag), and the series' origins are only worked out when the series is new.
    public func opened(_ record: ConnectionRecord) {
        let labels = IstioLabels(record, flag: .noFlag)
        state.withLockedValue { state in
            guard state.open[record.id] == nil else { return }
            let series = self.series(labels, origins: Self.origins(of: record), in: &state)
            series.counter(.opened, in: registry).increment()
            _ = series.counter(.received, in: registry)
            _ = series.counter(.sent, in: registry)
            series.open += 1
            state.open[record.id] = Tracked(record: record, series: series)
        }
    }

    /// A connection ended: adds its last bytes and counts it closed under its outcome's
    /// response flag.
    public func closed(_ record: ConnectionRecord) {
        let flag = record.responseFlag ?? .noFlag
        state.withLockedValue { state in
            guard let tracked = state.open.removeValue(forKey: record.id) else {
                // Never seen opened (e.g. the sink was added late): still count the close.
                countClosed(series(IstioLabels(record), origins: Self.origins(of: record), in: &state), flag: flag)
                return
            }
            flush(tracked, in: &state)
            tracked.series.open -= 1
            let closing =
                flag == .noFlag
                ? tracked.series
                : series(tracked.series.labels.with(flag: flag), origins: Self.origins(of: record), in: &state)
            countClosed(closing, flag: flag)
        }
    }

    /// A connection was denied or failed before relaying: counted opened (`-`), and closed
    /// and failed under its flag (the record's, else `fallback`).
    public func refused(_ record: ConnectionRecord, fallback: ResponseFlag) {
        let flag = record.responseFlag ?? fallback
        let openedLabels = IstioLabels(record, flag: .noFlag)
        let closedLabels = openedLabels.with(flag: flag)
        state.withLockedValue { state in
            let opened = series(openedLabels, origins: Self.origins(of: record), in: &state)
            opened.counter(.opened, in: registry).increment()
            _ = opened.counter(.received, in: registry)
            _ = opened.counter(.sent, in: registry)
            countClosed(series(closedLabels, origins: Self.origins(of: record), in: &state), flag: flag)
        }
    }

    /// Adds the bytes every open connection moved since the last flush.
    public func flush() {
        state.withLockedValue { state in
            for tracked in state.open.values { flush(tracked, in: &state) }
        }
    }

    /// Removes the series whose workloads or service left `mesh` (or changed the labels
    /// they contribute) at least the grace period ago and that no open connection uses.
    /// Returns how many series were removed.
    @discardableResult
    public func sweep(mesh: MeshSnapshot, now: ContinuousClock.Instant = .now) -> Int {
        var present: [Origin: Bool] = [:]
        func isPresent(_ origin: Origin) -> Bool {
            if let known = present[origin] { return known }
            let found: Bool
            switch origin.kind {
            case .workload:
                found = mesh.workloads[origin.key].map { WorkloadLabels($0).fingerprint == origin.fingerprint } ?? false
            case .service:
                found = NamespacedHostname(origin.key).flatMap { mesh.services[$0] }.map {
                    Self.fingerprint($0.name, $0.hostname) == origin.fingerprint
                } ?? false
            }
            present[origin] = found
            return found
        }
        // Unregistered under our lock: otherwise a connection opening meanwhile could get
        // the old counter back from the registry just before it is unregistered.
        return state.withLockedValue { state in
            var removedSeries = 0
            for (labels, series) in state.series {
                guard series.open == 0, !series.origins.allSatisfy(isPresent) else {
                    series.departedSince = nil
                    continue
                }
                let since = series.departedSince ?? now
                if since.duration(to: now) >= gracePeriod {
                    for counter in series.counters { registry.unregisterCounter(counter) }
                    removedSeries += 1
                    state.series[labels] = nil
                } else {
                    series.departedSince = since
                }
            }
            return removedSeries
        }
    }

    /// How many label sets currently have series.
    public var seriesCount: Int { state.withLockedValue { $0.series.count } }

    /// How many connections are being followed (opened, not yet closed).
    public var openConnections: Int { state.withLockedValue { $0.open.count } }

    // MARK: Internals

    /// One close in `series` (whose labels carry `flag`); a flagged one is a failure too.
    private func countClosed(_ series: Series, flag: ResponseFlag) {
        series.counter(.closed, in: registry).increment()
        if flag != .noFlag { series.counter(.failed, in: registry).increment() }
    }

    private func flush(_ tracked: Tracked, in state: inout State) {
        let sent = tracked.record.bytes.sent
        let received = tracked.record.bytes.received
        guard sent != tracked.flushedSent || received != tracked.flushedReceived else { return }
        // Client → destination is Istio's "received", destination → client its "sent".
        if sent > tracked.flushedSent {
            tracked.series.counter(.received, in: registry).increment(by: Int64(sent - tracked.flushedSent))
        }
        if received > tracked.flushedReceived {
            tracked.series.counter(.sent, in: registry).increment(by: Int64(received - tracked.flushedReceived))
        }
        state.open[tracked.record.id]?.flushedSent = sent
        state.open[tracked.record.id]?.flushedReceived = received
    }

    /// The series of `labels`, made (with `origins`) when there is none yet.
    private func series(
        _ labels: IstioLabels, origins: @autoclosure () -> Set<Origin>, in state: inout State
    ) -> Series {
        if let existing = state.series[labels] { return existing }
        let made = Series(labels: labels)
        made.origins = origins()
        state.series[labels] = made
        return made
    }

    private static func origins(of record: ConnectionRecord) -> Set<Origin> {
        var origins: Set<Origin> = []
        for workload in [record.sourceWorkload, record.destinationWorkload].compactMap({ $0 }) {
            origins.insert(Origin(kind: .workload, key: workload.uid, fingerprint: WorkloadLabels(workload).fingerprint))
        }
        if let service = record.destinationService {
            origins.insert(
                Origin(
                    kind: .service, key: "\(service.namespace)/\(service.hostname)",
                    fingerprint: fingerprint(service.name, service.hostname)))
        }
        return origins
    }

    private static func fingerprint(_ name: String, _ hostname: String) -> String { name + "\u{0}" + hostname }
}

extension MetricNameDescriptor {
    /// A descriptor for a metric whose full name is already known (Istio's and the
    /// standard process metrics' names are fixed, so nothing is composed).
    static func named(_ name: String, help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }
}
