import AmbitRuntime
import Foundation
import Kernel
import Testing
import ConfigYAML

/// A listener config like a plugin would write, with CaseIterable keys so unknown-key
/// errors list what is allowed.
private struct ListenerConfig: Decodable, Equatable {
    var listen: SocketAddr
    var port: UInt16
    var name: String
    var enabled: Bool

    enum CodingKeys: String, CodingKey, CaseIterable {
        case listen, port, name, enabled
    }
}

/// Everything optional, for the all-defaults and null cases.
private struct Defaults: Decodable {
    var timeout: ConfigDuration?
    var label: String?
    var ports: [UInt16: UInt16]?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case timeout, label, ports
    }
}

/// Defaults in the property initializers, no `init(from:)`.
private struct Listener: DefaultedConfig, Equatable {
    var port: UInt16 = 15008
    var name = "default"
    var enabled = true
    var timeout = ConfigDuration(.seconds(5))
    var deadline: Duration = .seconds(1)
    var tags: [String] = ["a"]
    var mark: UInt32?
    var address: SocketAddr? = SocketAddr("127.0.0.1:15000")
    var tls = TLS()

    struct TLS: DefaultedConfig, Equatable {
        var minimum = "1.3"
        var handshakes = 64
        var windows = Windows()

        func validate() -> [ConfigProblem] {
            handshakes < 1 ? [ConfigProblem(at: "handshakes", "must be at least 1")] : []
        }
    }

    struct Windows: DefaultedConfig, Equatable {
        var stream = 65_535
        var connection = 65_535

        func validate() -> [ConfigProblem] {
            connection < stream ? [ConfigProblem("connection must be at least stream")] : []
        }
    }

    func validate() -> [ConfigProblem] {
        var problems: [ConfigProblem] = []
        if port == 0 { problems.append(ConfigProblem(at: "port", "must not be 0")) }
        if !enabled && mark != nil { problems.append(ConfigProblem("mark needs enabled: true")) }
        if tags.contains("") { problems.append(ConfigProblem(at: "tags[\(tags.firstIndex(of: "")!)]", "must not be empty")) }
        return problems
    }
}

/// Custom raw values cannot be matched with property names.
private struct Renamed: DefaultedConfig {
    var port: UInt16 = 1
    enum CodingKeys: String, CodingKey { case port = "listenPort" }
}

/// A property wrapper's storage is found under the wrapped name.
@propertyWrapper
private struct Clamped: Decodable, Equatable {
    var wrappedValue: Int
    init(wrappedValue: Int) { self.wrappedValue = min(wrappedValue, 10) }
    init(from decoder: any Decoder) throws { self.init(wrappedValue: try decoder.singleValueContainer().decode(Int.self)) }
}

private struct Wrapped: DefaultedConfig {
    @Clamped var level = 3
    var other = 1
}

/// A hand-written `init(from:)` decoding another type than it stores still works.
private struct Converting: DefaultedConfig {
    var timeout: Duration = .seconds(3)
    var label: String?
    init() {}
    init(from decoder: any Decoder) throws {
        enum Keys: String, CodingKey { case timeout, label }
        let c = try decoder.container(keyedBy: Keys.self)
        timeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .timeout)?.duration ?? .seconds(3)
        label = try c.decodeIfPresent(String.self, forKey: .label)
    }
}

private func errors<T: Decodable>(_ type: T.Type, _ yaml: String, path: String = "") -> [ConfigError] {
    do {
        _ = try ConfigDecoder.decode(type, yaml: yaml, file: "test.yaml", path: path)
        return []
    } catch {
        return error.errors
    }
}

@Suite("ConfigDecoder")
struct ConfigDecoderTests {
    @Test("decodes scalars, addresses and nested values")
    func decodesGoodConfig() throws {
        let yaml = """
            listen: 127.0.0.1:8080
            port: 65535
            name: "hello"
            enabled: true
            """
        let config = try ConfigDecoder.decode(ListenerConfig.self, yaml: yaml, file: "t.yaml")
        #expect(config == ListenerConfig(listen: SocketAddr("127.0.0.1:8080")!, port: 65535, name: "hello", enabled: true))
    }

