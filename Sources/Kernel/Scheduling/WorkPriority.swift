/// How urgent a piece of queued work is. Higher runs first; equal priorities run in the
/// order they were queued.
///
/// A struct over a raw value rather than an enum so plugins can slot their own levels
/// between the standard ones (e.g. `WorkPriority(rawValue: 150)`).
public struct WorkPriority: Comparable, Hashable, Sendable, CustomStringConvertible {
    /// The ordering key; larger is more urgent.
    public var rawValue: Int

    /// Creates a priority from its ordering key.
    public init(rawValue: Int) {
        self.rawValue = rawValue
    }

    /// Housekeeping nobody waits for (e.g. refreshing a certificate long before expiry).
    public static let background = WorkPriority(rawValue: 0)
    /// Prefetch for something about to be needed (e.g. a workload just scheduled on this
    /// node).
    public static let warmup = WorkPriority(rawValue: 100)
    /// A caller is blocked on the result (e.g. a connection waiting for a certificate).
    public static let onDemand = WorkPriority(rawValue: 200)

    public static func < (lhs: WorkPriority, rhs: WorkPriority) -> Bool { lhs.rawValue < rhs.rawValue }

    public var description: String {
        switch self {
        case .background: "background"
        case .warmup: "warmup"
        case .onDemand: "onDemand"
        default: "priority(\(rawValue))"
        }
    }
}
