public import Kernel
import AmbitRuntime
import Logging
import NIOCore

/// The node proxy's inbound role: it terminates the tunnels the HBONE transport accepts
/// for the node's local workloads (ztunnel's inbound).
///
/// For each connection it presents the certificate of the local HBONE workload at the
/// address the connection arrived on and requires peers of that workload's trust domain;
/// for each stream it decides from the authority where the stream goes
/// (``InboundDestination``: one of that workload's addresses, an address whose waypoint it
/// is, or a service hostname mapped to its target port; else 400, or 503 for an unknown
/// hostname or a proxy port), then runs the ``InboundPath``: policy
/// (401 when denied), a dial to the workload, inside its pod's namespace under in-pod
/// capture (503 when it cannot be reached), a PROXY protocol v2 header first when the
/// workload's application tunnel takes PROXY (``ProxyProtocolHeader``), and the relay.
///
/// Enabled by default: a manifest that enables another ``TunnelTerminator`` (a waypoint)
/// replaces it.
public final class NodeProxyPlugin: Plugin, TunnelTerminator {
    /// No settings yet: the inbound dial timeout is the transport's `server.connectTimeout`.
    /// Every key is unknown (and reported with its line).
    public struct Config: DefaultedConfig, Sendable {
        public init() {}
    }

    public static let id = "node-proxy"
    public static let summary = "the node proxy's inbound: terminates tunnels for local workloads (enabled by default)"
    public static let provides: Set<PluginRole> = [.tunnelTerminator]
    public static let enabledByDefault = true

    private let context: PluginContext
    private let inbound: InboundPath

    public init(config: Config, context: PluginContext) throws {
        self.context = context
        self.inbound = InboundPath(context: context, dialer: TCPDialer())
    }

    // MARK: TunnelTerminator

    public func serverIdentity(for connection: AcceptedTunnelConnection) -> Result<TunnelServerIdentity, ConnectionRefusal> {
        guard let workload = context.localWorkload(at: connection.local.ip, in: context.mesh.snapshot),
            workload.tunnelProtocol == .hbone
        else {
            return .failure(ConnectionRefusal(
                .unknownDestination, "no local HBONE workload has the address it arrived on (\(connection.local.ip))"))
        }
        if let pod = connection.pod, workload.uid != pod {
            return .failure(ConnectionRefusal(
                .notLocal, "it arrived in pod \(pod)'s namespace for another workload's address (\(workload.uid))"))
        }
        return .success(TunnelServerIdentity(identity: workload.identity, peerTrustDomain: workload.trustDomain, workload: workload))
    }

    public func terminate(_ request: TunnelStreamRequest, responder: any TunnelStreamResponder) {
        guard let workload = request.server.workload else {
            return responder.refuse(ConnectionRefusal(.badRequest, "internal: the connection has no destination workload"))
        }
        let destination: InboundDestination
        do throws(ConnectionRefusal) {
            destination = try InboundDestination.resolve(
                request.authority, arrivedOn: request.connection.local.ip, workload: workload, in: context.mesh.snapshot)
        } catch {
            return responder.refuse(error)
        }
        let inbound = self.inbound
        let loop = responder.eventLoop
        let admitted = inbound.admit(
            InboundRequest(
                source: request.source, destination: destination.upstream, peerIdentity: request.peerIdentity,
                route: request.route, forwardedHost: request.forwardedHost, tunnelAuthority: request.authority.description,
                service: destination.service, tunnelAddress: request.connection.local,
                viaNetworkGateway: request.forwardedNetwork.map { $0.lowercased() != context.nodeNetwork.lowercased() } ?? false),
            on: loop)
        admitted.assumeIsolated().whenSuccess { result in
            switch result {
            case .failure(let refusal):
                responder.refuse(refusal)
            case .success(let record):
                inbound.connect(record, on: loop, in: request.connection.placement, timeout: request.connectTimeout)
                    .assumeIsolated().whenComplete { outcome in
                        switch outcome {
                        case .failure(let error):
                            responder.refuse(
                                error as? ConnectionRefusal ?? ConnectionRefusal(.connectFailed, "\(error)", underlying: error))
                        case .success(let upstream):
                            guard responder.isActive else {
                                upstream.close(promise: nil)
                                return
                            }
                            if let target = destination.proxyProtocolTarget {
                                // Ahead of every relayed byte: the relay writes after this.
                                let header = ProxyProtocolHeader(
                                    source: request.source, destination: target, identity: request.peerIdentity)
                                upstream.writeAndFlush(ByteBuffer(bytes: header.bytes), promise: nil)
                            }
                            inbound.relay(downstream: responder.accept(), upstream: upstream, record: record)
                        }
                    }
            }
        }
    }
}
