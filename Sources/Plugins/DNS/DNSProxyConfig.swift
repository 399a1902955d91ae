public import Kernel
import NIOCore

/// The DNS proxy inside each captured pod: the capture plugin's `inPod.dns` key.
///
/// ```yaml
/// inPod:
///   dns:
///     enabled: true
///     port: 15053
///     upstreams: ["10.96.0.10:53"]
/// ```
///
/// The proxy listens on `127.0.0.1:<port>` (UDP and TCP) inside the pod; istio-cni's
/// rules (or the capture plugin's) redirect the pod's port-53 traffic there.
public struct DNSProxyConfig: DefaultedConfig, Sendable, Hashable {
    /// Run the proxy in captured pods.
    public var enabled = true
    /// The port inside the pod, UDP and TCP (ztunnel's 15053).
    public var port: UInt16 = 15053
    /// The resolvers to forward to, `ip:port` (`[v6]:port`); empty: the nameservers of the
    /// node's `/etc/resolv.conf` (port 53).
    public var upstreams: [String] = []
    /// The cluster's DNS domain, for expanding short names.
    public var clusterDomain = "cluster.local"
    /// How long to wait for one upstream's UDP answer before trying the next.
    public var upstreamTimeout = ConfigDuration(.seconds(2))
    /// How long a TCP client connection may sit idle between queries.
    public var tcpIdleTimeout = ConfigDuration(.seconds(10))

    public init() {}

    /// The upstreams as addresses; invalid entries are left out (``validate()`` reports
    /// them).
    public var upstreamAddresses: [SocketAddr] { upstreams.compactMap(SocketAddr.init) }

    /// Config values that cannot work.
    public func validate() -> [ConfigProblem] {
        var problems: [ConfigProblem] = []
        if port == 0 { problems.append(ConfigProblem(at: "port", "must not be 0")) }
        for (index, upstream) in upstreams.enumerated() where SocketAddr(upstream) == nil {
            problems.append(ConfigProblem(at: "upstreams[\(index)]", "\"\(upstream)\" is not ip:port (IPv6 as [ip]:port)"))
        }
        problems += DNSProxyConfig.checkCommon(clusterDomain: clusterDomain, upstreamTimeout: upstreamTimeout, idle: tcpIdleTimeout)
        return problems
    }

    static func checkCommon(clusterDomain: String, upstreamTimeout: ConfigDuration, idle: ConfigDuration) -> [ConfigProblem] {
        var problems: [ConfigProblem] = []
        if DNSName(clusterDomain).map({ $0.labels.isEmpty }) ?? true {
            problems.append(ConfigProblem(at: "clusterDomain", "\"\(clusterDomain)\" is not a domain name"))
        }
        if upstreamTimeout.timeAmount.nanoseconds <= 0 {
            problems.append(ConfigProblem(at: "upstreamTimeout", "must be positive"))
        }
        if idle.timeAmount.nanoseconds <= 0 { problems.append(ConfigProblem(at: "tcpIdleTimeout", "must be positive")) }
        return problems
    }
}

/// A DNS proxy listening in the node's own namespace (for host-network clients, or
/// tests): off unless ``address`` is set.
///
/// ```yaml
/// dns:
///   address: "127.0.0.1:15053"
///   upstreams: ["10.96.0.10:53"]
/// ```
public struct NodeDNSProxyConfig: DefaultedConfig, Sendable, Hashable {
    /// Where to listen, UDP and TCP; nil (the default): no node-level proxy.
    public var address: String?
    /// As ``DNSProxyConfig/upstreams``.
    public var upstreams: [String] = []
    /// As ``DNSProxyConfig/clusterDomain``.
    public var clusterDomain = "cluster.local"
    /// As ``DNSProxyConfig/upstreamTimeout``.
    public var upstreamTimeout = ConfigDuration(.seconds(2))
    /// As ``DNSProxyConfig/tcpIdleTimeout``.
    public var tcpIdleTimeout = ConfigDuration(.seconds(10))

    public init() {}

    /// ``address`` parsed; nil when unset or invalid (``validate()`` reports that).
    public var socketAddress: SocketAddr? { address.flatMap(SocketAddr.init) }

    /// The upstreams as addresses; invalid entries are left out.
    public var upstreamAddresses: [SocketAddr] { upstreams.compactMap(SocketAddr.init) }

    /// Config values that cannot work.
    public func validate() -> [ConfigProblem] {
        var problems: [ConfigProblem] = []
        if let address, SocketAddr(address) == nil {
            problems.append(ConfigProblem(at: "address", "\"\(address)\" is not ip:port (IPv6 as [ip]:port)"))
        }
        for (index, upstream) in upstreams.enumerated() where SocketAddr(upstream) == nil {
            problems.append(ConfigProblem(at: "upstreams[\(index)]", "\"\(upstream)\" is not ip:port (IPv6 as [ip]:port)"))
        }
        problems += DNSProxyConfig.checkCommon(clusterDomain: clusterDomain, upstreamTimeout: upstreamTimeout, idle: tcpIdleTimeout)
        return problems
    }
}
