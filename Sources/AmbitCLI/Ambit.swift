import ArgumentParser
import Foundation
import AmbitRuntime
public import Kernel

/// The entry point of an `ambit` binary: the first-party one and every composed one run
/// the same command line over their own plugin registry.
///
/// ```swift
/// import AmbitCLI
/// import MyPolicies
///
/// @main enum Main {
///     static func main() async {
///         await Ambit.main(adding: [PluginType(MyPolicyPlugin.self)])
///     }
/// }
/// ```
///
/// `swift package compose` generates exactly this file for a composition manifest.
public enum Ambit {
    /// The registry of the running command. A task-local rather than a global so a
    /// process (or a test) can run commands over different registries without shared
    /// mutable state; ArgumentParser runs a command's `run()` inside the task that
    /// called `main`, so the value reaches every subcommand.
    @TaskLocal static var current: PluginRegistry = FirstPartyPlugins.registry

    /// The plugins compiled into this binary, as `ambit plugins`, `validate` and `run`
    /// see them.
    public static var registry: PluginRegistry { current }

    /// Parses the process arguments and runs the command over `registry`; exits the
    /// process with the command's status.
    public static func main(registry: PluginRegistry = FirstPartyPlugins.registry) async {
        await $current.withValue(registry) {
            await AmbitCommand.main()
        }
    }

    /// Runs the command over the first-party plugins plus `types`. Two plugins with the
    /// same id cannot both be reached from a manifest, so a clash is a build mistake:
    /// it is reported and the process exits 2 before parsing anything.
    public static func main(adding types: [PluginType]) async {
        switch FirstPartyPlugins.registry.adding(types) {
        case .success(let registry):
            await main(registry: registry)
        case .failure(let clash):
            FileHandle.standardError.write(Data("error: \(clash)\n".utf8))
            exit(2)
        }
    }
}

/// Two plugin types registered under one manifest id.
public struct PluginIDClash: Error, Sendable, CustomStringConvertible {
    /// The id both claim.
    public var id: String
    /// The Swift type already registered.
    public var existing: String
    /// The Swift type that was added.
    public var added: String

    public var description: String {
        "plugin id \"\(id)\" is claimed by both \(existing) and \(added); give one of them another `static let id`"
    }
}

extension PluginRegistry {
    /// This registry plus `types`, or the first id clash (with a type already present
    /// or within `types`).
    public func adding(_ types: [PluginType]) -> Result<PluginRegistry, PluginIDClash> {
        var result = self
        for type in types {
            if let existing = result.type(id: type.id) {
                return .failure(PluginIDClash(id: type.id, existing: existing.typeName, added: type.typeName))
            }
            result = PluginRegistry(result.all + [type])
        }
        return .success(result)
    }
}
