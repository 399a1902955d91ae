import AmbitRuntime
import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import NIOPosix
import NodeProxy
import Testing

/// Local workloads are found by address on whatever network they are on (Istio
/// multi-network installs set `network` on every workload); peers in the node's network.
@Suite("Local workload lookup")
struct LocalWorkloadLookupTests {
    private static let east = Workload(
        uid: "east-pod", name: "east-pod", namespace: "default", workloadIPs: [IPAddress("10.1.0.5")!],
        tunnelProtocol: .hbone, node: "node-a", network: "east")
    private static let peer = Workload(
        uid: "peer", name: "peer", namespace: "default", workloadIPs: [IPAddress("10.1.0.6")!],
        tunnelProtocol: .hbone, node: "node-b", network: "east")

    private static func context(network: String = "east", workloads: [Workload] = [east, peer]) -> PluginContext {
        let store = MeshStore()
        store.publish(MeshSnapshot(workloads: workloads, services: [], policies: []))
        return PluginContext(
            pluginID: "node-proxy", logger: Logger(label: "test"), eventLoopGroup: MultiThreadedEventLoopGroup.singleton,
            mesh: store, connections: ConnectionRegistry(), readiness: Readiness(), nodeName: "node-a",
            nodeNetwork: network, baseDirectory: "", directory: PluginDirectory())
    }

    @Test("a local workload on a named network is found by address; a remote one is not local")
    func localWorkloadOnNamedNetwork() {
        let context = Self.context()
        let mesh = context.mesh.snapshot
        #expect(context.localWorkload(at: IPAddress("10.1.0.5")!, in: mesh)?.uid == "east-pod")
        #expect(context.localWorkload(at: IPAddress("10.1.0.6")!, in: mesh) == nil)
        #expect(context.localWorkload(at: IPAddress("10.1.0.7")!, in: mesh) == nil)
        // Whatever the node's network is called.
        #expect(Self.context(network: "").localWorkload(at: IPAddress("10.1.0.5")!, in: mesh)?.uid == "east-pod")
    }

    @Test("inbound admits a connection for a local workload on a named network, with the peer found in the node's network")
    func inboundOnNamedNetwork() throws {
        let inbound = InboundPath(context: Self.context(), dialer: TCPDialer())
        let request = InboundRequest(
            source: SocketAddr("10.1.0.6:40000")!, destination: SocketAddr("10.1.0.5:8080")!,
            peerIdentity: Self.peer.identity, route: "hbone")
        let result = try #require(inbound.admitImmediately(request))
        let record = try result.get()
        #expect(record.destinationWorkload?.uid == "east-pod")
        #expect(record.sourceWorkload?.uid == "peer")

        let remote = InboundRequest(
            source: SocketAddr("10.1.0.5:40000")!, destination: SocketAddr("10.1.0.6:8080")!,
            peerIdentity: nil, route: "plaintext")
        #expect(throws: ConnectionRefusal.self) { try inbound.admitImmediately(remote)?.get() }
        if case .failure(let refusal) = inbound.admitImmediately(remote) { #expect(refusal.code == .notLocal) }
    }

    @Test("the HBONE terminator presents the certificate of a local workload on a named network")
    func serverIdentityOnNamedNetwork() throws {
        let plugin = try NodeProxyPlugin(config: NodeProxyPlugin.Config(), context: Self.context())
        let connection = AcceptedTunnelConnection(local: SocketAddr("10.1.0.5:15008")!, remote: SocketAddr("10.1.0.6:50000")!)
        let identity = try plugin.serverIdentity(for: connection).get()
        #expect(identity.workload?.uid == "east-pod")
        #expect(identity.identity == Self.east.identity)
    }

    @Test("a SOCKS5 client on a named network is its workload, not an unknown source")
    func socksSourceOnNamedNetwork() throws {
        let outbound = OutboundPath(context: Self.context(), dialer: TCPDialer())
        let channel = EmbeddedChannel()
        channel.remoteAddress = try SocketAddress(ipAddress: "10.1.0.5", port: 40000)
        // A self call: refused after the source is known, before anything is dialled.
        let future = outbound.connect(from: channel, to: .address(SocketAddr("127.0.0.1:15008")!))
        let code = NIOLockedValueBox<ConnectionRefusal.Code?>(nil)
        future.whenFailure { error in code.withLockedValue { $0 = (error as? ConnectionRefusal)?.code } }
        channel.embeddedEventLoop.run()
        #expect(code.withLockedValue { $0 } == .selfCall)
    }
}
