import Capture
import Foundation
import HBONE
import AmbitRuntime
import Kernel
import NIOPosix
import Testing
import TestSupport

/// Our server against a Python (ssl + h2) HBONE client, our client against a Python HBONE
/// server, and bad input from both directions.
extension HBONENetworkTests {
    @Suite("HBONE: interop with a Python h2 peer and bad input", .serialized, .enabled(if: PythonPeer.available))
    struct HBONEInteropTests {
        /// Certificate files for the Python client, from `ca`.
        static func clientFiles(
            _ dir: TemporaryDirectory, identity: SpiffeID, ca: TestMeshCA = TestCARegistry.mesh, expired: Bool = false
        ) throws -> [String] {
            let files = try ca.writeFiles(
                for: identity, prefix: "py-\(identity.trustDomain)-\(identity.serviceAccount)-\(ca.name)\(expired ? "-expired" : "")", in: dir.path,
                notAfter: expired ? Date() - 60 : Date() + 86_400)
            // The Python client must trust our mesh root whatever CA issued its own certificate.
            let trust = dir.path + "/mesh-ca.crt"
            try TestCARegistry.mesh.rootPEM.write(toFile: trust, atomically: true, encoding: .utf8)
            return ["--cert", files.cert, "--key", files.key, "--ca", trust]
        }

        static func python(_ arguments: [String]) async throws -> PeerOutput {
            try await NIOThreadPool.singleton.runIfActive { try PythonPeer.run(arguments) }
        }

        @Test("Python client → our server: 200 + echo, 400 on IP mismatch, non-CONNECT rejected, foreign trust domain refused")
        func pythonClient() async throws {
            let nodes = try await TwoNodes()
            let dir = try TemporaryDirectory()
            let gateway = "\(TestMesh.serverB):15008"
            let port = nodes.port(TestMesh.serverB)
            let good = try Self.clientFiles(dir, identity: TestMesh.identity("python"))

            let ok = try await Self.python(
                ["client", "--connect", gateway, "--authority", "\(TestMesh.serverB):\(port)", "--payload", "hello"] + good)
            #expect(ok["handshake"] as? String == "ok")
            #expect(ok["status"] as? Int == 200)
            #expect(ok["body"] as? String == "5 \(sha256Hex(Array("hello".utf8)))")
            #expect(ok["server_san"] as? String == "spiffe://cluster.local/ns/default/sa/server-b")
            let baggage = (ok["headers"] as? [String: String])?["baggage"] ?? ""
            #expect(baggage.contains("k8s.namespace.name=default"))
            #expect(baggage.contains("k8s.pod.name=server-b") || baggage.contains("service.name=server-b"))
            // The inbound record carries the Python peer's identity and its real address,
            // not the `forwarded: for="127.0.0.1:40000"` it sent.
            #expect(await eventually { nodes.b.telemetry.closedRecords.contains { $0.peerIdentity == TestMesh.identity("python") } })
            let record = nodes.b.telemetry.closedRecords.first { $0.peerIdentity == TestMesh.identity("python") }
            #expect(record?.source.ip == IPAddress("127.0.0.1"))
            #expect(record?.source.port != 40000)

            let mismatch = try await Self.python(
                ["client", "--connect", gateway, "--authority", "\(TestMesh.serverA):\(port)", "--payload", "x"] + good)
            #expect(mismatch["status"] as? Int == 400)

            let get = try await Self.python(
                ["client", "--connect", gateway, "--method", "GET", "--authority", "\(TestMesh.serverB):\(port)"] + good)
            #expect(get["status"] as? Int == 400 || get["reset"] != nil)

            let selfCall = try await Self.python(
                ["client", "--connect", gateway, "--authority", "\(TestMesh.serverB):15008"] + good)
            #expect(selfCall["status"] as? Int == 503, "a CONNECT to the proxy's own port is a self call (ztunnel: 503)")

            let unreachable = try await Self.python(
                ["client", "--connect", gateway, "--authority", "\(TestMesh.serverB):\(freePort())"] + good)
            #expect(unreachable["status"] as? Int == 503)

            let foreign = try Self.clientFiles(
                dir, identity: SpiffeID(trustDomain: "elsewhere.local", namespace: "default", serviceAccount: "python"))
            let refused = try await Self.python(
                ["client", "--connect", gateway, "--authority", "\(TestMesh.serverB):\(port)", "--payload", "x"] + foreign)
            #expect(refused["status"] as? Int == nil, "\(refused)")
            #expect(refused["handshake"] as? String != "ok" || refused["error"] != nil || refused["closed"] as? Bool == true)

            // After all that, the server still serves.
            let again = try await Self.python(
                ["client", "--connect", gateway, "--authority", "\(TestMesh.serverB):\(port)", "--payload", "again"] + good)
            #expect(again["status"] as? Int == 200)
            try await nodes.stop()
            dir.remove()
        }

