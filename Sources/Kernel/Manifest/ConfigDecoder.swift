// INTERFACE PLACEHOLDER, replaced by the strict YAML decoder (manifest work in progress).
import Yams

/// A piece of configuration YAML with where it sits in its file.
public struct ConfigNode: @unchecked Sendable {
    /// The YAML node; nil when the key was absent.
    public var node: Yams.Node?
    /// Its path, e.g. `plugins[2] (hbone).config`.
    public var path: String
    /// The file it came from, for messages.
    public var file: String
    public init(node: Yams.Node?, path: String, file: String) {
        self.node = node
        self.path = path
        self.file = file
    }
}

/// One configuration error with its location.
public struct ConfigError: Error, Sendable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    public var path: String
    public var message: String
    public init(file: String, line: Int?, path: String, message: String) {
        self.file = file
        self.line = line
        self.path = path
        self.message = message
    }
    public var description: String {
        let location = line.map { "\(file):\($0)" } ?? file
        return path.isEmpty ? "\(location): \(message)" : "\(location): \(path): \(message)"
    }
}

/// Every error found in one piece of configuration.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var errors: [ConfigError]
    public init(_ errors: [ConfigError]) { self.errors = errors }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

public enum ConfigDecoder {
    public static func decode<T: Decodable>(_ type: T.Type, from node: ConfigNode) throws -> T {
        throw ConfigErrors([ConfigError(file: node.file, line: nil, path: node.path, message: "not implemented")])
    }
}
