import Foundation
import Kernel

/// The redirection rules in-pod capture installs inside a pod's network namespace, and
/// their removal (istio-cni's in-pod rules, in chains of our own so they can be replaced
/// and removed without touching anything else in the namespace).
///
/// ```
/// mangle PREROUTING → AMBIT_PRERT: packets of proxy sockets (mark 0x539) set connmark 0x111
/// mangle OUTPUT     → AMBIT_OUTPUT: connmark 0x111 restored onto the packet mark
/// nat PREROUTING    → AMBIT_PRERT: inbound TCP except to 15008 and the proxy's own → :15006
/// nat OUTPUT        → AMBIT_OUTPUT: outbound TCP except loopback and the proxy's own → :15001
/// ip rule fwmark 0x111/0xfff lookup 100; table 100: local 0.0.0.0/0 dev lo
/// ```
///
/// Every command runs in the pod's namespace through `nsenter --net=<path>`; installing
/// twice gives the same rules (the chains are rebuilt, the jumps added only when missing).
struct InPodRules: Sendable {
    /// `iptables` binary name or path; `-save` and `-restore` are derived from it.
    var iptables: String
    var mark: UInt32
    var outboundPort: UInt16
    var inboundPort: UInt16
    var hbonePort: UInt16

    static let connectionMark = "0x111/0xfff"
    static let routingTable = "100"
    static let chains = (prerouting: "AMBIT_PRERT", output: "AMBIT_OUTPUT")
    /// Kubelet health probes arrive from this address (istio-cni's convention) and are let
    /// through to the application unredirected.
    static let probeSource = "169.254.7.127/32"

    private var markText: String { "0x" + String(mark, radix: 16) + "/0xfff" }

    /// The `iptables-restore --noflush` input that (re)builds our chains, plus the jumps
    /// into them that `existing` (the namespace's `iptables-save`) lacks.
    func installScript(existing: String) -> String {
        let (pre, out) = Self.chains
        func jump(_ table: String, _ chain: String, _ target: String) -> String? {
            Self.hasJump(existing, table: table, chain: chain, target: target) ? nil : "-A \(chain) -j \(target)"
        }
        var lines: [String] = []
        lines.append("*mangle")
        lines += [":\(pre) - [0:0]", ":\(out) - [0:0]", "-F \(pre)", "-F \(out)"]
        lines.append("-A \(pre) -m mark --mark \(markText) -j CONNMARK --set-xmark \(Self.connectionMark)")
        lines.append("-A \(out) -m connmark --mark \(Self.connectionMark) -j CONNMARK --restore-mark")
        lines += [jump("mangle", "PREROUTING", pre), jump("mangle", "OUTPUT", out)].compactMap { $0 }
        lines.append("COMMIT")
        lines.append("*nat")
        lines += [":\(pre) - [0:0]", ":\(out) - [0:0]", "-F \(pre)", "-F \(out)"]
        lines.append("-A \(pre) -s \(Self.probeSource) -p tcp -j ACCEPT")
        lines.append(
            "-A \(pre) ! -d 127.0.0.1/32 -p tcp ! --dport \(hbonePort) -m mark ! --mark \(markText) -j REDIRECT --to-ports \(inboundPort)")
        lines.append("-A \(out) -p tcp -m mark --mark \(Self.connectionMark) -j ACCEPT")
        lines.append("-A \(out) ! -d 127.0.0.1/32 -o lo -j ACCEPT")
        lines.append(
            "-A \(out) ! -d 127.0.0.1/32 -p tcp -m mark ! --mark \(markText) -j REDIRECT --to-ports \(outboundPort)")
        lines += [jump("nat", "PREROUTING", pre), jump("nat", "OUTPUT", out)].compactMap { $0 }
        lines.append("COMMIT")
        return lines.joined(separator: "\n") + "\n"
    }

    /// The `iptables-restore --noflush` input that removes our jumps and chains, for what
    /// `existing` has of them; nil when nothing of ours is there.
    func removeScript(existing: String) -> String? {
        let (pre, out) = Self.chains
        var lines: [String] = []
        for table in ["mangle", "nat"] {
            var section: [String] = []
            for (chain, target) in [("PREROUTING", pre), ("OUTPUT", out)] {
                if Self.hasJump(existing, table: table, chain: chain, target: target) {
                    section.append("-D \(chain) -j \(target)")
                }
            }
            for chain in [pre, out] where Self.hasChain(existing, table: table, chain: chain) {
                section += ["-F \(chain)", "-X \(chain)"]
            }
            if !section.isEmpty { lines += ["*\(table)"] + section + ["COMMIT"] }
        }
        return lines.isEmpty ? nil : lines.joined(separator: "\n") + "\n"
    }