        /// The rows of the inbound data-loss report (issue 15) and then some: K concurrent
        /// CONNECT streams on one connection, each sending N random bytes, half-closing and
        /// reading the echo back to its END_STREAM.
        static let echoMatrix = "4x4MiB,8x2MiB,4x8MiB,2x16MiB,3x8MiB,1x8MiB,1x32MiB,4x1MiB,16x1MiB,32x512KiB"

        @Test("Python client → our server: K concurrent echo streams on one connection, every byte SHA-checked, END_STREAM both ways, no reset")
        func pythonClientEchoMatrix() async throws {
            let nodes = try await TwoNodes(echoOnB: true)
            let dir = try TemporaryDirectory()
            let good = try Self.clientFiles(dir, identity: TestMesh.identity("python"))
            let output = try await NIOThreadPool.singleton.runIfActive {
                try PythonPeer.run(
                    [
                        "matrix", "--connect", "\(TestMesh.serverB):15008", "--authority",
                        "\(TestMesh.serverB):\(nodes.port(TestMesh.serverB))", "--rows", Self.echoMatrix, "--timeout", "120",
                    ] + good, timeout: 600)
            }
            let rows = output["rows"] as? [[String: Any]] ?? []
            #expect(rows.count == Self.echoMatrix.split(separator: ",").count, "\(output)")
            for row in rows {
                let shape = "\(row["streams"] ?? "?") × \(row["bytes"] ?? "?") bytes"
                #expect(row["ok"] as? Bool == true, "\(shape): \(row)")
                #expect(row["goaway"] == nil && row["error"] == nil && row["closed"] == nil, "\(shape): \(row)")
            }
            // Every tunnel ended cleanly at the node too: no reset, no failure recorded.
            let streams = rows.reduce(0) { $0 + (($1["streams"] as? Int) ?? 0) }
            #expect(await eventually { nodes.b.telemetry.closedRecords.count >= streams })
            let failed = nodes.b.telemetry.closedRecords.filter { $0.failure != nil }
            #expect(failed.isEmpty, "\(failed.prefix(3).map { $0.failure ?? "" })")
            try await nodes.stop()
            dir.remove()
        }

        @Test("bad certificates: another CA and an expired certificate are refused; the server keeps serving")
        func badCertificates() async throws {
            let nodes = try await TwoNodes()
            let dir = try TemporaryDirectory()
            let gateway = "\(TestMesh.serverB):15008"
            let authority = "\(TestMesh.serverB):\(nodes.port(TestMesh.serverB))"
            for files in [
                try Self.clientFiles(dir, identity: TestMesh.identity("python"), ca: TestCARegistry.other),
                try Self.clientFiles(dir, identity: TestMesh.identity("python"), expired: true),
            ] {
                let result = try await Self.python(
                    ["client", "--connect", gateway, "--authority", authority, "--payload", "x"] + files)
                #expect(result["status"] as? Int == nil, "\(result)")
            }
            let good = try Self.clientFiles(dir, identity: TestMesh.identity("python"))
            let ok = try await Self.python(["client", "--connect", gateway, "--authority", authority, "--payload", "ok"] + good)
            #expect(ok["status"] as? Int == 200)
            #expect(nodes.b.telemetry.closedRecords.allSatisfy { $0.peerIdentity == TestMesh.identity("python") })
            try await nodes.stop()
            dir.remove()
        }

