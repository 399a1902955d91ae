/// A kind of resource the mesh store holds: workloads, services and authorization
/// policies today; HTTP routes and L7 policies are added as further conforming types,
/// without changes to the store.
///
/// A resource is identified by its ``resourceKey`` within its kind. Discovery sources
/// upsert and remove resources by key (``MeshDelta``); readers find them in the snapshot
/// (``MeshSnapshot/resources(of:)``, or the indexed tables for the built-in kinds).
public protocol MeshResource: Sendable, Equatable {
    /// The key type: unique within the kind.
    associatedtype Key: Hashable & Sendable & CustomStringConvertible
    /// The kind's name, as `/config_dump` and logs show it: `workload`, `service`…
    static var kind: String { get }
    /// This resource's key.
    var resourceKey: Key { get }
}

extension Workload: MeshResource {
    public static var kind: String { "workload" }
    /// The workload uid.
    public var resourceKey: String { uid }
}

extension Service: MeshResource {
    public static var kind: String { "service" }
    /// `namespace/hostname`.
    public var resourceKey: NamespacedHostname { namespacedHostname }
}

extension AuthorizationPolicy: MeshResource {
    public static var kind: String { "authorization-policy" }
    /// `namespace/name`.
    public var resourceKey: String { key }
}