    /// Installs the rules and the mark routing in the namespace at `path`.
    func install(in path: String) async throws {
        let existing = try await Self.run(["nsenter", "--net=\(path)", "--", saveCommand])
        _ = try await Self.run(
            ["nsenter", "--net=\(path)", "--", restoreCommand, "--noflush"], input: installScript(existing: existing))
        let rules = try await Self.run(["nsenter", "--net=\(path)", "--", "ip", "-4", "rule", "show"])
        if !rules.split(separator: "\n").contains(where: { $0.contains("fwmark \(Self.connectionMark)") && $0.contains("lookup \(Self.routingTable)") }) {
            _ = try await Self.run([
                "nsenter", "--net=\(path)", "--", "ip", "-4", "rule", "add", "fwmark", Self.connectionMark, "lookup",
                Self.routingTable,
            ])
        }
        _ = try await Self.run([
            "nsenter", "--net=\(path)", "--", "ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table",
            Self.routingTable,
        ])
    }

    /// Removes everything ``install(in:)`` added; what is already gone is skipped.
    func remove(in path: String) async throws {
        let existing = try await Self.run(["nsenter", "--net=\(path)", "--", saveCommand])
        if let script = removeScript(existing: existing) {
            _ = try await Self.run(["nsenter", "--net=\(path)", "--", restoreCommand, "--noflush"], input: script)
        }
        let rules = try await Self.run(["nsenter", "--net=\(path)", "--", "ip", "-4", "rule", "show"])
        for line in rules.split(separator: "\n")
        where line.contains("fwmark \(Self.connectionMark)") && line.contains("lookup \(Self.routingTable)") {
            _ = try await Self.run([
                "nsenter", "--net=\(path)", "--", "ip", "-4", "rule", "del", "fwmark", Self.connectionMark, "lookup",
                Self.routingTable,
            ])
        }
        _ = try? await Self.run(["nsenter", "--net=\(path)", "--", "ip", "-4", "route", "flush", "table", Self.routingTable])
    }

    private var saveCommand: String { derived("-save") }
    private var restoreCommand: String { derived("-restore") }

    /// `iptables` → `iptables-save`; `/usr/sbin/iptables-nft` → `/usr/sbin/iptables-nft-save`.
    private func derived(_ suffix: String) -> String { iptables + suffix }

    static func hasJump(_ save: String, table: String, chain: String, target: String) -> Bool {
        lines(of: table, in: save).contains("-A \(chain) -j \(target)")
    }

    static func hasChain(_ save: String, table: String, chain: String) -> Bool {
        lines(of: table, in: save).contains { $0.hasPrefix(":\(chain) ") }
    }

    /// The lines of one table's section of `iptables-save` output.
    private static func lines(of table: String, in save: String) -> [String] {
        var inside = false
        var result: [String] = []
        for line in save.split(separator: "\n").map(String.init) {
            if line.hasPrefix("*") {
                inside = line == "*\(table)"
            } else if line == "COMMIT" {
                inside = false
            } else if inside {
                result.append(line)
            }
        }
        return result
    }

    /// Runs a command (no shell), feeding `input`; returns its standard output, or throws
    /// with its standard error when it exits non-zero.
    static func run(_ arguments: [String], input: String? = nil) async throws -> String {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                do {
                    continuation.resume(returning: try runBlocking(arguments, input: input))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    private static func runBlocking(_ arguments: [String], input: String?) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let output = Pipe()
        let errors = Pipe()
        let feed = Pipe()
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = feed
        do {
            try process.run()
        } catch {
            throw PluginError(
                .unavailable, plugin: CapturePlugin.id, "cannot run \(arguments.joined(separator: " ")): \(error)")
        }
        if let input { feed.fileHandleForWriting.write(Data(input.utf8)) }
        try? feed.fileHandleForWriting.close()
        // Both pipes are drained before waiting: a full pipe would block the child.
        let errorData = LockedData()
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            errorData.set(errors.fileHandleForReading.readDataToEndOfFile())
            group.leave()
        }
        let out = output.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            let message = String(decoding: errorData.get(), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw PluginError(
                .unavailable, plugin: CapturePlugin.id,
                "`\(arguments.joined(separator: " "))` exited with status \(process.terminationStatus): \(message)")
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A `Data` handed between threads.
private final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    func set(_ value: Data) { lock.withLock { data = value } }
    func get() -> Data { lock.withLock { data } }
}
