import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import ServiceLifecycle

/// A stand-in for the HBONE plugin, for in-process meshes on loopback only: the same
/// roles (``TunnelDialer`` on the client's node, ``TunnelAcceptor`` plus the inbound
/// policy check on the destination's node) over plain TCP, with the source workload's
/// identity sent in a header line instead of proven by mTLS.
///
/// That identity is taken as authenticated (``ConnectionAttributes/isMutualTLS`` is
/// true), which is only sound because both nodes are in one test process. The inbound
/// side does what a real inbound path does: it builds the ``ConnectionAttributes``
/// from the mesh, asks the node's ``PolicyChain`` (so the deadline and containment
/// apply), refuses a deny, and otherwise dials the workload and relays with a record
/// that policy re-evaluation can close. Every decision is kept in ``decisions``.
///
/// Wire format: the dialer sends `<spiffe-id> <source ip:port> <destination ip:port>\n`;
/// the acceptor answers `OK\n` and relays, or `DENY <decision>\n` and closes. The
/// dialer returns the channel after `OK`; bytes the workload sends before the client's
/// first bytes could be lost, so use client-speaks-first protocols.
///
/// Manifest id `test-tunnel`; config `accept` (addresses to accept tunnels on, usually
/// `<workload ip>:15008` of the node's workloads; default none: dial only).
public final class LoopbackTunnelPlugin: Plugin, TunnelDialer, TunnelAcceptor {
    /// `test-tunnel` configuration.
    public struct Config: Decodable, Sendable {
        /// Where to accept tunnels.
        public var accept: [SocketAddr] = []

        /// No listeners.
        public init() {}

