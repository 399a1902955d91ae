import AmbitCLI
import AmbitRuntime
import Kernel
import LocalConfig
import Logging
import Testing

/// `${NAME}` in manifests and the `NODE_NAME` default for `node.name`.
@Suite("manifest environment")
struct ManifestEnvironmentTests {
    let registry = FirstPartyPlugins.registry

    func load(_ yaml: String, _ environment: [String: String]) throws(ConfigErrors) -> ManifestPlan {
        try ManifestLoader.load(
            yaml: yaml, file: "node.yaml", baseDirectory: "/etc/ambit", registry: registry, environment: environment)
    }

    func errors(_ yaml: String, _ environment: [String: String]) -> [String] {
        do {
            _ = try load(yaml, environment)
            Issue.record("expected the manifest to be rejected")
            return []
        } catch {
            return error.errors.map(\.description)
        }
    }

    @Test("expand: ${NAME}, ${NAME:-fallback}, $$ and a lone $")
    func expansion() {
        let environment = ["A": "alpha", "EMPTY": "", "D": "$x"]
        func expand(_ text: String) -> String? {
            try? ManifestEnvironment.expand(text, environment: environment).get()
        }
        #expect(expand("${A}") == "alpha")
        #expect(expand("pre-${A}-post") == "pre-alpha-post")
        #expect(expand("${A}${A}") == "alphaalpha")
        #expect(expand("${MISSING:-fb}") == "fb")
        #expect(expand("${EMPTY:-fb}") == "fb")
        #expect(expand("${A:-fb}") == "alpha")
        #expect(expand("${EMPTY}") == "")
        #expect(expand("${MISSING:-}") == "")
        #expect(expand("cost $$5") == "cost $5")
        #expect(expand("$${A}") == "${A}")
        #expect(expand("$HOME and $") == "$HOME and $")
        #expect(expand("${D}") == "$x", "a substituted value is not expanded again")
        #expect(expand("no references") == "no references")
    }

    @Test("expand: an unset variable, an unclosed ${ and a bad name are problems saying what to write")
    func expansionProblems() {
        func problem(_ text: String) -> ManifestEnvironment.Problem? {
            if case .failure(let problem) = ManifestEnvironment.expand(text, environment: [:]) { return problem }
            return nil
        }
        #expect(problem("${NODE_NAME}")?.variable == "NODE_NAME")
        #expect(problem("${NODE_NAME}")?.message.contains("environment variable NODE_NAME is not set") == true)
        #expect(problem("${NODE_NAME}")?.message.contains("$$") == true)
        #expect(problem("${NODE_NAME")?.message.contains("without a closing") == true)
        #expect(problem("${}")?.message.contains("expected ${NAME}") == true)
        #expect(problem("${1X}")?.message.contains("expected ${NAME}") == true)
        #expect(problem("${A B}")?.message.contains("expected ${NAME}") == true)
    }

    @Test("escape round-trips through expand")
    func escapeRoundTrip() throws {
        for text in ["plain", "$", "$$", "${A}", "a$b${c}$$"] {
            #expect(try ManifestEnvironment.expand(ManifestEnvironment.escape(text), environment: ["A": "x"]).get() == text)
        }
    }

    @Test("a manifest's values take the environment; plain scalars keep their type, quoted ones stay strings")
    func manifestSubstitution() throws {
        let plan = try load(
            """
            node:
              name: ${NODE}
              threads: ${THREADS}
              network: "${NET:-net1}"
            logging: {level: "${LEVEL}"}
            plugins:
              - id: local-config
                config:
                  path: ${MESH_DIR}/mesh.yaml
                  watch: ${WATCH}
            """,
            ["NODE": "worker-3", "THREADS": "3", "LEVEL": "debug", "MESH_DIR": "/srv/mesh", "WATCH": "false"])
        #expect(plan.manifest.node.name == "worker-3")
        #expect(plan.manifest.node.threads == 3)
        #expect(plan.manifest.node.network == "net1")
        #expect(plan.manifest.logging.level == .debug)
        let config = try #require(plan.entries.first?.config as? LocalConfigPlugin.Config)
        #expect(config.path == "/srv/mesh/mesh.yaml")
        #expect(config.watch == false)
    }

    @Test("an unset variable is an error naming file, line and path, for every reference, before decoding")
    func unsetVariables() {
        let errors = errors(
            """
            node:
              name: ${NODE_NAME}
              threads: ${THREADS}
            plugins:
              - id: local-config
                config: {path: "${MESH}"}
            """,
            [:])
        #expect(errors.count == 3, "\(errors)")
        #expect(errors.first?.hasPrefix("node.yaml:2: node.name: environment variable NODE_NAME is not set") == true, "\(errors)")
        #expect(errors.contains { $0.hasPrefix("node.yaml:3: node.threads: environment variable THREADS is not set") }, "\(errors)")
        #expect(
            errors.contains { $0.hasPrefix("node.yaml:6: plugins[0] (local-config).config.path: environment variable MESH") },
            "\(errors)")
    }

    @Test("a malformed reference is an error with its line")
    func malformedReference() {
        let errors = errors("node:\n  name: node-${oops\n", [:])
        #expect(errors == ["node.yaml:2: node.name: \"${\" without a closing \"}\" (write $$ for a literal $)"])
    }

    @Test("$$ writes a literal $; keys are never substituted")
    func escapes() throws {
        let plan = try load("node: {name: \"n$$1\"}\n", [:])
        #expect(plan.manifest.node.name == "n$1")
        let errors = errors("node:\n  ${KEY}: x\n", ["KEY": "name"])
        #expect(errors.contains { $0.contains("${KEY}") }, "the key is taken as written: \(errors)")
    }

    @Test("node.name defaults to NODE_NAME when set and not empty; an explicit name wins")
    func nodeNameDefault() throws {
        #expect(try load("plugins: []\n", ["NODE_NAME": "worker-7"]).manifest.node.name == "worker-7")
        #expect(try load("node: {threads: 1}\n", ["NODE_NAME": "worker-7"]).manifest.node.name == "worker-7")
        #expect(try load("node: {name: mine}\n", ["NODE_NAME": "worker-7"]).manifest.node.name == "mine")
        #expect(try load("plugins: []\n", ["NODE_NAME": ""]).manifest.node.name == Manifest.hostName)
        #expect(try load("plugins: []\n", [:]).manifest.node.name == Manifest.hostName)
    }
}
