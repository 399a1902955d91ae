public import Kernel

/// `hbone` plugin configuration. Every key is optional; the defaults are ztunnel's.
public struct HBONEConfig: Decodable, Sendable {
    /// The server (inbound tunnels).
    public var server = Server()
    /// The client (outbound tunnels) and its connection pool.
    public var client = Client()
    /// HTTP/2 settings shared by both sides.
    public var http2 = HTTP2()
    /// Also accept TLS 1.2 (TLS 1.3 only by default).
    public var allowTLS12 = false

    /// Server settings.
    public struct Server: Decodable, Sendable {
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

        private enum CodingKeys: String, CodingKey, CaseIterable {
            case enabled, address, port, handshakeTimeout, maxPendingHandshakes, maxConcurrentStreams, maxHeaderListSize
            case connectTimeout
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            enabled = try c.decodeIfPresent(Bool.self, forKey: .enabled) ?? enabled
            address = try c.decodeIfPresent(SocketAddr.self, forKey: .address)
            port = try c.decodeIfPresent(UInt16.self, forKey: .port) ?? port
            handshakeTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .handshakeTimeout) ?? handshakeTimeout
            maxPendingHandshakes = try c.decodeIfPresent(Int.self, forKey: .maxPendingHandshakes) ?? maxPendingHandshakes
            maxConcurrentStreams = try c.decodeIfPresent(Int.self, forKey: .maxConcurrentStreams) ?? maxConcurrentStreams
            maxHeaderListSize = try c.decodeIfPresent(Int.self, forKey: .maxHeaderListSize) ?? maxHeaderListSize
            connectTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .connectTimeout) ?? connectTimeout
        }
    }

    /// Client and pool settings.
    public struct Client: Decodable, Sendable {
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

        private enum CodingKeys: String, CodingKey, CaseIterable {
            case maxStreamsPerConnection, idleTimeout, connectTimeout, maxHeaderListSize, mark
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            maxStreamsPerConnection =
                try c.decodeIfPresent(Int.self, forKey: .maxStreamsPerConnection) ?? maxStreamsPerConnection
            idleTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .idleTimeout) ?? idleTimeout
            connectTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .connectTimeout) ?? connectTimeout
            maxHeaderListSize = try c.decodeIfPresent(Int.self, forKey: .maxHeaderListSize) ?? maxHeaderListSize
            mark = try c.decodeIfPresent(UInt32.self, forKey: .mark)
        }
    }

    /// HTTP/2 flow control, framing and keepalive.
    public struct HTTP2: Decodable, Sendable {
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

        private enum CodingKeys: String, CodingKey, CaseIterable {
            case streamWindow, connectionWindow, maxFrameSize, keepaliveInterval, keepaliveTimeout
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            streamWindow = try c.decodeIfPresent(Int.self, forKey: .streamWindow) ?? streamWindow
            connectionWindow = try c.decodeIfPresent(Int.self, forKey: .connectionWindow) ?? connectionWindow
            maxFrameSize = try c.decodeIfPresent(Int.self, forKey: .maxFrameSize) ?? maxFrameSize
            keepaliveInterval = try c.decodeIfPresent(ConfigDuration.self, forKey: .keepaliveInterval) ?? keepaliveInterval
            keepaliveTimeout = try c.decodeIfPresent(ConfigDuration.self, forKey: .keepaliveTimeout) ?? keepaliveTimeout
        }
    }

    public init() {}

    private enum CodingKeys: String, CodingKey, CaseIterable {
        case server, client, http2, allowTLS12
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        server = try c.decodeIfPresent(Server.self, forKey: .server) ?? server
        client = try c.decodeIfPresent(Client.self, forKey: .client) ?? client
        http2 = try c.decodeIfPresent(HTTP2.self, forKey: .http2) ?? http2
        allowTLS12 = try c.decodeIfPresent(Bool.self, forKey: .allowTLS12) ?? allowTLS12
    }

    /// Range checks the decoder cannot express; each message names the key.
    func problems() -> [String] {
        var problems: [String] = []
        if !(16_384...16_777_215).contains(http2.maxFrameSize) {
            problems.append("http2.maxFrameSize must be between 16384 and 16777215, got \(http2.maxFrameSize)")
        }
        if !(65_535...2_147_483_647).contains(http2.streamWindow) {
            problems.append("http2.streamWindow must be between 65535 and 2147483647, got \(http2.streamWindow)")
        }
        if !(65_535...2_147_483_647).contains(http2.connectionWindow) {
            problems.append("http2.connectionWindow must be between 65535 and 2147483647, got \(http2.connectionWindow)")
        }
        if client.maxStreamsPerConnection < 1 {
            problems.append("client.maxStreamsPerConnection must be at least 1")
        }
        if server.maxPendingHandshakes < 1 {
            problems.append("server.maxPendingHandshakes must be at least 1")
        }
        if server.handshakeTimeout.duration <= .zero {
            problems.append("server.handshakeTimeout must be positive")
        }
        if server.maxConcurrentStreams < 1 {
            problems.append("server.maxConcurrentStreams must be at least 1")
        }
        if http2.keepaliveInterval.duration <= .zero || http2.keepaliveTimeout.duration <= .zero {
            problems.append("http2.keepaliveInterval and http2.keepaliveTimeout must be positive")
        }
        return problems
    }
}
