/// One configuration error with its location: `file:line: path: message`.
public struct ConfigError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The file the error is in (as given to the loader, e.g. `manifest.yaml`).
    public var file: String
    /// 1-based line, when known.
    public var line: Int?
    /// 1-based column, when known (YAML syntax errors).
    public var column: Int?
    /// Where in the document, e.g. `plugins[2] (hbone).config.listen`; empty for
    /// file-level problems.
    public var path: String
    /// What is wrong, and where possible what is expected.
    public var message: String

    /// Creates an error.
    public init(file: String, line: Int?, column: Int? = nil, path: String, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.message = message
    }

    /// Creates an error at a location captured with ``ConfigDecoder/location(of:)``.
    public init(at location: ConfigLocation, _ message: String) {
        self.init(file: location.file, line: location.line, path: location.path, message: message)
    }

    /// `file:line: path: message` (`file:line:column:` for syntax errors).
    public var description: String {
        var location = file
        if let line {
            location += ":\(line)"
            if let column { location += ":\(column)" }
        }
        return path.isEmpty ? "\(location): \(message)" : "\(location): \(path): \(message)"
    }
}

/// Every error found in one piece of configuration, in document order.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    /// The errors.
    public var errors: [ConfigError]

    /// Wraps a list of errors.
    public init(_ errors: [ConfigError]) { self.errors = errors }

    /// One error per line.
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// Where a decoded value sits: its file, line and rendered path. Config types capture it
/// in `init(from:)` (``ConfigDecoder/location(of:)``) to report semantic errors found
/// after decoding, such as duplicates across a list.
public struct ConfigLocation: Sendable, Hashable, CustomStringConvertible {
    /// The file.
    public var file: String
    /// 1-based line, when known.
    public var line: Int?
    /// The rendered path, e.g. `workloads[3]`.
    public var path: String

    /// Creates a location.
    public init(file: String, line: Int?, path: String) {
        self.file = file
        self.line = line
        self.path = path
    }

    /// `file:line: path`.
    public var description: String {
        let head = line.map { "\(file):\($0)" } ?? file
        return path.isEmpty ? head : "\(head): \(path)"
    }
}

/// The strict YAML decoder behind the manifest and every plugin config.
///
/// - Unknown mapping keys are errors (a key is unknown when the `CodingKey` type cannot
///   be made from it, so synthesized `CodingKeys` are strict and dictionaries take any
///   key). When the key type is `CaseIterable` the message lists the allowed keys, as it
///   does for a ``DefaultedConfig`` (its property names).
/// - A ``DefaultedConfig`` needs no `init(from:)`: absent and null keys take the values
///   of its `init()` (see there). Every ``ConfigValidating`` value is validated right
///   after it is decoded, its problems reported like decoding errors.
/// - Errors do not stop the run: unknown keys are collected while decoding goes on, and
///   after a failed element of a list or dictionary the remaining elements are still
///   decoded, so one run reports as much as it can.
/// - Every error names the file, the line (from the YAML marks) and the path, rendered
///   `prefix.a.b[2].c` after the ``ConfigNode/path`` prefix. Messages of
///   `DecodingError`s thrown by custom `init(from:)` are their `debugDescription`.
/// - Scalars: `Bool` is `true`/`false`; integers are range-checked ("expected an integer
///   0…65535, got 70000"); numbers and booleans must be plain (unquoted); any non-null
///   scalar decodes as `String`. `null`, `~` and an empty value are null. `Duration`
///   decodes from the ``ConfigDuration`` forms (`5s`, `500ms`).
/// - A null or absent mapping/sequence decodes as empty, so all-default configs work.
/// - Dictionaries decode from mappings whatever their key type: `[UInt16: UInt16]` from
///   `{80: 8080}` (Swift asks such dictionaries for alternating key/value lists; the
///   decoder presents the mapping that way), `[Int: V]` through integer coding keys.
/// - Decoding ``ConfigNode`` captures the raw YAML at that position with its path.
public enum ConfigDecoder {
    /// Decodes `type` from `node`, throwing every error found.
    public static func decode<T: Decodable>(_ type: T.Type, from node: ConfigNode) throws(ConfigErrors) -> T {
        let (value, errors) = decodeCollecting(type, from: node)
        if let value, errors.isEmpty { return value }
        throw ConfigErrors(errors)
    }

