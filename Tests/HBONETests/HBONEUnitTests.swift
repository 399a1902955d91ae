import Foundation
@testable import HBONE
import AmbitRuntime
import Kernel
import NIOCore
import NIOHPACK
import NIOPosix
import NIOSSL
import SwiftASN1
import Testing
import X509

@Suite("HBONE units: headers, verification, pool, config")
struct HBONEUnitTests {
    @Test("authorities and forwarded headers parse; hostnames and junk do not")
    func authorities() {
        #expect(HBONEHeaders.parseAuthority("10.0.0.1:8080") == SocketAddr("10.0.0.1:8080"))
        #expect(HBONEHeaders.parseAuthority("[fd00::1]:443") == SocketAddr(ip: IPAddress("fd00::1")!, port: 443))
        for bad in ["example.com:80", "10.0.0.1", "10.0.0.1:0", "10.0.0.1:99999", "fd00::1:80", "[fd00::1]", ""] {
            #expect(HBONEHeaders.parseAuthority(bad) == nil, "\(bad)")
        }
        #expect(HBONEHeaders.forwardedFor("for=\"10.1.2.3:4567\"") == SocketAddr("10.1.2.3:4567"))
        #expect(HBONEHeaders.forwardedFor("for=\"[::1]:80\";proto=https") == SocketAddr(ip: IPAddress("::1")!, port: 80))
        #expect(HBONEHeaders.forwardedFor("by=x") == nil)
        let source = SocketAddr(ip: IPAddress("fd00::2")!, port: 9)
        let workload = Workload(
            uid: "u", name: "pod", namespace: "ns", workloadIPs: [], canonicalName: "app", canonicalRevision: "v1")
        let request = HBONEHeaders.request(authority: "10.0.0.1:80", source: source, workload: workload)
        #expect(request.first(name: ":method") == "CONNECT")
        #expect(request.first(name: ":authority") == "10.0.0.1:80")
        #expect(request.first(name: ":scheme") == nil)
        #expect(request.first(name: "forwarded") == "for=\"[fd00::2]:9\"")
        #expect(
            request.first(name: "baggage")
                == "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns,k8s.pod.name=pod,service.name=app,service.version=v1")
        #expect(HBONEHeaders.traceparent() != HBONEHeaders.traceparent())
    }

    @Test("tunnel failures carry ztunnel's response flags: IDENTITY_ERROR, NETWORK_POLICY, else CONNECT")
    func failureFlags() {
        #expect(HBONEError(.certificate, "no certificate").responseFlag == .identityError)
        #expect(HBONEError(.connectTimedOut, "no SYN-ACK").responseFlag == .networkPolicy)
        for code: HBONEError.Code in [.handshakeFailed, .peerRejected, .refused, .timedOut, .connectionClosed, .streamReset] {
            #expect(HBONEError(code, "\(code)").responseFlag == .connectFailure, "\(code)")
        }
        let gateway = SocketAddr("10.0.0.9:15008")!
        let timedOut = HBONEClient.classify(
            SocketError(code: .connectTimedOut, message: "connect to \(gateway) timed out after 5000 ms"), gateway: gateway)
        #expect(timedOut.code == .connectTimedOut)
        #expect(timedOut.message.contains("NetworkPolicy") && timedOut.message.contains("15008"))
        let refused = HBONEClient.classify(
            SocketError(code: .connectionRefused, message: "connect to \(gateway) refused"), gateway: gateway)
        #expect(refused.responseFlag == .connectFailure)
    }

    @Test("forwarded names the addressed service in host= (ztunnel's form) and only then")
    func forwardedHost() {
        let source = SocketAddr("10.0.0.7:40000")!
        let workload = Workload(uid: "u", name: "pod", namespace: "ns", workloadIPs: [])
        let toService = HBONEHeaders.request(
            authority: "10.0.0.1:8080", source: source, workload: workload, service: "echo.ns.svc.cluster.local")
        #expect(toService.first(name: "forwarded") == "for=\"10.0.0.7:40000\";host=echo.ns.svc.cluster.local")
        let toPod = HBONEHeaders.request(authority: "10.0.0.1:8080", source: source, workload: workload)
        #expect(toPod.first(name: "forwarded") == "for=\"10.0.0.7:40000\"")
        #expect(HBONEHeaders.forwardedHost("for=\"10.0.0.7:1\";host=echo.ns.svc.cluster.local") == "echo.ns.svc.cluster.local")
        #expect(HBONEHeaders.forwardedHost("Host=\"echo.ns\" ; for=x") == "echo.ns")
        #expect(HBONEHeaders.forwardedHost("for=x, host=second-element") == nil)
        for junk in ["for=\"10.0.0.7:1\"", "host=", "host=\"\"", "host=échø", ""] {
            #expect(HBONEHeaders.forwardedHost(junk) == nil, "\(junk)")
        }
    }

    @Test("SPIFFE peer verification: right CA and trust domain pass; other CA, expiry, trust domain, identity fail")
    func verification() async throws {
        let mesh = TestCARegistry.mesh
        let roots = [try Certificate(pemEncoded: mesh.rootPEM)]
        func chain(_ certificate: WorkloadCertificate) throws -> [NIOSSLCertificate] {
            try NIOSSLCertificate.fromPEMBytes(Array(certificate.chainPEM.joined(separator: "\n").utf8))
        }
        let alice = SpiffeID(trustDomain: "cluster.local", namespace: "ns", serviceAccount: "alice")
        let good = try chain(mesh.issue(alice))
        #expect(try await SpiffePeerVerifier.verify(chain: good, roots: roots, requirement: .trustDomain("cluster.local")).get() == alice)
        #expect(try await SpiffePeerVerifier.verify(chain: good, roots: roots, requirement: .oneOf([alice])).get() == alice)

        let bob = SpiffeID(trustDomain: "cluster.local", namespace: "ns", serviceAccount: "bob")
        let cases: [(String, [NIOSSLCertificate], SpiffePeerVerifier.Requirement)] = [
            ("other CA", try chain(TestCARegistry.other.issue(alice)), .trustDomain("cluster.local")),
            ("expired", try chain(mesh.issue(alice, notBefore: Date() - 7200, notAfter: Date() - 60)), .trustDomain("cluster.local")),
            ("not yet valid", try chain(mesh.issue(alice, notBefore: Date() + 3600, notAfter: Date() + 7200)), .trustDomain("cluster.local")),
            ("trust domain", good, .trustDomain("other.local")),
            ("identity", good, .oneOf([bob])),
            ("empty", [], .trustDomain("cluster.local")),
        ]
        for (name, chain, requirement) in cases {
            let result = await SpiffePeerVerifier.verify(chain: chain, roots: roots, requirement: requirement)
            guard case .failure(let error) = result else {
                Issue.record("\(name) was accepted")
                continue
            }
            #expect(error.code == .peerRejected, "\(name)")
        }
    }

    @Test("pool: a burst shares one connection up to the stream limit; release, retire and limits")
    func pool() throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let pool = HBONEConnectionPool(maxStreamsPerConnection: 3, idleTimeout: .seconds(60))
        let key = HBONEPoolKey(
            source: SpiffeID(trustDomain: "td", namespace: "a", serviceAccount: "a"),
            destinations: [SpiffeID(trustDomain: "td", namespace: "b", serviceAccount: "b")],
            gateway: SocketAddr("10.0.0.1:15008")!, sourceIP: IPAddress("10.0.0.2")!)
        var all: [HBONEPooledConnection] = []
        func lease(_ key: HBONEPoolKey) -> (connection: HBONEPooledConnection, isNew: Bool)? {
            let result = pool.lease(key, eventLoop: loop)
            if let result, result.isNew { all.append(result.connection) }
            return result
        }
        let leases = (0..<7).compactMap { _ in lease(key) }
        #expect(leases.map(\.isNew) == [true, false, false, true, false, false, true])
        #expect(Set(leases.map { ObjectIdentifier($0.connection) }).count == 3)
        // A different source IP is a different key.
        var other = key
        other.sourceIP = IPAddress("10.0.0.3")!
        #expect(lease(other)?.isNew == true)
        // A freed slot is reused before a new connection is opened.
        pool.release(leases[0].connection)
        #expect(lease(key)?.connection === leases[0].connection)
        // The peer's lower limit and GOAWAY are honoured.
        pool.lowerLimit(leases[6].connection, to: 1)
        #expect(lease(key)?.isNew == true)
        pool.retire(leases[0].connection)
        pool.release(leases[1].connection)
        #expect(lease(key)?.connection !== leases[0].connection)
        _ = pool.close()
        #expect(lease(key) == nil)
        // Promises must be completed before they are dropped.
        for connection in all { connection.readyPromise.fail(TestPoolDone()) }
    }

    @Test("config: defaults are ztunnel's; nonsense values are named")
    func config() {
        let defaults = HBONEConfig()
        #expect(defaults.http2.streamWindow == 4 << 20)
        #expect(defaults.http2.connectionWindow == 16 << 20)
        #expect(defaults.http2.maxFrameSize == 1 << 20)
        #expect(defaults.server.maxConcurrentStreams == 200)
        #expect(defaults.client.maxStreamsPerConnection == 100)
        #expect(defaults.client.idleTimeout.duration == .seconds(300))
        #expect(defaults.validate().isEmpty)
        var bad = HBONEConfig()
        bad.http2.maxFrameSize = 100
        bad.client.maxStreamsPerConnection = 0
        #expect(bad.validate().map(\.path) == ["http2.maxFrameSize", "client.maxStreamsPerConnection"])
    }
}

struct TestPoolDone: Error {}
