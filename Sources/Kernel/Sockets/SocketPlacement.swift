/// Where and how the proxy makes its sockets for one path: which network namespace, with
/// which `SO_MARK`, and whether transparently (`IP_TRANSPARENT`, to accept or connect as
/// an address that is not this host's).
///
/// A per-pod path (a pod's outbound and inbound listeners, its HBONE listener, the
/// tunnels and upstream connections made for it) is given its placement once, when it
/// is set up, and hands it to every listener and dialer it uses; nothing else threads a
/// namespace through its calls. ``node`` is the proxy's own namespace, unmarked.
public struct SocketPlacement: Sendable, CustomStringConvertible {
    /// The namespace to make sockets in (a captured pod's); nil: the proxy's own. It must
    /// be one the runtime opened.
    public var namespace: (any NetworkNamespaceHandle)?
    /// `SO_MARK` for every socket made here (in-pod capture: istio-cni's `0x539`), so the
    /// namespace's redirect rules never capture the proxy's own traffic; nil: the
    /// namespace's own mark, if it has one, else none.
    public var mark: UInt32?
    /// `IP_TRANSPARENT` (and `IP_FREEBIND` for connects) on sockets made here.
    public var transparent: Bool

    /// A placement; everything defaults to the proxy's own namespace, no mark, not
    /// transparent.
    public init(namespace: (any NetworkNamespaceHandle)? = nil, mark: UInt32? = nil, transparent: Bool = false) {
        self.namespace = namespace
        self.mark = mark
        self.transparent = transparent
    }

    /// The proxy's own namespace, no mark, not transparent.
    public static var node: SocketPlacement { SocketPlacement() }

    public var description: String {
        var parts = [namespace.map { "\($0)" } ?? "node namespace"]
        if let mark { parts.append("mark 0x\(String(mark, radix: 16))") }
        if transparent { parts.append("transparent") }
        return parts.joined(separator: ", ")
    }
}
