import Foundation
import PackagePlugin

/// `swift package --allow-writing-to-package-directory compose --manifest FILE [--release] [--scratch-path DIR]`
///
/// Builds an `ambit` binary that holds the first-party plugins plus the third-party
/// plugin types a composition manifest names (JSON):
///
/// ```json
/// {
///   "name": "ambit-examples",
///   "packages": [
///     {"path": ".", "products": ["ExamplePolicies"]},
///     {"url": "https://example.com/policies.git", "from": "1.2.0", "products": ["Policies"]}
///   ],
///   "plugins": ["ExamplePolicies.TimeWindowPlugin"]
/// }
/// ```
///
/// `path`s are relative to the manifest's directory. It generates a package in
/// `.build-compose/<name>/` (Ambit by path, the listed packages, and a `@main` that
/// passes the plugin types to `Ambit.main(adding:)`), builds it, and prints the binary's
/// path as the last line of standard output; build output goes to standard error.
@main
struct Compose: CommandPlugin {
    func performCommand(context: PluginContext, arguments: [String]) async throws {
        var extractor = ArgumentExtractor(arguments)
        guard let manifestPath = extractor.extractOption(named: "manifest").first else {
            throw ComposeError("usage: compose --manifest compose.json [--release] [--scratch-path DIR]")
        }
        let release = extractor.extractFlag(named: "release") > 0
        let scratch = extractor.extractOption(named: "scratch-path").first
        if !extractor.remainingArguments.isEmpty {
            throw ComposeError("unexpected arguments: \(extractor.remainingArguments.joined(separator: " "))")
        }

        let root = context.package.directoryURL
        let cwd = URL(fileURLWithPath: FileManager.default.currentDirectoryPath)
        let manifestURL = URL(fileURLWithPath: manifestPath, relativeTo: cwd).standardizedFileURL
        let composition = try Composition.load(manifestURL)
        let directory = root.appending(path: ".build-compose/\(composition.name)")
        try composition.write(into: directory, ambitRoot: root, manifestDirectory: manifestURL.deletingLastPathComponent())
        // Ambit's own pins keep the shared dependencies at the versions Ambit was tested with.
        let pins = root.appending(path: "Package.resolved")
        let generatedPins = directory.appending(path: "Package.resolved")
        if FileManager.default.fileExists(atPath: pins.path), !FileManager.default.fileExists(atPath: generatedPins.path) {
            try FileManager.default.copyItem(at: pins, to: generatedPins)
        }

        var build = ["build", "--package-path", directory.path, "--product", composition.name, "-c", release ? "release" : "debug"]
        if let scratch {
            let path = URL(fileURLWithPath: scratch, relativeTo: cwd).standardizedFileURL.path
            // `swift package` holds the lock on Ambit's own build directory while this
            // plugin runs, so a build there would wait forever.
            if path == root.appending(path: ".build").standardizedFileURL.path {
                throw ComposeError("--scratch-path cannot be Ambit's own .build (swift package holds it); use another directory")
            }
            build += ["--scratch-path", path]
        }
        try run(build, output: .standardError)
        let binPath = try run(build + ["--show-bin-path"], output: nil).trimmingCharacters(in: .whitespacesAndNewlines)
        print(URL(fileURLWithPath: binPath).appending(path: composition.name).path)
    }

    /// Runs `swift <arguments>`; returns its standard output when `output` is nil,
    /// otherwise streams it there.
    @discardableResult
    private func run(_ arguments: [String], output: FileHandle?) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["swift"] + arguments
        let pipe = Pipe()
        process.standardOutput = output ?? pipe
        process.standardError = FileHandle.standardError
        try process.run()
        let data = output == nil ? pipe.fileHandleForReading.readDataToEndOfFile() : Data()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw ComposeError("swift \(arguments.joined(separator: " ")) failed with status \(process.terminationStatus)")
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// A composition manifest.
struct Composition: Decodable {
    struct Package: Decodable {
        var path: String?
        var url: String?
        var from: String?
        var products: [String]
    }

    var name: String = "ambit-composed"
    var packages: [Package]
    var plugins: [String]

    enum CodingKeys: String, CodingKey, CaseIterable { case name, packages, plugins }

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decodeIfPresent(String.self, forKey: .name) ?? name
        packages = try c.decodeIfPresent([Package].self, forKey: .packages) ?? []
        plugins = try c.decode([String].self, forKey: .plugins)
    }

