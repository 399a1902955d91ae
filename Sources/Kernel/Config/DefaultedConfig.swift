/// A config type whose defaults are its property initializers.
///
/// ```swift
/// public struct Config: DefaultedConfig, Sendable {
///     public var port: UInt16 = 15008
///     public var timeout = ConfigDuration(.seconds(5))
///     public var mark: UInt32?
///     public init() {}
///
///     public func validate() -> [ConfigProblem] {
///         port == 0 ? [ConfigProblem(at: "port", "must not be 0")] : []
///     }
/// }
/// ```
///
/// No `init(from:)` is written: the compiler synthesizes one, and ``ConfigDecoder`` makes
/// it apply the defaults. When it decodes a `DefaultedConfig` it builds `Self()` and, for
/// a key that is absent or null, supplies that instance's value of the property named like
/// the key (found with `Mirror`), so each default is stated once. In detail:
///
/// - A non-optional property takes its default when its key is absent or null.
/// - An optional property takes its default (normally nil) when its key is absent; an
///   explicit null makes it nil, so `address: null` can turn off something that is on by
///   default.
/// - Unknown keys are errors listing the allowed keys: the key type's cases when it is
///   `CaseIterable`, otherwise the property names of `Self()` that the key type accepts,
///   in declaration order.
/// - After the value is decoded, ``ConfigValidating/validate()`` runs and each problem is
///   an error with the file, the line of the value it names and its path.
///
/// A type that parses a form of its own may keep a hand-written `init(from:)` and still
/// conform, for the allowed-keys list and ``ConfigValidating/validate()``: there
/// `decodeIfPresent` of an absent key gives the property's default when the property is
/// optional of the type asked for, nil otherwise, and `decode` of an absent or null key
/// gives the default of the property of that name and type.
///
/// Limitations:
/// - The key's `stringValue` must be the property's name: custom `CodingKeys` with other
///   raw values (`case port = "listenPort"`) find no default, and an absent key is then
///   reported as missing, naming the type. A property wrapper's storage (`_port`) is
///   found under the wrapped property's name, its default being the wrapper value.
/// - Stored properties only, of a struct (a class's superclass properties are not
///   looked at).
/// - Other decoders (`JSONDecoder`) run the synthesized `init(from:)` without this help:
///   they need every non-optional key and never call `validate()`.
public protocol DefaultedConfig: Decodable, ConfigValidating {
    /// The all-defaults value: what an empty mapping decodes to.
    init()
}

extension DefaultedConfig {
    /// No cross-field checks by default.
    public func validate() -> [ConfigProblem] { [] }
}

/// A config type with checks across its fields, run by ``ConfigDecoder`` right after it
/// decoded the value, so the problems carry the file, line and path.
///
/// Checks that need runtime state (other plugins, files on disk) do not belong here; they
/// stay in the plugin's `provision()` or `validate()`.
public protocol ConfigValidating {
    /// What is wrong with this value; empty when nothing is. Each problem names the key
    /// below this value it is about (empty for the value itself).
    func validate() -> [ConfigProblem]
}

/// One problem a ``ConfigValidating/validate()`` found: where below the validated value,
/// and what is wrong.
public struct ConfigProblem: Sendable, Hashable, CustomStringConvertible {
    /// The path below the validated value, e.g. `http2.maxFrameSize` or `workloads[2]`;
    /// empty for the value itself.
    public var path: String
    /// What is wrong, and where possible what is expected.
    public var message: String

    /// A problem at `path` below the validated value (`""`: the value itself).
    public init(at path: String = "", _ message: String) {
        self.path = path
        self.message = message
    }

    /// The same problem seen from the value that holds this one under `key`: for
    /// checking a nested config in code, e.g. `config.inPod.validate().map { $0.under("inPod") }`.
    public func under(_ key: String) -> ConfigProblem {
        ConfigProblem(at: path.isEmpty ? key : path.hasPrefix("[") ? key + path : "\(key).\(path)", message)
    }

    /// `path: message`, or the message alone for the value itself.
    public var description: String { path.isEmpty ? message : "\(path): \(message)" }

    /// The coding keys of ``path``: dot-separated names, each optionally followed by
    /// `[index]`s.
    var codingKeys: [any CodingKey] {
        var keys: [any CodingKey] = []
        for part in path.split(separator: ".") {
            var name = Substring(part)
            var indexes: [Int] = []
            while name.hasSuffix("]"), let open = name.lastIndex(of: "["),
                let index = Int(name[name.index(after: open)..<name.index(before: name.endIndex)])
            {
                indexes.insert(index, at: 0)
                name = name[..<open]
            }
            if !name.isEmpty { keys.append(MappingKey(String(name))) }
            keys += indexes.map { IndexKey($0) as any CodingKey }
        }
        return keys
    }
}

/// The default instance of a ``DefaultedConfig`` being decoded, by property name.
struct ConfigDefaults {
    let typeName: String
    /// Property names in declaration order, with their default values.
    private let properties: [(label: String, value: Any)]

    init(_ instance: any DefaultedConfig) {
        typeName = String(describing: type(of: instance))
        properties = Mirror(reflecting: instance).children.compactMap { child in
            child.label.map { (label: $0, value: child.value) }
        }
    }

    /// The default of the property `key` names, or of the property wrapper storing it.
    func value(for key: String) -> Any? {
        if let found = properties.first(where: { $0.label == key }) { return found.value }
        return properties.first { $0.label == "_" + key }?.value
    }

    /// The property names `Key` accepts, in declaration order.
    func keys<Key: CodingKey>(for _: Key.Type) -> [String] {
        properties.compactMap { property in
            if Key(stringValue: property.label) != nil { return property.label }
            let unwrapped = String(property.label.dropFirst())
            if property.label.hasPrefix("_"), Key(stringValue: unwrapped) != nil { return unwrapped }
            return nil
        }
    }
}
