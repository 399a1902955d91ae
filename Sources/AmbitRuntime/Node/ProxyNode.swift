import CAmbitSystem
public import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif
public import Kernel

/// The lifecycle state of one plugin, as `/config_dump` and `/plugins` show it.
public enum PluginState: String, Sendable, Codable {
    case configured, provisioned, running, draining, stopped, failed
}

/// A node proxy composed from a manifest: the event loops, the mesh store, the
/// connection registry, the admin and readiness servers, and the enabled plugins,
/// driven through their lifecycle.
///
/// `run()` serves until SIGTERM/SIGINT or `POST /quitquitquit`, then drains: plugins
/// stop accepting, open connections get until the drain deadline to finish, the rest
/// are closed, plugins are cleaned up, and `run()` returns normally.
public final class ProxyNode: Sendable {
    /// The plan the node was built from.
    public let plan: ManifestPlan
    /// The node's mesh model.
    public let mesh = MeshStore()
    /// Open connections.
    public let connections = ConnectionRegistry()
    /// What the node still waits for before it is ready.
    public let readiness: Readiness
    /// Objects the plugins share that role modules define, one per node (see
    /// ``NodeFacilities``).
    public let facilities = NodeFacilities()
    /// The policy decision deadline and the count of policy plugin failures.
    public let policyGuard: PolicyGuard

    private let logger: Logger
    private let logLevel: LogLevelControl?
    private let handleSignals: Bool
    private let state = NIOLockedValueBox(RunState())

    private struct RunState {
        var plugins: [(id: String, plugin: any Plugin)] = []
        var states: [String: PluginState] = [:]
        var group: ServiceGroup?
        var quitRequested = false
        var draining = false
        /// When the drain began (the signal or `/quitquitquit`): the drain deadline counts
        /// from here.
        var drainStarted: ContinuousClock.Instant?
        var adminAddress: SocketAddr?

        mutating func beginDrain() {
            draining = true
            if drainStarted == nil { drainStarted = .now }
        }
        var readinessAddress: SocketAddr?
    }

    /// Creates a node from a loaded manifest.
    ///
    /// - Parameters:
    ///   - plan: the loaded, decoded manifest.
    ///   - logger: the root logger (bootstrap the logging backend before).
    ///   - logLevel: the runtime-adjustable level `POST /logging` changes; nil disables it.
    ///   - handleSignals: install SIGTERM/SIGINT handlers (off for in-process nodes in tests).
    public init(plan: ManifestPlan, logger: Logger, logLevel: LogLevelControl? = nil, handleSignals: Bool = true) {
        self.plan = plan
        self.logger = logger
        self.logLevel = logLevel
        self.handleSignals = handleSignals
        self.policyGuard = PolicyGuard(deadline: plan.manifest.node.policyDeadline, logger: logger)
        let readiness = Readiness()
        self.readiness = readiness
    }

    /// The bound admin address, once `run()` has started it.
    public var adminAddress: SocketAddr? { state.withLockedValue { $0.adminAddress } }
    /// The bound readiness address, once `run()` has started it.
    public var readinessAddress: SocketAddr? { state.withLockedValue { $0.readinessAddress } }
    /// True once a drain has started.
    public var isDraining: Bool { state.withLockedValue { $0.draining } }

    /// The enabled plugins, in manifest order (empty before `run()`/`validate()` built them).
    public var plugins: [any Plugin] { state.withLockedValue { $0.plugins.map(\.plugin) } }

    /// The first plugin of type `P`, for tests and composed binaries.
    public func plugin<P: Plugin>(_ type: P.Type) -> P? {
        plugins.lazy.compactMap { $0 as? P }.first
    }

