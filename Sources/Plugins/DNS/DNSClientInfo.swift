/// The workload a DNS query came from, as far as the proxy needs it: the namespace that
/// expands short names and decides visibility, the network whose VIPs it is given, and
/// the canonical service and revision its metrics are labelled with.
public struct DNSClientInfo: Sendable, Hashable {
    /// The client's namespace.
    public var namespace: String
    /// The client's network (`""`: the default one).
    public var network: String
    /// `source_canonical_service`; empty is reported as `unknown`.
    public var canonicalService: String
    /// `source_canonical_revision`; empty is reported as `unknown`.
    public var canonicalRevision: String

    /// A client.
    public init(namespace: String, network: String = "", canonicalService: String = "", canonicalRevision: String = "") {
        self.namespace = namespace
        self.network = network
        self.canonicalService = canonicalService
        self.canonicalRevision = canonicalRevision
    }
}
