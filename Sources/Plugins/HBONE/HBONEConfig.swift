public import Kernel

/// `hbone` plugin configuration. Every key is optional; the defaults are ztunnel's.
public struct HBONEConfig: DefaultedConfig, Sendable {
    /// The server (inbound tunnels).
    public var server = Server()
    /// The client (outbound tunnels) and its connection pool.
    public var client = Client()
    /// HTTP/2 settings shared by both sides.
    public var http2 = HTTP2()
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    public var allowTLS12 = false

    /// Server settings.
    public struct Server: DefaultedConfig, Sendable {
        /// Accept tunnels at all.
        public var enabled = true
        /// One fixed listen address. Absent: one listener on `<ip>:<port>` per IP of every
        /// local HBONE workload, following mesh updates.
        public var address: SocketAddr?
        /// The port of per-workload listeners.
        public var port: UInt16 = ProxyPorts.hbone
        /// How long a peer may take from TCP accept to a finished TLS handshake; slower
        /// connections are closed.
        public var handshakeTimeout = ConfigDuration(.seconds(10))
        /// How many accepted connections may be in their TLS handshake at once (across
        /// every listener); more are closed as they are accepted. Established connections
        /// do not count.
        public var maxPendingHandshakes = 1024
        /// SETTINGS_MAX_CONCURRENT_STREAMS the server advertises.
        public var maxConcurrentStreams = 200
        /// SETTINGS_MAX_HEADER_LIST_SIZE the server advertises.
        public var maxHeaderListSize = 64 * 1024
        /// Timeout for dialing the local workload.
        public var connectTimeout = ConfigDuration(.seconds(5))

        public init() {}
    }

    /// Client and pool settings.
    public struct Client: DefaultedConfig, Sendable {
        /// Streams per pooled connection before another connection is opened.
        public var maxStreamsPerConnection = 100
        /// Close a pooled connection after it has carried no stream for this long.
        public var idleTimeout = ConfigDuration(.seconds(300))
        /// Time for TCP connect + TLS handshake + the CONNECT response.
        public var connectTimeout = ConfigDuration(.seconds(10))
        /// SETTINGS_MAX_HEADER_LIST_SIZE the client advertises.
        public var maxHeaderListSize = 16 * 1024
        /// SO_MARK on the client's sockets, so in-pod redirection never recaptures them.
        public var mark: UInt32?

        public init() {}
    }

    /// HTTP/2 flow control, framing and keepalive.
    public struct HTTP2: DefaultedConfig, Sendable {
        /// Per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE).
        public var streamWindow = 4 * 1024 * 1024
        /// Connection receive window, raised with a WINDOW_UPDATE on stream 0.
        public var connectionWindow = 16 * 1024 * 1024
        /// SETTINGS_MAX_FRAME_SIZE.
        public var maxFrameSize = 1024 * 1024
        /// How often to PING an idle-or-not connection.
        public var keepaliveInterval = ConfigDuration(.seconds(10))
        /// Close the connection when a PING is not acknowledged within this time.
        public var keepaliveTimeout = ConfigDuration(.seconds(20))

        public init() {}
    }

    public init() {}

    /// Range checks the decoder cannot express; each problem names the key.
    public func validate() -> [ConfigProblem] {
        var problems: [ConfigProblem] = []
        if !(16_384...16_777_215).contains(http2.maxFrameSize) {
            problems.append(ConfigProblem(at: "http2.maxFrameSize", "must be between 16384 and 16777215, got \(http2.maxFrameSize)"))
        }
        if !(65_535...2_147_483_647).contains(http2.streamWindow) {
            problems.append(ConfigProblem(at: "http2.streamWindow", "must be between 65535 and 2147483647, got \(http2.streamWindow)"))
        }
        if !(65_535...2_147_483_647).contains(http2.connectionWindow) {
            problems.append(ConfigProblem(
                at: "http2.connectionWindow", "must be between 65535 and 2147483647, got \(http2.connectionWindow)"))
        }
        if client.maxStreamsPerConnection < 1 {
            problems.append(ConfigProblem(at: "client.maxStreamsPerConnection", "must be at least 1"))
        }
        if server.maxPendingHandshakes < 1 {
            problems.append(ConfigProblem(at: "server.maxPendingHandshakes", "must be at least 1"))
        }
        if server.handshakeTimeout.duration <= .zero {
            problems.append(ConfigProblem(at: "server.handshakeTimeout", "must be positive"))
        }
        if server.maxConcurrentStreams < 1 {
            problems.append(ConfigProblem(at: "server.maxConcurrentStreams", "must be at least 1"))
        }
        if http2.keepaliveInterval.duration <= .zero || http2.keepaliveTimeout.duration <= .zero {
            problems.append(ConfigProblem(at: "http2", "keepaliveInterval and keepaliveTimeout must be positive"))
        }
        return problems
    }
}