    /// Decodes `type` from `node` and returns the value, when one could be built, with
    /// every error found: for callers that go on after errors that do not prevent a
    /// value, such as unknown keys.
    public static func decodeCollecting<T: Decodable>(_ type: T.Type, from node: ConfigNode) -> (value: T?, errors: [ConfigError]) {
        let context = DecodingContext(file: node.file, prefix: node.path)
        let root = StrictDecoder(value: node.value, codingPath: [], context: context, parentLine: node.line)
        var result: T?
        do {
            result = try root.decodeValue(T.self)
        } catch is ReportedError {
            // Already recorded where it happened.
        } catch {
            root.report(error)
        }
        if result == nil && context.errors.isEmpty {
            context.record(ConfigError(file: node.file, line: node.line, path: node.path, message: "could not be decoded"))
        }
        return (result, context.sortedErrors)
    }

    /// The location of the value `decoder` is decoding, when it is a ``ConfigDecoder``
    /// decoder (nil for other decoders).
    public static func location(of decoder: any Decoder) -> ConfigLocation? {
        guard let strict = decoder as? StrictDecoder else { return nil }
        return ConfigLocation(file: strict.context.file, line: strict.line, path: strict.renderedPath)
    }

    /// Records an error at the value `decoder` is decoding without stopping decoding:
    /// for problems that leave a usable value (the caller goes on with it, the overall
    /// decode still fails). For other decoders it throws `DecodingError.dataCorrupted`.
    public static func report(_ message: String, in decoder: any Decoder) throws {
        guard let strict = decoder as? StrictDecoder else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: message))
        }
        strict.context.record(ConfigError(file: strict.context.file, line: strict.line, path: strict.renderedPath, message: message))
    }
}

// MARK: - Implementation

/// Thrown after an error was recorded, so enclosing levels unwind without recording it
/// again.
struct ReportedError: Error {}

/// Lists and dictionaries: after one element fails, the rest are still decoded.
protocol HomogeneousCollection {}
extension Array: HomogeneousCollection {}
extension Set: HomogeneousCollection {}
extension Dictionary: HomogeneousCollection {}

/// Dictionaries: a mapping may be presented as an alternating key/value list.
protocol DictionaryCollection {}
extension Dictionary: DictionaryCollection {}

/// The error sink shared by one decoding run. Decoding is synchronous, so it is never
/// shared across threads.
final class DecodingContext {
    let file: String
    let prefix: String
    private(set) var errors: [ConfigError] = []
    private var seen: Set<ConfigError> = []

    init(file: String, prefix: String) {
        self.file = file
        self.prefix = prefix
    }

    func record(_ error: ConfigError) {
        // A custom init(from:) may open the same container twice; say things once.
        if seen.insert(error).inserted { errors.append(error) }
    }

    /// Document order: by line, stable, unknown lines last.
    var sortedErrors: [ConfigError] {
        errors.enumerated().sorted { lhs, rhs in
            let l = lhs.element.line ?? .max
            let r = rhs.element.line ?? .max
            return l != r ? l < r : lhs.offset < rhs.offset
        }.map(\.element)
    }
}

/// A list position in a coding path, rendered `[i]`.
struct IndexKey: CodingKey {
    let index: Int
    init(_ index: Int) { self.index = index }
    init?(stringValue: String) { return nil }
    init?(intValue: Int) { self.index = intValue }
    var stringValue: String { "\(index)" }
    var intValue: Int? { index }
}

/// A mapping key in a coding path; integer-looking keys carry an `intValue`.
struct MappingKey: CodingKey {
    let stringValue: String
    let intValue: Int?
    init(_ text: String) {
        stringValue = text
        intValue = Int(text)
    }
    init?(stringValue: String) { self.init(stringValue) }
    init?(intValue: Int) { self.init("\(intValue)") }
}

final class StrictDecoder: Decoder {
    let value: ConfigValue?
    let codingPath: [any CodingKey]
    let context: DecodingContext
    /// The line errors about this value name: its own, or its parent's when absent.
    let line: Int?
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    /// Set when decoding a list or dictionary: keep going after a failed element.
    var homogeneous = false
    /// Set when decoding a dictionary: a mapping may be read as key, value, key, value.
    var mappingAsPairs = false
    /// Set when decoding a ``DefaultedConfig``: the values absent and null keys take.
    var defaults: ConfigDefaults?

