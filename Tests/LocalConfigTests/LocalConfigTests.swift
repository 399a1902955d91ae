import Foundation
import AmbitRuntime
import Kernel
import LocalConfig
import Logging
import NIOPosix
import Testing
import ConfigYAML


/// The example from the Istio facts file (ztunnel's local config).
private let factsExample = """
    workloads:
    - uid: cluster1//v1/Pod/default/local
      name: local
      namespace: default
      serviceAccount: default
      workloadIps: ["127.0.0.1"]
      protocol: HBONE          # or TCP (not in the mesh)
      node: local
      waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}   # optional
      services: {"default/example.com": {80: 8080}}
    services:
    - name: local
      namespace: default
      hostname: example.com
      vips: ["/127.10.0.1"]    # "network/ip"
      ports: {80: 8080}
      subjectAltNames: ["spiffe://cluster.local/ns/default/sa/local"]
      waypoint: {destination: "/10.0.0.9", hboneMtlsPort: 15008}   # optional
    policies:
    - {name: deny-9999, namespace: default, scope: Namespace, action: Allow,
       rules: [[[ {notDestinationPorts: [9999]} ]]]}
    """

private func parseErrors(_ yaml: String) -> [String] {
    do {
        _ = try LocalConfigPlugin.parse(yaml: yaml, file: "mesh.yaml")
        Issue.record("expected the file to be rejected")
        return []
    } catch {
        return error.errors.map(\.description)
    }
}

private func makeTempDirectory() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("ambit-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private func write(_ text: String, to path: String) {
    try! Data(text.utf8).write(to: URL(fileURLWithPath: path))
}

