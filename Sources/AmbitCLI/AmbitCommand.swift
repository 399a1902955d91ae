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

struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Run a node proxy from a manifest until SIGTERM/SIGINT.")

    @Option(name: .long, help: "Path to the node manifest (YAML).")
    var manifest: String

    @Option(name: .long, help: "Override the manifest's log level (trace…critical).")
    var logLevel: String?

    func run() async throws {
        try await Self.serve(try loadPlan(manifest), logLevel: logLevel)
    }

    /// Runs a node from a loaded plan until graceful shutdown; `ambit ca serve` shares it.
    static func serve(_ plan: ManifestPlan, logLevel: String?) async throws {
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
        abstract: "Load and provision a manifest without serving; exit 0 if it is good, 1 with every error.")

    @Option(name: .long, help: "Path to the node manifest (YAML).")
    var manifest: String

    func run() async throws {
        let plan: ManifestPlan
        do {
            plan = try ManifestLoader.load(path: manifest, registry: Ambit.registry)
        } catch {
            reportErrors(error)
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
