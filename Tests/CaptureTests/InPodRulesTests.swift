import Foundation
import Kernel
import Testing

@testable import Capture

// The in-pod rule scripts (what `iptables-restore --noflush` gets). The end-to-end suite
// (Tests/e2e/run) applies them in real namespaces; these pin the exact rules and the
// idempotence logic.
@Suite
struct InPodRulesTests {
    let rules = InPodRules(iptables: "iptables", mark: 0x539, outboundPort: 15001, inboundPort: 15006, hbonePort: 15008)

    @Test
    func installScriptHasIstioCNIsRulesAndTheJumpsWhenMissing() {
        let script = rules.installScript(existing: "")
        let expected = [
            "-A AMBIT_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
            "-A AMBIT_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark",
            "-A AMBIT_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006",
            "-A AMBIT_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
            "-A AMBIT_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT",
            "-A AMBIT_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
            "-A PREROUTING -j AMBIT_PRERT", "-A OUTPUT -j AMBIT_OUTPUT",
        ]
        for line in expected { #expect(script.contains(line + "\n"), "missing: \(line)") }
        // Both tables get both jumps.
        #expect(script.components(separatedBy: "-A PREROUTING -j AMBIT_PRERT").count == 3)
        #expect(script.hasPrefix("*mangle\n") && script.hasSuffix("COMMIT\n"))
        // The probe address is let through before the inbound redirect.
        let probe = script.range(of: "-s 169.254.7.127/32 -p tcp -j ACCEPT")
        let redirect = script.range(of: "--to-ports 15006")
        #expect(probe != nil && redirect != nil && probe!.lowerBound < redirect!.lowerBound)
    }

    @Test
    func installingAgainRebuildsTheChainsWithoutDuplicatingJumps() {
        let installed = """
            *mangle
            :PREROUTING ACCEPT [0:0]
            :AMBIT_PRERT - [0:0]
            -A PREROUTING -j AMBIT_PRERT
            -A OUTPUT -j AMBIT_OUTPUT
            COMMIT
            *nat
            :AMBIT_OUTPUT - [0:0]
            -A OUTPUT -j AMBIT_OUTPUT
            COMMIT
            """
        let script = rules.installScript(existing: installed)
        #expect(!script.contains("-A PREROUTING -j AMBIT_PRERT\nCOMMIT\n*nat"))
        #expect(script.components(separatedBy: "-A OUTPUT -j AMBIT_OUTPUT").count == 1)
        // nat PREROUTING's jump was missing: added.
        #expect(script.components(separatedBy: "-A PREROUTING -j AMBIT_PRERT").count == 2)
        #expect(script.contains("-F AMBIT_PRERT"))
    }

    @Test
    func removeScriptTakesOutOnlyWhatIsThere() {
        #expect(rules.removeScript(existing: "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n") == nil)
        let installed = """
            *nat
            :AMBIT_PRERT - [0:0]
            :AMBIT_OUTPUT - [0:0]
            -A PREROUTING -j AMBIT_PRERT
            -A OUTPUT -j AMBIT_OUTPUT
            -A OUTPUT -j SOMEONE_ELSES
            COMMIT
            """
        let script = rules.removeScript(existing: installed)
        #expect(
            script == """
                *nat
                -D PREROUTING -j AMBIT_PRERT
                -D OUTPUT -j AMBIT_OUTPUT
                -F AMBIT_PRERT
                -X AMBIT_PRERT
                -F AMBIT_OUTPUT
                -X AMBIT_OUTPUT
                COMMIT

                """)
    }

    @Test
    func impossibleInPodSettingsAreReported() {
        var config = InPodConfig()
        #expect(config.validate().isEmpty)
        config.mark = 0
        config.inboundPort = 15001
        let problems = config.validate()
        #expect(problems.contains { $0.path == "mark" })
        #expect(problems.contains { $0.path.isEmpty && $0.message.contains("must differ") })
    }

    // MARK: IPv6, DNS capture and nftables

