public import ArgumentParser
import Authorization
import CAServer
import Capture
import Certificates
import Foundation
import HBONE
import NodeProxy
public import Kernel
import LocalConfig
import Logging
import Telemetry
import XDS
import AmbitRuntime

/// The `ambit` command line, shared by the first-party binary and every composed one.
/// The plugins it knows are the registry given to ``Ambit/main(registry:)``.
public struct AmbitCommand: AsyncParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "ambit",
        abstract: "Ambit: a node proxy for Istio-style ambient meshes, composed from plugins.",
        version: AmbitVersion.current,
        subcommands: [
            RunCommand.self, ValidateCommand.self, PluginsCommand.self, VersionCommand.self, DemoCommand.self,
            PolicyCommand.self,
            CACommand.self,
        ])

    public init() {}
}

/// The first-party plugins: what the `ambit` binary contains, and what a composed
/// binary starts from before it adds its own.
public enum FirstPartyPlugins {
    /// Every first-party plugin type.
    public static var registry: PluginRegistry {
        PluginRegistry([
            PluginType(LocalConfigPlugin.self),
            PluginType(XDSPlugin.self),
            PluginType(CapturePlugin.self),
            PluginType(AuthorizationPlugin.self),
            PluginType(TelemetryPlugin.self),
            PluginType(CertificatesPlugin.self),
            PluginType(CAServerPlugin.self),
            PluginType(HBONEPlugin.self),
            // Enabled by default: the node proxy's inbound, terminating HBONE tunnels.
            PluginType(NodeProxyPlugin.self),
        ])
    }
}

/// Loads a manifest with the binary's plugins, or prints every error and fails.
func loadPlan(_ manifest: String) throws -> ManifestPlan {
    do {
        return try ManifestLoader.load(path: manifest, registry: Ambit.registry)
    } catch {
        reportErrors(error)
        throw ExitCode.failure
    }
}

/// Prints configuration errors, one a line, to stderr.
func reportErrors(_ errors: ConfigErrors) {
    for error in errors.errors {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    }
}

/// Where a node's manifest comes from: a file (`--manifest`) or a profile built from the
/// environment (`--profile ztunnel`). Exactly one.
struct ManifestSource: ParsableArguments {
    @Option(name: .long, help: "Path to the node manifest (YAML).")
    var manifest: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Build the manifest from a profile's environment variables instead of a file (ztunnel: ztunnel's).",
            valueName: "name"))
    var profile: NodeProfile?

    func validate() throws {
        switch (manifest, profile) {
        case (nil, nil): throw ValidationError("give --manifest <file> or --profile ztunnel")
        case (.some, .some): throw ValidationError("give --manifest or --profile, not both")
        default: break
        }
    }

    /// How messages name the manifest: the file, or `ztunnel profile`.
    var name: String { manifest ?? "\(profile?.rawValue ?? "") profile" }

    /// The profile's manifest built from `environment`; its errors name the variables.
    func buildProfile(_ profile: NodeProfile, environment: [String: String]) throws(ConfigErrors) -> ProfileManifest {
        switch profile {
        case .ztunnel:
            return try ZtunnelProfile(
                environment: environment, workingDirectory: FileManager.default.currentDirectoryPath,
                registry: Ambit.registry
            ).build()
        }
    }

    /// The plan and, for a profile, the manifest it built. Errors: the manifest file's, a
    /// profile's bad variables (file `environment`) or its built manifest's.
    func load(environment: [String: String] = ManifestEnvironment.process) throws(ConfigErrors)
        -> (plan: ManifestPlan, profile: ProfileManifest?)
    {
        guard let profile else {
            return (try ManifestLoader.load(path: manifest ?? "", registry: Ambit.registry, environment: environment), nil)
        }
        let built = try buildProfile(profile, environment: environment)
        return (try built.plan(registry: Ambit.registry), built)
    }

    /// Prints `errors`, one a line, and for a built manifest where its lines are.
    func report(_ errors: ConfigErrors) {
        reportErrors(errors)
        if let profile, errors.errors.contains(where: { $0.file != "environment" }) {
            FileHandle.standardError.write(
                Data("(the lines are those of `ambit run --profile \(profile.rawValue) --print-manifest`)\n".utf8))
        }
    }
}