/// Polls `condition` every 20ms until it holds or `seconds` pass.
private func eventually(within seconds: Double = 5, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

private func mesh(workloads names: [String]) -> String {
    var text = "workloads:\n"
    for (index, name) in names.enumerated() {
        text += "- {uid: \(name), name: \(name), namespace: default, workloadIps: [\"127.0.0.\(index + 2)\"]}\n"
    }
    return text
}

private func makePlugin(directory: String, file: String = "mesh.yaml") throws -> (LocalConfigPlugin, MeshStore) {
    let store = MeshStore()
    let context = PluginContext(
        pluginID: LocalConfigPlugin.id, logger: Logger(label: "test"), eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
        mesh: store, connections: ConnectionRegistry(), readiness: Readiness(), nodeName: "node-a",
        baseDirectory: directory, directory: PluginDirectory())
    let config = LocalConfigPlugin.Config(path: file, watch: true, pollInterval: .milliseconds(20))
    return (try LocalConfigPlugin(config: config, context: context), store)
}

@Suite("LocalConfig")
struct LocalConfigTests {
    @Test("the facts file's example maps into the mesh model")
    func factsExampleParses() throws {
        let snapshot = try LocalConfigPlugin.parse(yaml: factsExample, file: "mesh.yaml")
        let workload = try #require(snapshot.workloads["cluster1//v1/Pod/default/local"])
        #expect(workload.name == "local")
        #expect(workload.workloadIPs == [IPAddress("127.0.0.1")!])
        #expect(workload.tunnelProtocol == .hbone)
        #expect(workload.node == "local")
        #expect(workload.trustDomain == "cluster.local")
        #expect(workload.capacity == 1)
        #expect(workload.status == .healthy)
        #expect(workload.waypoint == GatewayAddress(destination: .address(NetworkAddress("/10.0.0.9")!), hboneMtlsPort: 15008))
        let serviceName = NamespacedHostname(namespace: "default", hostname: "example.com")
        #expect(workload.services == [serviceName: [80: 8080]])
        #expect(workload.identity.description == "spiffe://cluster.local/ns/default/sa/default")

        let service = try #require(snapshot.services[serviceName])
        #expect(service.vips == [NetworkAddress("/127.10.0.1")!])
        #expect(service.ports == [80: 8080])
        #expect(snapshot.service(at: IPAddress("127.10.0.1")!)?.name == "local")
        #expect(snapshot.endpoints(of: serviceName).map(\.uid) == ["cluster1//v1/Pod/default/local"])

        let policy = try #require(snapshot.policies["default/deny-9999"])
        #expect(policy.scope == .namespace)
        #expect(policy.action == .allow)
        #expect(policy.dryRun == false)
        var match = PolicyMatch()
        match.notDestinationPorts = [9999]
        #expect(policy.rules == [[[match]]])
    }

    @Test("every field of ztunnel's local config loads into the mesh model")
    func everyZtunnelField() throws {
        let snapshot = try LocalConfigPlugin.parse(
            yaml: """
                workloads:
                - uid: cluster1//v1/Pod/east/waypoint
                  name: waypoint
                  namespace: east
                  workloadIps: ["10.1.0.9", "fd00::9"]
                  protocol: HBONE
                  network: net-east
                  networkMode: Standard
                  locality: {region: r1, zone: z1, subzone: s1}
                  applicationTunnel: {protocol: PROXY, port: 15088}
                  networkGateway: {destination: "net-east/192.0.2.1", hboneMtlsPort: 15009}
                  hostname: waypoint.east.example
                  workloadType: pod
                  nativeTunnel: true
                  services: {"/example.com": {80: 8080}}
                - uid: cluster1//v1/Pod/east/host
                  name: host
                  namespace: east
                  workloadIps: ["10.1.0.1"]
                  networkMode: HostNetwork
                  locality: {region: r1}
                  applicationTunnel: {protocol: NONE}
                  services: {}
                services:
                - name: example
                  namespace: ""
                  hostname: example.com
                  vips: ["net-east/10.96.0.1"]
                  cidrVips: [{network: net-east, cidr: 10.97.0.0/16}, "/10.98.0.0/24"]
                  ports: {80: 8080}
                  waypoint: {destination: "/example.com", hboneMtlsPort: 15008}
                  weightedWaypoints:
                  - {destination: {destination: "net-east/10.1.0.9", hboneMtlsPort: 15008}, weight: 90}
                  - {destination: {destination: "east/canary.east.example", hboneMtlsPort: 15008}, weight: 10}
                  loadBalancer: {routingPreferences: [Network, Region, Zone, Subzone, Node, Cluster], mode: Failover, healthPolicy: AllowAll}
                  ipFamilies: IPv6
                  canonical: true
                  visibility: Namespace
                  endpoints:
                    cluster1//v1/Pod/east/host:
                      workloadUid: cluster1//v1/Pod/east/host
                      port: {80: 9090}
                      status: Healthy
                """, file: "mesh.yaml")
        let waypoint = try #require(snapshot.workloads["cluster1//v1/Pod/east/waypoint"])
        #expect(waypoint.network == "net-east")
        #expect(waypoint.networkMode == .standard)
        #expect(waypoint.locality == Locality(region: "r1", zone: "z1", subzone: "s1"))
        #expect(waypoint.applicationTunnel == ApplicationTunnel(protocol: .proxy, port: 15088))
        #expect(waypoint.networkGateway == GatewayAddress(destination: .address(NetworkAddress("net-east/192.0.2.1")!), hboneMtlsPort: 15009))
        #expect(waypoint.hostname == "waypoint.east.example")
        let example = NamespacedHostname(namespace: "", hostname: "example.com")
        #expect(waypoint.services == [example: [80: 8080]])

        let host = try #require(snapshot.workloads["cluster1//v1/Pod/east/host"])
        #expect(host.networkMode == .hostNetwork)
        #expect(host.locality == Locality(region: "r1"))
        #expect(host.applicationTunnel == ApplicationTunnel(protocol: .plain, port: nil))
        // The service's own endpoint record joins the workload to the service.
        #expect(host.services == [example: [80: 9090]])

        let service = try #require(snapshot.services[example])
        #expect(service.namespacedHostname.description == "/example.com")
        #expect(service.cidrVIPs == [
            NetworkCIDR(network: "net-east", cidr: CIDR("10.97.0.0/16")!), NetworkCIDR(network: "", cidr: CIDR("10.98.0.0/24")!),
        ])
        #expect(service.waypoint == GatewayAddress(destination: .hostname(example)))
        #expect(service.weightedWaypoints == [
            WeightedWaypoint(destination: GatewayAddress(destination: .address(NetworkAddress("net-east/10.1.0.9")!)), weight: 90),
            WeightedWaypoint(
                destination: GatewayAddress(destination: .hostname(NamespacedHostname(namespace: "east", hostname: "canary.east.example"))),
                weight: 10),
        ])
        #expect(service.loadBalancer == LoadBalancer(
            routingPreferences: [.network, .region, .zone, .subzone, .node, .cluster], mode: .failover, healthPolicy: .allowAll))
        #expect(service.ipFamilies == .ipv6)
        #expect(service.canonical)
        #expect(service.visibility == .namespace)
        #expect(snapshot.endpoints(of: example).map(\.uid) == ["cluster1//v1/Pod/east/host", "cluster1//v1/Pod/east/waypoint"])
    }

    @Test("ztunnel's localhost example (remote-network VIP, canonical services) loads")
    func ztunnelLocalhostExample() throws {
        let snapshot = try LocalConfigPlugin.parse(
            yaml: """
                workloads:
                - {uid: cluster1//v1/Pod/default/local, name: local, namespace: default, serviceAccount: default,
                   workloadIps: ["127.0.0.1"], protocol: HBONE, node: local, network: "",
                   services: {"default/example.com": {80: 8080}, "default/example2.com": {80: 8080}}}
                policies:
                - {action: Allow, rules: [[[{notDestinationPorts: [9999]}]]], name: deny-9999, namespace: default,
                   scope: Namespace, dryRun: false}
                services:
                - {name: local, namespace: default, hostname: example.com, vips: [/127.10.0.1], ports: {80: 8080},
                   subjectAltNames: [spiffe://cluster.local/ns/default/sa/local], canonical: true}
                - {name: remote, namespace: default, hostname: example2.com, vips: [remote/127.10.0.2], ports: {80: 8080},
                   canonical: true}
                """, file: "mesh.yaml")
        #expect(snapshot.service(at: IPAddress("127.10.0.2")!, network: "remote")?.name == "remote")
        #expect(snapshot.services.values.allSatisfy { $0.canonical })
    }

    @Test("an empty workload namespace and an empty service name load, as in ztunnel (the keys stay required)")
    func emptyNames() throws {
        let snapshot = try LocalConfigPlugin.parse(
            yaml: """
                workloads:
                - {uid: vm-1, name: vm, namespace: "", workloadIps: ["10.0.0.5"]}
                services:
                - {name: "", namespace: "", hostname: example.com, vips: [/10.96.0.5], ports: {80: 8080}}
                """, file: "mesh.yaml")
        #expect(snapshot.workloads["vm-1"]?.namespace == "")
        #expect(snapshot.service(at: IPAddress("10.96.0.5")!, network: "")?.hostname == "example.com")
        #expect(parseErrors("workloads:\n- {uid: x, workloadIps: [\"10.0.0.6\"]}\n").first?.contains("namespace") == true)
    }

    @Test("bad values in the newer fields are errors naming file, line and path")
    func newerFieldErrors() {
        let found = parseErrors(
            """
            workloads:
            - {uid: a, namespace: default, networkMode: Host}
            - {uid: b, namespace: default, applicationTunnel: {protocol: HTTP}}
            services:
            - {name: s, namespace: default, hostname: s.example, cidrVips: ["/10.0.0.0/33"]}
            - {name: t, namespace: default, hostname: t.example, visibility: Private}
            - {name: u, namespace: default, hostname: u.example, ipFamilies: IPv5}
            - {name: v, namespace: default, hostname: v.example, endpoints: {a: {port: {80: 80}}}}
            - {name: w, namespace: default, hostname: w.example, weightedWaypoints: [{destination: {destination: nowhere}, weight: 1}]}
            """)
        #expect(found == [
            "mesh.yaml:2: workloads[0].networkMode: expected one of Standard, HostNetwork, got \"Host\"",
            "mesh.yaml:3: workloads[1].applicationTunnel.protocol: expected one of NONE, PROXY, got \"HTTP\"",
            "mesh.yaml:5: services[0].cidrVips[0]: expected network/cidr (e.g. \"/10.0.0.0/24\") or {network, cidr}, got \"/10.0.0.0/33\"",
            "mesh.yaml:6: services[1].visibility: expected one of Public, Namespace, got \"Private\"",
            "mesh.yaml:7: services[2].ipFamilies: expected one of Dual, IPv4, IPv6, got \"IPv5\"",
            "mesh.yaml:8: services[3].endpoints.a: missing required key \"workloadUid\"",
            "mesh.yaml:9: services[4].weightedWaypoints[0].destination.destination: expected network/ip or namespace/hostname, got \"nowhere\"",
        ])
    }

    @Test("Examples/mesh.yaml parses")
    func exampleFileParses() throws {
        let root = String(#filePath).split(separator: "/").dropLast(3).joined(separator: "/")
        let snapshot = try LocalMeshFile.load(path: "/\(root)/Examples/mesh.yaml")
        #expect(snapshot.workloads.count == 3)
        #expect(snapshot.workloads.values.filter { $0.tunnelProtocol == .hbone }.count == 1)
        #expect(snapshot.service(at: IPAddress("127.10.0.1")!)?.ports == [80: 8080])
        #expect(snapshot.policies.count == 2)
        #expect(snapshot.policies["default/allow-loopback-to-echo"]?.scope == .workloadSelector(["app": "echo"]))
    }

    @Test("unknown fields are rejected with path and line")
    func unknownField() {
        let found = parseErrors(
            """
            workloads:
            - uid: a
              namespace: default
              protocl: HBONE
              workloadIps: ["127.0.0.1"]
            """)
        #expect(found.count == 1)
        #expect(found.first?.hasPrefix("mesh.yaml:4: workloads[0].protocl: unknown key \"protocl\"; did you mean \"protocol\"?") == true)
    }

    @Test("semantic errors: addresses, keys, duplicates, enums — all at once")
    func semanticErrors() {
        let found = parseErrors(
            """
            workloads:
            - uid: a
              namespace: default
              workloadIps: ["127.0.0.300"]
            - uid: b
              namespace: default
              services: {"no-slash": {80: 8080}}
            - uid: a
              namespace: default
              protocol: hbone
            services:
            - {name: s, namespace: default, hostname: s.example, vips: ["net/not-an-ip"], ports: {80: 80}}
            - {name: t, namespace: default, hostname: t.example, ports: {0: 80}}
            policies:
            - {name: p, namespace: default, scope: Cluster, action: Allow}
            """)
        #expect(found == [
            "mesh.yaml:4: workloads[0].workloadIps[0]: expected an IP address, got \"127.0.0.300\"",
            "mesh.yaml:7: workloads[1].services.no-slash: expected namespace/hostname, got \"no-slash\"",
            "mesh.yaml:10: workloads[2].protocol: expected one of TCP, HBONE, got \"hbone\"",
            "mesh.yaml:12: services[0].vips[0]: expected network/ip (e.g. \"/10.0.0.1\"), got \"net/not-an-ip\"",
            "mesh.yaml:13: services[1].ports: service port 0 is not a port",
            "mesh.yaml:15: policies[0].scope: expected one of Global, Namespace, WorkloadSelector, got \"Cluster\"",
        ])

        let duplicates = parseErrors(
            """
            workloads:
            - {uid: a, namespace: default}
            - {uid: a, namespace: other}
            services:
            - {name: s, namespace: default, hostname: s.example}
            - {name: s2, namespace: default, hostname: s.example}
            """)
        #expect(duplicates == [
            "mesh.yaml:3: workloads[1]: duplicate workload uid \"a\", first at workloads[0] (line 2)",
            "mesh.yaml:6: services[1]: duplicate service \"default/s.example\", first at services[0] (line 5)",
        ])
    }

    @Test("policy string matches in every accepted form")
    func policyForms() throws {
        let snapshot = try LocalConfigPlugin.parse(
            yaml: """
                policies:
                - name: p
                  namespace: default
                  scope: WorkloadSelector
                  selector: {app: echo}
                  action: Deny
                  dryRun: true
                  rules:
                  - - - namespaces: [{Exact: a}, {Prefix: b}, {Suffix: c}, Presence, {Presence: []}, plain, "pre*", "*suf", "*"]
                        principals: ["spiffe://cluster.local/ns/a/sa/b", {Prefix: "cluster.local/ns/"}]
                        serviceAccounts: [{namespace: a, serviceAccount: b}, "c/d"]
                        notSourceIps: ["10.0.0.0/8", "192.168.1.1"]
                        destinationIps: ["fd00::/8"]
                        destinationPorts: [80, 443]
                      - notNamespaces: [{exact: x}]
                  - []
                """, file: "mesh.yaml")
        let policy = try #require(snapshot.policies["default/p"])
        #expect(policy.scope == .workloadSelector(["app": "echo"]))
        #expect(policy.action == .deny)
        #expect(policy.dryRun)
        #expect(policy.rules.count == 2)
        #expect(policy.rules[1].isEmpty)
        let first = policy.rules[0][0][0]
        #expect(first.namespaces == [
            .exact("a"), .prefix("b"), .suffix("c"), .presence, .presence, .exact("plain"), .prefix("pre"), .suffix("suf"), .presence,
        ])
        #expect(first.principals == [.exact("cluster.local/ns/a/sa/b"), .prefix("cluster.local/ns/")])
        #expect(first.serviceAccounts == [.exact("a/b"), .exact("c/d")])
        #expect(first.notSourceIPs == [CIDR("10.0.0.0/8")!, CIDR("192.168.1.1/32")!])
        #expect(first.destinationIPs == [CIDR("fd00::/8")!])
        #expect(first.destinationPorts == [80, 443])
        #expect(policy.rules[0][0][1].notNamespaces == [.exact("x")])

        let bad = parseErrors(
            """
            policies:
            - name: p
              namespace: default
              scope: Namespace
              action: Allow
              rules: [[[{namespaces: [{Exakt: a}], sourceIps: ["10.0.0.0/33"], destinationPorts: [70000]}]]]
            """)
        #expect(bad.count == 1)
        #expect(bad.first?.hasPrefix("mesh.yaml:6: policies[0].rules[0][0][0].namespaces[0]: expected {Exact: x}") == true)

        let badTwo = parseErrors(
            """
            policies:
            - {name: p, namespace: d, scope: Namespace, action: Allow, rules: [[[{sourceIps: ["10.0.0.0/33"]}]]]}
            - {name: q, namespace: d, scope: WorkloadSelector, action: Allow, selector: {a: b}, rules: [[[{destinationPort: [1]}]]]}
            - {name: r, namespace: d, scope: Namespace, action: Allow, selector: {a: b}}
            """)
        #expect(badTwo.count == 3)
        #expect(badTwo.first == "mesh.yaml:2: policies[0].rules[0][0][0].sourceIps[0]: expected an IP address or CIDR block, got \"10.0.0.0/33\"")
        #expect(badTwo.dropFirst().first?.hasPrefix("mesh.yaml:3: policies[1].rules[0][0][0].destinationPort: unknown key \"destinationPort\"; did you mean \"destinationPorts\"?") == true)
        #expect(badTwo.last == "mesh.yaml:4: policies[2].selector: a selector only applies to scope WorkloadSelector")
    }

    @Test("provision fails with every error; the watcher applies good edits and keeps the last good mesh on bad ones",
          .timeLimit(.minutes(1)))
    func watcher() async throws {
        let directory = makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = "\(directory)/mesh.yaml"

        // Provision: a missing file, then a bad one, fail with the file named.
        let (missing, _) = try makePlugin(directory: directory)
        await #expect(throws: ConfigErrors.self) { try await missing.provision() }
        write("workloads: [{uid: a}]\n", to: file)
        do {
            try await missing.provision()
            Issue.record("expected provision to fail")
        } catch let error as ConfigErrors {
            #expect(error.description == "\(file):1: workloads[0]: missing required key \"namespace\"")
        }

        write(mesh(workloads: ["a"]), to: file)
        let (plugin, store) = try makePlugin(directory: directory)
        #expect(plugin.discoveryOrigin == file)
        try await plugin.provision()
        #expect(Set(store.snapshot.workloads.keys) == ["a"])

        let runner = Task { try await plugin.run() }
        defer { runner.cancel() }

        // A good edit is applied.
        write(mesh(workloads: ["a", "b"]), to: file)
        #expect(await eventually { Set(store.snapshot.workloads.keys) == ["a", "b"] })

        // A bad edit is reported and the last good mesh stays.
        write("workloads:\n- uid: c\n  namespace: default\n  colour: blue\n", to: file)
        #expect(await eventually { plugin.status.lastError != nil })
        #expect(plugin.status.lastError?.description.hasPrefix("\(file):4: workloads[0].colour: unknown key") == true)
        #expect(Set(store.snapshot.workloads.keys) == ["a", "b"])

        // Deleted: reported, mesh kept; restored: applied.
        try FileManager.default.removeItem(atPath: file)
        #expect(await eventually { plugin.status.lastError?.description.contains("No such file or directory") == true })
        #expect(Set(store.snapshot.workloads.keys) == ["a", "b"])
        write(mesh(workloads: ["a", "b", "c"]), to: file)
        #expect(await eventually { Set(store.snapshot.workloads.keys) == ["a", "b", "c"] })
        #expect(plugin.status.lastError == nil)

        // Replaced atomically by rename, as editors and config tools do.
        write(mesh(workloads: ["d"]), to: "\(directory)/.mesh.yaml.tmp")
        #expect(rename("\(directory)/.mesh.yaml.tmp", file) == 0)
        #expect(await eventually { Set(store.snapshot.workloads.keys) == ["d"] })

        // Restoring the same content after a bad edit applies it again.
        let published = plugin.status.published
        write("workloads: {", to: file)
        #expect(await eventually { plugin.status.lastError != nil })
        write(mesh(workloads: ["d"]), to: file)
        #expect(await eventually { plugin.status.published == published + 1 })
        #expect(Set(store.snapshot.workloads.keys) == ["d"])

        runner.cancel()
        _ = await runner.result
    }

    @Test("plugin config: path required, defaults, bad interval")
    func pluginConfig() throws {
        let config = try ConfigDecoder.decode(LocalConfigPlugin.Config.self, yaml: "path: mesh.yaml", file: "m.yaml")
        #expect(config.watch)
        #expect(config.pollInterval == .seconds(1))
        do {
            _ = try ConfigDecoder.decode(
                LocalConfigPlugin.Config.self, yaml: "pollInterval: 1ms\npath: a", file: "m.yaml", path: "plugins[0] (local-config).config")
            Issue.record("expected an error")
        } catch {
            #expect(error.description == "m.yaml:1: plugins[0] (local-config).config.pollInterval: expected at least 10ms, got 1ms")
        }
        #expect(LocalConfigPlugin.provides == [.discovery])
    }
}