    static func load(_ url: URL) throws -> Composition {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw ComposeError("\(url.path): cannot read: \(error.localizedDescription)") }
        if let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] {
            let unknown = Set(object.keys).subtracting(CodingKeys.allCases.map(\.rawValue))
            if !unknown.isEmpty { throw ComposeError("\(url.path): unknown keys \(unknown.sorted()) (known: name, packages, plugins)") }
        }
        let composition: Composition
        do { composition = try JSONDecoder().decode(Composition.self, from: data) } catch {
            throw ComposeError("\(url.path): \(error)")
        }
        try composition.check(file: url.path)
        return composition
    }

    func check(file: String) throws {
        var problems: [String] = []
        if name.isEmpty || !name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) {
            problems.append("name: expected letters, digits, - and _, got \"\(name)\"")
        }
        for (index, package) in packages.enumerated() {
            if (package.path == nil) == (package.url == nil) { problems.append("packages[\(index)]: give exactly one of path and url") }
            if package.url != nil && package.from == nil { problems.append("packages[\(index)]: a url needs `from` (a version)") }
            if package.products.isEmpty { problems.append("packages[\(index)].products: name the library products to link") }
        }
        if plugins.isEmpty { problems.append("plugins: name at least one plugin type, as Module.TypeName") }
        for (index, plugin) in plugins.enumerated() where plugin.split(separator: ".").count != 2 {
            problems.append("plugins[\(index)]: expected Module.TypeName, got \"\(plugin)\"")
        }
        if !problems.isEmpty { throw ComposeError(problems.map { "\(file): \($0)" }.joined(separator: "\n")) }
    }

    /// The package identity SwiftPM derives from a location: its last path component,
    /// without `.git`, lower-cased.
    static func identity(_ location: String) -> String {
        var last = location.split(separator: "/").last.map(String.init) ?? location
        if last.hasSuffix(".git") { last.removeLast(4) }
        return last.lowercased()
    }

    func write(into directory: URL, ambitRoot: URL, manifestDirectory: URL) throws {
        var dependencies = ["        .package(name: \"ambit\", path: \(Self.literal(ambitRoot.path))),"]
        var products = ["                .product(name: \"AmbitCLI\", package: \"ambit\"),", "                .product(name: \"Kernel\", package: \"ambit\"),"]
        for package in packages {
            let identity: String
            if let path = package.path {
                let absolute = URL(fileURLWithPath: path, relativeTo: manifestDirectory).standardizedFileURL.path
                identity = Self.identity(absolute)
                dependencies.append("        .package(path: \(Self.literal(absolute))),")
            } else {
                let url = package.url!
                identity = Self.identity(url)
                dependencies.append("        .package(url: \(Self.literal(url)), from: \(Self.literal(package.from!))),")
            }
            for product in package.products {
                products.append("                .product(name: \(Self.literal(product)), package: \(Self.literal(identity))),")
            }
        }
        let modules = Set(plugins.map { String($0.split(separator: ".")[0]) }).sorted()
        let manifest = """
            // swift-tools-version: 6.2
            // Generated by `swift package compose`; do not edit, do not commit.
            import PackageDescription

            let package = Package(
                name: \(Self.literal(name)),
                platforms: [.macOS(.v15)],
                products: [.executable(name: \(Self.literal(name)), targets: ["ComposedAmbit"])],
                dependencies: [
            \(dependencies.joined(separator: "\n"))
                ],
                targets: [
                    .executableTarget(
                        name: "ComposedAmbit",
                        dependencies: [
            \(products.joined(separator: "\n"))
                        ]
                    )
                ]
            )

            """
        let main = """
            // Generated by `swift package compose`; do not edit, do not commit.
            import AmbitCLI
            import Kernel
            \(modules.map { "import \($0)" }.joined(separator: "\n"))

            /// An ambit binary: the first-party plugins plus those of the composition manifest.
            @main
            enum ComposedAmbit {
                static func main() async {
                    await Ambit.main(adding: [
            \(plugins.map { "            PluginType(\($0).self)," }.joined(separator: "\n"))
                    ])
                }
            }

            """
        let sources = directory.appending(path: "Sources/ComposedAmbit")
        try FileManager.default.createDirectory(at: sources, withIntermediateDirectories: true)
        try Self.writeIfChanged(manifest, to: directory.appending(path: "Package.swift"))
        try Self.writeIfChanged(main, to: sources.appending(path: "ComposedAmbit.swift"))
    }

    /// Leaves an unchanged file alone so a repeated compose is an incremental no-op build.
    static func writeIfChanged(_ text: String, to url: URL) throws {
        if let existing = try? String(contentsOf: url, encoding: .utf8), existing == text { return }
        try text.write(to: url, atomically: true, encoding: .utf8)
    }

    static func literal(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }
}

struct ComposeError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
