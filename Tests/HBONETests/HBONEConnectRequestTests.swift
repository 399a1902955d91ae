import HBONE
import NodeProxy
import AmbitRuntime
import Kernel
import Testing

/// The server's header validation as pure functions: the transport's CONNECT framing
/// (`HBONEConnectRequest.parse`), then the node proxy's authority rule
/// (`InboundDestination.resolve`), as a stream for a local workload meets them. Also
/// the `hbone-request` fuzz target's subject; inputs the fuzzer found go here as
/// regression cases.
@Suite("HBONE CONNECT request validation")
struct HBONEConnectRequestTests {
    static let ips = [IPAddress("10.0.0.1")!, IPAddress("fd00::1")!]

    static let workload = Workload(uid: "w", name: "w", namespace: "default", workloadIPs: ips)

    static func validate(
        _ headers: [(String, String)], mesh: MeshSnapshot = .empty
    ) -> Result<HBONEConnectRequest, HBONEConnectRequest.Rejection> {
        Result { () throws(HBONEConnectRequest.Rejection) in
            let request = try HBONEConnectRequest.parse(headers: headers.map { (name: $0.0, value: $0.1) })
            do throws(ConnectionRefusal) {
                _ = try InboundDestination.resolve(request.authority, arrivedOn: ips[0], workload: workload, in: mesh)
            } catch {
                // As the server answers the terminator's refusals.
                throw HBONEConnectRequest.Rejection(status: HBONEPlugin.status(for: error), error.message)
            }
            return request
        }
    }

