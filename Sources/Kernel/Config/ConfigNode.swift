/// A YAML value as the config decoder sees it: scalars keep their text and whether they
/// were quoted, collections keep document order, and every value keeps its line.
///
/// A copy of the parsed YAML tree (module `ConfigYAML` makes one from Yams) rather than the
/// tree itself: `Yams.Node` is not `Sendable` (its tags and anchors are classes); the copy
/// is, so a plugin's raw `config:` can travel with the manifest across tasks, and the
/// plugin API needs no YAML parser.
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
    package var summary: String {
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
