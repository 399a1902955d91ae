public import Certificates
public import Foundation
public import GRPCCore
public import IstioCAAPI
public import Kernel
public import Logging
import SwiftProtobuf

/// Decides and performs one certificate request: authenticates the caller by bearer
/// token (→ node name), allows only identities with a workload on that node in the
/// mesh, checks the CSR, and signs.
///
/// Separate from the gRPC plumbing so the rules read in one place. Thread-safe.
public struct CertificateIssuer: Sendable {
    /// Signs.
    public let authority: CertificateAuthority
    /// Bearer token → node name.
    public let tokens: [String: String]
    /// Longest lifetime issued; longer requests are capped, zero or negative ones get it.
    public let maxTTL: Duration
    /// Where workloads and their nodes come from.
    public let mesh: MeshStore

    /// Creates an issuer.
    public init(authority: CertificateAuthority, tokens: [String: String], maxTTL: Duration, mesh: MeshStore) {
        self.authority = authority
        self.tokens = tokens
        self.maxTTL = maxTTL
        self.mesh = mesh
    }

    /// What was decided, for the log.
    public struct Outcome: Sendable {
        /// The caller's node.
        public var node: String
        /// The identity issued.
        public var identity: SpiffeID
        /// The chain returned, leaf first.
        public var chainPEM: [String]
        /// The lifetime given.
        public var lifetime: Duration
    }

    /// Handles one request. Throws `RPCError`: UNAUTHENTICATED (no or unknown token),
    /// PERMISSION_DENIED (identity outside the trust domain or with no workload on the
    /// caller's node), INVALID_ARGUMENT (bad CSR or identity), INTERNAL (signing failed).
    public func issue(
        authorization: String?, csrPEM: String, validitySeconds: Int64, impersonatedIdentity: String?, now: Date = Date()
    ) throws(RPCError) -> Outcome {
        guard let authorization, !authorization.isEmpty else {
            throw RPCError(code: .unauthenticated, message: "no authorization header; send authorization: Bearer <token>")
        }
        let parts = authorization.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            throw RPCError(code: .unauthenticated, message: "authorization header must be \"Bearer <token>\"")
        }
        guard let node = tokens[String(parts[1]).trimmingCharacters(in: .whitespaces)] else {
            throw RPCError(code: .unauthenticated, message: "unknown token: it is not in this CA's tokens")
        }

        // Without impersonation the caller asks for the identity in its CSR; the node
        // check below applies either way.
        let requested: String
        if let impersonatedIdentity, !impersonatedIdentity.isEmpty {
            requested = impersonatedIdentity
        } else if let fromCSR = CertificateAuthority.uriSANs(ofCSR: csrPEM), fromCSR.count == 1 {
            requested = fromCSR[0]
        } else {
            throw RPCError(
                code: .invalidArgument,
                message: "no identity: set metadata ImpersonatedIdentity or put a SPIFFE URI SAN in the CSR")
        }
        let identity: SpiffeID
        do {
            identity = try SpiffeID(parsing: requested)
        } catch {
            throw RPCError(code: .invalidArgument, message: "\(error)")
        }
        guard identity.trustDomain == authority.trustDomain else {
            throw RPCError(
                code: .permissionDenied,
                message: "\(identity) is not in trust domain \(authority.trustDomain), the only one this CA issues")
        }
        let onNode = mesh.snapshot.workloads.values.contains { workload in
            workload.node == node && workload.identity == identity
        }
        guard onNode else {
            throw RPCError(
                code: .permissionDenied,
                message: "node \(node) may not have \(identity): no workload with that identity runs on it")
        }

        let lifetime = validitySeconds > 0 ? min(.seconds(validitySeconds), maxTTL) : maxTTL
        do {
            let chain = try authority.issue(csrPEM: csrPEM, identity: identity, lifetime: lifetime, now: now)
            return Outcome(node: node, identity: identity, chainPEM: chain, lifetime: lifetime)
        } catch let error where error.code == .invalidCSR {
            throw RPCError(code: .invalidArgument, message: error.message)
        } catch {
            throw RPCError(code: .internalError, message: "signing failed: \(error.message)")
        }
    }
}

/// `istio.v1.auth.IstioCertificateService` over gRPC, backed by a ``CertificateIssuer``.
/// Every refusal is logged with the caller's address, node and identity.
///
/// The `ca-server` plugin serves it; anything else with a gRPC server (a test istiod,
/// which serves it beside xDS as istiod does) can register it too.
public struct IstioCertificateService: Istio_V1_Auth_IstioCertificateService.ServiceProtocol {
    let issuer: CertificateIssuer
    let logger: Logger

    /// Creates the service over `issuer`, logging issues and refusals to `logger`.
    public init(issuer: CertificateIssuer, logger: Logger) {
        self.issuer = issuer
        self.logger = logger
    }

    /// Handles `CreateCertificate`: issues the chain or refuses with the issuer's error.
    public func createCertificate(
        request: ServerRequest<Istio_V1_Auth_IstioCertificateRequest>, context: ServerContext
    ) async throws -> ServerResponse<Istio_V1_Auth_IstioCertificateResponse> {
        let authorization = request.metadata[stringValues: "authorization"].first(where: { _ in true })
        let impersonated = request.message.metadata.fields["ImpersonatedIdentity"]?.stringValue
        do {
            let outcome = try issuer.issue(
                authorization: authorization, csrPEM: request.message.csr,
                validitySeconds: request.message.validityDuration, impersonatedIdentity: impersonated)
            logger.info(
                "issued certificate",
                metadata: [
                    "peer": "\(context.remotePeer)", "node": "\(outcome.node)", "identity": "\(outcome.identity)",
                    "ttl": "\(ConfigDuration(outcome.lifetime))",
                ])
            var response = Istio_V1_Auth_IstioCertificateResponse()
            response.certChain = outcome.chainPEM
            return ServerResponse(message: response)
        } catch {
            logger.warning(
                "refused certificate request",
                metadata: [
                    "peer": "\(context.remotePeer)", "code": "\(error.code)", "reason": "\(error.message)",
                    "identity": "\(impersonated ?? "")",
                ])
            throw error
        }
    }
}