    init(value: ConfigValue?, codingPath: [any CodingKey], context: DecodingContext, parentLine: Int?) {
        self.value = value
        self.codingPath = codingPath
        self.context = context
        self.line = value?.line ?? parentLine
    }

    func configureFor<T>(_ type: T.Type) {
        homogeneous = T.self is any HomogeneousCollection.Type
        mappingAsPairs = T.self is any DictionaryCollection.Type
        if let defaulted = T.self as? any DefaultedConfig.Type { defaults = ConfigDefaults(defaulted.init()) }
    }

    /// Decodes the value at this position as `T`, then records the problems its
    /// ``ConfigValidating/validate()`` finds, each at the position it names.
    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        // `Duration`'s own Codable form is a pair of integers; configs write "5s".
        if T.self == Duration.self, let duration = try ConfigDuration(from: self).duration as? T { return duration }
        configureFor(T.self)
        let value = try T(from: self)
        if let validating = value as? any ConfigValidating {
            for problem in validating.validate() { record(problem) }
        }
        return value
    }

    /// Records a ``ConfigProblem`` found below this value, at the line of the deepest
    /// value along its path that the document has.
    func record(_ problem: ConfigProblem) {
        let path = codingPath + problem.codingKeys
        let (line, _) = locate(path)
        context.record(ConfigError(
            file: context.file, line: line, path: Self.render(prefix: context.prefix, path: path), message: problem.message))
    }

    var renderedPath: String { Self.render(prefix: context.prefix, path: codingPath) }

    var configNode: ConfigNode {
        ConfigNode(value: value, path: renderedPath, file: context.file, line: line)
    }

    static func render(prefix: String, path: [any CodingKey]) -> String {
        var out = prefix
        for key in path {
            if let index = key as? IndexKey {
                out += "[\(index.index)]"
                continue
            }
            let name = key.stringValue
            let simple = !name.isEmpty && name.unicodeScalars.allSatisfy {
                ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-"
            }
            if simple {
                out += out.isEmpty ? name : ".\(name)"
            } else {
                let escaped = name.map { $0 == "\"" ? "\\\"" : String($0) }.joined()
                out += "[\"\(escaped)\"]"
            }
        }
        return out
    }

    // MARK: Children and errors

    /// Decodes a child value, recording any error at the child's position.
    func decodeChild<T: Decodable>(_ type: T.Type, value: ConfigValue?, key: any CodingKey) throws -> T {
        let child = StrictDecoder(value: value, codingPath: codingPath + [key], context: context, parentLine: line)
        do {
            return try child.decodeValue(T.self)
        } catch let error as ReportedError {
            throw error
        } catch {
            child.report(error)
            throw ReportedError()
        }
    }

    /// Records `error` at the position it names (relative to this decoder).
    func report(_ error: any Error) {
        switch error {
        case let errors as ConfigErrors:
            for error in errors.errors { context.record(error) }
        case let error as ConfigError:
            context.record(error)
        case let error as DecodingError:
            let (path, message): ([any CodingKey], String)
            switch error {
            case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx), .dataCorrupted(let ctx):
                path = ctx.codingPath
                message = ctx.debugDescription
            case .keyNotFound(let key, let ctx):
                path = ctx.codingPath
                message = "missing required key \"\(key.stringValue)\""
            @unknown default:
                path = codingPath
                message = "\(error)"
            }
            let (line, _) = locate(path)
            context.record(ConfigError(
                file: context.file, line: line, path: Self.render(prefix: context.prefix, path: path), message: message))
        default:
            context.record(ConfigError(file: context.file, line: line, path: renderedPath, message: "\(error)"))
        }
    }

    /// The line of the deepest existing value along `path` (which normally starts with
    /// this decoder's own path).
    func locate(_ path: [any CodingKey]) -> (Int?, ConfigValue?) {
        guard path.count >= codingPath.count else { return (line, value) }
        var current = value
        var currentLine = line
        for key in path.dropFirst(codingPath.count) {
            guard let node = current else { break }
            var next: ConfigValue?
            switch node.content {
            case .mapping(let entries):
                next = entries.first { $0.key.scalarText == key.stringValue }?.value
            case .sequence(let items):
                if let index = key.intValue, items.indices.contains(index) { next = items[index] }
            case .scalar:
                next = nil
            }
            guard let found = next else { break }
            current = found
            currentLine = found.line ?? currentLine
        }
        return (currentLine, current)
    }

    func mismatch(_ expected: String) -> DecodingError {
        let got = value?.summary ?? "nothing"
        return DecodingError.typeMismatch(Any.self, .init(codingPath: codingPath, debugDescription: "expected \(expected), got \(got)"))
    }

    // MARK: Decoder

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        let entries: [ConfigValue.Entry]
        switch value?.content {
        case nil: entries = []
        case .mapping(let list): entries = list
        case .scalar where value?.isNull == true: entries = []
        default: throw mismatch("a mapping")
        }
        return KeyedDecodingContainer(StrictKeyedContainer<Key>(decoder: self, entries: entries))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        switch value?.content {
        case nil:
            return StrictUnkeyedContainer(decoder: self, items: [])
        case .sequence(let items):
            return StrictUnkeyedContainer(decoder: self, items: items.enumerated().map { (IndexKey($0.offset) as any CodingKey, $0.element) })
        case .mapping(let entries) where mappingAsPairs:
            checkDuplicateKeys(entries)
            var items: [(any CodingKey, ConfigValue)] = []
            for entry in entries {
                let key = MappingKey(entry.key.scalarText ?? "?")
                items.append((key, entry.key))
                items.append((key, entry.value))
            }
            return StrictUnkeyedContainer(decoder: self, items: items)
        case .scalar where value?.isNull == true:
            return StrictUnkeyedContainer(decoder: self, items: [])
        default:
            throw mismatch(mappingAsPairs ? "a mapping" : "a sequence")
        }
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        StrictSingleValueContainer(decoder: self)
    }

    /// Keys that differ only in quoting (`80` and `"80"`) slip past the YAML parser's
    /// duplicate check but would silently overwrite each other here.
    func checkDuplicateKeys(_ entries: [ConfigValue.Entry]) {
        var seen: [String: Int?] = [:]
        for entry in entries {
            guard let text = entry.key.scalarText else { continue }
            if let first = seen[text] {
                let firstLine = first.map { " (first at line \($0))" } ?? ""
                context.record(ConfigError(
                    file: context.file, line: entry.key.line ?? line,
                    path: Self.render(prefix: context.prefix, path: codingPath + [MappingKey(text)]),
                    message: "duplicate key \"\(text)\"\(firstLine)"))
            } else {
                seen[text] = entry.key.line
            }
        }
    }
}

