import CoreMetrics
import Logging
import NIOConcurrencyHelpers
import Prometheus

/// The metric names plugins registered through the telemetry plugin
/// (``TelemetryPlugin/metricsFactory(for:)``), each with the shape it was first
/// registered with, so that one plugin's mistake cannot reach the Prometheus registry.
///
/// The registry stops the process (`fatalError`) when a name is reused with another
/// metric type, with and without labels, or with other help text; and a name of the
/// plugin's own choosing could clash with Istio's or Ambit's series. This ledger
/// refuses such registrations before they get there. Thread-safe.
final class PluginMetricNames: Sendable {
    /// The Prometheus family a swift-metrics type becomes (see `PrometheusMetricsFactory`).
    enum Kind: String, Sendable {
        case counter
        case gauge
        case valueHistogram = "histogram (recorder)"
        case durationHistogram = "histogram (timer)"
    }

    /// Prefixes of the telemetry plugin's own series (Istio's, the process's, Ambit's).
    static let reservedPrefixes = ["istio_", "ambit_", "process_"]

    /// Istio's series that a first-party plugin records itself, by prefix: the plugin id
    /// that may register names under it (the `xds` plugin records ztunnel's
    /// `istio_xds_*` metrics, the `capture` plugin's in-pod DNS proxy ztunnel's
    /// `istio_dns_*`). Any other plugin is refused them like the rest of `istio_`.
    static let delegatedPrefixes: [String: String] = ["istio_xds_": "xds", "istio_dns_": "capture"]

    private struct Shape: Equatable {
        var kind: Kind
        var labelNames: [String]
    }

    private struct State {
        var shapes: [String: (shape: Shape, plugin: String)] = [:]
        var refused: Set<String> = []
    }

    private let state = NIOLockedValueBox(State())

    /// Nil when `plugin` may register `name` with these labels as `kind`; otherwise why
    /// not. A refusal is returned once per plugin, name and shape (so it is logged once);
    /// repeats return an empty string.
    func refusal(name: String, labels: [(String, String)], kind: Kind, plugin: String) -> String? {
        let labelNames = labels.map(\.0).sorted()
        let problem: String? = {
            if !Self.isValidName(name) {
                return "\"\(name)\" is not a Prometheus metric name (letters, digits and _, not starting with a digit)"
            }
            let delegated = Self.delegatedPrefixes.contains { name.hasPrefix($0.key) && $0.value == plugin }
            if !delegated, let prefix = Self.reservedPrefixes.first(where: { name.hasPrefix($0) }) {
                return "names starting with \(prefix) are the telemetry plugin's own"
            }
            if let bad = labelNames.first(where: { !Self.isValidName($0) || $0.hasPrefix("__") || $0 == "le" }) {
                return "label \"\(bad)\" is not a usable Prometheus label name"
            }
            if Set(labelNames).count != labelNames.count {
                return "a label name appears twice"
            }
            return nil
        }()
        let shape = Shape(kind: kind, labelNames: labelNames)
        return state.withLockedValue { state -> String? in
            var reason = problem
            if reason == nil, let existing = state.shapes[name], existing.shape != shape {
                reason =
                    "\(name) is already a \(existing.shape.kind.rawValue) with labels \(existing.shape.labelNames) "
                    + "(registered by \(existing.plugin)); got a \(kind.rawValue) with labels \(labelNames)"
            }
            guard let reason else {
                if state.shapes[name] == nil { state.shapes[name] = (shape, plugin) }
                return nil
            }
            return state.refused.insert("\(plugin) \(name) \(kind) \(labelNames)").inserted ? reason : ""
        }
    }

    private static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, !("0"..."9").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_"
        }
    }
}

/// The swift-metrics factory one plugin records through (``PluginContext/metrics``): a
/// `PrometheusMetricsFactory` on the telemetry plugin's registry, behind
/// ``PluginMetricNames``. A refused metric is a no-op handler and a warning in the log.
struct PluginMetricsFactory: MetricsFactory {
    let plugin: String
    let names: PluginMetricNames
    let prometheus: PrometheusMetricsFactory
    let logger: Logger

    private func admits(_ label: String, _ dimensions: [(String, String)], _ kind: PluginMetricNames.Kind) -> Bool {
        guard let reason = names.refusal(name: label, labels: dimensions, kind: kind, plugin: plugin) else {
            return true
        }
        if !reason.isEmpty {
            logger.warning(
                "metric refused; it will record nothing",
                metadata: ["plugin": "\(plugin)", "metric": "\(label)", "reason": "\(reason)"])
        }
        return false
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        guard admits(label, dimensions, .counter) else { return NOOPMetricsHandler.instance }
        return prometheus.makeCounter(label: label, dimensions: dimensions)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        guard admits(label, dimensions, .counter) else { return NOOPMetricsHandler.instance }
        return prometheus.makeFloatingPointCounter(label: label, dimensions: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard admits(label, dimensions, aggregate ? .valueHistogram : .gauge) else { return NOOPMetricsHandler.instance }
        return prometheus.makeRecorder(label: label, dimensions: dimensions, aggregate: aggregate)
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        guard admits(label, dimensions, .gauge) else { return NOOPMetricsHandler.instance }
        return prometheus.makeMeter(label: label, dimensions: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        guard admits(label, dimensions, .durationHistogram) else { return NOOPMetricsHandler.instance }
        return prometheus.makeTimer(label: label, dimensions: dimensions)
    }

    // A refused metric's no-op handler is not one of the registry's types, so the
    // Prometheus factory ignores it.
    func destroyCounter(_ handler: any CounterHandler) { prometheus.destroyCounter(handler) }
    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        prometheus.destroyFloatingPointCounter(handler)
    }
    func destroyRecorder(_ handler: any RecorderHandler) { prometheus.destroyRecorder(handler) }
    func destroyMeter(_ handler: any MeterHandler) { prometheus.destroyMeter(handler) }
    func destroyTimer(_ handler: any TimerHandler) { prometheus.destroyTimer(handler) }
}
