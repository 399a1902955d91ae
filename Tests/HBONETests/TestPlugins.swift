import Foundation
import AmbitRuntime
import Kernel
import NIOConcurrencyHelpers
import TestSupport

/// A test-only identity provider: issues certificates from a ``TestMeshCA`` chosen by name.
final class TestIdentityPlugin: Plugin, IdentityProvider {
    struct Config: Decodable, Sendable {
        var ca: String = "mesh"
        /// Issue certificates that expired an hour ago (to test peers' rejection).
        var expired: Bool = false
        /// Also trust these CAs' roots (by name).
        var alsoTrust: [String] = []

        private enum CodingKeys: String, CodingKey, CaseIterable { case ca, expired, alsoTrust }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            ca = try c.decodeIfPresent(String.self, forKey: .ca) ?? ca
            expired = try c.decodeIfPresent(Bool.self, forKey: .expired) ?? expired
            alsoTrust = try c.decodeIfPresent([String].self, forKey: .alsoTrust) ?? alsoTrust
        }
    }

    static let id = "test-identity"
    static let summary = "test-only identity provider backed by an in-memory CA"
    static let provides: Set<PluginRole> = [.identity]

    private let config: Config
    private let cache = NIOLockedValueBox<[SpiffeID: WorkloadCertificate]>([:])
    let requests = NIOLockedValueBox<Int>(0)

    init(config: Config, context: PluginContext) throws {
        self.config = config
        _ = TestCARegistry.mesh
        _ = TestCARegistry.other
    }

    func certificate(for identity: SpiffeID, priority: WorkPriority) async throws -> WorkloadCertificate {
        requests.withLockedValue { $0 += 1 }
        if let cached = cache.withLockedValue({ $0[identity] }) { return cached }
        guard let ca = TestCARegistry.ca(named: config.ca) else { throw TestFailure("no test CA \(config.ca)") }
        let extra = config.alsoTrust.compactMap { TestCARegistry.ca(named: $0)?.rootPEM }
        let certificate =
            config.expired
            ? try ca.issue(identity, notBefore: Date() - 7200, notAfter: Date() - 3600, extraRoots: extra)
            : try ca.issue(identity, extraRoots: extra)
        cache.withLockedValue { $0[identity] = certificate }
        return certificate
    }

    var availableIdentities: [SpiffeID] { cache.withLockedValue { Array($0.keys) } }
}

/// A test-only policy: denies connections to the listed destination ports.
final class TestPolicyPlugin: Plugin, ConnectionAuthorizer {
    struct Config: Decodable, Sendable {
        var denyPorts: [UInt16] = []

        private enum CodingKeys: String, CodingKey, CaseIterable { case denyPorts }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            denyPorts = try c.decodeIfPresent([UInt16].self, forKey: .denyPorts) ?? []
        }
    }

    static let id = "test-policy"
    static let summary = "test-only policy denying listed ports"
    static let provides: Set<PluginRole> = [.policy]

    private let denyPorts: NIOLockedValueBox<[UInt16]>
    private let context: PluginContext
    let seen = NIOLockedValueBox<[ConnectionAttributes]>([])

    init(config: Config, context: PluginContext) throws {
        self.denyPorts = NIOLockedValueBox(config.denyPorts)
        self.context = context
    }

    /// A policy change: from now on `ports` are denied, and open connections are checked
    /// again (as a policy plugin does after its policies change). Returns how many closed.
    func deny(_ ports: [UInt16]) async -> Int {
        denyPorts.withLockedValue { $0 = ports }
        return await context.policyChain.reevaluate(context.connections, logger: context.logger).count
    }

    func authorize(_ connection: ConnectionAttributes) async -> AuthorizationDecision {
        seen.withLockedValue { $0.append(connection) }
        if denyPorts.withLockedValue({ $0 }).contains(connection.destinationAddress.port) {
            return .deny(policy: "test/deny-ports", reason: "port \(connection.destinationAddress.port) is denied")
        }
        return .allow()
    }
}

/// A test-only telemetry sink that keeps every closed connection record.
final class TestTelemetryPlugin: Plugin, TelemetrySink {
    struct Config: Decodable, Sendable {}

    static let id = "test-telemetry"
    static let summary = "test-only telemetry sink"
    static let provides: Set<PluginRole> = [.telemetry]

    let opened = NIOLockedValueBox<Int>(0)
    let closed = NIOLockedValueBox<[ConnectionRecord]>([])

    init(config: Config, context: PluginContext) throws {}

    func connectionOpened(_ connection: ConnectionRecord) {
        opened.withLockedValue { $0 += 1 }
    }

    func connectionClosed(_ connection: ConnectionRecord) {
        closed.withLockedValue { $0.append(connection) }
    }

    var closedRecords: [ConnectionRecord] { closed.withLockedValue { $0 } }
}
