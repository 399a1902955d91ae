import Yams

/// A YAML value as the config decoder sees it: scalars keep their text and whether they
/// were quoted, collections keep document order, and every value keeps its line.
///
/// This is a copy of the parsed `Yams.Node` tree rather than the tree itself because
/// `Yams.Node` is not `Sendable` (its tags and anchors are classes); the copy is, so a
/// plugin's raw `config:` can travel with the manifest across tasks.
public struct ConfigValue: Sendable, Hashable {
    /// One `key: value` pair of a mapping.
    public struct Entry: Sendable, Hashable {
        /// The key (normally a scalar).
        public var key: ConfigValue
        /// The value.
        public var value: ConfigValue

        /// Creates an entry.
        public init(key: ConfigValue, value: ConfigValue) {
            self.key = key
            self.value = value
        }
    }

    /// What kind of value this is.
    public enum Content: Sendable, Hashable {
        /// A scalar: its text, and whether it was written plain (unquoted, no `!!str`
        /// tag). Only plain scalars can be null, booleans or numbers.
        case scalar(String, plain: Bool)
        /// A sequence, in document order.
        case sequence([ConfigValue])
        /// A mapping, in document order.
        case mapping([Entry])
    }

    /// The value.
    public var content: Content
    /// 1-based line in the file, when known.
    public var line: Int?
    /// 1-based column in the file, when known.
    public var column: Int?

    /// Creates a value.
    public init(_ content: Content, line: Int? = nil, column: Int? = nil) {
        self.content = content
        self.line = line
        self.column = column
    }

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

    /// The scalar's text, if this is a scalar.
    public var scalarText: String? {
        if case .scalar(let text, _) = content { return text }
        return nil
    }

    /// Whether this is a plain `null`, `~` or empty scalar.
    public var isNull: Bool {
        guard case .scalar(let text, true) = content else { return false }
        return text.isEmpty || text == "~" || text == "null" || text == "Null" || text == "NULL"
    }

    /// The value under scalar key `key`, if this is a mapping that has it.
    public subscript(key: String) -> ConfigValue? {
        guard case .mapping(let entries) = content else { return nil }
        return entries.first { $0.key.scalarText == key }?.value
    }

    /// A short description of the value for messages: the scalar in quotes, or its kind.
    var summary: String {
        switch content {
        case .scalar(let text, let plain):
            if isNull { return "null" }
            let shown = text.count > 60 ? String(text.prefix(57)) + "..." : text
            return plain ? "\"\(shown)\"" : "\"\(shown)\" (quoted)"
        case .sequence: return "a sequence"
        case .mapping: return "a mapping"
        }
    }
}

/// A piece of configuration YAML with where it sits in its file: what plugins receive
/// as their raw `config:` and what ``ConfigDecoder`` decodes.
///
/// Decoding `ConfigNode` itself with ``ConfigDecoder`` (as a field of a config type)
/// captures the YAML at that position undecoded, with its path, so it can be decoded
/// later once its type is known; this is how the manifest keeps each plugin's `config:`.
public struct ConfigNode: Sendable, Decodable {
    /// The YAML value; nil when the key was absent (decodes as an empty mapping).
    public var value: ConfigValue?
    /// Its path, e.g. `plugins[2] (hbone).config`; prefixes every error inside it.
    public var path: String
    /// The file it came from, for messages.
    public var file: String
    /// The line errors about this node name: the value's own line, or for an absent
    /// value the line of the nearest enclosing one.
    public var line: Int?

    /// Creates a node from decoded YAML.
    public init(value: ConfigValue?, path: String = "", file: String, line: Int? = nil) {
        self.value = value
        self.path = path
        self.file = file
        self.line = value?.line ?? line
    }

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

    /// Only ``ConfigDecoder`` can produce a `ConfigNode`: it needs the position in the
    /// file, which other decoders do not know.
    public init(from decoder: any Decoder) throws {
        guard let strict = decoder as? StrictDecoder else {
            throw DecodingError.typeMismatch(
                ConfigNode.self,
                .init(codingPath: decoder.codingPath, debugDescription: "ConfigNode can only be decoded by ConfigDecoder"))
        }
        self = strict.configNode
    }
}

extension ConfigError {
    /// Converts a Yams parse error: the line and column of the problem, libyaml's words.
    init(yaml error: YamlError, file: String) {
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
