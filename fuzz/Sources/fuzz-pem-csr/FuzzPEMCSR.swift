import CAServer
import Certificates
import Foundation
import FuzzSupport
import Kernel

/// What every input reuses: a CA, an issuer whose mesh has one workload on node-a, and a
/// well-formed CSR for that workload's identity.
private struct Fixture: Sendable {
    let authority: CertificateAuthority
    let issuer: CertificateIssuer
    let identity: SpiffeID
    let csrPEM: String

    init() {
        do {
            let directory = NSTemporaryDirectory() + "ambit-fuzz-ca-\(getpid())"
            _ = try CertificateAuthority.write(
                try CertificateAuthority.makeRoot(trustDomain: "cluster.local"), to: directory, force: true)
            authority = try CertificateAuthority.load(directory: directory, trustDomain: "cluster.local")
            try? FileManager.default.removeItem(atPath: directory)
            let mesh = MeshStore()
            let workload = Workload(
                uid: "w", name: "w", namespace: "default", serviceAccount: "sa", workloadIPs: [IPAddress("10.0.0.1")!],
                node: "node-a")
            _ = mesh.publish(MeshSnapshot(workloads: [workload], services: [], policies: []))
            issuer = CertificateIssuer(authority: authority, tokens: ["token": "node-a"], maxTTL: .seconds(3600), mesh: mesh)
            identity = workload.identity
            csrPEM = try WorkloadKey(identity: identity).csrPEM
        } catch {
            fatalError("fuzz fixture: \(error)")
        }
    }
}

private let fixture = Fixture()

/// PEM and CSR handling: certificate PEM parsing, CSR parsing and verification, and the CA
/// server's whole issuing decision (token, identity, node, CSR, lifetime). The first byte
/// picks the mode; the rest is PEM text, DER wrapped in PEM, or the identity asked for.
///
/// Invariants: bad input is an error, never a crash; a certificate is issued only for
/// the identity of a workload on the caller's node, with a lifetime within the maximum.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    guard let mode = bytes.first else { return 0 }
    let rest = Array(bytes.dropFirst())
    let text = String(decoding: rest, as: UTF8.self)
    switch mode % 5 {
    case 0:
        _ = try? PEMFiles.certificates(pem: text, source: "fuzz")
        _ = CertificateAuthority.uriSANs(ofCSR: text)
        checkIssue(csrPEM: text, impersonating: nil, validity: 600)
    case 1:
        let pem = wrap(rest, as: "CERTIFICATE REQUEST")
        _ = CertificateAuthority.uriSANs(ofCSR: pem)
        _ = try? CertificateAuthority.verifiedCSR(pem: pem, identity: fixture.identity)
        checkIssue(csrPEM: pem, impersonating: nil, validity: 600)
    case 2:
        _ = try? PEMFiles.certificates(pem: wrap(rest, as: "CERTIFICATE"), source: "fuzz")
    case 3:
        // The identity asked for (ImpersonatedIdentity) and the lifetime, with a good CSR.
        let validity = rest.prefix(8).reduce(Int64(0)) { $0 << 8 | Int64($1) }
        let identity = String(decoding: rest.dropFirst(8), as: UTF8.self)
        _ = try? SpiffeID(parsing: identity)
        checkIssue(csrPEM: fixture.csrPEM, impersonating: identity, validity: validity)
    default:
        // The bearer token header.
        let outcome = try? fixture.issuer.issue(
            authorization: text, csrPEM: fixture.csrPEM, validitySeconds: 60, impersonatedIdentity: nil)
        if outcome != nil { invariant(text.contains("token"), "issued for authorization \(text.debugDescription)") }
    }
    return 0
}

private func checkIssue(csrPEM: String, impersonating: String?, validity: Int64) {
    guard
        let outcome = try? fixture.issuer.issue(
            authorization: "Bearer token", csrPEM: csrPEM, validitySeconds: validity, impersonatedIdentity: impersonating)
    else { return }
    invariant(outcome.identity == fixture.identity, "issued \(outcome.identity), not the node's workload identity")
    invariant(outcome.lifetime <= .seconds(3600) && outcome.lifetime > .zero, "lifetime \(outcome.lifetime)")
    invariant(!outcome.chainPEM.isEmpty, "empty chain")
}

/// `bytes` as the base64 body of a PEM block labelled `label`.
private func wrap(_ bytes: [UInt8], as label: String) -> String {
    "-----BEGIN \(label)-----\n\(Data(bytes).base64EncodedString(options: .lineLength64Characters))\n-----END \(label)-----\n"
}
