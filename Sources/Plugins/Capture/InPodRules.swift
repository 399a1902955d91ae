import AmbitRuntime
import Foundation
import Kernel

/// The program that installs the in-pod redirect rules (`capture` config `inPod.backend`).
enum InPodBackend: String, Sendable, CaseIterable {
    /// `iptables-restore` and `ip6tables-restore`: chains of our own in the `mangle`, `nat`
    /// (and, with DNS capture, `raw`) tables of each family, as istio-cni installs them.
    case iptables
    /// `nft`: one `inet` table of our own carrying both families' rules, replaced in one
    /// transaction and removed by deleting it.
    case nftables
}

/// The redirection rules in-pod capture installs inside a pod's network namespace, and
/// their removal: istio-cni's in-pod rules (its `default.golden` and
/// `default_ipv6.golden`), for IPv4 and IPv6, in chains (or a table) of our own so they can
/// be replaced and removed without touching anything else in the namespace.
///
/// ```
/// mangle PREROUTING → AMBIT_PRERT: packets of proxy sockets (mark 0x539) set connmark 0x111
/// mangle OUTPUT     → AMBIT_OUTPUT: connmark 0x111 restored onto the packet mark
/// nat PREROUTING    → AMBIT_PRERT: probes accepted; inbound TCP except to 15008 and
///                     the proxy's own → :15006
/// nat OUTPUT        → AMBIT_OUTPUT: [DNS → :15053]; outbound TCP except loopback and the
///                     proxy's own → :15001
/// raw (DNS only)    → proxy↔upstream DNS in conntrack zone 1
/// ip rule fwmark 0x111/0xfff lookup 100; table 100: local 0.0.0.0/0 (::/0) dev lo
/// ```
///
/// Both families get the same rules (`127.0.0.1/32` becomes `::1/128`, the probe address
/// `169.254.7.127` becomes istio-cni's `fd16:9254:7127:1337:ffff:ffff:ffff:ffff`). With
/// the `nftables` backend they live in one `inet` table, `ambit-inpod`, with a base chain
/// per hook at the priority of the iptables table it stands for (raw -300, mangle -150,
/// nat -100).
///
/// Every command runs in the pod's namespace through `nsenter --net=<path>`; installing
/// twice gives the same rules (iptables: the chains are rebuilt, the jumps added only when
/// missing; nftables: the table is replaced). An install that fails part way is rolled
/// back before the error is thrown: never half the rules.
struct InPodRules: Sendable {
    /// An address family the rules are installed for.
    enum Family: String, Sendable, CaseIterable {
        case ipv4, ipv6

        /// Loopback, which no redirect rule touches.
        var loopback: String { self == .ipv4 ? "127.0.0.1/32" : "::1/128" }
        /// Where istio-cni SNATs the kubelet's probes to (its `HOST_PROBE_SNAT_IP` and
        /// `HOST_PROBE_SNAT_IPV6` defaults): let through to the application unredirected.
        var probeSource: String {
            self == .ipv4 ? "169.254.7.127/32" : "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128"
        }
        /// Every address, for the local route in table 100.
        var everything: String { self == .ipv4 ? "0.0.0.0/0" : "::/0" }
        /// `ip -4` / `ip -6`.
        var ipFlag: String { self == .ipv4 ? "-4" : "-6" }
        /// nft's address match keyword.
        var nftProtocol: String { self == .ipv4 ? "ip" : "ip6" }
        /// nft's family match (for rules with no address).
        var nftFamily: String { self == .ipv4 ? "ipv4" : "ipv6" }
    }

    var backend: InPodBackend = .iptables
    /// `iptables` binary name or path; `-save` and `-restore` are derived from it, and the
    /// IPv6 programs by putting `ip6tables` in the place of `iptables` in its file name
    /// (`/usr/sbin/iptables-legacy` → `/usr/sbin/ip6tables-legacy`).
    var iptables: String = "iptables"
    /// `nft` binary name or path, for the `nftables` backend.
    var nft: String = "nft"
    var mark: UInt32
    var outboundPort: UInt16
    var inboundPort: UInt16
    var hbonePort: UInt16
    /// Redirect the pod's DNS (UDP to any non-loopback interface, TCP to any non-loopback
    /// address, port 53) to ``dnsPort``, where the DNS proxy listens, and put the proxy's
    /// own upstream DNS in conntrack zone 1 (istio-cni's rules with DNS capture on).
    var captureDNS: Bool = false
    var dnsPort: UInt16 = 15053
    /// Install the IPv6 rules too. They are skipped only when the kernel has no IPv6 at
    /// all (see ``families``): a pod whose IPv6 is merely switched off can switch it on.
    var ipv6: Bool = true

