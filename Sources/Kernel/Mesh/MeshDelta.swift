/// A change to the mesh from one discovery source: resources to upsert and keys to
/// remove, applied by ``MeshStore/apply(_:from:)`` at once, in order.
public struct MeshDelta: Sendable {
    struct Change: Sendable {
        /// Applies the change to one origin's contributions and returns what the
        /// resource's visible state must be recomputed for.
        let apply: @Sendable (inout MeshStore.Contributions, _ origin: Int) -> MeshStore.Touched?
    }

    var changes: [Change] = []

    /// An empty delta.
    public init() {}

    /// Whether it changes nothing.
    public var isEmpty: Bool { changes.isEmpty }

    /// The number of upserts and removals.
    public var count: Int { changes.count }

    /// Adds or replaces `resource` (by its key).
    public mutating func upsert<R: MeshResource>(_ resource: R) {
        changes.append(Change { contributions, origin in
            contributions.upsert(resource, origin: origin)
        })
    }

    /// Removes the resource of kind `type` with `key`, if this source has one.
    public mutating func remove<R: MeshResource>(_ type: R.Type, key: R.Key) {
        changes.append(Change { contributions, origin in
            contributions.remove(type, key: key, origin: origin)
        })
    }
}

/// Everything one discovery source says the mesh holds, for ``MeshStore/replace(with:from:)``:
/// the store diffs it against what the source said before.
public struct MeshContent: Sendable {
    var kinds: [ObjectIdentifier: any KindContent] = [:]

    /// Content that sets no kind: replacing with it changes nothing (set a kind to `[]` to
    /// remove everything the source had of it).
    public init() {}

    /// Workloads, services and policies (what the local mesh file holds).
    public init(workloads: [Workload], services: [Service], policies: [AuthorizationPolicy]) {
        set(workloads)
        set(services)
        set(policies)
    }

    /// The content of `snapshot`'s built-in kinds.
    public init(_ snapshot: MeshSnapshot) {
        self.init(workloads: snapshot.workloads.values, services: snapshot.services.values, policies: snapshot.policies.values)
    }

    /// One delta per kind it sets: the difference from what `origin` holds now.
    func deltas(against contributions: MeshStore.Contributions, origin: Int) -> [MeshDelta] {
        kinds.values.map { $0.delta(against: contributions, origin: origin) }
    }

    /// Sets every resource of kind `R` (later ones win on duplicate keys); a kind never
    /// set is left as the source had it.
    public mutating func set<R: MeshResource>(_ resources: [R]) {
        var byKey: [R.Key: R] = [:]
        for resource in resources { byKey[resource.resourceKey] = resource }
        kinds[ObjectIdentifier(R.self)] = Kind(resources: byKey)
    }

    struct Kind<R: MeshResource>: KindContent {
        let resources: [R.Key: R]

        func delta(against contributions: MeshStore.Contributions, origin: Int) -> MeshDelta {
            var delta = MeshDelta()
            let previous = contributions.table(R.self, origin: origin)
            for (key, _) in previous.entries where resources[key] == nil {
                delta.remove(R.self, key: key)
            }
            for (key, resource) in resources where previous[key] != resource {
                delta.upsert(resource)
            }
            return delta
        }
    }
}

protocol KindContent: Sendable {
    func delta(against contributions: MeshStore.Contributions, origin: Int) -> MeshDelta
}

/// A discovery source as the store knows it: its name (shown in `/config_dump`) and its
/// rank, which settles conflicts. Get one from ``MeshStore/origin(named:)``.
public struct MeshOrigin: Sendable, Hashable, CustomStringConvertible {
    /// The source's name, e.g. the plugin id `local-config`.
    public let name: String
    /// Registration order, from 0: a lower rank wins a conflict.
    public let rank: Int

    public var description: String { name }
}