/// The manifest profiles `--profile` takes.
enum NodeProfile: String, ExpressibleByArgument, CaseIterable {
    /// ztunnel's environment variables (``ZtunnelProfile``).
    case ztunnel
}

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Run a node proxy from a manifest or a profile until SIGTERM/SIGINT.")

    @OptionGroup var source: ManifestSource

    @Option(name: .long, help: "Override the manifest's log level (trace…critical).")
    var logLevel: String?

    @Flag(name: .long, help: "With --profile: print the manifest it builds (YAML) and exit, without loading it.")
    var printManifest = false

    func validate() throws {
        if printManifest && source.profile == nil {
            throw ValidationError("--print-manifest needs --profile")
        }
    }

    func run() async throws {
        if printManifest, let profile = source.profile {
            do {
                print(try source.buildProfile(profile, environment: ManifestEnvironment.process).yaml, terminator: "")
            } catch {
                source.report(error)
                throw ExitCode.failure
            }
            return
        }
        let loaded: (plan: ManifestPlan, profile: ProfileManifest?)
        do {
            loaded = try source.load()
        } catch {
            source.report(error)
            throw ExitCode.failure
        }
        try await Self.serve(loaded.plan, logLevel: logLevel, notes: loaded.profile?.notes ?? [])
    }

    /// Runs a node from a loaded plan until graceful shutdown; `ambit ca serve` shares it.
    /// `notes` (from a profile) are logged at debug once logging is set up.
    static func serve(_ plan: ManifestPlan, logLevel: String?, notes: [String] = []) async throws {
        var level = plan.manifest.logging.level
        if let logLevel {
            guard let parsed = LogLevelControl.parse(logLevel) else {
                throw ValidationError("unknown log level \"\(logLevel)\"")
            }
            level = parsed
        }
        // The level the node starts at is what `/logging?reset` returns to.
        let control = LogLevelControl(level)
        AmbitLogging.bootstrap(format: plan.manifest.logging.format, control: control)
        let logger = Logger(label: "ambit")
        for note in notes { logger.debug("\(note)", metadata: ["manifest": "\(plan.file)"]) }
        logger.info(
            "starting node",
            metadata: [
                "version": "\(AmbitVersion.current)", "node": "\(plan.manifest.node.name)",
                "plugins": "\(plan.entries.map { $0.type.id }.joined(separator: ","))",
            ])
        let node = ProxyNode(plan: plan, logger: logger, logLevel: control)
        do {
            try await node.run()
        } catch {
            logger.critical("node failed", metadata: ["error": "\(error)"])
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }
}

struct ValidateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Load and provision a manifest (or a profile's) without serving; exit 0 if it is good, 1 with every error.")

    @OptionGroup var source: ManifestSource

    func run() async throws {
        let manifest = source.name
        let plan: ManifestPlan
        do {
            plan = try source.load().plan
        } catch {
            source.report(error)
            FileHandle.standardError.write(Data("\(manifest): \(error.errors.count) error(s)\n".utf8))
            throw ExitCode.failure
        }
        AmbitLogging.bootstrap(format: .text, control: LogLevelControl(.error))
        let node = ProxyNode(plan: plan, logger: Logger(label: "ambit.validate"), handleSignals: false)
        do {
            for warning in try await node.validate() {
                FileHandle.standardError.write(Data("warning: \(warning)\n".utf8))
            }
        } catch let error as NodeStartupError {
            for message in error.messages {
                FileHandle.standardError.write(Data("error: \(manifest): \(message)\n".utf8))
            }
            throw ExitCode.failure
        }
        print("\(manifest): ok (\(plan.entries.count) plugins: \(plan.entries.map { $0.type.id }.joined(separator: ", ")))")
    }
}

struct PluginsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plugins", abstract: "List the plugins compiled into this binary, one a line.")

    func run() {
        let types = Ambit.registry.all
        let width = types.map(\.id.count).max() ?? 0
        for type in types {
            print(type.id.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + type.summary)
        }
    }
}

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "version", abstract: "Print the version.")

    func run() {
        print("ambit \(AmbitVersion.current)")
    }
}