    static let connectionMark = "0x111/0xfff"
    static let routingTable = "100"
    static let chains = (prerouting: "AMBIT_PRERT", output: "AMBIT_OUTPUT")
    /// The `nftables` backend's table (family `inet`).
    static let nftTable = "ambit-inpod"

    private var markText: String { "0x" + String(mark, radix: 16) + "/0xfff" }
    private var nftMark: String { "0x" + String(mark, radix: 16) }

    /// The families the rules are installed for: IPv4, and IPv6 when ``ipv6`` is on and the
    /// kernel has it.
    var families: [Family] { ipv6 && TCPListener.kernelHasIPv6 ? [.ipv4, .ipv6] : [.ipv4] }

    // MARK: iptables

    /// The `iptables-restore --noflush` (`ip6tables-restore` for ``Family/ipv6``) input that
    /// (re)builds our chains, plus the jumps into them that `existing` (the namespace's
    /// `iptables-save`) lacks; with DNS capture off, it removes the `raw` chains an earlier
    /// install with it on left.
    func installScript(existing: String, family: Family = .ipv4) -> String {
        let (pre, out) = Self.chains
        let loopback = family.loopback
        func jump(_ table: String, _ chain: String, _ target: String) -> String? {
            Self.hasJump(existing, table: table, chain: chain, target: target) ? nil : "-A \(chain) -j \(target)"
        }
        let rebuild = [":\(pre) - [0:0]", ":\(out) - [0:0]", "-F \(pre)", "-F \(out)"]
        var lines: [String] = []
        lines.append("*mangle")
        lines += rebuild
        lines.append("-A \(pre) -m mark --mark \(markText) -j CONNMARK --set-xmark \(Self.connectionMark)")
        lines.append("-A \(out) -m connmark --mark \(Self.connectionMark) -j CONNMARK --restore-mark")
        lines += [jump("mangle", "PREROUTING", pre), jump("mangle", "OUTPUT", out)].compactMap { $0 }
        lines.append("COMMIT")
        lines.append("*nat")
        lines += rebuild
        lines.append("-A \(pre) -s \(family.probeSource) -p tcp -j ACCEPT")
        lines.append("-A \(out) -d \(family.probeSource) -p tcp -j ACCEPT")
        lines.append(
            "-A \(pre) ! -d \(loopback) -p tcp ! --dport \(hbonePort) -m mark ! --mark \(markText) -j REDIRECT --to-ports \(inboundPort)")
        if captureDNS {
            lines.append("-A \(out) ! -o lo -p udp -m mark ! --mark \(markText) -m udp --dport 53 -j REDIRECT --to-ports \(dnsPort)")
            lines.append("-A \(out) ! -d \(loopback) -p tcp --dport 53 -m mark ! --mark \(markText) -j REDIRECT --to-ports \(dnsPort)")
        }
        lines.append("-A \(out) -p tcp -m mark --mark \(Self.connectionMark) -j ACCEPT")
        lines.append("-A \(out) ! -d \(loopback) -o lo -j ACCEPT")
        lines.append(
            "-A \(out) ! -d \(loopback) -p tcp -m mark ! --mark \(markText) -j REDIRECT --to-ports \(outboundPort)")
        lines += [jump("nat", "PREROUTING", pre), jump("nat", "OUTPUT", out)].compactMap { $0 }
        lines.append("COMMIT")
        if captureDNS {
            lines.append("*raw")
            lines += rebuild
            lines.append("-A \(out) -p udp -m mark --mark \(markText) -m udp --dport 53 -j CT --zone 1")
            lines.append("-A \(pre) -p udp -m mark ! --mark \(markText) -m udp --sport 53 -j CT --zone 1")
            lines += [jump("raw", "PREROUTING", pre), jump("raw", "OUTPUT", out)].compactMap { $0 }
            lines.append("COMMIT")
        } else {
            lines += Self.removal(of: "raw", in: existing)
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The `iptables-restore --noflush` input that removes our jumps and chains, for what
    /// `existing` has of them; nil when nothing of ours is there.
    func removeScript(existing: String) -> String? {
        let lines = ["mangle", "nat", "raw"].flatMap { Self.removal(of: $0, in: existing) }
        return lines.isEmpty ? nil : lines.joined(separator: "\n") + "\n"
    }

    /// One table's section removing our jumps and chains that `existing` has; empty when
    /// it has none.
    private static func removal(of table: String, in existing: String) -> [String] {
        let (pre, out) = chains
        var section: [String] = []
        for (chain, target) in [("PREROUTING", pre), ("OUTPUT", out)]
        where hasJump(existing, table: table, chain: chain, target: target) {
            section.append("-D \(chain) -j \(target)")
        }
        for chain in [pre, out] where hasChain(existing, table: table, chain: chain) {
            section += ["-F \(chain)", "-X \(chain)"]
        }
        return section.isEmpty ? [] : ["*\(table)"] + section + ["COMMIT"]
    }

    // MARK: nftables

    /// The `nft -f -` input that replaces our table with the rules for `families`, in one
    /// transaction: the table is created (so deleting it cannot fail), deleted and built
    /// anew, so nothing of an earlier install (DNS capture since switched off, say) stays.
    func nftScript(families: [Family] = [.ipv4, .ipv6]) -> String {
        let table = "inet \(Self.nftTable)"
        var lines = ["add table \(table)", "delete table \(table)", "add table \(table)"]
        func chain(_ name: String, _ type: String, _ hook: String, _ priority: Int) {
            lines.append("add chain \(table) \(name) { type \(type) hook \(hook) priority \(priority); policy accept; }")
        }
        func rule(_ chain: String, _ text: String) { lines.append("add rule \(table) \(chain) \(text)") }
        let proxyMark = "meta mark & 0xfff == \(nftMark)"
        let notProxyMark = "meta mark & 0xfff != \(nftMark)"

        if captureDNS {
            chain("raw-prerouting", "filter", "prerouting", -300)
            chain("raw-output", "filter", "output", -300)
        }
        chain("mangle-prerouting", "filter", "prerouting", -150)
        // `route`: a mark set here re-routes the packet (to table 100), as iptables' mangle
        // OUTPUT does.
        chain("mangle-output", "route", "output", -150)
        chain("nat-prerouting", "nat", "prerouting", -100)
        chain("nat-output", "nat", "output", -100)

        for family in families {
            let only = "meta nfproto \(family.nftFamily)"
            let address = family.nftProtocol
            let probe = family.probeSource
            let loopback = family.loopback
            if captureDNS {
                rule("raw-output", "\(only) udp dport 53 \(proxyMark) ct zone set 1")
                rule("raw-prerouting", "\(only) udp sport 53 \(notProxyMark) ct zone set 1")
            }
            rule("mangle-prerouting", "\(only) \(proxyMark) ct mark set ct mark & 0xfffff000 | 0x111")
            rule("mangle-output", "\(only) ct mark & 0xfff == 0x111 meta mark set ct mark")
            rule("nat-prerouting", "meta l4proto tcp \(address) saddr \(probe) accept")
            rule(
                "nat-prerouting",
                "\(address) daddr != \(loopback) tcp dport != \(hbonePort) \(notProxyMark) redirect to :\(inboundPort)")
            rule("nat-output", "meta l4proto tcp \(address) daddr \(probe) accept")
            if captureDNS {
                rule("nat-output", "\(only) oifname != \"lo\" udp dport 53 \(notProxyMark) redirect to :\(dnsPort)")
                rule("nat-output", "\(address) daddr != \(loopback) tcp dport 53 \(notProxyMark) redirect to :\(dnsPort)")
            }
            rule("nat-output", "\(only) meta l4proto tcp meta mark & 0xfff == 0x111 accept")
            rule("nat-output", "oifname \"lo\" \(address) daddr != \(loopback) accept")
            rule(
                "nat-output",
                "meta l4proto tcp \(address) daddr != \(loopback) \(notProxyMark) redirect to :\(outboundPort)")
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The `nft -f -` input that deletes our table, whether or not it exists.
    static var nftRemoveScript: String {
        "add table inet \(nftTable)\ndelete table inet \(nftTable)\n"
    }

    // MARK: Installing and removing

    /// Installs the rules and the mark routing for ``families`` in the namespace at `path`.
    /// When any step fails, what was installed is removed again and the first error thrown.
    func install(in path: String) async throws {
        let families = self.families
        do {
            switch backend {
            case .iptables:
                for family in families {
                    let existing = try await Self.inside(path, [saveCommand(family)])
                    _ = try await Self.inside(
                        path, [restoreCommand(family), "--noflush"], input: installScript(existing: existing, family: family))
                }
            case .nftables:
                _ = try await Self.inside(path, [nft, "-f", "-"], input: nftScript(families: families))
            }
            for family in families { try await installRouting(in: path, family: family) }
        } catch {
            // Never leave half the rules: a pod whose install failed is not captured (the
            // error is reported and the install retried), rather than captured in one
            // family or one table only.
            try? await remove(in: path)
            throw PluginError(
                .unavailable, plugin: CapturePlugin.id,
                "cannot install the in-pod rules (\(backend.rawValue), \(families.map(\.rawValue).joined(separator: " and "))) in \(path), rolled back: \(error)")
        }
    }

    /// Removes everything ``install(in:)`` added, for both families (what is already gone
    /// is skipped). Every step is tried; the first failure is thrown at the end.
    func remove(in path: String) async throws {
        var failures: [any Error] = []
        func attempt(_ step: () async throws -> Void) async {
            do { try await step() } catch { failures.append(error) }
        }
        let families = self.families
        switch backend {
        case .iptables:
            for family in families {
                await attempt {
                    let existing = try await Self.inside(path, [saveCommand(family)])
                    if let script = removeScript(existing: existing) {
                        _ = try await Self.inside(path, [restoreCommand(family), "--noflush"], input: script)
                    }
                }
            }
        case .nftables:
            await attempt { _ = try await Self.inside(path, [nft, "-f", "-"], input: Self.nftRemoveScript) }
        }
        for family in families { await attempt { try await removeRouting(in: path, family: family) } }
        if let first = failures.first { throw first }
    }

    /// `ip rule fwmark 0x111/0xfff lookup 100` (added when missing) and `local <all> dev lo
    /// table 100`; for IPv6 the route only when the pod's loopback has IPv6 (istio-cni
    /// skips it there too: the kernel refuses it).
    private func installRouting(in path: String, family: Family) async throws {
        let rules = try await Self.inside(path, ["ip", family.ipFlag, "rule", "show"])
        if !Self.hasMarkRule(rules) {
            _ = try await Self.inside(
                path, ["ip", family.ipFlag, "rule", "add", "fwmark", Self.connectionMark, "lookup", Self.routingTable])
        }
        if family == .ipv6, try await !Self.loopbackHasIPv6(in: path) { return }
        _ = try await Self.inside(
            path, ["ip", family.ipFlag, "route", "replace", "local", family.everything, "dev", "lo", "table", Self.routingTable])
    }

    private func removeRouting(in path: String, family: Family) async throws {
        let rules = try await Self.inside(path, ["ip", family.ipFlag, "rule", "show"])
        for line in rules.split(separator: "\n") where Self.hasMarkRule(String(line)) {
            _ = try await Self.inside(
                path, ["ip", family.ipFlag, "rule", "del", "fwmark", Self.connectionMark, "lookup", Self.routingTable])
        }
        _ = try? await Self.inside(path, ["ip", family.ipFlag, "route", "flush", "table", Self.routingTable])
    }

    private static func hasMarkRule(_ rules: String) -> Bool {
        rules.split(separator: "\n").contains { $0.contains("fwmark \(connectionMark)") && $0.contains("lookup \(routingTable)") }
    }

    /// The pod loopback's `disable_ipv6` is not 1 (read inside the namespace: `/proc/sys/net`
    /// shows the reader's namespace).
    private static func loopbackHasIPv6(in path: String) async throws -> Bool {
        let value = try? await inside(path, ["cat", "/proc/sys/net/ipv6/conf/lo/disable_ipv6"])
        return value?.trimmingCharacters(in: .whitespacesAndNewlines) != "1"
    }

    private func saveCommand(_ family: Family) -> String { derived(family, "-save") }
    private func restoreCommand(_ family: Family) -> String { derived(family, "-restore") }

    /// `iptables` → `iptables-save`, `ip6tables-save`; `/usr/sbin/iptables-nft` →
    /// `/usr/sbin/iptables-nft-save`, `/usr/sbin/ip6tables-nft-save`.
    func derived(_ family: Family, _ suffix: String) -> String {
        guard family == .ipv6 else { return iptables + suffix }
        let slash = iptables.lastIndex(of: "/").map { iptables.index(after: $0) } ?? iptables.startIndex
        let name = iptables[slash...]
        let renamed = name.hasPrefix("iptables") ? "ip6tables" + name.dropFirst("iptables".count) : "ip6" + name
        return String(iptables[..<slash]) + renamed + suffix
    }

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

    /// Runs a command inside the namespace at `path` (`nsenter --net=<path> -- …`).
    static func inside(_ path: String, _ command: [String], input: String? = nil) async throws -> String {
        try await RuleTool.run(["nsenter", "--net=\(path)", "--"] + command, input: input)
    }
}
