import ArgumentParser
import CAServer
import Certificates
import Foundation
import AmbitRuntime
import Kernel

/// `ambit ca`: make a root in Istio's plugged-in CA layout, and serve Istio's CA API.
struct CACommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "Run Ambit as a certificate authority.",
        subcommands: [CAInitCommand.self, CAServeCommand.self])
}

struct CAInitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Write a self-signed root as ca-cert.pem, ca-key.pem, root-cert.pem and cert-chain.pem.")

    @Option(name: .long, help: "Directory to write the files into (created if missing).")
    var out: String

    @Option(name: .long, help: "Trust domain, written as the root's organization.")
    var trustDomain: String = "cluster.local"

    @Option(name: .long, help: "Key type: p256 or p384.")
    var key: String = "p256"

    @Option(name: .long, help: "Validity of the root, e.g. 87600h (10 years).")
    var validity: String = "87600h"

    @Flag(name: .long, help: "Overwrite existing files.")
    var force = false

    func run() throws {
        guard let keyType = CertificateAuthority.RootKeyType(rawValue: key) else {
            throw ValidationError("--key must be p256 or p384, got \"\(key)\"")
        }
        guard let duration = ConfigDuration(parsing: validity), duration.duration >= .seconds(60) else {
            throw ValidationError("--validity must be a duration of at least 1m, such as 87600h, got \"\(validity)\"")
        }
        do {
            let root = try CertificateAuthority.makeRoot(
                trustDomain: trustDomain, keyType: keyType, validity: duration.duration)
            let files = try CertificateAuthority.write(root, to: out, force: force)
            for file in files { print(file) }
        } catch {
            FileHandle.standardError.write(Data("error: \(error.message)\n".utf8))
            throw ExitCode.failure
        }
    }
}

struct CAServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve Istio's CA gRPC API from a manifest with a ca-server plugin (as `ambit run` would).")

    @Option(name: .long, help: "Path to the CA manifest (YAML), with local-config and ca-server plugins.")
    var manifest: String

    @Option(name: .long, help: "Override the manifest's log level (trace…critical).")
    var logLevel: String?

    func run() async throws {
        let plan = try loadPlan(manifest)
        guard plan.entries.contains(where: { $0.type.id == CAServerPlugin.id }) else {
            FileHandle.standardError.write(
                Data("error: \(manifest): no \(CAServerPlugin.id) plugin; add one (see Examples/ca.yaml)\n".utf8))
            throw ExitCode.failure
        }
        // The same node runtime as `ambit run`: only the plugins differ.
        try await RunCommand.serve(plan, logLevel: logLevel)
    }
}
