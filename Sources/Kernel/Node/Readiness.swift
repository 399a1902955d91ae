import NIOConcurrencyHelpers

/// What the node is still waiting for before it is ready to take traffic: every
/// plugin provisioned and every listener bound. Served on `/healthz/ready`.
///
/// Thread-safe.
public final class Readiness: Sendable {
    private let pendingComponents = NIOLockedValueBox<[String]>([])

    /// Creates a tracker with nothing pending.
    public init() {}

    /// Marks `component` as pending (idempotent).
    public func expect(_ component: String) {
        pendingComponents.withLockedValue { pending in
            if !pending.contains(component) { pending.append(component) }
        }
    }

    /// Marks `component` as ready.
    public func markReady(_ component: String) {
        pendingComponents.withLockedValue { $0.removeAll { $0 == component } }
    }

    /// The components still pending, in the order they were expected.
    public var pending: [String] { pendingComponents.withLockedValue { $0 } }

    /// True when nothing is pending.
    public var isReady: Bool { pending.isEmpty }
}