// MARK: - Keyed

struct StrictKeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let decoder: StrictDecoder
    private let entries: [String: ConfigValue]
    private let ordered: [(String, ConfigValue)]

    var codingPath: [any CodingKey] { decoder.codingPath }

    init(decoder: StrictDecoder, entries: [ConfigValue.Entry]) {
        self.decoder = decoder
        decoder.checkDuplicateKeys(entries)
        var map: [String: ConfigValue] = [:]
        var ordered: [(String, ConfigValue)] = []
        var unknown: [(String, Int?)] = []
        for entry in entries {
            guard let text = entry.key.scalarText else {
                decoder.context.record(ConfigError(
                    file: decoder.context.file, line: entry.key.line ?? decoder.line, path: decoder.renderedPath,
                    message: "mapping keys must be scalars, got \(entry.key.summary)"))
                continue
            }
            if map[text] == nil { ordered.append((text, entry.value)) }
            map[text] = map[text] ?? entry.value
            if Self.key(for: text) == nil { unknown.append((text, entry.key.line)) }
        }
        self.entries = map
        self.ordered = ordered
        if !unknown.isEmpty {
            let allowed = Self.allowedKeys ?? decoder.defaults.map { $0.keys(for: Key.self) }.flatMap { $0.isEmpty ? nil : $0 }
            for (text, line) in unknown {
                var message = "unknown key \"\(text)\""
                if let allowed {
                    if let suggestion = Self.suggestion(for: text, among: allowed) {
                        message += "; did you mean \"\(suggestion)\"?"
                    }
                    message += " (allowed: \(allowed.joined(separator: ", ")))"
                }
                decoder.context.record(ConfigError(
                    file: decoder.context.file, line: line ?? decoder.line,
                    path: StrictDecoder.render(prefix: decoder.context.prefix, path: decoder.codingPath + [MappingKey(text)]),
                    message: message))
            }
        }
    }

    private static func key(for text: String) -> Key? {
        if let key = Key(stringValue: text) { return key }
        if let number = Int(text) { return Key(intValue: number) }
        return nil
    }

    private static var allowedKeys: [String]? {
        guard let iterable = Key.self as? any (CaseIterable & CodingKey).Type else { return nil }
        return caseNames(iterable)
    }

    private static func caseNames<K: CaseIterable & CodingKey>(_ type: K.Type) -> [String] {
        K.allCases.map(\.stringValue)
    }

    /// The closest allowed key within two edits, to catch typos.
    private static func suggestion(for text: String, among allowed: [String]) -> String? {
        let scored = allowed.map { ($0, editDistance(text.lowercased(), $0.lowercased())) }
        guard let best = scored.min(by: { $0.1 < $1.1 }), best.1 <= 2 else { return nil }
        return best.0
    }

    private static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }

    var allKeys: [Key] { ordered.compactMap { Self.key(for: $0.0) } }

    func contains(_ key: Key) -> Bool { entries[key.stringValue] != nil }

    func decodeNil(forKey key: Key) throws -> Bool {
        entries[key.stringValue]?.isNull ?? true
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try decodeValue(type, forKey: key) }

    private func decodeValue<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        if let defaults = decoder.defaults, T.self != ConfigNode.self, entries[key.stringValue]?.isNull ?? true {
            return try defaultValue(T.self, forKey: key, in: defaults)
        }
        guard let value = entries[key.stringValue] else {
            if T.self == ConfigNode.self {
                // An absent plugin `config:` is an empty one; keep its would-be path.
                let path = StrictDecoder.render(prefix: decoder.context.prefix, path: codingPath + [key])
                if let node = ConfigNode(value: nil, path: path, file: decoder.context.file, line: decoder.line) as? T {
                    return node
                }
            }
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "missing"))
        }
        do {
            return try decoder.decodeChild(T.self, value: value, key: key)
        } catch {
            if decoder.homogeneous { decodeRemaining(T.self, after: key) }
            throw error
        }
    }

    /// The default instance's value of the property `key` names.
    private func defaultValue<T>(_ type: T.Type, forKey key: Key, in defaults: ConfigDefaults) throws -> T {
        guard let value = defaults.value(for: key.stringValue) as? T else {
            // A programming error in the config type, reported at the key.
            throw DecodingError.dataCorrupted(.init(
                codingPath: codingPath + [key],
                debugDescription: "\(defaults.typeName) has no property \"\(key.stringValue)\" of type \(T.self) to take "
                    + "the default from (a DefaultedConfig's coding keys must be its property names)"))
        }
        return value
    }

    func decodeIfPresent<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? { try decodeOptional(type, forKey: key) }

    /// Absent: the default instance's value, when decoding a ``DefaultedConfig`` that has
    /// an optional property of that name and type (else nil, as a hand-written
    /// `init(from:)` expects); null: nil.
    private func decodeOptional<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        guard let value = entries[key.stringValue] else {
            if let defaults = decoder.defaults, T.self != ConfigNode.self, let fallback = defaults.value(for: key.stringValue) as? T? {
                return fallback
            }
            return nil
        }
        if value.isNull { return nil }
        return try decodeValue(type, forKey: key)
    }

    func decodeIfPresent(_ type: Bool.Type, forKey key: Key) throws -> Bool? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: String.Type, forKey key: Key) throws -> String? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: Double.Type, forKey key: Key) throws -> Double? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: Float.Type, forKey key: Key) throws -> Float? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: Int.Type, forKey key: Key) throws -> Int? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: Int8.Type, forKey key: Key) throws -> Int8? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: Int16.Type, forKey key: Key) throws -> Int16? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: Int32.Type, forKey key: Key) throws -> Int32? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: Int64.Type, forKey key: Key) throws -> Int64? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: UInt.Type, forKey key: Key) throws -> UInt? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: UInt8.Type, forKey key: Key) throws -> UInt8? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: UInt16.Type, forKey key: Key) throws -> UInt16? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: UInt32.Type, forKey key: Key) throws -> UInt32? { try decodeOptional(type, forKey: key) }
    func decodeIfPresent(_ type: UInt64.Type, forKey key: Key) throws -> UInt64? { try decodeOptional(type, forKey: key) }

    /// After a dictionary value failed, check the values after it too.
    private func decodeRemaining<T: Decodable>(_ type: T.Type, after key: Key) {
        guard let position = ordered.firstIndex(where: { $0.0 == key.stringValue }) else { return }
        for (text, value) in ordered[(position + 1)...] {
            guard let later = Self.key(for: text) else { continue }
            _ = try? decoder.decodeChild(T.self, value: value, key: later)
        }
    }

    // The primitive requirements all take the generic path.
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try decodeValue(type, forKey: key) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try decodeValue(type, forKey: key) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try decodeValue(type, forKey: key) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try decodeValue(type, forKey: key) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try decodeValue(type, forKey: key) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try decodeValue(type, forKey: key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try decodeValue(type, forKey: key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try decodeValue(type, forKey: key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try decodeValue(type, forKey: key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try decodeValue(type, forKey: key) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try decodeValue(type, forKey: key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try decodeValue(type, forKey: key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try decodeValue(type, forKey: key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try decodeValue(type, forKey: key) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        try child(key).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try child(key).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder { decoder }

    func superDecoder(forKey key: Key) throws -> any Decoder { child(key) }

    private func child(_ key: Key) -> StrictDecoder {
        StrictDecoder(value: entries[key.stringValue], codingPath: codingPath + [key], context: decoder.context, parentLine: decoder.line)
    }
}

// MARK: - Unkeyed

struct StrictUnkeyedContainer: UnkeyedDecodingContainer {
    let decoder: StrictDecoder
    let items: [(key: any CodingKey, value: ConfigValue)]
    var currentIndex = 0

    init(decoder: StrictDecoder, items: [(any CodingKey, ConfigValue)]) {
        self.decoder = decoder
        self.items = items.map { (key: $0.0, value: $0.1) }
    }

    var codingPath: [any CodingKey] { decoder.codingPath }
    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    private func endError(_ type: Any.Type) -> DecodingError {
        .valueNotFound(type, .init(codingPath: codingPath, debugDescription: "expected another element, the list ended"))
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else { throw endError(Any.self) }
        if items[currentIndex].value.isNull {
            currentIndex += 1
            return true
        }
        return false
    }

    // The primitive requirements all take the generic path.
    mutating func decode(_ type: Bool.Type) throws -> Bool { try decodeGeneric(type) }
    mutating func decode(_ type: String.Type) throws -> String { try decodeGeneric(type) }
    mutating func decode(_ type: Double.Type) throws -> Double { try decodeGeneric(type) }
    mutating func decode(_ type: Float.Type) throws -> Float { try decodeGeneric(type) }
    mutating func decode(_ type: Int.Type) throws -> Int { try decodeGeneric(type) }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try decodeGeneric(type) }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try decodeGeneric(type) }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try decodeGeneric(type) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try decodeGeneric(type) }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try decodeGeneric(type) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try decodeGeneric(type) }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try decodeGeneric(type) }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try decodeGeneric(type) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try decodeGeneric(type) }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeGeneric(type) }

    private mutating func decodeGeneric<T: Decodable>(_ type: T.Type) throws -> T {
        guard !isAtEnd else { throw endError(T.self) }
        let item = items[currentIndex]
        do {
            let result = try decoder.decodeChild(T.self, value: item.value, key: item.key)
            currentIndex += 1
            return result
        } catch {
            // Lists are homogeneous: check the remaining elements as well, so a bad
            // workload does not hide the errors of the ones after it.
            if decoder.homogeneous && !decoder.mappingAsPairs {
                for later in items[(currentIndex + 1)...] {
                    _ = try? decoder.decodeChild(T.self, value: later.value, key: later.key)
                }
            }
            currentIndex = items.count
            throw error
        }
    }

    private mutating func nextChild() throws -> StrictDecoder {
        guard !isAtEnd else { throw endError(Any.self) }
        let item = items[currentIndex]
        currentIndex += 1
        return StrictDecoder(value: item.value, codingPath: codingPath + [item.key], context: decoder.context, parentLine: decoder.line)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try nextChild().container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try nextChild().unkeyedContainer()
    }

    mutating func superDecoder() throws -> any Decoder { try nextChild() }
}

