import Kernel
import NIOConcurrencyHelpers
import Prometheus

/// `ambit_policy_failures_total{plugin, reason}`: decisions of a policy plugin that
/// failed, each of which denied its connection (see ``PolicyGuard``). `reason` is
/// `threw` (its `authorize` threw) or `timed-out` (no answer within
/// `node.policyDeadline`).
///
/// The node's ``PolicyGuard`` keeps the counts; every scrape brings the counters up to
/// them. Every enabled policy plugin has both series from the first scrape on, at 0
/// until it fails, so an alert can use `increase(…)` without waiting for a first failure.
final class PolicyFailureMetrics: Sendable {
    /// The metric's name.
    static let name = "ambit_policy_failures_total"
    static let help =
        "Policy plugin decisions that failed (the plugin threw or missed node.policyDeadline); each denied its connection."

    private struct Key: Hashable {
        var plugin: String
        var failure: PolicyGuard.Failure
    }

    private let registry: PrometheusCollectorRegistry
    private let reported = NIOLockedValueBox<[Key: (counter: Counter, count: Int)]>([:])

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    /// Brings the counters up to `policyGuard`'s counts, creating the series of every
    /// plugin in `plugins` and of every plugin that failed.
    func update(from policyGuard: PolicyGuard, plugins: [String]) {
        let failures = policyGuard.failures
        let names = Set(plugins).union(failures.keys)
        reported.withLockedValue { reported in
            for plugin in names.sorted() {
                for failure in PolicyGuard.Failure.allCases {
                    let key = Key(plugin: plugin, failure: failure)
                    let entry =
                        reported[key]
                        ?? (registry.makeCounter(
                                descriptor: .named(Self.name, help: Self.help),
                                labels: [("plugin", plugin), ("reason", failure.rawValue)]), 0)
                    let count = failures[plugin]?[failure.rawValue] ?? 0
                    if count > entry.count { entry.counter.increment(by: Int64(count - entry.count)) }
                    reported[key] = (entry.counter, max(count, entry.count))
                }
            }
        }
    }
}
