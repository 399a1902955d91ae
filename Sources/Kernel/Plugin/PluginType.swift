/// A plugin type as the registry holds it: its metadata plus the two steps the kernel
/// performs generically (decode its config, build an instance), with ``Plugin/Config``
/// erased.
public struct PluginType: Sendable {
    /// The manifest id.
    public let id: String
    /// The one-line description.
    public let summary: String
    /// Roles it provides: the built-in roles whose protocols it conforms to, plus any
    /// third-party roles it declares.
    public let provides: Set<PluginRole>
    /// Built-in roles it declares in ``Plugin/provides`` without conforming to their
    /// protocols, as messages; the manifest loader reports them as errors.
    public let roleMismatches: [String]
    /// Roles it requires.
    public let requires: Set<PluginRole>
    /// The Swift type, for diagnostics.
    public let typeName: String
    /// Enabled without a manifest entry unless a listed plugin provides one of its roles
    /// (``Plugin/enabledByDefault``).
    public let enabledByDefault: Bool

    private let decodeConfig: @Sendable (ConfigNode) throws -> any Sendable
    private let instantiate: @Sendable (any Sendable, PluginContext) throws -> any Plugin

    /// Wraps a plugin type.
    public init<P: Plugin>(_ type: P.Type) {
        id = P.id
        summary = P.summary
        let roles = PluginRole.roles(of: P.self, declared: P.provides)
        provides = roles.provided
        roleMismatches = roles.missing.map { role, protocolName in
            "\(P.self) declares role \"\(role)\" but does not conform to \(protocolName)"
        }
        requires = P.requires
        typeName = String(describing: P.self)
        enabledByDefault = P.enabledByDefault
        decodeConfig = { node in try ConfigDecoder.decode(P.Config.self, from: node) }
        instantiate = { config, context in
            guard let typed = config as? P.Config else {
                throw PluginError(.invalidConfiguration, plugin: P.id, "internal: config of the wrong type")
            }
            return try P(config: typed, context: context)
        }
    }

    /// Decodes the plugin's config strictly; throws ``ConfigErrors``.
    public func decode(_ node: ConfigNode) throws -> any Sendable {
        try decodeConfig(node)
    }

    /// Builds an instance from a config returned by ``decode(_:)``.
    public func make(config: any Sendable, context: PluginContext) throws -> any Plugin {
        try instantiate(config, context)
    }
}

/// The plugins compiled into a binary, by id. Registration is explicit: the composed
/// binary lists its plugin types.
public struct PluginRegistry: Sendable {
    private var types: [String: PluginType] = [:]

    /// An empty registry.
    public init() {}

    /// A registry holding `types`; a later duplicate id replaces an earlier one.
    public init(_ types: [PluginType]) {
        for type in types { self.types[type.id] = type }
    }

    /// Adds a plugin type (replacing one with the same id).
    public mutating func register<P: Plugin>(_ type: P.Type) {
        types[P.id] = PluginType(type)
    }

    /// The type registered under `id`.
    public func type(id: String) -> PluginType? { types[id] }

    /// Every registered type, by id.
    public var all: [PluginType] { types.values.sorted { $0.id < $1.id } }

    /// Registered ids, sorted.
    public var ids: [String] { types.keys.sorted() }
}
