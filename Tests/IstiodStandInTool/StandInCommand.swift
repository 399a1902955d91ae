import ArgumentParser
import CAServer
import Certificates
import Crypto
import Foundation
import IstioXDSAPI
import IstiodStandIn
import Kernel
import Logging
import SwiftProtobuf
import UnixSignals
import XDS

/// `ambit-istiod-standin`: a stand-in for istiod, for end-to-end tests of nodes that run
/// under one (`ambit run --profile ztunnel`). Not istiod: it watches no Kubernetes API. It
/// serves, on one TLS port as istiod does on 15012, delta ADS with the Workload API
/// resources of a file and Istio's CA API (`IstioCertificateService`) signing with a local
/// CA, each caller bound by its bearer token to a node, and a node given only identities
/// of workloads on it.
///
/// The resources file is JSON, proto3's JSON mapping of the Workload API:
///
///     {"addresses": [{"workload": {"uid": "…", "addresses": ["CkcBCg=="], …}},
///                    {"service": {"namespace": "default", "hostname": "…", …}}],
///      "authorizations": [{"name": "…", "namespace": "…", "action": "DENY", …}]}
///
/// Resource names are istiod's: a workload's uid, `namespace/hostname` for a service,
/// `namespace/name` for a policy; versions are a hash of each body. SIGHUP re-reads the
/// file and pushes what changed (upserts and removals) to every stream; a file that does
/// not parse keeps the resources in force.
@main
struct StandInCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ambit-istiod-standin",
        abstract: "A stand-in for istiod in tests: delta ADS (Workload API) and the CA API on one TLS port.")

    @Option(help: "Address to listen on, HOST:PORT.")
    var listen = "127.0.0.1:15012"

    @Option(help: "A CA directory (`ambit ca init --out DIR`): signs workload certificates and the serving certificate.")
    var caDirectory: String

    @Option(help: "Trust domain of the CA.")
    var trustDomain = "cluster.local"

    @Option(help: "A name (or IP) in the serving certificate; repeatable.")
    var serverName: [String] = []

    @Option(help: "JSON file: bearer token -> node name (for xDS any listed token is accepted).")
    var tokens: String

    @Option(help: "JSON file of Workload API resources (see the type's documentation).")
    var resources: String

    @Option(help: "Longest certificate lifetime issued, in seconds.")
    var maxTTLSeconds: Int64 = 86400

    func run() async throws {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: "istiod-standin")
        logger.logLevel = .info

        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]) else {
            throw ValidationError("--listen \(listen): expected HOST:PORT")
        }
        let host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))

        let authority = try CertificateAuthority.load(directory: caDirectory, trustDomain: trustDomain)
        let names = serverName.isEmpty ? ["istiod.istio-system.svc"] : serverName
        let serving = try authority.issueServingCertificate(names: names, lifetime: .seconds(86400))
        let tokenMap: [String: String]
        do {
            tokenMap = try JSONDecoder().decode([String: String].self, from: Data(contentsOf: URL(fileURLWithPath: tokens)))
        } catch {
            throw ValidationError("--tokens \(tokens): \(error); expected a JSON object token -> node name")
        }

        let mesh = MeshStore()
        let origin = mesh.origin(named: "istiod-standin")
        let issuer = CertificateIssuer(authority: authority, tokens: tokenMap, maxTTL: .seconds(maxTTLSeconds), mesh: mesh)
        let standIn = IstiodStandIn(
            host: host, certificateChainPEM: serving.chainPEM, privateKeyPEM: serving.keyPEM, tokens: Set(tokenMap.keys),
            services: [IstioCertificateService(issuer: issuer, logger: logger)])

        var current = try ResourceFile.load(resources)
        current.install(into: standIn, mesh: mesh, origin: origin, logger: logger)
        let bound = try await standIn.start(on: port)
        say(
            "istiod stand-in serving xDS and the CA API on \(host):\(bound) as \(names.joined(separator: ",")): "
                + "\(current.addresses.count) addresses, \(current.authorizations.count) authorizations")

        for await signal in await UnixSignalsSequence(trapping: .sighup, .sigterm, .sigint) {
            if signal == .sighup {
                do {
                    let next = try ResourceFile.load(resources)
                    let pushed = next.push(replacing: current, to: standIn)
                    next.install(into: nil, mesh: mesh, origin: origin, logger: logger)
                    current = next
                    say("reloaded \(resources): \(pushed)")
                } catch {
                    say("reload of \(resources) failed, resources in force kept: \(error)")
                }
                    } else {
                break
            }
        }
        await standIn.stop()
    }
}

/// The resources of one read of the file: per type URL, name → (version, body).
struct ResourceFile {
    struct Resource: Equatable {
        var version: String
        var body: Google_Protobuf_Any
    }

