import AmbitTestKit
import ExamplePolicies
import Foundation
import Kernel
import Testing

@Suite("identity-allow-list")
struct IdentityAllowListTests {
    let directory = NSTemporaryDirectory() + "allow-list-" + UUID().uuidString

    init() throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    func write(_ text: String) throws {
        try text.write(toFile: directory + "/allow.txt", atomically: true, encoding: .utf8)
    }

    @Test("listed identities pass, others and plaintext are denied; prefixes match")
    func decisions() async throws {
        try write(
            """
            # who may call
            spiffe://cluster.local/ns/shop/sa/frontend
            cluster.local/ns/batch/*   # every batch job
            """)
        let tester = try await PolicyTester<IdentityAllowListPlugin>.start(
            config: "{path: allow.txt}", baseDirectory: directory)
        defer { Task { await tester.stop() } }

        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/shop/sa/frontend")).verdict == .allow)
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/batch/sa/nightly")).verdict == .allow)
        let stranger = await tester.decide(.mTLS(from: "cluster.local/ns/shop/sa/admin"))
        #expect(stranger.verdict == .deny)
        #expect(stranger.plugin == "identity-allow-list")
        #expect(stranger.reason.contains("not on the allow-list"))
        #expect(await tester.decide(.plaintext(from: "10.0.0.1")).verdict == .deny)
    }

    @Test("an edit takes effect; a bad edit keeps the last good list")
    func reload() async throws {
        try write("cluster.local/ns/a/sa/one\n")
        let tester = try await PolicyTester<IdentityAllowListPlugin>.start(
            config: "{path: allow.txt}", baseDirectory: directory)
        defer { Task { await tester.stop() } }
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/a/sa/two")).verdict == .deny)

        try write("cluster.local/ns/a/sa/one\ncluster.local/ns/a/sa/two\n")
        #expect(await tester.plugin.reloadIfChanged())
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/a/sa/two")).verdict == .allow)

        try write("cluster.local/ns/a/sa/one\nnot an identity\n")
        #expect(await !tester.plugin.reloadIfChanged())
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/a/sa/two")).verdict == .allow)
    }

    @Test("a bad file at start names file and line; a missing path is a config error with its path")
    func errors() async throws {
        try write("cluster.local/ns/a/sa/one\n\nspiffe://nope\n")
        do {
            _ = try await PolicyTester<IdentityAllowListPlugin>.start(config: "{path: allow.txt}", baseDirectory: directory)
            Issue.record("should not start")
        } catch let errors as ConfigErrors {
            #expect(errors.description.contains("allow.txt:3:"), "\(errors)")
        }
        #expect(throws: ConfigErrors.self) { try PolicyTester<IdentityAllowListPlugin>.decodeConfig("{pollInterval: 1s}") }
        do {
            _ = try PolicyTester<IdentityAllowListPlugin>.decodeConfig("path: a.txt\ncolour: red\n")
            Issue.record("unknown key accepted")
        } catch {
            #expect(error.description.contains("manifest.yaml:2: config.colour"), "\(error)")
        }
    }
}
