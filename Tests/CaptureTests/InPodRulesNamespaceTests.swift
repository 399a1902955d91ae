import AmbitRuntime
import Foundation
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import Capture

#if canImport(Glibc)
    import Glibc
#endif

/// The in-pod rules applied for real, with each backend, in network namespaces this test
/// makes (`ambit-v6-…`, addresses in 10.66.0.0/16 and fd00:6::/64 only) and deletes again,
/// also when a check fails. Needs root, as in CI.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct InPodRulesNamespaceTests {
    static let rules = InPodRules(mark: 0x539, outboundPort: 15001, inboundPort: 15006, hbonePort: 15008)

    static func rules(_ backend: InPodBackend, dns: Bool = false) -> InPodRules {
        var rules = Self.rules
        rules.backend = backend
        rules.captureDNS = dns
        return rules
    }

    @Test(arguments: InPodBackend.allCases)
    func rulesForBothFamiliesAreInstalledAndRemoved(backend: InPodBackend) async throws {
        #expect(TCPListener.kernelHasIPv6, "this test expects a kernel with IPv6")
        try await TestNamespace.with("rules-\(backend.rawValue)") { pod in
            let rules = Self.rules(backend, dns: true)
            try await rules.install(in: pod.path)
            // Twice: the same rules, not twice the rules.
            try await rules.install(in: pod.path)
            switch backend {
            case .iptables:
                let v4 = try await pod.run("iptables-save")
                let v6 = try await pod.run("ip6tables-save")
                #expect(v4.contains("-A AMBIT_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"))
                #expect(v6.contains("-A AMBIT_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001"))
                #expect(v6.contains("-A AMBIT_PRERT ! -d ::1/128 -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006"))
                #expect(v6.contains("--dport 53 -j REDIRECT --to-ports 15053"))
                #expect(v6.contains("-j CT --zone 1"))
                for save in [v4, v6] {
                    #expect(save.components(separatedBy: "-A PREROUTING -j AMBIT_PRERT").count == 4, "\(save)")
                    #expect(save.components(separatedBy: "-A OUTPUT -j AMBIT_OUTPUT").count == 4, "\(save)")
                }
            case .nftables:
                let table = try await pod.run("nft", "list", "table", "inet", InPodRules.nftTable)
                #expect(table.contains("ip6 daddr != ::1 meta mark & 0x00000fff != 0x00000539 redirect to :15001"), "\(table)")
                #expect(table.contains("ip daddr != 127.0.0.1 meta mark & 0x00000fff != 0x00000539 redirect to :15001"), "\(table)")
                #expect(table.contains("ip6 daddr != ::1 tcp dport != 15008"), "\(table)")
                #expect(table.contains("redirect to :15053") && table.contains("ct zone set 1"), "\(table)")
                #expect(table.components(separatedBy: "chain nat-output").count == 2)
                // Nothing in iptables' tables.
                #expect(try await !pod.run("iptables-save").contains("AMBIT"))
            }
            for family in ["-4", "-6"] {
                #expect(try await pod.run("ip", family, "rule", "show").contains("fwmark 0x111/0xfff lookup 100"))
                let route = try await pod.run("ip", family, "route", "show", "table", "100")
                #expect(route.contains("local default dev lo"), "\(route)")
                #expect(try await pod.run("ip", family, "rule", "show").components(separatedBy: "lookup 100").count == 2)
            }

            // DNS capture switched off: its rules go on the next install.
            try await Self.rules(backend).install(in: pod.path)
            switch backend {
            case .iptables:
                for save in [try await pod.run("iptables-save"), try await pod.run("ip6tables-save")] {
                    #expect(!save.contains("15053") && !save.contains("CT --zone"), "\(save)")
                    #expect(save.contains("REDIRECT --to-ports 15001"))
                }
            case .nftables:
                let table = try await pod.run("nft", "list", "table", "inet", InPodRules.nftTable)
                #expect(!table.contains("15053") && !table.contains("raw-output"), "\(table)")
            }

            try await rules.remove(in: pod.path)
            #expect(try await !pod.run("iptables-save").contains("AMBIT"))
            #expect(try await !pod.run("ip6tables-save").contains("AMBIT"))
            #expect(try await !pod.run("nft", "list", "ruleset").contains(InPodRules.nftTable))
            for family in ["-4", "-6"] {
                #expect(try await !pod.run("ip", family, "rule", "show").contains("lookup 100"))
                #expect(try await pod.run("ip", family, "route", "show", "table", "100").isEmpty)
            }
            // Removing what is gone is fine.
            try await rules.remove(in: pod.path)
        }
    }

    @Test
    func aFailedIPv6InstallRollsTheIPv4RulesBack() async throws {
        // An `iptables` whose IPv4 programs work and whose IPv6 ones do not exist.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("ambit-v6-tools-\(getpid())").path
        try? FileManager.default.removeItem(atPath: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for tool in ["iptables-save", "iptables-restore"] {
            let real = try await RuleTool.run(["sh", "-c", "command -v \(tool)"]).trimmingCharacters(in: .whitespacesAndNewlines)
            try FileManager.default.createSymbolicLink(atPath: "\(directory)/\(tool)", withDestinationPath: real)
        }
        try await TestNamespace.with("rollback") { (pod: TestNamespace) async throws in
            var rules = Self.rules(.iptables)
            rules.iptables = "\(directory)/iptables"
            let failure = await #expect(throws: PluginError.self) { try await rules.install(in: pod.path) }
            #expect(failure?.message.contains("rolled back") == true, "\(String(describing: failure))")
            #expect(failure?.message.contains("ip6tables-save") == true, "\(String(describing: failure))")
            #expect(try await !pod.run("iptables-save").contains("AMBIT"))
            #expect(try await !pod.run("ip", "-4", "rule", "show").contains("lookup 100"))
        }
    }

    @Test
    func aFailingToolIsReportedWithItsCommandStatusAndStandardError() async throws {
        let failed = await #expect(throws: RuleToolError.self) {
            try await RuleTool.run(["sh", "-c", "echo out; echo 'no such table' >&2; exit 3"], input: "ignored")
        }
        #expect(failed?.code == .failed)
        #expect(failed?.description == "`sh -c echo out; echo 'no such table' >&2; exit 3` exited with status 3: no such table")
        let missing = await #expect(throws: RuleToolError.self) { try await RuleTool.run(["ambit-no-such-program"]) }
        #expect(missing?.code == .cannotRun)
        #expect(missing?.description.contains("ambit-no-such-program") == true)
        let missingWithInput = await #expect(throws: RuleToolError.self) {
            try await RuleTool.run(["ambit-no-such-program"], input: "*filter\nCOMMIT\n")
        }
        #expect(missingWithInput?.code == .cannotRun)
        // Standard input is fed and standard output returned.
        #expect(try await RuleTool.run(["cat"], input: "fed\n") == "fed\n")
        let large = String(repeating: "-A OUTPUT -j ACCEPT\n", count: 50_000)
        #expect(try await RuleTool.run(["wc", "-c"], input: large).trimmingCharacters(in: .whitespacesAndNewlines) == "\(large.utf8.count)")
        // A program that exits without reading what it was fed (a failing restore can)
        // is its exit status, not a crash, however often it happens.
        for _ in 0..<20 {
            let early = await #expect(throws: RuleToolError.self) { try await RuleTool.run(["sh", "-c", "exit 4"], input: large) }
            #expect(early?.description.hasPrefix("`sh -c exit 4` exited with status 4") == true)
        }
    }

    @Test(arguments: InPodBackend.allCases)
    func redirectedConnectionsOfBothFamiliesReportTheirOriginalDestination(backend: InPodBackend) async throws {
        try await TestNamespace.with("origdst-\(backend.rawValue)") { pod in
            try await pod.run("ip", "link", "add", "ambit0", "type", "veth", "peer", "name", "ambit1")
            try await pod.run("ip", "link", "set", "ambit1", "up")
            try await pod.run("ip", "link", "set", "ambit0", "up")
            try await pod.run("ip", "addr", "add", "10.66.0.1/16", "dev", "ambit0")
            try await pod.run("ip", "addr", "add", "fd00:6::1/64", "dev", "ambit0", "nodad")
            try await Self.rules(backend).install(in: pod.path)

            let proxySide = try NetworkNamespace(path: pod.path, mark: 0x539)
            defer { proxySide.close() }
            let appSide = try NetworkNamespace(path: pod.path)
            defer { appSide.close() }
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let seen = Seen()
            let listeners = try await TCPListener.bindEachFamily(
                port: 15001, placement: SocketPlacement(namespace: proxySide), group: group
            ) { channel in
                InboundPlaintext.originalDestination(of: channel).map { original in
                    seen.record(original, local: SocketAddr(channel.localAddress))
                    channel.close(promise: nil)
                }
            }
            do {
                #expect(listeners.map(\.localAddress.description).sorted() == ["0.0.0.0:15001", "[::]:15001"])
                for destination in ["10.66.0.99:8080", "[fd00:6::99]:8080"] {
                    let address = try #require(SocketAddr(destination))
                    let client = try await TCPDialer().placed(SocketPlacement(namespace: appSide))
                        .connect(to: address, on: group.next()).get()
                    let (original, local) = try await seen.next()
                    #expect(original == address, "\(destination) arrived as \(String(describing: original))")
                    // Each family on its own listener, IPv4 as plain IPv4.
                    #expect(local?.ip.isIPv4 == address.ip.isIPv4)
                    try? await client.close()
                }
            } catch {
                for listener in listeners { await listener.stopAccepting() }
                try? await group.shutdownGracefully()
                throw error
            }
            for listener in listeners { await listener.stopAccepting() }
            try await group.shutdownGracefully()
            try await Self.rules(backend).remove(in: pod.path)
        }
    }
}

