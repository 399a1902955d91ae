import AmbitRuntime
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
}
