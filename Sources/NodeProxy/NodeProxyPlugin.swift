public import Kernel
import AmbitRuntime
import Logging
import NIOCore

/// The node proxy's inbound role: it terminates the tunnels the HBONE transport accepts
/// for the node's local workloads (ztunnel's inbound).
///
/// For each connection it presents the certificate of the local HBONE workload at the
/// address the connection arrived on and requires peers of that workload's trust domain;
/// for each stream it requires the authority to be one of that workload's addresses on a
/// port that is not the proxy's own (else 400), then runs the ``InboundPath``: policy
/// (401 when denied), a dial to the workload, inside its pod's namespace under in-pod
/// capture (503 when it cannot be reached), and the relay.
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
        do throws(ConnectionRefusal) {
            try Self.checkAuthority(request.target, workload: workload)
        } catch {
            return responder.refuse(error)
        }
        let inbound = self.inbound
        let loop = responder.eventLoop
        let admitted = inbound.admit(
            InboundRequest(
                source: request.source, destination: request.target, peerIdentity: request.peerIdentity,
                route: request.route, forwardedHost: request.forwardedHost, tunnelAuthority: request.target.description),
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
                            inbound.relay(downstream: responder.accept(), upstream: upstream, record: record)
                        }
                    }
            }
        }
    }

    /// The node proxy's authority rule: a tunnel for a local workload names one of that
    /// workload's addresses (else a bad request), on a port that is not one of the proxy's
    /// own (``ProxyPorts/own``; else a ``ConnectionRefusal/Code/selfCall``, which HBONE
    /// answers 503 as ztunnel does).
    public static func checkAuthority(_ target: SocketAddr, workload: Workload) throws(ConnectionRefusal) {
        guard workload.workloadIPs.contains(target.ip) else {
            let ips = workload.workloadIPs.map { "\($0)" }.joined(separator: ",")
            throw ConnectionRefusal(.badRequest, "authority IP \(target.ip) is not the destination workload's (\(ips))")
        }
        guard !ProxyPorts.own.contains(target.port) else {
            throw ConnectionRefusal(.selfCall, "port \(target.port) is one of the proxy's own ports")
        }
    }
}
