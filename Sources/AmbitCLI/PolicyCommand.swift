import ArgumentParser
import Authorization
import Foundation
import Kernel
import LocalConfig
import AmbitRuntime
import ConfigYAML

/// `ambit policy …`: offline tools for authorization policies.
struct PolicyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy", abstract: "Offline tools for authorization policies.",
        subcommands: [PolicyCheckCommand.self])
}

/// `ambit policy check`: explains the L4 authorization decision for one connection, as
/// the node proxy would make it, from a mesh file and Istio policy files.
///
/// The first line of output is exactly `ALLOW` or `DENY`; then the deciding policy and
/// rule, the reason, and every applicable policy with why it did or did not match.
/// Exit status: 0 ALLOW, 1 DENY, 2 bad input (each error names file, line, document and
/// path).
struct PolicyCheckCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Explain the L4 authorization decision for one connection (exit 0 ALLOW, 1 DENY, 2 bad input).",
        discussion: """
            MESH is a mesh file in the local-config format (workloads with labels, services, \
            policies in ztunnel's form); each --policy file holds Istio AuthorizationPolicy \
            and PeerAuthentication documents (security.istio.io/v1 or v1beta1), translated \
            as istiod translates them for ztunnel. Without --source-identity the \
            connection is plaintext (no peer identity). Without --source-ip the source is the \
            first workload with the given identity, else 0.0.0.0.
            """)

    @Option(name: .long, help: "The mesh file (local-config format).")
    var mesh: String?

    @Option(name: .customLong("policy"), help: "An Istio AuthorizationPolicy file; repeat for more.")
    var policies: [String] = []

    @Option(name: .long, help: "The destination workload's IP:PORT.")
    var destination: String?

    @Option(name: .customLong("source-ip"), help: "The source IP address.")
    var sourceIP: String?

    @Option(name: .customLong("source-identity"), help: "The peer identity, spiffe://TD/ns/NS/sa/SA (an mTLS connection).")
    var sourceIdentity: String?

    @Flag(name: .long, help: "A plaintext connection: no peer identity (the default).")
    var plaintext = false

    @Option(name: .customLong("root-namespace"), help: "The mesh's root namespace (its selector-less policies are mesh-wide).")
    var rootNamespace = "istio-system"

    @Flag(name: .long, help: "Print one JSON object instead of text.")
    var json = false

    func run() async throws {
        let input: Input
        do {
            input = try resolveInput()
        } catch let failure as InputFailure {
            for line in failure.lines {
                FileHandle.standardError.write(Data("error: \(line)\n".utf8))
            }
            throw ExitCode(2)
        }
        for warning in input.policies.warnings {
            FileHandle.standardError.write(Data("warning: \(warning)\n".utf8))
        }
        let index = PolicyIndex(
            input.mesh.policies.values.sorted { $0.key < $1.key } + input.policies.policies,
            peerAuthentications: input.policies.peerAuthentications, rootNamespace: rootNamespace)
        let evaluation = index.evaluate(input.attributes, destination: input.workload)
        let explanations = index.explain(input.attributes, destination: input.workload)
        if json {
            printJSON(evaluation, explanations, input)
        } else {
            printText(evaluation, explanations, input)
        }
        if !evaluation.decision.allowed { throw ExitCode(1) }
    }

    struct Input {
        var mesh: MeshSnapshot
        var policies: LoadedPolicies
        var attributes: ConnectionAttributes
        var workload: Workload
    }

    struct InputFailure: Error {
        var lines: [String]
        init(_ lines: [String]) { self.lines = lines }
    }

    private func resolveInput() throws -> Input {
        var problems: [String] = []
        if mesh == nil { problems.append("--mesh MESH.yaml is required") }
        if destination == nil { problems.append("--destination IP:PORT is required") }
        if plaintext && sourceIdentity != nil { problems.append("--plaintext and --source-identity exclude each other") }
        if !problems.isEmpty { throw InputFailure(problems) }

        var errors: [String] = []
        var meshSnapshot = MeshSnapshot.empty
        do throws(ConfigErrors) {
            meshSnapshot = try LocalConfigPlugin.parse(yaml: try ConfigFile.read(mesh!), file: mesh!)
        } catch {
            errors += error.errors.map(\.description)
        }
        var loaded = LoadedPolicies()
        do throws(ConfigErrors) {
            loaded = try IstioPolicyFile.load(paths: policies, rootNamespace: rootNamespace)
        } catch {
            errors += error.errors.map(\.description)
        }
        var identity: SpiffeID?
        if let sourceIdentity {
            do throws(SpiffeID.ParseError) {
                identity = try SpiffeID(parsing: sourceIdentity)
            } catch {
                errors.append("--source-identity: \(error)")
            }
        }
        guard let target = SocketAddr(destination!) else {
            throw InputFailure(errors + ["--destination: expected IP:PORT, got \"\(destination!)\""])
        }
        var sourceAddress = IPAddress("0.0.0.0")!
        if let sourceIP {
            if let ip = IPAddress(sourceIP) {
                sourceAddress = ip
            } else {
                errors.append("--source-ip: expected an IP address, got \"\(sourceIP)\"")
            }
        } else if let identity,
            let owner = meshSnapshot.workloads.values.sorted(by: { $0.uid < $1.uid }).first(where: { $0.identity == identity }),
            let ip = owner.workloadIPs.first
        {
            sourceAddress = ip
        }
        if !errors.isEmpty { throw InputFailure(errors) }
        guard let workload = meshSnapshot.workload(at: target.ip) else {
            if let service = meshSnapshot.service(at: target.ip) {
                throw InputFailure([
                    "--destination: \(target.ip) is a VIP of service \(service.namespacedHostname); policies apply to workloads, give an endpoint's address"
                ])
            }
            throw InputFailure(["--destination: no workload in \(mesh!) has address \(target.ip)"])
        }
        let attributes = ConnectionAttributes(
            sourceIdentity: identity, sourceAddress: SocketAddr(ip: sourceAddress, port: 0),
            sourceWorkload: meshSnapshot.workload(at: sourceAddress), destinationAddress: target,
            destinationWorkload: workload, isMutualTLS: identity != nil)
        return Input(mesh: meshSnapshot, policies: loaded, attributes: attributes, workload: workload)
    }

    private func describeSource(_ input: Input) -> String {
        let attributes = input.attributes
        var text = "\(attributes.sourceAddress.ip)"
        if let workload = attributes.sourceWorkload { text += " (workload \(workload.namespace)/\(workload.name))" }
        text += attributes.authenticatedIdentity.map { ", mTLS as \($0)" } ?? ", plaintext (no identity)"
        return text
    }

    private func printText(_ evaluation: PolicyEvaluation, _ explanations: [PolicyExplanation], _ input: Input) {
        let decision = evaluation.decision
        var lines = [decision.allowed ? "ALLOW" : "DENY"]
        if let policy = decision.policy {
            lines.append("policy: \(policy)" + (decision.rule.map { ", rule \($0)" } ?? ""))
        } else {
            lines.append("policy: none")
        }
        // The decision names its rule; the explanation says what that rule required.
        let deciding = explanations.first { $0.policy.key == decision.policy && $0.matchingRule == decision.rule }
        var reason = "reason: \(decision.reason)"
        if let detail = deciding?.details.first, let range = detail.range(of: "matches: ") {
            reason += ": " + detail[range.upperBound...]
        }
        lines.append(reason)
        lines.append("source: \(describeSource(input))")
        lines.append(
            "destination: \(input.attributes.destinationAddress) (workload \(input.workload.namespace)/\(input.workload.name))")
        if explanations.isEmpty {
            lines.append("applicable policies: none (no policy applies)")
        } else {
            lines.append("applicable policies (\(explanations.count)):")
            for explanation in explanations {
                lines.append("  \(explanation.summary)")
                for detail in explanation.details { lines.append("    \(detail)") }
                for warning in input.policies.warnings where warning.policy == explanation.policy.key {
                    lines.append("    istiod: \(warning.field): \(warning.message)")
                }
            }
        }
        if let wouldBe = evaluation.dryRunDecision {
            let matched = evaluation.dryRunMatches.map(\.description).joined(separator: ", ")
            lines.append(
                "dry-run: \(matched.isEmpty ? "no dry-run policy matches" : "matched \(matched)"); "
                    + "enforced, the decision would be \(wouldBe.allowed ? "ALLOW" : "DENY") (\(wouldBe.reason))")
        }
        print(lines.joined(separator: "\n"))
    }

    private struct JSONReport: Encodable {
        struct Applicable: Encodable {
            var policy: String
            var summary: String
            var matchingRule: Int?
            var details: [String]
            var warnings: [String]
        }
        var decision: String
        var policy: String?
        var rule: Int?
        var reason: String
        var source: String
        var destination: String
        var destinationWorkload: String
        var applicable: [Applicable]
        var dryRunMatches: [String]
        var dryRunDecision: String?
        var warnings: [String]
    }

    private func printJSON(_ evaluation: PolicyEvaluation, _ explanations: [PolicyExplanation], _ input: Input) {
        let decision = evaluation.decision
        let report = JSONReport(
            decision: decision.allowed ? "ALLOW" : "DENY", policy: decision.policy, rule: decision.rule,
            reason: decision.reason, source: describeSource(input),
            destination: "\(input.attributes.destinationAddress)",
            destinationWorkload: "\(input.workload.namespace)/\(input.workload.name)",
            applicable: explanations.map {
                explanation in
                .init(
                    policy: explanation.policy.key, summary: explanation.summary, matchingRule: explanation.matchingRule,
                    details: explanation.details,
                    warnings: input.policies.warnings.filter { $0.policy == explanation.policy.key }.map(\.description))
            },
            dryRunMatches: evaluation.dryRunMatches.map(\.description),
            dryRunDecision: evaluation.dryRunDecision.map { $0.allowed ? "ALLOW" : "DENY" },
            warnings: input.policies.warnings.map(\.description))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(report)) ?? Data("{}".utf8)
        print(String(decoding: data, as: UTF8.self))
    }
}
