/// A network namespace the node has open (a pod's, under in-pod capture), as the plugin
/// API knows it: something to name, compare and hand back to the runtime, which makes
/// sockets inside it. Plugins never open or enter namespaces themselves.
///
/// Thread-safe.
public protocol NetworkNamespaceHandle: AnyObject, Sendable, CustomStringConvertible {
    /// Where it was opened from: a path such as `/var/run/netns/pod-a`, or a description
    /// of the file descriptor it was handed as.
    var path: String { get }
    /// Whether `other` is the same namespace (the same kernel object, however opened).
    func isSame(as other: any NetworkNamespaceHandle) -> Bool
}
