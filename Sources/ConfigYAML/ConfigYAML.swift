public import Kernel
public import Yams

// The YAML side of configuration: Yams' parse tree turned into the plugin API's
// `ConfigValue` / `ConfigNode`, which carry every value's line for error messages. The
// runtime reads manifests with it; plugins that read YAML files of their own (the mesh
// file, policy files) import it too. The plugin API itself knows no YAML parser.

extension ConfigValue {
    /// Converts a parsed Yams node, keeping its marks.
    public init(_ node: Yams.Node) {
        switch node {
        case .scalar(let scalar):
            let explicitString = scalar.tag.description == "tag:yaml.org,2002:str"
            let plain = (scalar.style == .plain || scalar.style == .any) && !explicitString
            self.init(.scalar(scalar.string, plain: plain), line: scalar.mark?.line, column: scalar.mark?.column)
        case .sequence(let sequence):
            self.init(.sequence(sequence.map { ConfigValue($0) }), line: sequence.mark?.line, column: sequence.mark?.column)
        case .mapping(let mapping):
            let entries = mapping.map { Entry(key: ConfigValue($0.key), value: ConfigValue($0.value)) }
            self.init(.mapping(entries), line: mapping.mark?.line, column: mapping.mark?.column)
        case .alias(let alias):
            // The parser resolves aliases to the anchored node; a bare alias node only
            // appears in hand-built trees and has nothing to decode.
            self.init(.scalar("", plain: true), line: alias.mark?.line, column: alias.mark?.column)
        }
    }

    /// The equivalent Yams node. Marks are lost: Yams does not let other modules create
    /// them.
    public var yamsNode: Yams.Node {
        switch content {
        case .scalar(let text, let plain):
            return Yams.Node(text, .implicit, plain ? .plain : .doubleQuoted)
        case .sequence(let items):
            return Yams.Node(items.map(\.yamsNode))
        case .mapping(let entries):
            return Yams.Node(entries.map { ($0.key.yamsNode, $0.value.yamsNode) })
        }
    }

}

extension ConfigNode {
    /// Creates a node from a Yams node (copied; see ``ConfigValue``).
    public init(node: Yams.Node?, path: String = "", file: String) {
        self.init(value: node.map(ConfigValue.init), path: path, file: file)
    }

    /// The value as a Yams node (rebuilt, without line marks); nil when absent.
    public var node: Yams.Node? {
        get { value?.yamsNode }
        set { value = newValue.map(ConfigValue.init) }
    }

    /// Parses one YAML document. An empty document gives an absent value. Syntax errors,
    /// duplicate keys and multiple documents become a ``ConfigErrors`` naming the line.
    public static func parse(yaml: String, file: String, path: String = "") throws(ConfigErrors) -> ConfigNode {
        let root: Yams.Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch let error as YamlError {
            throw ConfigErrors([ConfigError(yaml: error, file: file)])
        } catch {
            throw ConfigErrors([ConfigError(file: file, line: nil, path: "", message: "invalid YAML: \(error)")])
        }
        return ConfigNode(value: root.map(ConfigValue.init), path: path, file: file)
    }

}

extension ConfigError {
    /// Converts a Yams parse error: the line and column of the problem, libyaml's words.
    public init(yaml error: YamlError, file: String) {
        switch error {
        case .scanner(let context, let problem, let mark, _),
            .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            var message = "invalid YAML: \(problem)"
            if let context { message += " (\(context.text) at line \(context.mark.line))" }
            self.init(file: file, line: mark.line, column: mark.column, path: "", message: message)
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.map { "\"\($0)\"" }.joined(separator: ", ")
            self.init(
                file: file, line: context.mark.line, column: context.mark.column, path: "",
                message: "duplicate key \(keys) in a mapping (first occurrence here)")
        case .reader(let problem, _, _, _):
            self.init(file: file, line: nil, path: "", message: "unreadable YAML: \(problem)")
        default:
            self.init(file: file, line: nil, path: "", message: "invalid YAML: \(error)")
        }
    }
}

extension ConfigDecoder {
    /// Parses `yaml` and decodes `type` from it; syntax errors are reported like decoding
    /// errors.
    public static func decode<T: Decodable>(_ type: T.Type, yaml: String, file: String, path: String = "") throws(ConfigErrors) -> T {
        let node = try ConfigNode.parse(yaml: yaml, file: file, path: path)
        return try decode(type, from: node)
    }
}