    @Test("every unknown key is reported with its path, line and the allowed keys")
    func unknownKeys() {
        let yaml = """
            listen: 127.0.0.1:1
            port: 1
            name: x
            enabled: false
            lisen: 1.2.3.4:5
            colour: red
            """
        let found = errors(ListenerConfig.self, yaml, path: "plugins[2] (hbone).config")
        #expect(found.count == 2)
        #expect(found.first?.line == 5)
        #expect(found.first?.path == "plugins[2] (hbone).config.lisen")
        #expect(found.first?.message.contains("did you mean \"listen\"") == true)
        #expect(found.first?.message.contains("allowed: listen, port, name, enabled") == true)
        #expect(found.last?.description == "test.yaml:6: plugins[2] (hbone).config.colour: unknown key \"colour\" (allowed: listen, port, name, enabled)")
    }

    @Test("custom init errors keep their message, path and line")
    func dataCorrupted() {
        let yaml = """
            port: 1
            name: x
            enabled: true
            listen: x
            """
        let found = errors(ListenerConfig.self, yaml, path: "plugins[2] (hbone).config")
        #expect(found.map(\.description) == ["test.yaml:4: plugins[2] (hbone).config.listen: expected host:port, got \"x\""])
    }

    @Test("type mismatches and integer ranges")
    func typeErrors() {
        let range = errors(ListenerConfig.self, "listen: 1.1.1.1:1\nport: 70000\nname: a\nenabled: true")
        #expect(range.map(\.description) == ["test.yaml:2: port: expected an integer 0…65535, got 70000"])

        let notInt = errors(ListenerConfig.self, "listen: 1.1.1.1:1\nport: eighty\nname: a\nenabled: true")
        #expect(notInt.first?.message == "expected an integer 0…65535, got \"eighty\"")

        let quoted = errors(ListenerConfig.self, "listen: 1.1.1.1:1\nport: \"80\"\nname: a\nenabled: true")
        #expect(quoted.first?.message.contains("quoted") == true)

        let yes = errors(ListenerConfig.self, "listen: 1.1.1.1:1\nport: 80\nname: a\nenabled: yes")
        #expect(yes.first?.message == "expected true or false, got \"yes\"")
        #expect(yes.first?.line == 4)

        let mapping = errors(ListenerConfig.self, "listen: 1.1.1.1:1\nport: 80\nname: {a: 1}\nenabled: true")
        #expect(mapping.first?.message == "expected a string, got a mapping")

        let notMapping = errors(ListenerConfig.self, "- 1\n- 2")
        #expect(notMapping.first?.message == "expected a mapping, got a sequence")
    }

    @Test("a missing required key names the mapping and its line")
    func missingKey() {
        let found = errors([ListenerConfig].self, "- listen: 1.1.1.1:1\n  port: 1\n  name: a\n- listen: 1.1.1.1:1\n  port: 2\n  enabled: true\n  name: b")
        #expect(found.map(\.description) == ["test.yaml:1: [0]: missing required key \"enabled\""])
    }

    @Test("errors in later list elements are reported too")
    func continuesAfterFailedElement() {
        let yaml = """
            - {listen: 1.1.1.1:1, port: 1, name: a, enabled: maybe}
            - {listen: nope, port: 1, name: b, enabled: true}
            - {listen: 1.1.1.1:1, port: -1, name: c, enabled: true, extra: 1}
            """
        let found = errors([ListenerConfig].self, yaml, path: "items")
        // Within one line, unknown keys come first: they are found when the mapping opens.
        #expect(found.map(\.path) == ["items[0].enabled", "items[1].listen", "items[2].extra", "items[2].port"])
        #expect(found.map(\.line) == [1, 2, 3, 3])
    }

    @Test("an absent node decodes as an empty mapping; absent and null optionals are nil")
    func absentAndNull() throws {
        let absent = try ConfigDecoder.decode(Defaults.self, from: ConfigNode(value: nil, path: "x", file: "t.yaml"))
        #expect(absent.timeout == nil && absent.label == nil && absent.ports == nil)
        let nulls = try ConfigDecoder.decode(Defaults.self, yaml: "timeout: null\nlabel: ~\nports:", file: "t.yaml")
        #expect(nulls.timeout == nil && nulls.label == nil && nulls.ports == nil)
        let empty = try ConfigDecoder.decode(Defaults.self, yaml: "", file: "t.yaml")
        #expect(empty.label == nil)
    }

