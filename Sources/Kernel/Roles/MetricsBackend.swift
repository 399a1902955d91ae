public import CoreMetrics

/// A plugin that exports metrics other plugins record (the `telemetry` plugin: its
/// Prometheus scrape on `/metrics`).
///
/// Plugins do not look for it themselves: they record through
/// ``PluginContext/metrics``, which asks the first enabled backend for a factory and
/// falls back to a no-op one when none is enabled.
///
/// Threading: ``metricsFactory(for:)`` may be called from any thread.
public protocol MetricsBackend: AnyObject, Sendable {
    /// A swift-metrics factory whose metrics the backend exports with its own, for the
    /// plugin with manifest id `plugin`.
    ///
    /// The factory must contain a plugin's mistakes rather than crash the process: a
    /// name that clashes with the backend's own metrics, or is reused with another metric
    /// type or another label set, yields a metric that records nothing (and a log line).
    func metricsFactory(for plugin: String) -> any MetricsFactory
}
