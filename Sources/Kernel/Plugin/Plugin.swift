import ServiceLifecycle

/// A unit of node-proxy behaviour, switched on and configured by the manifest.
///
/// Lifecycle, driven by the kernel in manifest order:
/// 1. **decode**: the manifest's `config:` mapping is decoded strictly into ``Config``
///    (unknown keys and wrong types are manifest errors naming path and line);
/// 2. **init**: ``init(config:context:)`` builds the plugin; keep it cheap and free of
///    side effects;
/// 3. **provision** (``provision()``): acquire what the plugin needs without serving:
///    read files, look up the plugins it works with through
///    ``PluginContext/providers(of:)``, prepare contexts. `ambit validate` stops after
///    this and ``validate()``;
/// 4. **validate** (``validate()``): check the provisioned state as a whole;
/// 5. **run** (``run()``): bind listeners and serve until graceful shutdown is
///    requested (use ServiceLifecycle's `gracefulShutdown()` or
///    `withGracefulShutdownHandler`), then return;
/// 6. **drain** (``drain()``): stop accepting new work; open connections are left to
///    the kernel's ``ConnectionRegistry``, which lets them finish until the drain
///    deadline and then closes them;
/// 7. **cleanup** (``cleanup()``): release everything. Called for every plugin that
///    was provisioned (even partially), also when a later plugin fails to start.
///
/// Threading: lifecycle methods are called from one task, one plugin at a time;
/// anything the plugin exposes through role protocols may be called concurrently from
/// event-loop threads and must be thread-safe.
public protocol Plugin: AnyObject, Sendable {
    /// The plugin's typed configuration, decoded from the manifest entry's `config:`.
    /// An absent `config:` decodes from an empty mapping, so give every field a default
    /// where a sane one exists.
    associatedtype Config: Decodable & Sendable

    /// The manifest id, e.g. `capture`. Lower-case words joined by `-`.
    static var id: String { get }
    /// One line for `ambit plugins`.
    static var summary: String { get }
    /// The roles this plugin provides to others.
    static var provides: Set<PluginRole> { get }
    /// Roles some other enabled plugin must provide; a manifest without one is an error
    /// naming both.
    static var requires: Set<PluginRole> { get }
    /// Whether the plugin is a role's default implementation (the node proxy's tunnel
    /// terminator): the kernel enables it, with its default config, when a listed plugin
    /// requires one of its roles and none provides it. Enabling another provider of the
    /// role (a waypoint) replaces it; listing it configures it. Default false.
    static var enabledByDefault: Bool { get }

    /// Builds the plugin from its decoded config.
    init(config: Config, context: PluginContext) throws

    /// Acquires resources without serving.
    func provision() async throws
    /// Cross-checks the provisioned state; throw a ``PluginError`` naming the problem.
    func validate() throws
    /// What loaded but will not do all it says (e.g. a policy field a node proxy cannot
    /// enforce), one line each, with where it is written; `ambit validate` prints them.
    /// Default: none.
    func validationWarnings() -> [String]
    /// Serves until graceful shutdown, then returns.
    func run() async throws
    /// Stops accepting new work.
    func drain() async
    /// Releases everything; must tolerate being called after a partial provision.
    func cleanup() async
}

extension Plugin {
    /// Default run: nothing to serve; waits for graceful shutdown.
    public func run() async throws {
        try? await gracefulShutdown()
    }

    public static var provides: Set<PluginRole> { [] }
    public static var enabledByDefault: Bool { false }
    public static var requires: Set<PluginRole> { [] }
    public func provision() async throws {}
    public func validate() throws {}
    public func validationWarnings() -> [String] { [] }
    public func drain() async {}
    public func cleanup() async {}
}

/// A named capability plugins offer each other. Each role has a protocol in
/// ``Kernel`` (``CaptureSource``, ``TunnelDialer``, ``TunnelAcceptor``,
/// ``IdentityProvider``, ``ConnectionAuthorizer``, ``TelemetrySink``,
/// ``DiscoverySource``) that providers conform to.
public struct PluginRole: Sendable, Hashable, Comparable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The role's name as it appears in manifest errors.
    public let name: String

    /// Creates a role by name; third-party roles should use a dotted prefix.
    public init(_ name: String) { self.name = name }
    public init(stringLiteral value: String) { self.name = value }

    public var description: String { name }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.name < rhs.name }

    /// Captures application traffic (SOCKS5, in-pod redirection): ``CaptureSource``.
    public static let capture: PluginRole = "capture"
    /// Opens tunnels to other proxies (HBONE client): ``TunnelDialer``.
    public static let tunnelDialer: PluginRole = "tunnel-dialer"
    /// Accepts tunnels from other proxies (HBONE server): ``TunnelAcceptor``.
    public static let tunnelAcceptor: PluginRole = "tunnel-acceptor"
    /// Ends accepted tunnels (the node proxy's inbound path, a waypoint): ``TunnelTerminator``.
    public static let tunnelTerminator: PluginRole = "tunnel-terminator"
    /// Provides workload certificates: ``IdentityProvider``.
    public static let identity: PluginRole = "identity"
    /// Decides whether a connection is allowed: ``ConnectionAuthorizer``.
    public static let policy: PluginRole = "policy"
    /// Receives connection events: ``TelemetrySink``.
    public static let telemetry: PluginRole = "telemetry"
    /// Feeds the mesh model: ``DiscoverySource``.
    public static let discovery: PluginRole = "discovery"
}

/// An error a plugin raises during its lifecycle, with a code that can grow.
public struct PluginError: Error, Sendable, CustomStringConvertible {
    /// Broad classes of plugin failure.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        public var description: String { raw }
        /// The configuration is valid YAML but makes no sense (conflicting values…).
        public static let invalidConfiguration = Code("invalid configuration")
        /// A resource (file, address, netns) could not be acquired.
        public static let unavailable = Code("unavailable")
        /// Something the plugin depends on is missing or misconfigured.
        public static let dependency = Code("dependency")
    }

    /// The failure's class.
    public var code: Code
    /// The plugin id.
    public var plugin: String
    /// What went wrong and what to do about it.
    public var message: String

    /// Creates an error.
    public init(_ code: Code, plugin: String, _ message: String) {
        self.code = code
        self.plugin = plugin
        self.message = message
    }

    public var description: String { "\(plugin): \(message)" }
}
