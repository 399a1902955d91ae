public import CoreMetrics
public import Logging
import NIOConcurrencyHelpers
public import NIOCore

/// What the kernel gives a plugin: its logger and metrics, the event loops, the mesh,
/// the connection registry, readiness, and the other enabled plugins by role.
public final class PluginContext: Sendable {
    /// The plugin's manifest id.
    public let pluginID: String
    /// A logger labelled with the plugin id; use it rather than making your own.
    public let logger: Logger
    /// The node's event loops (one group for the whole process).
    public let eventLoopGroup: any EventLoopGroup
    /// The node's mesh model.
    public let mesh: MeshStore
    /// Open connections, used by drain and policy re-evaluation.
    public let connections: ConnectionRegistry
    /// Readiness: register listeners with ``Readiness/expect(_:)`` during provision and
    /// mark them ready once bound.
    public let readiness: Readiness
    /// The name of the node this proxy runs on; workloads with this `node` are local.
    public let nodeName: String
    /// The network this node is on (manifest `node.network`; empty: the default network).
    /// Destinations and peers are looked up in it; a local workload in its own network.
    public let nodeNetwork: String
    /// The directory relative paths in the plugin's config are resolved against (the
    /// manifest's directory).
    public let baseDirectory: String
    /// The node's policy decision deadline and failure counts (see ``PolicyChain``).
    public let policyGuard: PolicyGuard
    /// Objects the node's plugins share that role modules define (the node proxy's
    /// captured pods: `context.pods`), one per node.
    public let facilities: NodeFacilities
    private let directory: PluginDirectory
    private let explicitMetrics: (any MetricsFactory)?

    /// Creates a context. The kernel does this; tests may too.
    ///
    /// `metrics` fixes the factory ``metrics`` returns (a test's `TestMetrics` from
    /// swift-metrics' MetricsTestKit); nil asks the enabled ``MetricsBackend``.
    public init(
        pluginID: String, logger: Logger, eventLoopGroup: any EventLoopGroup, mesh: MeshStore,
        connections: ConnectionRegistry, readiness: Readiness, nodeName: String, nodeNetwork: String = "",
        baseDirectory: String, directory: PluginDirectory, policyGuard: PolicyGuard = PolicyGuard(),
        facilities: NodeFacilities = NodeFacilities(), metrics: (any MetricsFactory)? = nil
    ) {
        var logger = logger
        logger[metadataKey: "plugin"] = "\(pluginID)"
        self.pluginID = pluginID
        self.logger = logger
        self.eventLoopGroup = eventLoopGroup
        self.mesh = mesh
        self.connections = connections
        self.readiness = readiness
        self.nodeName = nodeName
        self.nodeNetwork = nodeNetwork
        self.baseDirectory = baseDirectory
        self.directory = directory
        self.policyGuard = policyGuard
        self.facilities = facilities
        self.explicitMetrics = metrics
    }

    /// Where the plugin records metrics with the swift-metrics API (`import CoreMetrics`):
    ///
    /// ```swift
    /// let denied = Counter(label: "my_policy_denied_total", dimensions: [("reason", "sandbox")], factory: context.metrics)
    /// denied.increment()
    /// ```
    ///
    /// With the `telemetry` plugin enabled (any ``MetricsBackend``), the metrics appear in
    /// this node's scrape (`/metrics` on port 15020) next to Istio's; without one they go
    /// nowhere. A name that clashes with the backend's own metrics (`istio_`, `ambit_`,
    /// `process_`…) or is reused with another type or label set records nothing and is
    /// logged, rather than taking the node down. Create metrics from
    /// ``Plugin/provision()`` on (before that the other plugins are not known) and keep
    /// them; several nodes in one process each have their own.
    public var metrics: any MetricsFactory {
        if let explicitMetrics { return explicitMetrics }
        return provider(of: (any MetricsBackend).self)?.metricsFactory(for: pluginID) ?? NOOPMetricsHandler.instance
    }

    /// Every enabled plugin providing role protocol `R`, in manifest order. Available
    /// from ``Plugin/provision()`` on.
    public func providers<R>(of role: R.Type) -> [R] {
        directory.providers(of: role)
    }

    /// The first enabled plugin providing `R`, if any.
    public func provider<R>(of role: R.Type) -> R? {
        providers(of: role).first
    }

    /// Whether `workload` runs on this node: its `node` is this node's name, or either is
    /// unset (a single-node mesh).
    public func isLocal(_ workload: Workload) -> Bool {
        nodeName.isEmpty || workload.node.isEmpty || workload.node == nodeName
    }

    /// The workload on this node that has address `ip`, on whatever network it is: a
    /// local workload is looked up in its own network, which in a multi-network install
    /// need not be called like the node's ``nodeNetwork``. When local workloads on
    /// several networks share the address, the one on the node's network wins, then the
    /// greatest uid (as for ``MeshSnapshot/workload(at:network:)``). Nil when no local
    /// workload has it.
    public func localWorkload(at ip: IPAddress, in mesh: MeshSnapshot) -> Workload? {
        let local = mesh.workloads(at: ip).filter(isLocal)
        return local.last { $0.network == nodeNetwork } ?? local.last
    }

    /// Resolves a config path: absolute paths stay, relative ones are taken from
    /// ``baseDirectory``.
    public func resolvePath(_ path: String) -> String {
        if path.hasPrefix("/") || baseDirectory.isEmpty { return path }
        return baseDirectory.hasSuffix("/") ? baseDirectory + path : baseDirectory + "/" + path
    }
}

/// The enabled plugins in manifest order, filled in by the kernel once all are built.
///
/// Lookups by role are resolved once per role and kept until the list changes, so a
/// connection path asking for its telemetry sinks or policy plugins finds them with one
/// dictionary lookup instead of casting every plugin.
public final class PluginDirectory: Sendable {
    private struct State {
        var plugins: [any Plugin] = []
        var byRole: [ObjectIdentifier: Resolved] = [:]
    }

    /// A resolved list of providers of one role (`[R]`, type-erased).
    private struct Resolved: @unchecked Sendable {
        // Holds `[R]` for the role type it is filed under; the plugins are Sendable.
        let providers: Any
    }

    private let box = NIOLockedValueBox(State())

    /// An empty directory.
    public init() {}

    /// The plugins, in manifest order.
    public var plugins: [any Plugin] { box.withLockedValue { $0.plugins } }

    /// Replaces the list (kernel use).
    public func set(_ plugins: [any Plugin]) {
        box.withLockedValue {
            $0.plugins = plugins
            $0.byRole = [:]
        }
    }

    /// Every plugin providing `R`, in manifest order.
    public func providers<R>(of role: R.Type) -> [R] {
        box.withLockedValue { state in
            if let resolved = state.byRole[ObjectIdentifier(role)]?.providers as? [R] { return resolved }
            let resolved = state.plugins.compactMap { $0 as? R }
            state.byRole[ObjectIdentifier(role)] = Resolved(providers: resolved)
            return resolved
        }
    }
}