    /// Builds, provisions and validates every plugin, then cleans them up without
    /// serving: what `ambit validate` runs. Throws ``NodeStartupError`` listing every
    /// failure it found; returns the plugins' warnings (``Plugin/validationWarnings()``),
    /// each prefixed with the plugin's label.
    @discardableResult
    public func validate() async throws -> [String] {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        var failures: [String] = []
        var warnings: [String] = []
        do {
            let built = try build(group: group)
            let provisioned = try await provision(built)
            for (id, plugin) in provisioned {
                do { try plugin.validate() } catch { failures.append("\(label(id)): \(error)") }
                warnings += plugin.validationWarnings().map { "\(label(id)): \($0)" }
            }
            await cleanup(provisioned)
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
        try? await group.shutdownGracefully()
        if !failures.isEmpty { throw NodeStartupError(messages: failures) }
        return warnings
    }

    /// Runs the node until graceful shutdown, then drains and cleans up.
    public func run() async throws {
        let manifest = plan.manifest
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, manifest.node.threads))
        for entry in plan.entries { readiness.expect("plugin \(entry.type.id)") }
        var admin: AdminServer?
        var ready: ReadinessServer?
        do {
            let settings = manifest.admin ?? Manifest.AdminSettings()
            if let address = settings.address {
                let server = try await AdminServer.start(
                    address: address, endpoints: adminEndpoints(), group: group, logger: logger)
                admin = server
                state.withLockedValue { $0.adminAddress = server.localAddress }
            }
            if let address = settings.readinessAddress {
                let server = try await ReadinessServer.start(
                    address: address, readiness: readiness,
                    draining: { [state] in state.withLockedValue { $0.draining } }, group: group, logger: logger)
                ready = server
                state.withLockedValue { $0.readinessAddress = server.localAddress }
            }
            try await serve(group: group)
        } catch {
            await admin?.close()
            await ready?.close()
            try? await group.shutdownGracefully()
            throw error
        }
        await admin?.close()
        await ready?.close()
        try? await group.shutdownGracefully()
    }

    private func serve(group: MultiThreadedEventLoopGroup) async throws {
        let built = try build(group: group)
        let provisioned = try await provision(built)
        do {
            for (id, plugin) in provisioned {
                do { try plugin.validate() } catch {
                    throw NodeStartupError(messages: ["\(label(id)): \(error)"])
                }
            }
        } catch {
            await cleanup(provisioned)
            throw error
        }

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        // The drain runs first in the list so the group shuts it down last, after every
        // plugin has stopped accepting.
        services.append(
            .init(
                service: ConnectionDrainService(node: self, deadline: plan.manifest.node.drainDeadline),
                successTerminationBehavior: .gracefullyShutdownGroup,
                failureTerminationBehavior: .gracefullyShutdownGroup,
                serviceName: "connection-drain"))
        services.append(
            .init(
                service: MemoryTrimService(connections: connections),
                successTerminationBehavior: .ignore,
                failureTerminationBehavior: .ignore,
                serviceName: "memory-trim"))
        for (id, plugin) in provisioned {
            services.append(
                .init(
                    service: PluginService(id: id, plugin: plugin, node: self),
                    successTerminationBehavior: .ignore,
                    failureTerminationBehavior: .gracefullyShutdownGroup,
                    serviceName: id))
        }
        // Last in the list, so the group shuts it down first: it notes when the drain began,
        // before the plugins take their time to stop.
        services.append(
            .init(
                service: DrainClockService(node: self), successTerminationBehavior: .ignore,
                failureTerminationBehavior: .ignore, serviceName: "drain-clock"))
        let configuration = ServiceGroupConfiguration(
            services: services,
            gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [],
            logger: logger)
        let serviceGroup = ServiceGroup(configuration: configuration)
        let quitEarly = state.withLockedValue { state in
            state.group = serviceGroup
            return state.quitRequested
        }
        if quitEarly { Task { await serviceGroup.triggerGracefulShutdown() } }

        var runError: (any Error)?
        do {
            try await serviceGroup.run()
        } catch {
            runError = error
            logger.error("node stopped with an error", metadata: ["error": "\(error)"])
        }
        // A failing service can end the group before the drain service ran.
        if connections.count > 0 {
            _ = await connections.drain(deadline: plan.manifest.node.drainDeadline)
        }
        await cleanup(provisioned)
        logger.info("node stopped")
        if let runError { throw runError }
    }

    /// Starts a graceful drain, as SIGTERM does.
    public func shutdown() {
        let group = state.withLockedValue { state -> ServiceGroup? in
            state.quitRequested = true
            state.beginDrain()
            return state.group
        }
        if let group { Task { await group.triggerGracefulShutdown() } }
    }

    func setState(_ id: String, _ pluginState: PluginState) {
        state.withLockedValue { $0.states[id] = pluginState }
    }

    func markDraining() {
        state.withLockedValue { $0.beginDrain() }
    }

    /// How much of `deadline` is left since the drain began (all of it before).
    func drainTimeLeft(of deadline: Duration) -> Duration {
        guard let started = state.withLockedValue({ $0.drainStarted }) else { return deadline }
        return max(.zero, deadline - started.duration(to: .now))
    }

    /// Every plugin's id and lifecycle state, in manifest order.
    public var pluginStates: [(id: String, state: PluginState)] {
        state.withLockedValue { state in
            plan.entries.map { ($0.type.id, state.states[$0.type.id] ?? .configured) }
        }
    }

    private func build(group: any EventLoopGroup) throws -> [(id: String, plugin: any Plugin)] {
        let directory = PluginDirectory()
        var built: [(id: String, plugin: any Plugin)] = []
        var failures: [String] = []
        for entry in plan.entries {
            let context = PluginContext(
                pluginID: entry.type.id, logger: logger, eventLoopGroup: group, mesh: mesh,
                connections: connections, readiness: readiness, nodeName: plan.manifest.node.name,
                nodeNetwork: plan.manifest.node.network, baseDirectory: plan.baseDirectory, directory: directory, policyGuard: policyGuard, facilities: facilities)
            do {
                built.append((entry.type.id, try entry.type.make(config: entry.config, context: context)))
                setState(entry.type.id, .configured)
            } catch {
                setState(entry.type.id, .failed)
                failures.append("\(entry.entry.label): \(error)")
            }
        }
        if !failures.isEmpty { throw NodeStartupError(messages: failures) }
        directory.set(built.map(\.plugin))
        state.withLockedValue { $0.plugins = built }
        return built
    }

    /// Provisions in manifest order; on the first failure cleans up everything provisioned
    /// so far (the failing plugin included, as its provision may be partial).
    private func provision(_ built: [(id: String, plugin: any Plugin)]) async throws -> [(id: String, plugin: any Plugin)] {
        var done: [(id: String, plugin: any Plugin)] = []
        for (id, plugin) in built {
            done.append((id, plugin))
            do {
                try await plugin.provision()
                setState(id, .provisioned)
                readiness.markReady("plugin \(id)")
            } catch {
                setState(id, .failed)
                logger.error("plugin failed to provision", metadata: ["plugin": "\(id)", "error": "\(error)"])
                await cleanup(done)
                throw NodeStartupError(messages: ["\(label(id)): \(error)"])
            }
        }
        return done
    }

    /// `plugins[i] (id)`, how manifest errors name a plugin.
    private func label(_ id: String) -> String {
        plan.entries.first { $0.type.id == id }?.entry.label ?? id
    }

    private func cleanup(_ plugins: [(id: String, plugin: any Plugin)]) async {
        for (id, plugin) in plugins.reversed() {
            await plugin.cleanup()
            if state.withLockedValue({ $0.states[id] }) != .failed { setState(id, .stopped) }
        }
    }

    private func adminEndpoints() -> AdminEndpoints {
        AdminEndpoints(
            configDump: { [self] in await ConfigDump.render(node: self) },
            plugins: { [self] in ConfigDump.renderPlugins(node: self) },
            setLogLevel: { [logLevel] directive, reset in
                guard let logLevel else { return .failure(AdminFailure("log level is fixed in this process")) }
                return logLevel.change(directive: directive, reset: reset)
            },
            currentLogLevel: { [logLevel] in logLevel?.directive ?? "info" },
            quit: { [self] in
                shutdown()
            },
            routes: { [self] in
                state.withLockedValue { $0.plugins }.flatMap { ($0.plugin as? any AdminRouteProvider)?.adminRoutes ?? [] }
            })
    }
}

