public import Logging
import NIOConcurrencyHelpers

/// The policy chain's guard against misbehaving policy plugins: the decision deadline,
/// and per-plugin counts of decisions that failed.
///
/// A policy plugin is third-party code on the connection path. If its
/// ``ConnectionAuthorizer/authorize(_:)`` throws, or has not answered within
/// ``deadline``, the ``PolicyChain`` denies the connection (fail closed), logs a warning
/// naming the plugin and the failure, and counts it here; the walk stops there like any
/// deny, and the node keeps serving other connections. A hanging call is abandoned
/// (its task is cancelled), never awaited.
///
/// One guard per node, shared by every plugin's context; ``ProxyNode/policyGuard`` reads
/// the counts. Thread-safe.
public final class PolicyGuard: Sendable {
    /// How a policy plugin failed to decide.
    public enum Failure: String, Sendable, Hashable, CaseIterable {
        /// `authorize` threw.
        case threw
        /// `authorize` did not return within the deadline.
        case timedOut = "timed-out"
    }

    /// The longest one plugin may take to decide one connection. Default 1 s; the
    /// manifest's `node.policyDeadline` sets it for a node.
    public let deadline: Duration
    /// Where failures are logged.
    public let logger: Logger
    private let counts = NIOLockedValueBox<[Key: Int]>([:])

    private struct Key: Hashable {
        var plugin: String
        var failure: Failure
    }

    /// The default decision deadline: long enough for a plugin that asks a local
    /// service, short enough that a stuck one does not hold connections for long.
    public static let defaultDeadline: Duration = .seconds(1)

    /// Creates a guard.
    public init(deadline: Duration = PolicyGuard.defaultDeadline, logger: Logger = Logger(label: "ambit.policy")) {
        self.deadline = deadline
        self.logger = logger
    }

    /// How many decisions of `plugin` failed with `failure`.
    public func count(plugin: String, _ failure: Failure) -> Int {
        counts.withLockedValue { $0[Key(plugin: plugin, failure: failure)] ?? 0 }
    }

    /// Every failed decision, of every plugin.
    public var totalFailures: Int {
        counts.withLockedValue { $0.values.reduce(0, +) }
    }

    /// Counts per plugin id and failure, for dumps: `["slow-policy": ["timed-out": 3]]`.
    public var failures: [String: [String: Int]] {
        counts.withLockedValue { counts in
            counts.reduce(into: [:]) { result, entry in
                result[entry.key.plugin, default: [:]][entry.key.failure.rawValue] = entry.value
            }
        }
    }

    func record(plugin: String, _ failure: Failure, detail: String) {
        counts.withLockedValue { $0[Key(plugin: plugin, failure: failure), default: 0] += 1 }
        logger.warning(
            "policy plugin failed to decide; connection denied",
            metadata: ["plugin": "\(plugin)", "failure": "\(failure.rawValue)", "detail": "\(detail)"])
    }
}
