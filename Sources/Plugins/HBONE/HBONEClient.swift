#if canImport(Glibc)
import Glibc
#endif
import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import NIOHTTP2
import NIOPosix
import NIOSSL
import AmbitRuntime

/// The HBONE client: opens one HTTP/2 CONNECT stream per tunnelled connection over a
/// pooled mTLS connection to the destination's proxy (or waypoint).
///
/// The connection presents the source workload's certificate and accepts only a server
/// whose SPIFFE identity is one of the request's expected identities. The returned stream
/// channel carries `ByteBuffer`s and maps half-close to END_STREAM, ready for the relay.
///
/// Thread-safe.
final class HBONEClient: Sendable {
    private let config: HBONEConfig
    private let context: PluginContext
    private let identity: IdentityHolder
    private let tls: HBONETLSContexts
    private let dialer: TCPDialer
    let pool: HBONEConnectionPool

    init(config: HBONEConfig, context: PluginContext, identity: IdentityHolder, tls: HBONETLSContexts) {
        self.config = config
        self.context = context
        self.identity = identity
        self.tls = tls
        self.dialer = TCPDialer(
            options: DialerOptions(mark: config.client.mark, connectTimeout: config.client.connectTimeout.timeAmount))
        self.pool = HBONEConnectionPool(
            maxStreamsPerConnection: config.client.maxStreamsPerConnection,
            idleTimeout: config.client.idleTimeout.timeAmount)
    }

    private var logger: Logger { context.logger }

    /// Opens one tunnel; the future completes on `eventLoop` with the stream channel once
    /// the peer answered 200, or fails with an ``HBONEError``. With ``TunnelRequest/inner``
    /// (double HBONE) the channel is the inner tunnel's, opened inside the outer one.
    func openTunnel(_ request: TunnelRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        let outer = openPooled(request, on: eventLoop)
        guard let inner = request.inner else { return outer }
        return outer.flatMap { stream in
            self.openInner(inner, over: stream, request: request).hop(to: eventLoop)
        }
    }

    /// One CONNECT stream over a pooled connection to the request's gateway.
    private func openPooled(_ request: TunnelRequest, on eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        let key = HBONEPoolKey(
            source: request.source.identity, destinations: request.expectedIdentities, gateway: request.gateway,
            sourceIP: request.sourceAddress.ip, namespace: request.placement.namespace?.path)
        guard let (connection, isNew) = pool.lease(key, eventLoop: eventLoop) else {
            return eventLoop.makeFailedFuture(HBONEError(.connectionClosed, "the HBONE client is shut down"))
        }
        if isNew { establish(connection, request: request) }

        let result = eventLoop.makePromise(of: (any Channel).self)
        let timeout = config.client.connectTimeout.timeAmount
        let deadline = eventLoop.scheduleTask(in: timeout) {
            result.fail(Self.timedOut(connection, request: request, after: timeout))
        }
        let pool = self.pool
        connection.ready.flatMap { ready in
            self.openStream(
                on: ready, authority: request.authority, request: request, originNetwork: nil,
                release: { pool.release(connection) })
        }.whenComplete { outcome in
            deadline.cancel()
            switch outcome {
            case .success(let stream):
                // The caller may have given up (timeout): then the stream has no user.
                result.futureResult.whenFailure { _ in stream.close(promise: nil) }
                result.succeed(stream)
            case .failure(let error):
                result.fail(error)
            }
        }
        return result.futureResult
    }

    /// Why a tunnel on `connection` was not open after `timeout`, by how far the connection got.
    private static func timedOut(
        _ connection: HBONEPooledConnection, request: TunnelRequest, after timeout: TimeAmount
    ) -> HBONEError {
        let milliseconds = timeout.nanoseconds / 1_000_000
        let gateway = request.gateway
        switch connection.phase {
        case .certificate:
            return HBONEError(.certificate, "no certificate for \(request.source.identity) within \(milliseconds) ms")
        case .connecting:
            return connectTimedOut(gateway, "TCP connection to \(gateway) not established within \(milliseconds) ms")
        case .handshaking, .ready:
            return HBONEError(
                .timedOut, "tunnel to \(gateway) (authority \(request.authority)) not established within \(milliseconds) ms")
        }
    }

