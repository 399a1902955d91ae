import AmbitTestKit
import Kernel
import MyPolicy
import Testing

@Suite("my-policy")
struct MyPolicyTests {
    @Test("refuses the configured namespaces only")
    func decisions() async throws {
        let tester = try await PolicyTester<MyPolicyPlugin>.start(config: "{deniedNamespaces: [sandbox]}")
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/sandbox/sa/x")).verdict == .deny)
        #expect(await tester.decide(.mTLS(from: "cluster.local/ns/shop/sa/x")).verdict == .allow)
        #expect(await tester.decide(.plaintext()).verdict == .allow)  // abstained: nothing objected
        await tester.stop()
    }

    @Test("config mistakes name path and line")
    func configErrors() {
        #expect(throws: ConfigErrors.self) { try PolicyTester<MyPolicyPlugin>.decodeConfig("{deniedNamespace: [x]}") }
    }

    @Test("end to end: decides real connections in an in-process mesh")
    func endToEnd() async throws {
        let mesh = try await InProcessMesh.start(
            policies: [PluginType(MyPolicyPlugin.self)],
            manifest: "- id: my-policy\n  config: {deniedNamespaces: [default]}")
        let refused = try await mesh.connect(from: "client")
        await mesh.stop()
        #expect(!refused.allowed)
        #expect(refused.decision?.plugin == "my-policy")
    }
}
