import Certificates
import Foundation
import AmbitRuntime
import Kernel
import NIOCore
import NIOPosix
import NIOSSL
import SwiftASN1
import Testing
import Synchronization
import TestSupport
import X509

/// Runs `store` for the duration of `body`, then stops it.
func withRunningStore<T: Sendable>(_ store: CertificateCache, _ body: () async throws -> T) async throws -> T {
    let task = Task { try await store.run() }
    defer { task.cancel() }
    let result = try await body()
    task.cancel()
    _ = try? await task.value
    return result
}

@Suite("certificate store: priorities, single flight, rotation, outage", .serialized)
struct CertificateStoreTests {
    @Test("an on-demand request overtakes queued prefetches")
    func onDemandOvertakesPrefetch() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let ca = GatedCAClient(authority: fixture.authority)
        let store = CertificateCache(
            client: ca, settings: .init(maxConcurrentFetches: 1), logger: quietLogger())
        let ids = ["p1", "p2", "p3", "p4"].map { SpiffeID(trustDomain: trustDomain, namespace: "ns", serviceAccount: $0) }
        let urgent = SpiffeID(trustDomain: trustDomain, namespace: "ns", serviceAccount: "urgent")
        try await withRunningStore(store) {
            for id in ids { store.prefetch(id) }
            #expect(await eventually { ca.calls.withLock { $0 } == [ids[0]] })
            let waiting = Task { try await store.certificate(for: urgent, priority: .onDemand) }
            #expect(await eventually { store.job(for: urgent)?.priority == .onDemand })
            #expect(store.job(for: ids[1])?.priority == .warmup)
            ca.open.withLock { $0 = true }
            let delivered = try await waiting.value
            #expect(delivered.identity == urgent)
            #expect(await eventually { store.availableIdentities.count == 5 })
            #expect(ca.calls.withLock { $0 } == [ids[0], urgent, ids[1], ids[2], ids[3]])
        }
    }

    @Test("50 concurrent requests for one identity produce one CSR and one certificate")
    func singleFlight() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let ca = GatedCAClient(authority: fixture.authority)
        let store = CertificateCache(client: ca, logger: quietLogger())
        try await withRunningStore(store) {
            let serials = try await withThrowingTaskGroup(of: String.self) { group in
                for _ in 0..<50 {
                    group.addTask { try await store.certificate(for: idA, priority: .onDemand).serial }
                }
                #expect(await eventually { store.job(for: idA)?.waiters == 50 })
                ca.open.withLock { $0 = true }
                return try await group.reduce(into: Set<String>()) { $0.insert($1) }
            }
            #expect(serials.count == 1)
            #expect(ca.calls.withLock { $0 } == [idA])
            // Cached now: no new CSR.
            _ = try await store.certificate(for: idA, priority: .onDemand)
            #expect(ca.calls.withLock { $0.count } == 1)
        }
    }

    @Test("an identity outside the trust domain is a clear error; the store keeps working")
    func wrongTrustDomain() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let store = CertificateCache(client: LocalCAClient(authority: fixture.authority), logger: quietLogger())
        try await withRunningStore(store) {
            await #expect {
                _ = try await store.certificate(
                    for: SpiffeID(trustDomain: "evil.local", namespace: "default", serviceAccount: "x"), priority: .onDemand)
            } throws: { error in
                (error as? PKIError)?.code == .wrongTrustDomain
            }
            #expect(try await store.certificate(for: idA, priority: .onDemand).identity == idA)
            let status = try #require(store.certificateStatuses.first)
            #expect(status.identity == idA && status.state == "available" && status.chain.count == 1)
            store.forget(idA)
            #expect(store.certificateStatuses.isEmpty)
            #expect(store.availableIdentities.isEmpty)
        }
    }

    @Test("rotation at half-life under an open TLS connection: a new certificate before expiry, the connection keeps working")
    func rotationUnderOpenConnection() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let store = CertificateCache(
            client: LocalCAClient(authority: fixture.authority), settings: .init(lifetime: .seconds(3)),
            logger: quietLogger())
        try await withRunningStore(store) {
            let first = try await store.certificate(for: idA, priority: .onDemand)
            let server = try await TLSEchoServer.start(store: store, identity: idA)
            let connection = try await TLSEchoClient.connect(port: server.port, rootsPEM: first.rootsPEM)
            #expect(try await connection.echo("before rotation") == "before rotation")
            #expect(connection.peerSerial == first.serial)

            #expect(await eventually(timeout: .seconds(6)) {
                (store.availableIdentities.contains(idA))
                    && store.certificateStatuses.first?.serial != first.serial
            })
            let second = try await store.certificate(for: idA, priority: .onDemand)
            #expect(second.serial != first.serial)
            #expect(Date() < first.notAfter, "rotated before the old certificate expired")
            #expect(second.notBefore >= first.notBefore.addingTimeInterval(1))

            // Past the first certificate's expiry, the open connection still works and a
            // new connection gets the rotated certificate.
            let wait = first.notAfter.timeIntervalSinceNow + 0.2
            if wait > 0 { try await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
            #expect(try await connection.echo("after expiry") == "after expiry")
            let fresh = try await TLSEchoClient.connect(port: server.port, rootsPEM: first.rootsPEM)
            #expect(try await fresh.echo("new") == "new")
            #expect(fresh.peerSerial != first.serial)
            try await fresh.close()
            try await connection.close()
            try await server.close()
        }
    }

    @Test("CA outage: old certificate served until expiry, retries follow the backoff schedule, recovery when the CA returns")
    func outage() async throws {
        let fixture = try CAFixture()
        defer { fixture.dir.remove() }
        let port = freePort()
        var ca = try await RunningCA.start(fixture, port: port)
        let clock = RecordingClock()
        let store = CertificateCache(
            client: try fixture.client(port: Int(port)),
            settings: .init(lifetime: .seconds(3), fetchTimeout: .seconds(2)), logger: quietLogger(), clock: clock)
        try await withRunningStore(store) {
            let first = try await store.certificate(for: idA, priority: .onDemand)
            await ca.stop()

            // Rotation starts at half-life and fails; the old certificate is still served.
            #expect(await eventually(timeout: .seconds(8)) { (store.job(for: idA)?.failures ?? 0) >= 4 })
            if Date() < first.notAfter.addingTimeInterval(-0.3) {
                #expect(try await store.certificate(for: idA, priority: .onDemand).serial == first.serial)
            }
            let status = try #require(store.certificateStatuses.first)
            #expect(status.failures >= 1 && status.lastError != nil)

            // Past expiry, callers get a clear error (and the store is still running).
            let wait = first.notAfter.timeIntervalSinceNow + 0.1
            if wait > 0 { try await Task.sleep(for: .milliseconds(Int(wait * 1000))) }
            await #expect(throws: PKIError.self) {
                _ = try await store.certificate(for: idA, priority: .onDemand)
            }
            #expect(store.availableIdentities.isEmpty)

            // The schedule: n-th delay = 500 ms × 2^(n-1), capped at 150 s, ±20 % jitter.
            let delays = clock.sleeps.values.withLock { $0 }
            #expect(delays.count >= 4)
            for (index, delay) in delays.enumerated() {
                let base = min(0.5 * pow(2, Double(index)), 150)
                #expect(delay.seconds >= base * 0.8 - 0.01 && delay.seconds <= base * 1.2 + 0.01, "delay \(index + 1): \(delay)")
            }

            // The CA returns; the next retry succeeds.
            ca = try await RunningCA.start(fixture, port: port)
            #expect(await eventually(timeout: .seconds(10)) { store.availableIdentities == [idA] })
            let recovered = try await store.certificate(for: idA, priority: .onDemand)
            #expect(recovered.serial != first.serial)
            #expect(store.certificateStatuses.first?.state == "available")
            await ca.stop()
        }
    }
}

