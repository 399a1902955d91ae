import AmbitRuntime

/// A manifest built in code (by a profile), written out as YAML a person can read:
/// keys in the order given, block style, a comment beside each value that says where it
/// came from, and a header.
///
/// Text values are written so that the manifest loader reads back exactly the text:
/// quoted when YAML would read them as something else, and with every `$` doubled (the
/// loader's escape, see ``ManifestEnvironment``).
public struct ManifestDocument: Sendable, Hashable {
    /// A value.
    public indirect enum Value: Sendable, Hashable {
        /// Free text (a name, a path): quoted when needed.
        case text(String)
        /// A number, boolean, duration or address written as is, unquoted.
        case literal(String)
        /// A mapping; empty is written `{}`.
        case mapping([Field])
        /// A sequence; empty is written `[]`.
        case sequence([Value])
    }

    /// One `key: value` with an optional comment.
    public struct Field: Sendable, Hashable {
        /// The key (written as is: keys are the manifest's own names).
        public var key: String
        /// The value.
        public var value: Value
        /// Written after the value (or after the key, for a mapping or sequence).
        public var comment: String?

        /// Creates a field.
        public init(_ key: String, _ value: Value, comment: String? = nil) {
            self.key = key
            self.value = value
            self.comment = comment
        }
    }

    /// Comment lines written first, without the `# `.
    public var header: [String]
    /// The top-level fields.
    public var fields: [Field]

    /// Creates a document.
    public init(header: [String] = [], fields: [Field]) {
        self.header = header
        self.fields = fields
    }

    /// The top-level value under `key`.
    public subscript(key: String) -> Value? {
        fields.first { $0.key == key }?.value
    }

    /// The document as YAML text, ending in a newline.
    public var yaml: String {
        var lines = header.map { Self.comment($0).isEmpty ? "#" : "# " + Self.comment($0) }
        Self.write(fields, indent: "", into: &lines)
        return lines.joined(separator: "\n") + "\n"
    }

    private static func write(_ fields: [Field], indent: String, firstPrefix: String? = nil, into lines: inout [String]) {
        for (index, field) in fields.enumerated() {
            // The first field of a sequence item goes on the `- ` line.
            let lead = index == 0 ? (firstPrefix ?? indent) : indent
            let note = field.comment.map { "  # " + comment($0) } ?? ""
            switch field.value {
            case .mapping(let children) where !children.isEmpty:
                lines.append("\(lead)\(field.key):\(note)")
                write(children, indent: indent + "  ", into: &lines)
            case .sequence(let items) where !items.isEmpty:
                lines.append("\(lead)\(field.key):\(note)")
                write(items, indent: indent + "  ", into: &lines)
            default:
                lines.append("\(lead)\(field.key): \(inline(field.value))\(note)")
            }
        }
    }

    private static func write(_ items: [Value], indent: String, into lines: inout [String]) {
        for item in items {
            switch item {
            case .mapping(let children) where !children.isEmpty:
                write(children, indent: indent + "  ", firstPrefix: indent + "- ", into: &lines)
            case .sequence(let nested) where !nested.isEmpty:
                lines.append("\(indent)-")
                write(nested, indent: indent + "  ", into: &lines)
            default:
                lines.append("\(indent)- \(inline(item))")
            }
        }
    }

    /// A scalar or an empty collection on one line.
    private static func inline(_ value: Value) -> String {
        switch value {
        case .text(let text): return quotedIfNeeded(ManifestEnvironment.escape(text))
        case .literal(let text): return text
        case .mapping: return "{}"
        case .sequence: return "[]"
        }
    }

    /// Words YAML (1.1 or 1.2) reads as booleans or null when plain.
    private static let reserved: Set<String> = ["true", "false", "yes", "no", "on", "off", "y", "n", "null", "~"]

    /// `text` plain when YAML reads it back as that same string, else double-quoted.
    static func quotedIfNeeded(_ text: String) -> String {
        let first = text.unicodeScalars.first
        let startsPlain = first.map { ($0.isASCII && $0.properties.isAlphabetic) || $0 == "_" || $0 == "/" } ?? false
        let allPlain = text.unicodeScalars.allSatisfy { scalar in
            scalar.isASCII
                && (scalar.properties.isAlphabetic || ("0"..."9").contains(scalar)
                    || "_./:@-".unicodeScalars.contains(scalar))
        }
        let plain = startsPlain && allPlain && !text.hasSuffix(":") && !reserved.contains(text.lowercased())
        return plain ? text : doubleQuoted(text)
    }

    private static func doubleQuoted(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7f {
                    out += "\\x" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    /// A comment's text on one line: control characters (a newline in an environment
    /// value) written as escapes, so nothing leaves the comment.
    private static func comment(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            if scalar == "\n" {
                out += "\\n"
            } else if scalar.value < 0x20 || scalar.value == 0x7f {
                out += "\\x" + String(scalar.value, radix: 16)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