/// Original destinations the listener saw, handed to the test in order.
final class Seen: Sendable {
    private let values = NIOLockedValueBox<[(SocketAddr?, SocketAddr?)]>([])

    func record(_ original: SocketAddr?, local: SocketAddr?) { values.withLockedValue { $0.append((original, local)) } }

    /// The oldest value not yet taken, waiting up to 5 s for it.
    func next() async throws -> (SocketAddr?, SocketAddr?) {
        for _ in 0..<500 {
            if let value = values.withLockedValue({ $0.isEmpty ? nil : $0.removeFirst() }) { return value }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw SeenTimeout()
    }

    struct SeenTimeout: Error, CustomStringConvertible {
        var description: String { "no redirected connection reached the listener within 5 s" }
    }
}

/// A network namespace for one test, `ambit-v6-<tag>-<pid>`, deleted when the test's body
/// ends, however it ends. Ones an earlier test process left behind (it was killed before
/// deleting them: their pid is gone) are deleted first.
struct TestNamespace {
    let name: String
    var path: String { "/var/run/netns/\(name)" }

    static let prefix = "ambit-v6-"

    static func with<T>(_ tag: String, _ body: (TestNamespace) async throws -> T) async throws -> T {
        await deleteStale()
        let namespace = TestNamespace(name: "\(prefix)\(tag)-\(getpid())")
        _ = try? await RuleTool.run(["ip", "netns", "del", namespace.name])
        _ = try await RuleTool.run(["ip", "netns", "add", namespace.name])
        let result: T
        do {
            try await namespace.run("ip", "link", "set", "lo", "up")
            result = try await body(namespace)
        } catch {
            _ = try? await RuleTool.run(["ip", "netns", "del", namespace.name])
            throw error
        }
        _ = try await RuleTool.run(["ip", "netns", "del", namespace.name])
        return result
    }

    /// Runs a command inside the namespace; its standard output.
    @discardableResult
    func run(_ command: String...) async throws -> String {
        try await InPodRules.inside(path, command)
    }

    private static func deleteStale() async {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/var/run/netns")) ?? []
        for name in names where name.hasPrefix(prefix) {
            guard let pid = name.split(separator: "-").last.flatMap({ pid_t($0) }), pid != getpid(), kill(pid, 0) != 0,
                errno == ESRCH
            else { continue }
            _ = try? await RuleTool.run(["ip", "netns", "del", name])
        }
    }
}