/// A TLS echo server that asks the store for the identity's certificate on every new
/// connection, as a tunnel server would.
final class TLSEchoServer: Sendable {
    let channel: any Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: any Channel) { self.channel = channel }

    static func start(store: CertificateCache, identity: SpiffeID) async throws -> TLSEchoServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeFutureWithTask {
                    try await store.certificate(for: identity, priority: .onDemand)
                }.flatMapThrowing { certificate in
                    let configuration = TLSConfiguration.makeServerConfiguration(
                        certificateChain: try certificate.chainPEM.map {
                            .certificate(try NIOSSLCertificate(bytes: Array($0.utf8), format: .pem))
                        },
                        privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(certificate.privateKeyPEM.utf8), format: .pem)))
                    let context = try NIOSSLContext(configuration: configuration)
                    try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    try channel.pipeline.syncOperations.addHandler(EchoHandler())
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return TLSEchoServer(channel: channel)
    }

    func close() async throws {
        try await channel.close()
    }
}

final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

/// A TLS client that verifies the server against the roots and remembers its serial.
final class TLSEchoClient: Sendable {
    let channel: any Channel
    let received: Collector
    let peerSerial: String

    private init(channel: any Channel, received: Collector, peerSerial: String) {
        self.channel = channel
        self.received = received
        self.peerSerial = peerSerial
    }

    final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let text = Mutex("")
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            text.withLock { $0 += String(buffer: buffer) }
        }
    }

    static func connect(port: Int, rootsPEM: [String]) async throws -> TLSEchoClient {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try rootsPEM.map { try NIOSSLCertificate(bytes: Array($0.utf8), format: .pem) })
        // Workload certificates carry a SPIFFE URI, no DNS name; trust comes from the root.
        configuration.certificateVerification = .noHostnameVerification
        let context = try NIOSSLContext(configuration: configuration)
        let collector = Collector()
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: nil))
                    try channel.pipeline.syncOperations.addHandler(collector)
                }
            }
            .connect(host: "127.0.0.1", port: port).get()
        let client = TLSEchoClient(channel: channel, received: collector, peerSerial: "")
        // The handshake completes with the first exchange; the peer certificate is known then.
        _ = try await client.echo("hello")
        let peer = try await channel.nioSSL_peerCertificate().get()
        let serial = try peer.map { try Certificate(derEncoded: try $0.toDERBytes()) }.map { certificate in
            certificate.serialNumber.bytes.map { byte in
                let digits = String(byte, radix: 16)
                return digits.count == 1 ? "0" + digits : digits
            }.joined()
        }
        return TLSEchoClient(channel: channel, received: collector, peerSerial: serial ?? "")
    }

    /// Sends `text` and waits (bounded) for it to come back.
    func echo(_ text: String) async throws -> String {
        received.text.withLock { $0 = "" }
        try await channel.writeAndFlush(ByteBuffer(string: text)).get()
        _ = await eventually(timeout: .seconds(5), interval: .milliseconds(5)) {
            received.text.withLock { $0.count >= text.count }
        }
        return received.text.withLock { $0 }
    }

    func close() async throws {
        try await channel.close()
    }
}
