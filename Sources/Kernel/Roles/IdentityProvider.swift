/// Role ``PluginRole/identity``: holds the certificates of the workload identities on
/// this node. Certificate-fetching requirements arrive with the certificates plugin.
public protocol IdentityProvider: AnyObject, Sendable {
    /// Identities the provider currently holds a usable certificate for.
    var availableIdentities: [SpiffeID] { get }
}
