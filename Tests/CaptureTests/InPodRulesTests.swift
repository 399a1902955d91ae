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
}
