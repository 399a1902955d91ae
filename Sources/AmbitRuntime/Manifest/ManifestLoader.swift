#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
public import Kernel
import ConfigYAML

/// A manifest checked against the compiled-in plugins: every entry's plugin type and
/// decoded config, in manifest order. What the kernel builds plugins from.
public struct ManifestPlan: Sendable {
    /// One plugin to build.
    public struct Entry: Sendable {
        /// The manifest entry (id, raw config, index, line).
        public var entry: PluginEntry
        /// The registered type for `entry.id`.
        public var type: PluginType
        /// The config decoded by `type` (its `Config`), ready for ``PluginType/make(config:context:)``.
        public var config: any Sendable

        /// Creates an entry.
        public init(entry: PluginEntry, type: PluginType, config: any Sendable) {
            self.entry = entry
            self.type = type
            self.config = config
        }
    }

    /// The manifest.
    public var manifest: Manifest
    /// The plugins, in manifest order.
    public var entries: [Entry]
    /// The manifest's directory; relative paths in plugin configs are resolved against it.
    public var baseDirectory: String
    /// The manifest file as given.
    public var file: String

    /// Creates a plan.
    public init(manifest: Manifest, entries: [Entry], baseDirectory: String, file: String) {
        self.manifest = manifest
        self.entries = entries
        self.baseDirectory = baseDirectory
        self.file = file
    }
}

/// Reads, decodes and checks a manifest, reporting every error it finds in one pass:
/// unreadable file, YAML syntax, unknown keys and wrong types anywhere (plugin configs
/// included, each decoded by its plugin type), unknown plugin ids, duplicate ids, and
/// roles some plugin requires that no enabled plugin provides.
///
/// The environment is an input: `${NAME}` references in values are resolved in it (see
/// ``ManifestEnvironment``; an unset variable is an error naming file, line and path, and
/// nothing is decoded until every reference resolves), and `node.name`, when the
/// manifest leaves it out, is its `NODE_NAME` if set and not empty (the host name
/// otherwise). The default is the process environment.
public enum ManifestLoader {
    /// Loads the manifest at `path`; its directory becomes the plan's base directory.
    public static func load(
        path: String, registry: PluginRegistry, environment: [String: String] = ManifestEnvironment.process
    ) throws(ConfigErrors) -> ManifestPlan {
        let yaml = try ConfigFile.read(path)
        return try load(
            yaml: yaml, file: path, baseDirectory: ConfigFile.directory(of: path), registry: registry,
            environment: environment)
    }

