/// Role ``PluginRole/discovery``: a plugin that feeds the mesh model by publishing
/// snapshots into ``PluginContext/mesh``.
public protocol DiscoverySource: AnyObject, Sendable {
    /// Where the mesh comes from, for logs and `/config_dump` (e.g. a file path).
    var discoveryOrigin: String { get }
}
