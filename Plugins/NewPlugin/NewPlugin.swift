import Foundation
import PackagePlugin

/// `swift package --allow-writing-to-package-directory new-plugin --name Greeter [--id greeter]`
///
/// Scaffolds a new Ambit plugin target under `Sources/Plugins/<Name>/` with a typed
/// config, the lifecycle methods and a policy-role conformance to fill in, and prints
/// the lines to add to Package.swift and to the composed binary's plugin list.
@main
struct NewPlugin: CommandPlugin {
    func performCommand(context: PluginContext, arguments: [String]) async throws {
        var extractor = ArgumentExtractor(arguments)
        guard let name = extractor.extractOption(named: "name").first,
            name.first?.isUppercase == true, name.allSatisfy({ $0.isLetter || $0.isNumber })
        else {
            throw ScaffoldError("usage: new-plugin --name UpperCamelName [--id manifest-id]")
        }
        let id = extractor.extractOption(named: "id").first ?? Self.kebab(name)
        let directory = context.package.directoryURL.appending(path: "Sources/Plugins/\(name)")
        let file = directory.appending(path: "\(name)Plugin.swift")
        guard !FileManager.default.fileExists(atPath: file.path) else {
            throw ScaffoldError("\(file.path) already exists")
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try Self.template(name: name, id: id).write(to: file, atomically: true, encoding: .utf8)
        print(
            """
            Created \(file.path)

            Add to Package.swift targets:
                .target(name: "\(name)", dependencies: ["Kernel"], path: "Sources/Plugins/\(name)"),
            add "\(name)" to the `AmbitCLI` target's dependencies, and register it in
            Sources/AmbitCLI/AmbitCommand.swift (FirstPartyPlugins): PluginType(\(name)Plugin.self)
            Enable it in a manifest:
                plugins:
                  - id: \(id)
            """)
    }

    static func kebab(_ name: String) -> String {
        var result = ""
        for character in name {
            if character.isUppercase, !result.isEmpty { result.append("-") }
            result.append(contentsOf: character.lowercased())
        }
        return result
    }

    static func template(name: String, id: String) -> String {
        """
        import Kernel

        /// \(name): describe what this plugin does for the node in one sentence.
        public final class \(name)Plugin: Plugin, ConnectionAuthorizer {
            /// `\(id)` configuration, decoded strictly from the manifest entry's `config:`.
            public struct Config: Decodable, Sendable {
                /// An example setting with a default, so `config:` may be omitted.
                public var enabled: Bool = true
            }

            public static let id = "\(id)"
            public static let summary = "describe \(id) in one line"
            public static let provides: Set<PluginRole> = [.policy]

            private let config: Config
            private let context: PluginContext

            public init(config: Config, context: PluginContext) throws {
                self.config = config
                self.context = context
            }

            public func provision() async throws {
                // Read files, find other plugins by role: context.providers(of: ...).
            }

            public func authorize(_ connection: ConnectionAttributes) async -> AuthorizationDecision {
                // Fail closed: deny when unsure.
                config.enabled ? .allow(reason: "\(id) allows everything") : .deny(reason: "\(id) is disabled")
            }
        }

        """
    }
}

struct ScaffoldError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