// MARK: - Single value

struct StrictSingleValueContainer: SingleValueDecodingContainer {
    let decoder: StrictDecoder

    var codingPath: [any CodingKey] { decoder.codingPath }

    func decodeNil() -> Bool { decoder.value?.isNull ?? true }

    /// The text of a non-null scalar, or a type error naming `expected`.
    private func scalar(_ expected: String, plainOnly: Bool) throws -> String {
        guard let value = decoder.value else {
            throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath, debugDescription: "expected \(expected), got nothing"))
        }
        if value.isNull {
            throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath, debugDescription: "expected \(expected), got null"))
        }
        guard case .scalar(let text, let plain) = value.content, plain || !plainOnly else {
            throw decoder.mismatch(expected)
        }
        return text
    }

    func decode(_ type: Bool.Type) throws -> Bool {
        let text = try scalar("true or false", plainOnly: true)
        switch text {
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        default: throw decoder.mismatch("true or false")
        }
    }

    func decode(_ type: String.Type) throws -> String {
        try scalar("a string", plainOnly: false)
    }

    func decode(_ type: Double.Type) throws -> Double {
        let text = try scalar("a number", plainOnly: true)
        switch text {
        case ".inf", ".Inf", ".INF", "+.inf": return .infinity
        case "-.inf", "-.Inf", "-.INF": return -.infinity
        default: break
        }
        guard let number = Double(String(text.filter { $0 != "_" })), number.isFinite else {
            throw decoder.mismatch("a number")
        }
        return number
    }

    func decode(_ type: Float.Type) throws -> Float { Float(try decode(Double.self)) }

    private func integer<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        let range = "\(T.min)…\(T.max)"
        let text = try scalar("an integer \(range)", plainOnly: true)
        guard let wide = Self.parseInteger(text) else {
            throw decoder.mismatch("an integer \(range)")
        }
        guard let result = T(exactly: wide) else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "expected an integer \(range), got \(text)"))
        }
        return result
    }

    /// Decimal with optional sign and `_` separators, or `0x…`/`0o…`.
    static func parseInteger(_ text: String) -> Int128? {
        var body = Substring(text.filter { $0 != "_" })
        var negative = false
        if body.hasPrefix("-") || body.hasPrefix("+") {
            negative = body.hasPrefix("-")
            body = body.dropFirst()
        }
        guard !body.isEmpty, !body.hasPrefix("-"), !body.hasPrefix("+") else { return nil }
        let magnitude: Int128?
        if body.hasPrefix("0x") || body.hasPrefix("0X") {
            magnitude = Int128(body.dropFirst(2), radix: 16)
        } else if body.hasPrefix("0o") || body.hasPrefix("0O") {
            magnitude = Int128(body.dropFirst(2), radix: 8)
        } else {
            magnitude = Int128(body, radix: 10)
        }
        guard let magnitude else { return nil }
        return negative ? -magnitude : magnitude
    }

    func decode(_ type: Int.Type) throws -> Int { try integer(type) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(type) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(type) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(type) }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer(type) }
    func decode(_ type: UInt.Type) throws -> UInt { try integer(type) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(type) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(type) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(type) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(type) }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        // A wrapper decoding its content through a single value container shares this
        // position.
        let inner = StrictDecoder(value: decoder.value, codingPath: codingPath, context: decoder.context, parentLine: decoder.line)
        return try inner.decodeValue(T.self)
    }
}

extension ConfigDecoder {
    /// Decodes a `String` raw-value enum with a message listing its cases ("expected one
    /// of TCP, HBONE, got \"tcp\""); call it from the enum's `init(from:)`.
    public static func decodeCase<E: RawRepresentable & CaseIterable>(_ type: E.Type = E.self, from decoder: any Decoder) throws -> E
    where E.RawValue == String {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let value = E(rawValue: text) else {
            let names = E.allCases.map(\.rawValue).joined(separator: ", ")
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "expected one of \(names), got \"\(text)\"")
        }
        return value
    }
}