    private static func connectTimedOut(_ gateway: SocketAddr, _ what: String) -> HBONEError {
        HBONEError(.connectTimedOut, "\(what); is a NetworkPolicy blocking port \(gateway.port)?")
    }

    /// Opens the stream, sends the CONNECT for `authority`, and waits for the response
    /// head. `release` (the pool slot) runs when the stream closes (or if it never opens).
    private func openStream(
        on ready: HBONEPooledConnection.Ready, authority: String, request: TunnelRequest, originNetwork: String?,
        release: @escaping @Sendable () -> Void
    ) -> EventLoopFuture<any Channel> {
        let loop = ready.channel.eventLoop
        let response = loop.makePromise(of: (any Channel).self)
        let headers = HBONEHeaders.request(
            authority: authority, source: request.sourceAddress, workload: request.source,
            service: request.service?.hostname, originNetwork: originNetwork)
        let gateway = request.gateway
        let logger = self.logger
        ready.multiplexer.createStreamChannel { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.syncOptions?.setOption(.autoRead, value: false)
                let bridge = HBONEStreamBridge(logger: logger) { headers, bridge, channel in
                    let status = headers.first(name: ":status") ?? ""
                    if status == "200" {
                        bridge.open()
                        response.succeed(channel)
                    } else {
                        response.fail(
                            HBONEError(
                                .refused, "\(gateway) answered the CONNECT with status \(status.isEmpty ? "none" : status)",
                                status: Int(status)))
                        channel.close(promise: nil)
                    }
                }
                try stream.pipeline.syncOperations.addHandler(bridge)
                bridge.sendHeaders(headers, endStream: false)
                stream.closeFuture.whenComplete { _ in
                    release()
                    response.fail(HBONEError(.connectionClosed, "stream to \(gateway) closed before the CONNECT response"))
                }
            }
        }.whenFailure { error in
            release()
            response.fail(HBONEError(.connectionClosed, "cannot open a stream to \(gateway): \(error)"))
        }
        return response.futureResult
    }

    /// Double HBONE: over the outer tunnel's stream (to a network gateway, which forwards
    /// its bytes unread to the next hop), a second mTLS connection (the source's
    /// certificate; the far end must present one of the inner expected identities) and
    /// HTTP/2, and on it the inner CONNECT. Not pooled: each tunnel gets its own inner
    /// connection, so the gateway can send each to another endpoint (ztunnel's choice too).
    ///
    /// The inner TLS runs on one end of a Unix socket pair whose other end the relay joins
    /// to the outer stream: NIOSSL asks its channel for socket options (half-closure on a
    /// peer's `close_notify`) that an HTTP/2 stream channel traps on, so it must sit on a
    /// real socket. The inner connection lives as long as its one stream; closing it ends
    /// the pair and the outer stream, and so does any failure.
    private func openInner(_ inner: InnerTunnel, over outer: any Channel, request: TunnelRequest) -> EventLoopFuture<any Channel> {
        let loop = outer.eventLoop
        let source = request.source.identity
        let gateway = request.gateway
        let timeout = config.client.connectTimeout.timeAmount
        let result = loop.makePromise(of: (any Channel).self)
        result.futureResult.whenFailure { _ in outer.close(promise: nil) }
        guard let provider = identity.provider else {
            result.fail(HBONEError(.certificate, "no identity provider"))
            return result.futureResult
        }
        let deadline = loop.scheduleTask(in: timeout) {
            result.fail(
                HBONEError(
                    .timedOut,
                    "inner tunnel to \(inner.authority) through \(gateway) not established within \(timeout.nanoseconds / 1_000_000) ms"))
        }
        result.futureResult.whenComplete { _ in deadline.cancel() }
        let tls = self.tls
        let peer = "\(inner.authority) through \(gateway)"
        let material = loop.makeFutureWithTask {
            let certificate: WorkloadCertificate
            do {
                certificate = try await provider.certificate(for: source, priority: .onDemand)
            } catch {
                throw HBONEError(.certificate, "no certificate for \(source): \(error)")
            }
            return try tls.material(for: certificate, side: .client)
        }
        material.flatMap { material in
            Self.socketPair(on: loop).map { (material, $0) }
        }.flatMap { material, pair in
            // The pair's relay end carries the inner connection's bytes over the outer stream.
            let carrier = ConnectionRecord(
                direction: .outbound, source: request.sourceAddress, destination: gateway, sourceWorkload: nil,
                destinationWorkload: nil, route: "double-hbone-carrier")
            Relay.join(downstream: pair.relay, upstream: outer, record: carrier, registry: nil)
            result.futureResult.whenFailure { _ in pair.tls.close(promise: nil) }
            let ready = loop.makePromise(of: HBONEPooledConnection.Ready.self)
            do {
                try self.installInner(
                    on: pair.tls, material: material, expected: Set(inner.expectedIdentities), peer: peer, ready: ready)
            } catch {
                ready.fail(error)
            }
            return ready.futureResult.flatMap { ready in
                self.openStream(
                    on: ready, authority: inner.authority, request: request,
                    originNetwork: inner.originNetwork.isEmpty ? nil : inner.originNetwork, release: {})
            }.map { stream in
                stream.closeFuture.whenComplete { _ in pair.tls.close(promise: nil) }
                return stream
            }
        }.whenComplete { outcome in
            switch outcome {
            case .success(let stream):
                result.futureResult.whenFailure { _ in stream.close(promise: nil) }
                result.succeed(stream)
            case .failure(let error):
                result.fail(error)
            }
        }
        return result.futureResult
    }

    /// A connected Unix stream socket pair as two channels on `loop`: `tls` reads
    /// continuously (TLS and HTTP/2 go on it), `relay` is left to the relay (autoRead off,
    /// half-closure on).
    private static func socketPair(on loop: any EventLoop) -> EventLoopFuture<(tls: any Channel, relay: any Channel)> {
        var fds: [Int32] = [-1, -1]
        let made = fds.withUnsafeMutableBufferPointer {
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, $0.baseAddress)
        }
        guard made == 0 else {
            return loop.makeFailedFuture(HBONEError(.connectionClosed, "socketpair for the inner tunnel failed: errno \(errno)"))
        }
        let tlsSide = ClientBootstrap(group: loop).withConnectedSocket(fds[0])
        let relaySide = ClientBootstrap(group: loop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.autoRead, value: false)
            .withConnectedSocket(fds[1])
        // Whichever side fails, the other must not be left open.
        tlsSide.and(relaySide).whenFailure { _ in
            tlsSide.whenSuccess { $0.close(promise: nil) }
            relaySide.whenSuccess { $0.close(promise: nil) }
        }
        return tlsSide.and(relaySide).map { (tls: $0, relay: $1) }
    }

    /// The client pipeline (``addClientHandlers(to:material:expected:peer:events:)``) on the
    /// inner connection's socket; `ready` completes once ALPN chose h2.
    private func installInner(
        on channel: any Channel, material: HBONETLSContexts.Material, expected: Set<SpiffeID>, peer: String,
        ready: EventLoopPromise<HBONEPooledConnection.Ready>
    ) throws {
        try addClientHandlers(to: channel, material: material, expected: expected, peer: peer) { rejection, http2 in
            HBONEConnectionEvents(
                ready: {
                    do {
                        ready.succeed(.init(channel: channel, multiplexer: try http2.syncMultiplexer()))
                    } catch {
                        ready.fail(HBONEError(.handshakeFailed, "HTTP/2 with \(peer) not set up: \(error)"))
                        channel.close(promise: nil)
                    }
                },
                closed: { error in
                    let reason = rejection.withLockedValue { $0 } ?? error.map { Self.classify($0, peer: peer) }
                    ready.fail(reason ?? HBONEError(.connectionClosed, "connection to \(peer) closed during setup"))
                })
        }
    }

    /// The client side of an HBONE connection on `channel`: TLS presenting `material`'s
    /// certificate and accepting only a server with one of the `expected` identities, HTTP/2,
    /// and the connection handler reporting to `events`, which get the server certificate's
    /// rejection (set when the verifier refused it) and the HTTP/2 handler. `peer` names the
    /// far end in logs.
    private func addClientHandlers(
        to channel: any Channel, material: HBONETLSContexts.Material, expected: Set<SpiffeID>, peer: String,
        events: (_ rejection: NIOLockedValueBox<HBONEError?>, _ http2: NIOHTTP2Handler) -> HBONEConnectionEvents
    ) throws {
        let logger = self.logger
        let roots = material.roots
        let rejection = NIOLockedValueBox<HBONEError?>(nil)
        let ssl = try NIOSSLClientHandler(
            context: material.context, serverHostname: nil,
            customVerificationCallback: { certificates, promise in
                promise.completeWithTask {
                    switch await SpiffePeerVerifier.verify(chain: certificates, roots: roots, requirement: .oneOf(expected)) {
                    case .success:
                        return .certificateVerified
                    case .failure(let error):
                        rejection.withLockedValue { $0 = error }
                        logger.info("HBONE server certificate rejected", metadata: ["gateway": "\(peer)", "reason": "\(error)"])
                        return .failed
                    }
                }
            })
        let http2 = NIOHTTP2Handler(
            mode: .client, eventLoop: channel.eventLoop,
            connectionConfiguration: HBONEHTTP2.connectionConfiguration(config, side: .client),
            streamConfiguration: HBONEHTTP2.streamConfiguration(config)
        ) { pushed in
            // Servers never initiate streams in HBONE.
            pushed.close()
        }
        var connectionLogger = logger
        connectionLogger[metadataKey: "gateway"] = "\(peer)"
        let handler = HBONEConnectionHandler(
            connectionWindow: config.http2.connectionWindow,
            keepaliveInterval: config.http2.keepaliveInterval.timeAmount,
            keepaliveTimeout: config.http2.keepaliveTimeout.timeAmount,
            handshakeTimeout: config.client.connectTimeout.timeAmount, isClient: true,
            logger: connectionLogger, events: events(rejection, http2))
        try channel.pipeline.syncOperations.addHandlers([ssl, handler.frameWatcher, http2, handler])
    }

    /// Dials the gateway, then TLS (the source's certificate; the server must be one of the
    /// expected identities) and HTTP/2; completes the connection's ready promise.
    private func establish(_ connection: HBONEPooledConnection, request: TunnelRequest) {
        let eventLoop = connection.eventLoop
        let pool = self.pool
        let logger = self.logger
        let gateway = request.gateway
        let source = request.source.identity
        guard let provider = identity.provider else {
            pool.remove(connection)
            connection.readyPromise.fail(HBONEError(.certificate, "no identity provider"))
            return
        }
        let tls = self.tls
        var placed = self.dialer.placed(request.placement)
        // The tunnel leaves from the source workload's own address, as ztunnel's does: the
        // destination takes the connection's peer as the source for policy and telemetry.
        // In a pod the address is the pod's; outside one it must be local to this node.
        let sourceIP = request.sourceAddress.ip
        if placed.options.sourceAddress == nil, !sourceIP.isUnspecified, sourceIP.isIPv4 == gateway.ip.isIPv4 {
            placed.options.sourceAddress = sourceIP
        }
        let dialer = placed
        let expected = Set(request.expectedIdentities)
        eventLoop.makeFutureWithTask {
            let certificate: WorkloadCertificate
            do {
                certificate = try await provider.certificate(for: source, priority: .onDemand)
            } catch {
                throw HBONEError(.certificate, "no certificate for \(source): \(error)")
            }
            return try tls.material(for: certificate, side: .client)
        }.flatMap { material in
            connection.phase = .connecting
            return dialer.connect(to: gateway, on: eventLoop).flatMapThrowing { channel in
                connection.phase = .handshaking
                try self.install(on: channel, material: material, expected: expected, connection: connection)
                return channel
            }
        }.whenFailure { error in
            logger.info(
                "HBONE connection failed",
                metadata: ["gateway": "\(gateway)", "source": "\(source)", "error": "\(error)"])
            pool.remove(connection)
            connection.readyPromise.fail(Self.classify(error, gateway: gateway))
        }
    }

    private func install(
        on channel: any Channel, material: HBONETLSContexts.Material, expected: Set<SpiffeID>,
        connection: HBONEPooledConnection
    ) throws {
        let pool = self.pool
        let logger = self.logger
        let gateway = connection.key.gateway
        try channel.syncOptions?.setOption(.allowRemoteHalfClosure, value: false)
        try addClientHandlers(to: channel, material: material, expected: expected, peer: "\(gateway)") { rejection, http2 in
            HBONEConnectionEvents(
                ready: {
                    do {
                        // Available once the handler is in the pipeline, which it is by the handshake.
                        let multiplexer = try http2.syncMultiplexer()
                        connection.phase = .ready
                        pool.attach(connection, channel: channel)
                        connection.readyPromise.succeed(.init(channel: channel, multiplexer: multiplexer))
                    } catch {
                        connection.readyPromise.fail(HBONEError(.handshakeFailed, "HTTP/2 with \(gateway) not set up: \(error)"))
                        channel.close(promise: nil)
                    }
                },
                goAway: { pool.retire(connection) },
                peerMaxConcurrentStreams: { pool.lowerLimit(connection, to: $0) },
                closed: { error in
                    pool.remove(connection)
                    if let error, !HBONEServer.isOrdinaryClose(error) {
                        logger.info("HBONE connection closed", metadata: ["gateway": "\(gateway)", "error": "\(error)"])
                    }
                    let reason = rejection.withLockedValue { $0 } ?? error.map { Self.classify($0, gateway: gateway) }
                    connection.readyPromise.fail(
                        reason ?? HBONEError(.connectionClosed, "connection to \(gateway) closed during setup"))
                })
        }
        // The dialer leaves autoRead off for the relay; a TLS + HTTP/2 connection reads
        // continuously, and switching autoRead on needs one explicit read to start.
        try channel.syncOptions?.setOption(.autoRead, value: true)
        channel.read()
    }

    static func classify(_ error: any Error, gateway: SocketAddr) -> HBONEError {
        if let error = error as? SocketError, error.code == .connectTimedOut {
            return connectTimedOut(gateway, error.message)
        }
        return classify(error, peer: "\(gateway)")
    }

    /// An error of a connection to `peer` as an ``HBONEError``: TLS failures as handshake
    /// failures, anything else as the connection's end.
    private static func classify(_ error: any Error, peer: String) -> HBONEError {
        if let error = error as? HBONEError { return error }
        if error is NIOSSLError || error is BoringSSLError {
            return HBONEError(.handshakeFailed, "TLS with \(peer) failed: \(error)")
        }
        return HBONEError(.connectionClosed, "connection to \(peer) failed: \(error)")
    }

    /// Takes every pooled connection out of use.
    func drain() {
        pool.retireAll()
    }

    /// Closes every pooled connection.
    func close() async {
        let channels = pool.close()
        for channel in channels { try? await channel.closeFuture.get() }
    }
}
