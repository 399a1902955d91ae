import Kernel

/// Refuses inbound connections from the namespaces it is given, e.g. keep `sandbox`
/// workloads away from everything on this node. Replace the decision with yours.
///
/// ```yaml
/// - id: my-policy
///   config:
///     deniedNamespaces: [sandbox]
/// ```
public final class MyPolicyPlugin: Plugin, ConnectionAuthorizer {
    /// `my-policy` configuration, decoded strictly from the manifest entry's `config:`.
    public struct Config: Decodable, Sendable {
        /// Source namespaces to refuse.
        public var deniedNamespaces: [String] = []

        // CaseIterable keys let the manifest decoder reject unknown keys.
        enum CodingKeys: String, CodingKey, CaseIterable { case deniedNamespaces }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            deniedNamespaces = try c.decodeIfPresent([String].self, forKey: .deniedNamespaces) ?? []
            if deniedNamespaces.contains("") {
                throw DecodingError.dataCorruptedError(
                    forKey: .deniedNamespaces, in: c, debugDescription: "namespace names must not be empty")
            }
        }
    }

    public static let id = "my-policy"
    public static let summary = "refuse connections from chosen namespaces"
    public static let provides: Set<PluginRole> = [.policy]

    private let denied: Set<String>

    public init(config: Config, context: PluginContext) throws {
        denied = Set(config.deniedNamespaces)
    }

    public func authorize(_ connection: ConnectionAttributes) async throws -> AuthorizationDecision {
        // Only an authenticated identity says where a connection comes from; plaintext
        // is not this policy's business (abstain), other plugins may refuse it.
        guard let identity = connection.authenticatedIdentity else { return .abstain(reason: "plaintext") }
        return denied.contains(identity.namespace)
            ? .deny(reason: "namespace \(identity.namespace) is refused")
            : .allow(reason: "namespace \(identity.namespace) is not refused")
    }
}