    @Test
    func ipv6ScriptHasTheSameRulesWithIPv6Loopback() {
        let script = rules.installScript(existing: "", family: .ipv6)
        let expected = [
            "-A AMBIT_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
            "-A AMBIT_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark",
            "-A AMBIT_PRERT -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -j ACCEPT",
            "-A AMBIT_OUTPUT -d fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -p tcp -j ACCEPT",
            "-A AMBIT_PRERT ! -d ::1/128 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15006",
            "-A AMBIT_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
            "-A AMBIT_OUTPUT ! -d ::1/128 -o lo -j ACCEPT",
            "-A AMBIT_OUTPUT ! -d ::1/128 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
        ]
        for line in expected { #expect(script.contains(line + "\n"), "missing: \(line)") }
        #expect(!script.contains("127.0.0.1") && !script.contains("169.254.7.127"))
        #expect(!script.contains("*raw") && !script.contains("15053"))
        // The IPv4 script gets the probe's reply rule too.
        #expect(rules.installScript(existing: "").contains("-A AMBIT_OUTPUT -d 169.254.7.127/32 -p tcp -j ACCEPT\n"))
    }

    @Test(arguments: InPodRules.Family.allCases)
    func dnsCaptureRedirectsPort53AndZonesTheProxysUpstreamDNS(family: InPodRules.Family) {
        var dns = rules
        dns.captureDNS = true
        let script = dns.installScript(existing: "", family: family)
        let loopback = family == .ipv4 ? "127.0.0.1/32" : "::1/128"
        let expected = [
            "-A AMBIT_OUTPUT ! -o lo -p udp -m mark ! --mark 0x539/0xfff -m udp --dport 53 -j REDIRECT --to-ports 15053",
            "-A AMBIT_OUTPUT ! -d \(loopback) -p tcp --dport 53 -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15053",
            "*raw",
            "-A AMBIT_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1",
            "-A AMBIT_PRERT -p udp -m mark ! --mark 0x539/0xfff -m udp --sport 53 -j CT --zone 1",
        ]
        for line in expected { #expect(script.contains(line + "\n"), "missing: \(line)") }
        // DNS is redirected before the proxy's own and loopback traffic is let through.
        let dnsRule = script.range(of: "--dport 53 -j REDIRECT")
        let accept = script.range(of: "-A AMBIT_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT")
        #expect(dnsRule != nil && accept != nil && dnsRule!.lowerBound < accept!.lowerBound)
        // Three tables, each with both jumps.
        #expect(script.components(separatedBy: "-A PREROUTING -j AMBIT_PRERT").count == 4)
        #expect(script.components(separatedBy: "-A OUTPUT -j AMBIT_OUTPUT").count == 4)
        // Another port.
        dns.dnsPort = 5353
        #expect(dns.installScript(existing: "", family: family).contains("--to-ports 5353\n"))
    }

    @Test
    func switchingDNSCaptureOffRemovesTheRawChains() {
        let installed = """
            *raw
            :AMBIT_PRERT - [0:0]
            :AMBIT_OUTPUT - [0:0]
            -A PREROUTING -j AMBIT_PRERT
            -A OUTPUT -j AMBIT_OUTPUT
            COMMIT
            """
        let script = rules.installScript(existing: installed, family: .ipv6)
        #expect(
            script.hasSuffix(
                "*raw\n-D PREROUTING -j AMBIT_PRERT\n-D OUTPUT -j AMBIT_OUTPUT\n-F AMBIT_PRERT\n-X AMBIT_PRERT\n-F AMBIT_OUTPUT\n-X AMBIT_OUTPUT\nCOMMIT\n"))
        #expect(!script.contains("15053"))
        #expect(rules.removeScript(existing: installed)?.hasPrefix("*raw\n") == true)
    }

    @Test
    func ipv6ProgramsAreDerivedFromTheIPv4Command() {
        var named = rules
        #expect(named.derived(.ipv4, "-save") == "iptables-save")
        #expect(named.derived(.ipv6, "-restore") == "ip6tables-restore")
        named.iptables = "/usr/sbin/iptables-legacy"
        #expect(named.derived(.ipv6, "-save") == "/usr/sbin/ip6tables-legacy-save")
        #expect(named.derived(.ipv4, "-save") == "/usr/sbin/iptables-legacy-save")
    }

    @Test
    func nftScriptReplacesOneInetTableWithBothFamiliesRules() {
        let script = rules.nftScript(families: [.ipv4, .ipv6])
        let lines = script.split(separator: "\n").map(String.init)
        #expect(Array(lines.prefix(3)) == ["add table inet ambit-inpod", "delete table inet ambit-inpod", "add table inet ambit-inpod"])
        let table = "inet ambit-inpod"
        let expected = [
            "add chain \(table) mangle-prerouting { type filter hook prerouting priority -150; policy accept; }",
            "add chain \(table) mangle-output { type route hook output priority -150; policy accept; }",
            "add chain \(table) nat-prerouting { type nat hook prerouting priority -100; policy accept; }",
            "add chain \(table) nat-output { type nat hook output priority -100; policy accept; }",
        ]
        for line in expected { #expect(lines.contains(line), "missing: \(line)") }
        for (address, family, loopback, probe) in [
            ("ip", "ipv4", "127.0.0.1/32", "169.254.7.127/32"),
            ("ip6", "ipv6", "::1/128", "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128"),
        ] {
            let rules = [
                "mangle-prerouting meta nfproto \(family) meta mark & 0xfff == 0x539 ct mark set ct mark & 0xfffff000 | 0x111",
                "mangle-output meta nfproto \(family) ct mark & 0xfff == 0x111 meta mark set ct mark",
                "nat-prerouting meta l4proto tcp \(address) saddr \(probe) accept",
                "nat-prerouting \(address) daddr != \(loopback) tcp dport != 15008 meta mark & 0xfff != 0x539 redirect to :15006",
                "nat-output meta l4proto tcp \(address) daddr \(probe) accept",
                "nat-output meta nfproto \(family) meta l4proto tcp meta mark & 0xfff == 0x111 accept",
                "nat-output oifname \"lo\" \(address) daddr != \(loopback) accept",
                "nat-output meta l4proto tcp \(address) daddr != \(loopback) meta mark & 0xfff != 0x539 redirect to :15001",
            ]
            for rule in rules { #expect(lines.contains("add rule \(table) \(rule)"), "missing: \(rule)") }
        }
        #expect(!script.contains("raw-") && !script.contains("15053"))
        // IPv4 only: no IPv6 rule.
        let v4 = rules.nftScript(families: [.ipv4])
        #expect(!v4.contains("ip6 ") && !v4.contains("ipv6") && v4.contains("redirect to :15001"))
        #expect(InPodRules.nftRemoveScript == "add table inet ambit-inpod\ndelete table inet ambit-inpod\n")
    }

    @Test
    func nftDNSCaptureAddsTheRedirectsAndRawChains() {
        var dns = rules
        dns.captureDNS = true
        let lines = dns.nftScript(families: [.ipv4, .ipv6]).split(separator: "\n").map(String.init)
        let table = "inet ambit-inpod"
        #expect(lines.contains("add chain \(table) raw-prerouting { type filter hook prerouting priority -300; policy accept; }"))
        #expect(lines.contains("add chain \(table) raw-output { type filter hook output priority -300; policy accept; }"))
        for (address, family, loopback) in [("ip", "ipv4", "127.0.0.1/32"), ("ip6", "ipv6", "::1/128")] {
            let rules = [
                "raw-output meta nfproto \(family) udp dport 53 meta mark & 0xfff == 0x539 ct zone set 1",
                "raw-prerouting meta nfproto \(family) udp sport 53 meta mark & 0xfff != 0x539 ct zone set 1",
                "nat-output meta nfproto \(family) oifname != \"lo\" udp dport 53 meta mark & 0xfff != 0x539 redirect to :15053",
                "nat-output \(address) daddr != \(loopback) tcp dport 53 meta mark & 0xfff != 0x539 redirect to :15053",
            ]
            for rule in rules { #expect(lines.contains("add rule \(table) \(rule)"), "missing: \(rule)") }
        }
    }

    @Test
    func anUnknownBackendIsAProblemAtInPodBackend() {
        var config = InPodConfig()
        #expect(config.backend == "iptables" && config.ipv6)
        config.backend = "nftables"
        #expect(config.validate().isEmpty)
        config.backend = "ebpf"
        let problems = config.validate().map { $0.under("inPod") }
        #expect(problems.contains { $0.path == "inPod.backend" && $0.message.contains("iptables, nftables") })
    }
}