/// Fault: the mesh file replaced with garbage of every kind (RELIABILITY.md).
@Suite("LocalConfig faults")
struct LocalConfigFaultTests {
    /// Inputs a broken writer, a wrong copy or an attacker with write access could leave.
    static let garbage: [(name: String, bytes: [UInt8])] = {
        var generator = SystemRandomNumberGenerator()
        let good = Array(mesh(workloads: ["a", "b"]).utf8)
        let laughs =
            "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            + "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            + "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
            + "workloads: [*f]\n"
        return [
            ("empty", []),
            ("whitespace and comments", Array("\n  \n# nothing here\n".utf8)),
            ("truncated mid-entry", Array(good.prefix(good.count / 2 + 7))),
            ("random bytes", (0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) }),
            ("invalid UTF-8", [0xff, 0xfe, 0x77, 0x6f, 0x72, 0x6b, 0xc3, 0x28] + good),
            ("NUL bytes", good.map { $0 == UInt8(ascii: ":") ? 0 : $0 }),
            ("a mapping instead of a list", Array("workloads: {a: 1}\n".utf8)),
            ("a scalar document", Array("just text\n".utf8)),
            ("deep nesting", Array((String(repeating: "[", count: 5000) + String(repeating: "]", count: 5000)).utf8)),
            ("alias expansion (billion laughs)", Array(laughs.utf8)),
            ("1 MiB of one line", Array(repeating: UInt8(ascii: "x"), count: 1 << 20)),
        ]
    }()

    /// Promise: whatever replaces the file, the watcher logs an error naming the file and
    /// keeps serving the last good mesh; a good file afterwards is applied again.
    @Test("a mesh file replaced with garbage keeps the last good mesh", .timeLimit(.minutes(2)))
    func garbageKeepsLastGoodMesh() async throws {
        let directory = makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = "\(directory)/mesh.yaml"
        write(mesh(workloads: ["a", "b"]), to: file)
        let (plugin, store) = try makePlugin(directory: directory)
        try await plugin.provision()
        let runner = Task { try await plugin.run() }
        defer { runner.cancel() }
        var kept = 0
        for (name, bytes) in Self.garbage {
            let before = plugin.status.published
            try Data(bytes).write(to: URL(fileURLWithPath: file))
            let rejected = await eventually(within: 10) { plugin.status.lastError != nil }
            #expect(rejected, "\(name): not rejected")
            #expect(plugin.status.lastError?.errors.first?.file == file, "\(name)")
            #expect(plugin.status.published == before, "\(name): published")
            #expect(Set(store.snapshot.workloads.keys) == ["a", "b"], "\(name)")
            if rejected && Set(store.snapshot.workloads.keys) == ["a", "b"] { kept += 1 }
            // Back to good between garbage, so each garbage is a change the watcher sees.
            write(mesh(workloads: ["a", "b"]), to: file)
            #expect(await eventually { plugin.status.lastError == nil }, "\(name): good file not applied again")
        }
        print("reliability: mesh file replaced with \(Self.garbage.count) kinds of garbage: last good mesh kept \(kept) times")
        runner.cancel()
        _ = await runner.result
    }
}