    @Test("dictionaries with integer keys decode from YAML mappings")
    func integerKeyedDictionaries() throws {
        let ports = try ConfigDecoder.decode([UInt16: UInt16].self, yaml: "{80: 8080, 443: 0}", file: "t.yaml")
        #expect(ports == [80: 8080, 443: 0])
        let ints = try ConfigDecoder.decode([Int: String].self, yaml: "1: a\n2: b", file: "t.yaml")
        #expect(ints == [1: "a", 2: "b"])
        let strings = try ConfigDecoder.decode([String: Int].self, yaml: "a.b/c: 1", file: "t.yaml")
        #expect(strings == ["a.b/c": 1])

        let bad = errors(Defaults.self, "ports:\n  80: 8080\n  70000: 1\n  81: x")
        #expect(bad.map(\.description) == [
            "test.yaml:3: ports.70000: expected an integer 0…65535, got 70000",
        ])
        let namespaced = errors([NamespacedHostname: Int].self, "\"default/a\": 1\nnoslash: 2")
        #expect(namespaced.map(\.description) == ["test.yaml:2: noslash: expected namespace/hostname, got \"noslash\""])
    }

    @Test("duplicate keys are errors with a line")
    func duplicateKeys() {
        let found = errors(ListenerConfig.self, "listen: 1.1.1.1:1\nport: 1\nport: 2\nname: a\nenabled: true")
        #expect(found.count == 1)
        #expect(found.first?.message.contains("duplicate key \"port\"") == true)
        #expect(found.first?.line != nil)
        let quoted = errors([String: Int].self, "80: 1\n\"80\": 2")
        #expect(quoted.first?.description == "test.yaml:2: 80: duplicate key \"80\" (first at line 1)")
    }

    @Test("YAML syntax errors carry line and column")
    func syntaxError() {
        let found = errors(ListenerConfig.self, "listen: 1.1.1.1:1\nport: [1, 2\nname: a")
        #expect(found.count == 1)
        #expect(found.first?.line != nil && found.first?.column != nil)
        #expect(found.first?.message.hasPrefix("invalid YAML") == true)
    }

    @Test("ConfigNode captures the raw YAML at its position with its path")
    func rawNodes() throws {
        struct Holder: Decodable {
            var id: String
            var config: ConfigNode
        }
        let holder = try ConfigDecoder.decode(Holder.self, yaml: "id: a\nconfig:\n  listen: x\n  port: 2", file: "m.yaml", path: "plugins[0]")
        #expect(holder.config.path == "plugins[0].config")
        #expect(holder.config.line == 3)
        #expect(holder.config.value?["port"]?.scalarText == "2")
        #expect(holder.config.node != nil)
        // Decoding the captured node later reports against the original file and path.
        do {
            _ = try ConfigDecoder.decode(ListenerConfig.self, from: holder.config)
            Issue.record("expected errors")
        } catch {
            #expect(error.errors.first?.description == "m.yaml:3: plugins[0].config.listen: expected host:port, got \"x\"")
        }

        let absent = try ConfigDecoder.decode(Holder.self, yaml: "id: a", file: "m.yaml", path: "plugins[1]")
        #expect(absent.config.value == nil)
        #expect(absent.config.path == "plugins[1].config")
    }

    @Test("durations", arguments: zip(
        ["5s", "500ms", "2m", "1h", "1.5s", "250us", "7", "0.25"],
        [Duration.seconds(5), .milliseconds(500), .seconds(120), .seconds(3600), .milliseconds(1500), .microseconds(250), .seconds(7), .milliseconds(250)]))
    func durations(text: String, expected: Duration) throws {
        struct Holder: Decodable { var timeout: ConfigDuration }
        let holder = try ConfigDecoder.decode(Holder.self, yaml: "timeout: \(text)", file: "t.yaml")
        #expect(holder.timeout.duration == expected)
    }

    @Test("bad durations say what is expected")
    func badDurations() {
        struct Holder: Decodable { var timeout: ConfigDuration }
        for text in ["5 sec", "-1s", "s", "fast"] {
            let found = errors(Holder.self, "timeout: \(text)")
            #expect(found.first?.path == "timeout")
            #expect(found.first?.message.hasPrefix("expected a duration such as \"5s\"") == true, "\(text)")
        }
        #expect(ConfigDuration(.milliseconds(1500)).description == "1500ms")
        #expect(ConfigDuration(.seconds(120)).description == "2m")
    }

    @Test("paths quote keys that are not simple names")
    func pathRendering() {
        let found = errors([String: [String: Int]].self, "\"default/echo.svc\": {a: x}")
        #expect(found.first?.path == "[\"default/echo.svc\"].a")
    }

    // MARK: DefaultedConfig

    @Test("DefaultedConfig: absent and null keys take the property initializers' values")
    func defaultsForAbsentAndNull() throws {
        let empty = try ConfigDecoder.decode(Listener.self, yaml: "", file: "t.yaml")
        #expect(empty == Listener())
        let absent = try ConfigDecoder.decode(Listener.self, from: ConfigNode(value: nil, path: "x", file: "t.yaml"))
        #expect(absent == Listener())
        let nulls = try ConfigDecoder.decode(
            Listener.self, yaml: "port: null\nname: ~\nenabled:\ntimeout: null\ndeadline: null\ntags: null\ntls: null", file: "t.yaml")
        #expect(nulls == Listener())
    }

    @Test("DefaultedConfig: present keys override, nested configs keep their own defaults")
    func presentKeysOverride() throws {
        let yaml = """
            port: 80
            timeout: 250ms
            deadline: 2m
            tags: [x, y]
            mark: 1337
            tls:
              minimum: "1.2"
              windows: {stream: 100000, connection: 200000}
            """
        let config = try ConfigDecoder.decode(Listener.self, yaml: yaml, file: "t.yaml")
        var expected = Listener()
        expected.port = 80
        expected.timeout = ConfigDuration(.milliseconds(250))
        expected.deadline = .seconds(120)
        expected.tags = ["x", "y"]
        expected.mark = 1337
        expected.tls.minimum = "1.2"
        expected.tls.windows = .init(stream: 100_000, connection: 200_000)
        #expect(config == expected)
        // A nested mapping with some keys: the rest are the nested type's defaults.
        let partial = try ConfigDecoder.decode(Listener.self, yaml: "tls: {handshakes: 3}", file: "t.yaml")
        #expect(partial.tls.handshakes == 3 && partial.tls.minimum == "1.3" && partial.tls.windows == Listener.Windows())
    }

    @Test("DefaultedConfig: optionals are their default when absent and nil when null")
    func optionals() throws {
        let absent = try ConfigDecoder.decode(Listener.self, yaml: "port: 1", file: "t.yaml")
        #expect(absent.mark == nil)
        #expect(absent.address == SocketAddr("127.0.0.1:15000"))
        let null = try ConfigDecoder.decode(Listener.self, yaml: "address: null\nmark: ~", file: "t.yaml")
        #expect(null.address == nil && null.mark == nil)
        let set = try ConfigDecoder.decode(Listener.self, yaml: "address: 10.0.0.1:1", file: "t.yaml")
        #expect(set.address == SocketAddr("10.0.0.1:1"))
    }

    @Test("DefaultedConfig: unknown keys are errors listing the property names")
    func defaultedUnknownKeys() {
        let found = errors(Listener.self, "prot: 1\ntls:\n  windws: {}", path: "plugins[0] (x).config")
        #expect(found.map(\.description) == [
            "test.yaml:1: plugins[0] (x).config.prot: unknown key \"prot\"; did you mean \"port\"? "
                + "(allowed: port, name, enabled, timeout, deadline, tags, mark, address, tls)",
            "test.yaml:3: plugins[0] (x).config.tls.windws: unknown key \"windws\"; did you mean \"windows\"? "
                + "(allowed: minimum, handshakes, windows)",
        ])
    }

    @Test("DefaultedConfig: type errors keep file, line and path")
    func defaultedTypeErrors() {
        #expect(errors(Listener.self, "name: a\nport: 70000").map(\.description) == [
            "test.yaml:2: port: expected an integer 0…65535, got 70000"
        ])
        #expect(errors(Listener.self, "name: a\ntls:\n  handshakes: many", path: "p").map(\.description) == [
            "test.yaml:3: p.tls.handshakes: expected an integer \(Int.min)…\(Int.max), got \"many\""
        ])
        #expect(errors(Listener.self, "deadline: soon").map(\.description) == [
            "test.yaml:1: deadline: expected a duration such as \"5s\", \"500ms\", \"2m\", \"1h\" or a number of seconds, got \"soon\""
        ])
        #expect(errors(Listener.self, "tags: x").first?.message == "expected a sequence, got \"x\"")
    }

    @Test("validate(): problems carry the file, the line of the value they name, and its path")
    func validateProblems() {
        let yaml = """
            name: a
            port: 0
            enabled: false
            mark: 1
            tags: [x, ""]
            tls:
              handshakes: 0
              windows:
                stream: 10
                connection: 5
            """
        let found = errors(Listener.self, yaml, path: "plugins[1] (x).config")
        #expect(Set(found.map(\.description)) == [
            "test.yaml:1: plugins[1] (x).config: mark needs enabled: true",
            "test.yaml:2: plugins[1] (x).config.port: must not be 0",
            "test.yaml:5: plugins[1] (x).config.tags[1]: must not be empty",
            "test.yaml:7: plugins[1] (x).config.tls.handshakes: must be at least 1",
            "test.yaml:9: plugins[1] (x).config.tls.windows: connection must be at least stream",
        ])
        #expect(found.map(\.line) == found.map(\.line).sorted { ($0 ?? 0) < ($1 ?? 0) })
        // A problem about a key the document leaves out names the nearest line it has.
        let absent = errors(Listener.self, "tls:\n  windows: {stream: 100000}\n", path: "")
        #expect(absent.map(\.description) == ["test.yaml:2: tls.windows: connection must be at least stream"])
        // Defaults are not validated again: an all-defaults config is fine.
        #expect(errors(Listener.self, "").isEmpty)
    }

    @Test("DefaultedConfig: custom raw coding keys find no default and say so; property wrappers work")
    func limitations() throws {
        let renamed = errors(Renamed.self, "")
        #expect(renamed.count == 1)
        #expect(renamed.first?.message.contains("Renamed has no property \"listenPort\"") == true)
        #expect(try ConfigDecoder.decode(Renamed.self, yaml: "listenPort: 7", file: "t.yaml").port == 7)

        let wrapped = try ConfigDecoder.decode(Wrapped.self, yaml: "other: 2", file: "t.yaml")
        #expect(wrapped.level == 3 && wrapped.other == 2)
        #expect(try ConfigDecoder.decode(Wrapped.self, yaml: "level: 50", file: "t.yaml").level == 10)
        #expect(errors(Wrapped.self, "levle: 1").first?.message.contains("(allowed: level, other)") == true)
    }

    @Test("DefaultedConfig with a hand-written init(from:) that converts types")
    func handWritten() throws {
        let absent = try ConfigDecoder.decode(Converting.self, yaml: "", file: "t.yaml")
        #expect(absent.timeout == .seconds(3) && absent.label == nil)
        let present = try ConfigDecoder.decode(Converting.self, yaml: "timeout: 2s\nlabel: x", file: "t.yaml")
        #expect(present.timeout == .seconds(2) && present.label == "x")
        #expect(errors(Converting.self, "tmeout: 1s").first?.message.contains("(allowed: timeout, label)") == true)
    }

    @Test("DefaultedConfig with another decoder: every non-optional key is needed")
    func otherDecoders() throws {
        struct Small: DefaultedConfig, Equatable {
            var port: UInt16 = 1
            var mark: UInt32?
        }
        let json = JSONDecoder()
        #expect(try json.decode(Small.self, from: Data(#"{"port": 5}"#.utf8)) == Small(port: 5))
        #expect(throws: DecodingError.self) { try json.decode(Small.self, from: Data("{}".utf8)) }
    }
}