    var addresses: [String: Resource] = [:]
    var authorizations: [String: Resource] = [:]
    /// The decoded messages, for the CA's view of the mesh.
    var addressMessages: [String: Istio_Workload_Address] = [:]
    var authorizationMessages: [String: Istio_Security_Authorization] = [:]

    struct LoadError: Error, CustomStringConvertible {
        var description: String
    }

    static func load(_ path: String) throws -> ResourceFile {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw LoadError(description: "\(path): cannot read: \(error.localizedDescription)")
        }
        guard let top = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw LoadError(description: "\(path): not a JSON object")
        }
        for key in top.keys where key != "addresses" && key != "authorizations" {
            throw LoadError(description: "\(path): unknown key \"\(key)\" (expected addresses, authorizations)")
        }
        var file = ResourceFile()
        for (index, element) in (top["addresses"] as? [Any] ?? []).enumerated() {
            let message: Istio_Workload_Address = try decode(element, at: "\(path): addresses[\(index)]")
            let name: String
            switch message.type {
            case .workload(let workload): name = workload.uid
            case .service(let service): name = "\(service.namespace)/\(service.hostname)"
            case nil: throw LoadError(description: "\(path): addresses[\(index)]: neither workload nor service")
            }
            guard file.addresses[name] == nil else {
                throw LoadError(description: "\(path): addresses[\(index)]: a second resource named \(name)")
            }
            file.addresses[name] = try resource(message)
            file.addressMessages[name] = message
        }
        for (index, element) in (top["authorizations"] as? [Any] ?? []).enumerated() {
            let message: Istio_Security_Authorization = try decode(element, at: "\(path): authorizations[\(index)]")
            let name = "\(message.namespace)/\(message.name)"
            guard file.authorizations[name] == nil else {
                throw LoadError(description: "\(path): authorizations[\(index)]: a second policy named \(name)")
            }
            file.authorizations[name] = try resource(message)
            file.authorizationMessages[name] = message
        }
        return file
    }

    private static func decode<M: SwiftProtobuf.Message>(_ element: Any, at place: String) throws -> M {
        do {
            let json = try JSONSerialization.data(withJSONObject: element)
            return try M(jsonUTF8Data: json)
        } catch {
            throw LoadError(description: "\(place): not a \(M.protoMessageName) in proto3 JSON: \(error)")
        }
    }

    private static func resource(_ message: some SwiftProtobuf.Message) throws -> Resource {
        let body = IstiodStandIn.body(message)
        let digest = SHA256.hash(data: body.value)
        let version = digest.prefix(8).map { String(format: "%02x", $0) }.joined()
        return Resource(version: version, body: body)
    }

    /// Sets the resources in the stand-in (when given) and the CA's mesh view.
    func install(into standIn: IstiodStandIn?, mesh: MeshStore, origin: MeshOrigin, logger: Logger) {
        if let standIn {
            standIn.set(WorkloadAPI.addressTypeURL, upserting: addresses.map { ($0.key, $0.value.version, $0.value.body) })
            standIn.set(
                WorkloadAPI.authorizationTypeURL,
                upserting: authorizations.map { ($0.key, $0.value.version, $0.value.body) })
        }
        var workloads: [Workload] = []
        var services: [Service] = []
        for (name, message) in addressMessages {
            do {
                switch try WorkloadAPI.address(message, name: name) {
                case .workload(let workload): workloads.append(workload)
                case .service(let service): services.append(service)
                }
            } catch {
                // Served anyway: judging resources is the node's job (it NACKs them).
                logger.notice("resource the CA ignores", metadata: ["resource": "\(name)", "error": "\(error)"])
            }
        }
        _ = mesh.replace(with: MeshContent(workloads: workloads, services: services, policies: []), from: origin)
    }

    /// Pushes the difference from `old` and says what it pushed.
    func push(replacing old: ResourceFile, to standIn: IstiodStandIn) -> String {
        var said: [String] = []
        for (typeURL, new, was) in [
            (WorkloadAPI.addressTypeURL, addresses, old.addresses),
            (WorkloadAPI.authorizationTypeURL, authorizations, old.authorizations),
        ] {
            let upserts = new.filter { was[$0.key] != $0.value }.map { ($0.key, $0.value.version, $0.value.body) }
            let removals = was.keys.filter { new[$0] == nil }.sorted()
            if upserts.isEmpty && removals.isEmpty { continue }
            standIn.push(typeURL, upserting: upserts, removing: removals)
            said.append(
                "\(typeURL.split(separator: ".").last ?? ""): \(upserts.count) upserted "
                    + "(\(upserts.map(\.0).sorted().joined(separator: ", "))), \(removals.count) removed (\(removals.joined(separator: ", ")))")
        }
        return said.isEmpty ? "no change" : said.joined(separator: "; ")
    }
}

/// Writes a line to standard output at once (the test reads it while the process runs).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