/// Why a node could not start (or validate): every failure found.
public struct NodeStartupError: Error, Sendable, CustomStringConvertible {
    /// One line per failure, each naming the plugin.
    public var messages: [String]
    public var description: String { messages.joined(separator: "\n") }
}

/// Runs one plugin as a service of the node's service group.
struct PluginService: ServiceLifecycle.Service {
    let id: String
    let plugin: any Plugin
    let node: ProxyNode

    func run() async throws {
        node.setState(id, .running)
        do {
            try await plugin.run()
        } catch {
            node.setState(id, .failed)
            throw PluginError(.unavailable, plugin: id, "stopped with an error: \(error)")
        }
        node.markDraining()
        node.setState(id, .draining)
        await plugin.drain()
    }
}

/// Notes when graceful shutdown began: the group shuts it down before any plugin.
struct DrainClockService: ServiceLifecycle.Service {
    let node: ProxyNode

    func run() async throws {
        try? await gracefulShutdown()
        node.markDraining()
    }
}

/// Waits for graceful shutdown, then lets open connections finish until the deadline,
/// counted from the start of the drain (the plugins have stopped accepting by now, which
/// can take a while on a busy node), and closes the rest.
struct ConnectionDrainService: ServiceLifecycle.Service {
    let node: ProxyNode
    let deadline: Duration

    func run() async throws {
        try? await gracefulShutdown()
        node.markDraining()
        let outcome = await node.connections.drain(deadline: node.drainTimeLeft(of: deadline))
        node.logLevelLogger.info(
            "drained connections",
            metadata: ["open_at_start": "\(outcome.atStart)", "closed_at_deadline": "\(outcome.forced)"])
    }
}

/// Hands memory freed by closed connections back to the system.
///
/// glibc keeps what a burst of connections (or a bulk transfer's buffers) freed in its
/// arenas for reuse, so without this a node that once held 10,000 tunnels keeps their
/// memory for good. Every `interval` in which connections closed, it calls
/// `malloc_trim(0)`, which releases the free pages (a few milliseconds on a large heap,
/// on a background task, never per connection).
struct MemoryTrimService: ServiceLifecycle.Service {
    let connections: ConnectionRegistry
    var interval: Duration = .seconds(10)

    func run() async throws {
        await cancelWhenGracefulShutdown {
            var closed = connections.closedTotal
            while !Task.isCancelled {
                do { try await Task.sleep(for: interval) } catch { return }
                let now = connections.closedTotal
                if now != closed { _ = ambit_malloc_trim() }
                closed = now
            }
        }
    }
}

extension ProxyNode {
    var logLevelLogger: Logger { logger }
}
