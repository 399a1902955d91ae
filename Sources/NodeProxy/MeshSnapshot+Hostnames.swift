import Kernel

extension MeshSnapshot {
    /// The workload with this hostname in this namespace, for a gateway address that names
    /// no service (ztunnel falls back to workloads the same way); the lowest uid when several
    /// have it. A scan of the workloads: such names are rare and looked up only then.
    func workload(named name: NamespacedHostname) -> Workload? {
        workloads.values
            .filter { !$0.hostname.isEmpty && $0.hostname == name.hostname && $0.namespace == name.namespace }
            .min { $0.uid < $1.uid }
    }
}