        @Test("our client → Python server as a waypoint: CONNECT headers as the facts say; service VIP authority kept")
        func pythonServerAsWaypoint() async throws {
            let dir = try TemporaryDirectory()
            let server = try PythonPeer.startWaypoint(in: dir)
            let record = server.record
            defer { PythonPeer.stop(server.process) }
            #expect(server.firstLine.contains("listening"))
            let nodes = try await TwoNodes()

            // A service with a waypoint: the tunnel goes to the waypoint, authority = VIP:port.
            let viaService = try await nodes.a.exchange(to: TestMesh.waypointServiceVIP, 80, payload: Array("svc".utf8))
            #expect(viaService.reply == .succeeded)
            #expect(String(decoding: viaService.response, as: UTF8.self) == "waypoint: svc")
            // A workload with a waypoint: authority = the workload's ip:port.
            let viaWorkload = try await nodes.a.exchange(to: TestMesh.viaWaypoint, 7070, payload: Array("wl".utf8))
            #expect(viaWorkload.reply == .succeeded)
            #expect(String(decoding: viaWorkload.response, as: UTF8.self) == "waypoint: wl")

            let lines = try String(contentsOfFile: record, encoding: .utf8).split(separator: "\n")
            #expect(lines.count == 2)
            let requests = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] ?? [:] }
            let headers = requests.map { $0["headers"] as? [String: String] ?? [:] }
            #expect(headers.first?[":method"] == "CONNECT")
            #expect(headers.first?[":authority"] == "\(TestMesh.waypointServiceVIP):80")
            #expect(headers.last?[":authority"] == "\(TestMesh.viaWaypoint):7070")
            for header in headers {
                #expect(header[":scheme"] == nil && header[":path"] == nil)
                let forwarded = header["forwarded"] ?? ""
                #expect(forwarded.hasPrefix("for=\"\(TestMesh.clientA):"), "\(forwarded)")
                #expect((header["baggage"] ?? "").contains("k8s.namespace.name=default"))
                let traceparent = header["traceparent"] ?? ""
                #expect(traceparent.range(of: "^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$", options: .regularExpression) != nil, "\(traceparent)")
            }
            #expect(headers.first?["traceparent"] != headers.last?["traceparent"])
            #expect(requests.first?["client_san"] as? String == "spiffe://cluster.local/ns/default/sa/client-a")
            try await nodes.stop()
            dir.remove()
        }

        @Test("our client refuses a server whose certificate is from another CA or names another identity")
        func clientRejectsWrongServer() async throws {
            let dir = try TemporaryDirectory()
            let record = dir.path + "/requests.jsonl"
            // Another CA, right identity.
            let foreign = try TestCARegistry.other.writeFiles(for: TestMesh.identity("waypoint"), prefix: "foreign", in: dir.path)
            let trust = dir.path + "/mesh-ca.crt"
            try TestCARegistry.mesh.rootPEM.write(toFile: trust, atomically: true, encoding: .utf8)
            var server = try PythonPeer.start([
                "server", "--listen", "\(TestMesh.waypoint):15008", "--cert", foreign.cert, "--key", foreign.key, "--ca",
                trust, "--record", record, "--max-seconds", "30",
            ])
            _ = PythonPeer.firstLine(of: server.output)
            let nodes = try await TwoNodes()
            let refused = try await nodes.a.exchange(to: TestMesh.viaWaypoint, 7070, payload: [1])
            #expect(refused.reply != .succeeded)
            PythonPeer.stop(server.process)

            // Mesh CA, wrong identity.
            let impostor = try TestCARegistry.mesh.writeFiles(for: TestMesh.identity("impostor"), prefix: "impostor", in: dir.path)
            server = try PythonPeer.start([
                "server", "--listen", "\(TestMesh.waypoint):15008", "--cert", impostor.cert, "--key", impostor.key, "--ca",
                impostor.ca, "--record", record, "--max-seconds", "30",
            ])
            _ = PythonPeer.firstLine(of: server.output)
            let impersonated = try await nodes.a.exchange(to: TestMesh.viaWaypoint, 7070, payload: [2])
            #expect(impersonated.reply != .succeeded)
            PythonPeer.stop(server.process)
            #expect(!FileManager.default.fileExists(atPath: record))
            try await nodes.stop()
            dir.remove()
        }

        @Test("garbage instead of TLS, HTTP/2 violations and a rapid-reset flood close only the offender")
        func badInput() async throws {
            let nodes = try await TwoNodes()
            let dir = try TemporaryDirectory()
            let gateway = "\(TestMesh.serverB):15008"
            let authority = "\(TestMesh.serverB):\(nodes.port(TestMesh.serverB))"
            let good = try Self.clientFiles(dir, identity: TestMesh.identity("python"))

            // A long-running tunnel from node-a that must survive everything below.
            let socks = nodes.a.socks
            let target = SOCKS5Request(address: .ip(IPAddress(TestMesh.serverB)!), port: nodes.port(TestMesh.serverB))
            let box = try await NIOThreadPool.singleton.runIfActive {
                SequentialUse(try SOCKS5Client(proxy: socks, source: IPAddress(TestMesh.clientA), request: target, timeoutSeconds: 30))
            }
            let survivor = box.value
            #expect(survivor.reply == .succeeded)
            try survivor.send(Array(repeating: 1, count: 1000))

            let garbage = try await Self.python(["garbage", "--connect", gateway, "--timeout", "10"])
            #expect(garbage["closed"] as? Bool == true)

            for kind in ["oversized-frame", "data-on-stream-0", "window-update-zero"] {
                let violation = try await Self.python(["violate", "--connect", gateway, "--kind", kind] + good)
                #expect(violation["closed"] as? Bool == true, "\(kind): \(violation)")
            }

            let flood = try await Self.python(
                ["flood", "--connect", gateway, "--authority", authority, "--streams", "3000", "--timeout", "15"] + good)
            #expect(flood["closed"] as? Bool == true, "\(flood)")

            // The survivor still flows, and new tunnels still open.
            try survivor.send(Array(repeating: 2, count: 1000))
            survivor.finishSending()
            let tail = String(decoding: try await NIOThreadPool.singleton.runIfActive { try box.value.receiveToEnd() }, as: UTF8.self)
            let expected = Array(repeating: UInt8(1), count: 1000) + Array(repeating: UInt8(2), count: 1000)
            #expect(tail == "2000 \(sha256Hex(expected))")
            let ok = try await Self.python(["client", "--connect", gateway, "--authority", authority, "--payload", "ok"] + good)
            #expect(ok["status"] as? Int == 200)
            try await nodes.stop()
            dir.remove()
        }
    }
}


/// Hands a blocking client from one thread to the next; it is never used by two at once.
final class SequentialUse<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