    /// Loads a manifest from text; `file` names it in errors.
    public static func load(
        yaml: String, file: String, baseDirectory: String, registry: PluginRegistry,
        environment: [String: String] = ManifestEnvironment.process
    ) throws(ConfigErrors) -> ManifestPlan {
        var root = try ConfigNode.parse(yaml: yaml, file: file)
        if let value = root.value {
            let (substituted, substitutionErrors) = ManifestEnvironment.substitute(
                value, environment: environment, file: file)
            if !substitutionErrors.isEmpty { throw ConfigErrors(substitutionErrors.sortedByLine()) }
            root.value = substituted
        }
        var errors: [ConfigError] = []

        func decode<T: Decodable>(_ type: T.Type, _ node: ConfigNode) -> T? {
            do {
                return try ConfigDecoder.decode(type, from: node)
            } catch {
                errors.append(contentsOf: error.errors)
                return nil
            }
        }

        // Sections are decoded one by one so a mistake in one does not hide the others;
        // an unknown top-level key does not stop the rest either.
        let (decodedSections, sectionErrors) = ConfigDecoder.decodeCollecting(Sections.self, from: root)
        errors.append(contentsOf: sectionErrors)
        guard let sections = decodedSections else {
            throw ConfigErrors(errors)
        }
        var node = sections.node.value == nil ? Manifest.NodeSettings() : decode(Manifest.NodeSettings.self, sections.node)
        if sections.node.value?["name"] == nil, let name = environment["NODE_NAME"], !name.isEmpty {
            node?.name = name
        }
        let logging = decode(Manifest.LoggingSettings.self, sections.logging)
        let admin = sections.admin.value == nil ? nil : decode(Manifest.AdminSettings.self, sections.admin)
        let rawEntries = decode([ConfigNode].self, sections.plugins) ?? []

        var entries: [PluginEntry] = []
        var planned: [ManifestPlan.Entry] = []
        var firstByID: [String: PluginEntry] = [:]
        for (index, raw) in rawEntries.enumerated() {
            // Label the entry with its id before decoding it, so even errors inside it
            // read `plugins[2] (hbone)…`.
            let peekedID = raw.value?["id"]?.scalarText
            let label = peekedID.map { "plugins[\(index)] (\($0))" } ?? "plugins[\(index)]"
            let labelled = ConfigNode(value: raw.value, path: label, file: file, line: raw.line)
            guard let decoded = decode(RawEntry.self, labelled) else { continue }
            let entry = PluginEntry(id: decoded.id, config: decoded.config, index: index, line: raw.line)
            entries.append(entry)

            if let first = firstByID[entry.id] {
                let firstLine = first.line.map { " (line \($0))" } ?? ""
                errors.append(ConfigError(
                    file: file, line: entry.line, path: entry.label,
                    message: "duplicate plugin id \"\(entry.id)\", first at \(first.label)\(firstLine)"))
                continue
            }
            firstByID[entry.id] = entry

            guard let type = registry.type(id: entry.id) else {
                let known = registry.ids.isEmpty ? "none" : registry.ids.joined(separator: ", ")
                errors.append(ConfigError(
                    file: file, line: raw.value?["id"]?.line ?? entry.line, path: "plugins[\(index)].id",
                    message: "unknown plugin \"\(entry.id)\": not compiled into this binary (compiled in: \(known)); "
                        + "compose a binary with it: swift package compose, see SDK/README.md"))
                continue
            }
            for mismatch in type.roleMismatches {
                errors.append(ConfigError(file: file, line: entry.line, path: entry.label, message: "plugin \"\(entry.id)\": \(mismatch)"))
            }
            do {
                let config = try type.decode(entry.config)
                planned.append(ManifestPlan.Entry(entry: entry, type: type, config: config))
            } catch let configErrors as ConfigErrors {
                errors.append(contentsOf: configErrors.errors)
            } catch {
                errors.append(ConfigError(file: file, line: entry.config.line, path: entry.config.path, message: "\(error)"))
            }
        }

        // Roles are checked against every entry whose plugin is known, even one whose
        // config failed, so a config typo does not also produce role noise.
        let typed = entries.compactMap { entry in registry.type(id: entry.id).map { (entry, $0) } }
        var provided = typed.reduce(into: Set<PluginRole>()) { $0.formUnion($1.1.provides) }
        let required = typed.reduce(into: Set<PluginRole>()) { $0.formUnion($1.1.requires) }

        // A role's default implementation (the node proxy's tunnel terminator) joins, with
        // its default config, when a listed plugin requires the role, no listed plugin
        // provides it, and the manifest does not list the default itself.
        for type in registry.all
        where type.enabledByDefault && firstByID[type.id] == nil && provided.isDisjoint(with: type.provides)
            && !required.isDisjoint(with: type.provides)
        {
            let entry = PluginEntry(
                id: type.id, config: ConfigNode(value: nil, path: "\(type.id) (enabled by default).config", file: file),
                index: rawEntries.count + planned.count, line: nil)
            do {
                planned.append(ManifestPlan.Entry(entry: entry, type: type, config: try type.decode(entry.config)))
                provided.formUnion(type.provides)
            } catch let configErrors as ConfigErrors {
                errors.append(contentsOf: configErrors.errors)
            } catch {
                errors.append(ConfigError(file: file, line: nil, path: entry.config.path, message: "\(error)"))
            }
        }
        var checked = Set<String>()
        for (entry, type) in typed where checked.insert(entry.id).inserted {
            for role in type.requires.sorted() where !provided.contains(role) {
                errors.append(ConfigError(
                    file: file, line: entry.line, path: entry.label,
                    message: "requires role \"\(role)\", which no enabled plugin provides"))
            }
        }

        guard errors.isEmpty, let node, let logging else {
            throw ConfigErrors(errors.sortedByLine())
        }
        let manifest = Manifest(node: node, logging: logging, admin: admin, plugins: entries)
        return ManifestPlan(manifest: manifest, entries: planned, baseDirectory: baseDirectory, file: file)
    }

    /// The top level, with each section kept raw: only unknown top-level keys are
    /// checked here.
    private struct Sections: Decodable {
        var node: ConfigNode
        var logging: ConfigNode
        var admin: ConfigNode
        var plugins: ConfigNode

        enum CodingKeys: String, CodingKey, CaseIterable {
            case node, logging, admin, plugins
        }
    }

    /// One `plugins:` entry before its config is decoded.
    private struct RawEntry: Decodable {
        var id: String
        var config: ConfigNode

        enum CodingKeys: String, CodingKey, CaseIterable {
            case id, config
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            id = try container.decode(String.self, forKey: .id)
            config = try container.decode(ConfigNode.self, forKey: .config)
            if id.isEmpty {
                throw DecodingError.dataCorruptedError(forKey: .id, in: container, debugDescription: "must not be empty")
            }
        }
    }
}

extension [ConfigError] {
    /// Document order, stable; errors without a line last.
    func sortedByLine() -> [ConfigError] {
        enumerated().sorted { lhs, rhs in
            let l = lhs.element.line ?? .max
            let r = rhs.element.line ?? .max
            return l != r ? l < r : lhs.offset < rhs.offset
        }.map(\.element)
    }
}