    @Test("a ztunnel request: target, forwarded source and baggage")
    func ztunnelRequest() throws {
        let request = try Self.validate([
            (":method", "CONNECT"), (":authority", "10.0.0.1:8080"), ("forwarded", "for=\"10.1.2.3:4567\""),
            ("baggage", "k8s.namespace.name=default,service.name=client,service.version=v1"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ]).get()
        #expect(request.target == SocketAddr("10.0.0.1:8080"))
        #expect(request.forwardedFor == SocketAddr("10.1.2.3:4567"))
        #expect(request.baggage == ["k8s.namespace.name": "default", "service.name": "client", "service.version": "v1"])
        let v6 = try Self.validate([(":method", "CONNECT"), (":authority", "[fd00::1]:443")]).get()
        #expect(v6.target == SocketAddr(ip: IPAddress("fd00::1")!, port: 443))
        #expect(v6.forwardedFor == nil && v6.baggage.isEmpty)
        #expect(v6.forwardedNetwork == nil)
    }

    @Test("the inner CONNECT of double HBONE: x-forwarded-network names the origin network (the first header wins)")
    func forwardedNetwork() throws {
        let request = try Self.validate([
            (":method", "CONNECT"), (":authority", "10.0.0.1:8080"), ("x-forwarded-network", "east"),
            ("x-forwarded-network", "west"),
        ]).get()
        #expect(request.forwardedNetwork == "east")
    }

    @Test(
        "bad requests are 400 with a reason",
        arguments: [
            [(":method", "GET"), (":authority", "10.0.0.1:80")],
            [(":authority", "10.0.0.1:80")],
            [(":method", "CONNECT"), (":method", "CONNECT"), (":authority", "10.0.0.1:80")],
            [(":method", "CONNECT")],
            [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":authority", "10.0.0.1:81")],
            [(":method", "CONNECT"), (":authority", "10.0.0.2:80")],
            [(":method", "CONNECT"), (":authority", "10.0.0.300:80")],
            [(":method", "CONNECT"), (":authority", "echo..svc:80")],
            [(":method", "CONNECT"), (":authority", "echo/svc:80")],
            [(":method", "CONNECT"), (":authority", "echo.svc\u{0}:80")],
            [(":method", "CONNECT"), (":authority", "echo.svc:0")],
            [(":method", "CONNECT"), (":authority", "echo.svc")],
            [(":method", "CONNECT"), (":authority", "10.0.0.1:0")],
            [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":path", "/")],
            [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":protocol", "websocket")],
            // An address with a NUL: a C parser would stop there and accept 10.0.0.1.
            [(":method", "CONNECT"), (":authority", "10.0.0.1\u{0}junk:80")],
            [(":method", "CONNECT"), (":authority", "[fd00::1\u{0}]:80")],
        ] as [[(String, String)]])
    func rejected(_ headers: [(String, String)]) {
        guard case .failure(let rejection) = Self.validate(headers) else {
            Issue.record("accepted \(headers)")
            return
        }
        #expect(rejection.status == 400)
        #expect(!rejection.reason.isEmpty)
    }

    @Test(
        "a CONNECT to one of the proxy's own ports is a self call, answered 503 as ztunnel does",
        arguments: ["10.0.0.1:15008", "10.0.0.1:15001", "[fd00::1]:15006", "10.0.0.1:15080"])
    func selfCall(_ authority: String) {
        guard case .failure(let rejection) = Self.validate([(":method", "CONNECT"), (":authority", authority)]) else {
            Issue.record("accepted \(authority)")
            return
        }
        #expect(rejection.status == 503, "\(authority): \(rejection.reason)")
        #expect(rejection.reason.contains("proxy's own ports"))
    }

    @Test("a hostname authority is parsed as one; naming no known service it is 503, as in ztunnel")
    func hostnameAuthority() throws {
        let request = try HBONEConnectRequest.parse(headers: [
            (name: ":method", value: "CONNECT"), (name: ":authority", value: "echo.default.svc.cluster.local:80"),
        ])
        #expect(request.authority == .hostname("echo.default.svc.cluster.local", port: 80))
        #expect(request.target == nil)
        guard case .failure(let rejection) = Self.validate([(":method", "CONNECT"), (":authority", "echo.default.svc:80")])
        else {
            Issue.record("a hostname no service has was accepted")
            return
        }
        #expect(rejection.status == 503, "\(rejection)")
    }

    @Test("forwarded: first for= of the first header; junk falls back to the peer address")
    func forwarded() throws {
        func source(_ values: [String]) throws -> SocketAddr? {
            try Self.validate([(":method", "CONNECT"), (":authority", "10.0.0.1:80")] + values.map { ("forwarded", $0) })
                .get().forwardedFor
        }
        #expect(try source(["For=\"10.9.9.9:1\", for=10.8.8.8:2"]) == SocketAddr("10.9.9.9:1"))
        #expect(try source(["by=x;for=\"[fd00::9]:7\""]) == SocketAddr(ip: IPAddress("fd00::9")!, port: 7))
        #expect(try source(["for=\"10.1.1.1:1\"", "for=\"10.2.2.2:2\""]) == SocketAddr("10.1.1.1:1"))
        for junk in ["for=", "for=\"", "for=unknown", "for=\"10.0.0.1\"", "for=\"[::1\"", "\u{0}", ";;;,,,"] {
            #expect(try source([junk]) == nil, "\(junk)")
        }
    }

    @Test("forwarded host= is kept apart from for= and never fails a request")
    func forwardedHost() throws {
        func parsed(_ value: String) throws -> HBONEConnectRequest {
            try Self.validate([(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("forwarded", value)]).get()
        }
        let both = try parsed("for=\"10.1.2.3:4\";host=echo.default.svc.cluster.local")
        #expect(both.forwardedFor == SocketAddr("10.1.2.3:4"))
        #expect(both.forwardedHost == "echo.default.svc.cluster.local")
        #expect(try parsed("for=\"10.1.2.3:4\"").forwardedHost == nil)
        #expect(try parsed("host=;for=junk").forwardedHost == nil)
    }

    @Test("baggage: keys and percent-decoded values; junk members skipped; bounded")
    func baggage() {
        #expect(
            HBONEConnectRequest.parseBaggage(" key1 = value%201;prop=1, key2=%E2%9C%93 ,=nokey,novalue, k3=%zz,key1=again")
                == ["key1": "value 1", "key2": "✓", "k3": "%zz"])
        #expect(HBONEConnectRequest.parseBaggage("") == [:])
        #expect(HBONEConnectRequest.parseBaggage("a=%") == ["a": "%"])
        #expect(HBONEConnectRequest.parseBaggage("a=%4") == ["a": "%4"])
        #expect(HBONEConnectRequest.parseBaggage("a=%ff") == ["a": "\u{FFFD}"])
        #expect(HBONEConnectRequest.parseBaggage("bad key=1,ok=2") == ["ok": "2"])
        let many = (0..<100).map { "k\($0)=v" }.joined(separator: ",")
        #expect(HBONEConnectRequest.parseBaggage(many).count == HBONEConnectRequest.maximumBaggageMembers)
        let long = "a=" + String(repeating: "x", count: HBONEConnectRequest.maximumBaggageLength)
        #expect(HBONEConnectRequest.parseBaggage(long) == [:])
    }
}
