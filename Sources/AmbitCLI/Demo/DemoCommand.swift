import ArgumentParser
import Capture
import Foundation
import Kernel
import LocalConfig
import Logging
import NIOCore
import NIOPosix
import AmbitRuntime

/// `ambit demo`: a node proxy with a small built-in mesh, driven by real connections.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run a node proxy on a built-in demo mesh, drive real connections through it, and print what happened.")

    @Flag(name: .long, help: "Show the node's log lines (info and above).")
    var verbose = false

    func run() async throws {
        AmbitLogging.bootstrap(format: .text, control: LogLevelControl(verbose ? .info : .critical))
        let outcome = try await DemoMesh.run(logger: Logger(label: "ambit.demo"))
        print(outcome.table)
        print("\nWorkload certificates, issued by the demo CA over Istio's CA gRPC API:")
        for line in outcome.certificates { print("  " + line) }
        print("\nistio_tcp_connections_closed_total from both nodes (a few of the 23 labels shown):")
        for line in outcome.metrics { print("  " + line) }
        if outcome.failures.isEmpty {
            print("\nAll \(outcome.rows.count) connections behaved as expected.")
        } else {
            print("\nUnexpected results:")
            for failure in outcome.failures { print("  - \(failure)") }
            throw ExitCode.failure
        }
    }
}