        private enum CodingKeys: String, CodingKey, CaseIterable { case accept }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            accept = try c.decodeIfPresent([SocketAddr].self, forKey: .accept) ?? []
        }
    }

    /// One inbound policy decision, as the acceptor made it.
    public struct InboundDecision: Sendable {
        /// What the policy chain saw.
        public var attributes: ConnectionAttributes
        /// What it decided.
        public var decision: AuthorizationDecision
    }

    public static let id = "test-tunnel"
    public static let summary = "test kit only: an unencrypted HBONE stand-in on loopback (identity trusted, not proven)"
    public static let provides: Set<PluginRole> = [.tunnelDialer, .tunnelAcceptor]
    public static let requires: Set<PluginRole> = [.discovery]

    private let config: Config
    private let context: PluginContext
    private let dialer = TCPDialer()
    private let listeners = NIOLockedValueBox<[TCPListener]>([])
    private let recorded = NIOLockedValueBox<[InboundDecision]>([])

    public init(config: Config, context: PluginContext) throws {
        self.config = config
        self.context = context
    }

    /// Every inbound decision so far, oldest first.
    public var decisions: [InboundDecision] { recorded.withLockedValue { $0 } }

    public var tunnelAddresses: [SocketAddr] { listeners.withLockedValue { $0.map(\.localAddress) } }

    public func provision() async throws {
        for address in config.accept { context.readiness.expect("test-tunnel \(address)") }
    }

    public func run() async throws {
        for address in config.accept {
            let listener = try await TCPListener.bind(ListenerOptions(address: address), group: context.eventLoopGroup) {
                [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        LineReader { line, rest in self.accepted(channel, header: line, leftover: rest) })
                }
            }
            listeners.withLockedValue { $0.append(listener) }
            context.readiness.markReady("test-tunnel \(address)")
        }
        try? await gracefulShutdown()
        await drain()
    }

    public func drain() async {
        for listener in listeners.withLockedValue({ $0 }) { await listener.stopAccepting() }
    }

    public func cleanup() async {
        await drain()
    }

    public func openTunnel(_ request: TunnelRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        let header = "\(request.source.identity) \(request.sourceAddress) \(request.authority)\n"
        return dialer.connect(to: request.gateway, on: eventLoop).flatMap { channel in
            let reply = channel.eventLoop.makePromise(of: String.self)
            do {
                try channel.pipeline.syncOperations.addHandler(LineReader { line, _ in reply.succeed(line) })
            } catch {
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(error)
            }
            channel.closeFuture.whenComplete { _ in reply.fail(ChannelError.ioOnClosedChannel) }
            channel.writeAndFlush(ByteBuffer(string: header), promise: nil)
            // Dialed channels do not read on their own (the relay drives reads later).
            channel.read()
            return reply.futureResult.flatMapThrowing { line in
                guard line == "OK" else {
                    channel.close(promise: nil)
                    throw TunnelRefused(answer: line)
                }
                return channel
            }
        }
    }

    /// The inbound side of one tunnel, on the tunnel channel's event loop.
    private func accepted(_ channel: any Channel, header: String, leftover: ByteBuffer?) {
        let fields = header.split(separator: " ").map(String.init)
        guard fields.count == 3, let identity = try? SpiffeID(parsing: fields[0]), let source = SocketAddr(fields[1]),
            let destination = SocketAddr(fields[2])
        else {
            channel.writeAndFlush(ByteBuffer(string: "BAD header\n")).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        let mesh = context.mesh.snapshot
        let attributes = ConnectionAttributes(
            sourceIdentity: identity, sourceAddress: source, sourceWorkload: mesh.workload(at: source.ip),
            destinationAddress: destination, destinationWorkload: mesh.workload(at: destination.ip), isMutualTLS: true)
        let context = self.context
        let dialer = self.dialer
        context.policyChain.authorize(attributes, on: channel.eventLoop).whenSuccess { [recorded] decision in
            recorded.withLockedValue { $0.append(InboundDecision(attributes: attributes, decision: decision)) }
            guard decision.allowed else {
                context.logger.info("test-tunnel: inbound connection denied", metadata: ["decision": "\(decision)"])
                channel.writeAndFlush(ByteBuffer(string: "DENY \(decision)\n")).whenComplete { _ in
                    channel.close(promise: nil)
                }
                return
            }
            dialer.connect(to: destination, on: channel.eventLoop).whenComplete { result in
                switch result {
                case .failure(let error):
                    channel.writeAndFlush(ByteBuffer(string: "FAIL \(error)\n")).whenComplete { _ in
                        channel.close(promise: nil)
                    }
                case .success(let upstream):
                    channel.writeAndFlush(ByteBuffer(string: "OK\n"), promise: nil)
                    let record = ConnectionRecord(
                        direction: .inbound, source: source, destination: destination,
                        sourceWorkload: attributes.sourceWorkload, destinationWorkload: attributes.destinationWorkload,
                        peerIdentity: identity, route: "test-tunnel", isMutualTLS: true, authorization: attributes)
                    Relay.join(
                        downstream: channel, upstream: upstream, record: record, registry: context.connections,
                        initialData: leftover)
                }
            }
        }
    }
}

/// The acceptor's answer when it was not `OK`.
public struct TunnelRefused: Error, Sendable, CustomStringConvertible {
    /// The answer line, e.g. `DENY deny by rate-limit: …`.
    public var answer: String
    public var description: String { "tunnel refused: \(answer)" }
}

/// Reads one `\n`-terminated line, stops reading, hands the line and whatever followed
/// it to `onLine`, and leaves the pipeline.
final class LineReader: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private var buffer = ByteBuffer()
    private var done = false
    private let onLine: (String, ByteBuffer?) -> Void

    init(onLine: @escaping (String, ByteBuffer?) -> Void) {
        self.onLine = onLine
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else {
            context.fireChannelRead(data)
            return
        }
        var chunk = unwrapInboundIn(data)
        buffer.writeBuffer(&chunk)
        guard let newline = buffer.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) else {
            if buffer.readableBytes > 4096 { context.close(promise: nil) }
            return
        }
        done = true
        let length = newline - buffer.readerIndex
        let line = buffer.readString(length: length) ?? ""
        buffer.moveReaderIndex(forwardBy: 1)
        let rest = buffer.readableBytes > 0 ? buffer : nil
        // Whoever takes the channel over next decides when to read again.
        context.channel.setOption(.autoRead, value: false).whenComplete { _ in }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        onLine(line, rest)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Until the line is complete, keep reading even where autoRead is off.
        if !done { context.read() }
        context.fireChannelReadComplete()
    }
}
