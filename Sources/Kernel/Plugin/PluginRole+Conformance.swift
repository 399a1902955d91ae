/// The built-in roles and the protocol each stands for, so that a plugin's roles follow
/// from what it conforms to and a declared role without its protocol is caught when the
/// manifest is loaded, not when a connection looks for it.
extension PluginRole {
    /// Each built-in role, the protocol's name, and whether a plugin type conforms to it.
    static let builtIn: [(role: PluginRole, protocolName: String, conforms: @Sendable (Any.Type) -> Bool)] = [
        (.capture, "CaptureSource", { $0 is any CaptureSource.Type }),
        (.tunnelDialer, "TunnelDialer", { $0 is any TunnelDialer.Type }),
        (.tunnelAcceptor, "TunnelAcceptor", { $0 is any TunnelAcceptor.Type }),
        (.tunnelTerminator, "TunnelTerminator", { $0 is any TunnelTerminator.Type }),
        (.identity, "IdentityProvider", { $0 is any IdentityProvider.Type }),
        (.policy, "ConnectionAuthorizer", { $0 is any ConnectionAuthorizer.Type }),
        (.telemetry, "TelemetrySink or MetricsBackend", { $0 is any TelemetrySink.Type || $0 is any MetricsBackend.Type }),
        (.discovery, "DiscoverySource", { $0 is any DiscoverySource.Type }),
    ]

    /// The built-in roles `type` provides by conformance, and the declared built-in roles
    /// it does not conform to (with the protocol each needs).
    static func roles(of type: Any.Type, declared: Set<PluginRole>) -> (provided: Set<PluginRole>, missing: [(PluginRole, String)]) {
        var provided = Set<PluginRole>()
        var missing: [(PluginRole, String)] = []
        for entry in builtIn {
            if entry.conforms(type) {
                provided.insert(entry.role)
            } else if declared.contains(entry.role) {
                missing.append((entry.role, entry.protocolName))
            }
        }
        let builtInRoles = Set(builtIn.map(\.role))
        return (provided.union(declared.subtracting(builtInRoles)), missing)
    }
}
