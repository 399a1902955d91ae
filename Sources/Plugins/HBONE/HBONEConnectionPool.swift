import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP2

/// What makes two tunnels share a connection: the same source identity, the same set of
/// acceptable destination identities, the same gateway and the same source IP (ztunnel's
/// pool key).
struct HBONEPoolKey: Hashable, Sendable, CustomStringConvertible {
    var source: SpiffeID
    var destinations: [SpiffeID]
    var gateway: SocketAddr
    var sourceIP: IPAddress
    /// The source pod's network namespace path under in-pod capture: its connections leave
    /// from inside the pod, so they are never shared with another pod's.
    var namespace: String?

    init(source: SpiffeID, destinations: [SpiffeID], gateway: SocketAddr, sourceIP: IPAddress, namespace: String? = nil) {
        self.source = source
        self.destinations = Array(Set(destinations)).sorted()
        self.gateway = gateway
        self.sourceIP = sourceIP
        self.namespace = namespace
    }

    var description: String { "\(source) → \(gateway) [\(destinations.map(\.description).joined(separator: ","))]" }
}

/// One pooled HBONE connection: immutable facts plus a future that completes once TLS and
/// HTTP/2 are up. Its counters live in the pool, under the pool's lock.
final class HBONEPooledConnection: Sendable {
    /// What a ready connection offers.
    struct Ready: Sendable {
        let channel: any Channel
        let multiplexer: NIOHTTP2Handler.StreamMultiplexer
    }

    /// How far establishing has come: a tunnel that times out waiting says where it
    /// stuck (no certificate yet, or the TCP connect to the gateway unanswered).
    enum Phase: Sendable {
        case certificate, connecting, handshaking, ready
    }

    let id: UInt64
    let key: HBONEPoolKey
    let eventLoop: any EventLoop
    let readyPromise: EventLoopPromise<Ready>
    var ready: EventLoopFuture<Ready> { readyPromise.futureResult }
    private let progress = NIOLockedValueBox(Phase.certificate)

    /// Where establishing is now.
    var phase: Phase {
        get { progress.withLockedValue { $0 } }
        set { progress.withLockedValue { $0 = newValue } }
    }

    init(id: UInt64, key: HBONEPoolKey, eventLoop: any EventLoop) {
        self.id = id
        self.key = key
        self.eventLoop = eventLoop
        self.readyPromise = eventLoop.makePromise(of: Ready.self)
    }
}

/// The client's connection pool.
///
/// Connections are pooled per event loop, as Envoy pools per worker: a tunnel's stream then
/// lives on the same thread as the connection it carries, so relaying never hops threads.
/// A lease reserves one stream slot on a usable connection of the key on the caller's
/// event loop that has room, so a burst of first tunnels shares the one connection being
/// established instead of opening one each; a new connection is opened only when every
/// connection of the key on that loop is at its stream limit (the configured maximum, lowered by the peer's SETTINGS). A connection
/// with no stream for `idleTimeout` is closed. GOAWAY or a close takes a connection out of
/// the pool; its open streams finish undisturbed.
///
/// Thread-safe: one lock around all bookkeeping, held for a few dictionary operations.
final class HBONEConnectionPool: Sendable {
    private struct Slot {
        var connection: HBONEPooledConnection
        var reserved = 0
        var limit: Int
        var usable = true
        var idleTimer: Scheduled<Void>?
        var channel: (any Channel)?
        /// Streams ever opened on it (for tests and logs).
        var opened = 0
    }

    private struct State {
        var byKey: [HBONEPoolKey: [UInt64]] = [:]
        var slots: [UInt64: Slot] = [:]
        var nextID: UInt64 = 1
        var closed = false
    }

    private let state = NIOLockedValueBox(State())
    private let maxStreams: Int
    private let idleTimeout: TimeAmount

    init(maxStreamsPerConnection: Int, idleTimeout: TimeAmount) {
        self.maxStreams = maxStreamsPerConnection
        self.idleTimeout = idleTimeout
    }

    /// Reserves a stream slot for `key`. `isNew` tells the caller to establish the
    /// connection (and to complete its ``HBONEPooledConnection/readyPromise``).
    func lease(_ key: HBONEPoolKey, eventLoop: any EventLoop) -> (connection: HBONEPooledConnection, isNew: Bool)? {
        let (lease, timer): ((HBONEPooledConnection, Bool)?, Scheduled<Void>?) = state.withLockedValue { state in
            guard !state.closed else { return (nil, nil) }
            // A connection on the caller's event loop, so the relay and the tunnel stream
            // share a thread (no cross-thread hop per read cycle): one pool per event loop,
            // as Envoy pools per worker.
            for id in state.byKey[key] ?? [] {
                guard var slot = state.slots[id], slot.usable, slot.reserved < slot.limit,
                    slot.connection.eventLoop === eventLoop
                else { continue }
                slot.reserved += 1
                slot.opened += 1
                let timer = slot.idleTimer
                slot.idleTimer = nil
                state.slots[id] = slot
                return ((slot.connection, false), timer)
            }
            let id = state.nextID
            state.nextID += 1
            let connection = HBONEPooledConnection(id: id, key: key, eventLoop: eventLoop)
            state.slots[id] = Slot(connection: connection, reserved: 1, limit: maxStreams, opened: 1)
            state.byKey[key, default: []].append(id)
            return ((connection, true), nil)
        }
        timer?.cancel()
        return lease
    }

    /// The connection is up: remember its channel (for idle close and shutdown).
    func attach(_ connection: HBONEPooledConnection, channel: any Channel) {
        let closeNow = state.withLockedValue { state -> Bool in
            guard state.slots[connection.id] != nil, !state.closed else { return true }
            state.slots[connection.id]?.channel = channel
            return false
        }
        if closeNow { channel.close(promise: nil) }
    }

    /// A stream ended (or never opened): give its slot back; start the idle timer when the
    /// connection carries nothing.
    func release(_ connection: HBONEPooledConnection) {
        let idleTimeout = self.idleTimeout
        state.withLockedValue { state in
            guard var slot = state.slots[connection.id] else { return }
            slot.reserved = max(0, slot.reserved - 1)
            if slot.reserved == 0, slot.idleTimer == nil, let channel = slot.channel {
                slot.idleTimer = connection.eventLoop.scheduleTask(in: idleTimeout) { [weak self] in
                    self?.expireIfIdle(connection, channel: channel)
                }
            }
            state.slots[connection.id] = slot
        }
    }

    private func expireIfIdle(_ connection: HBONEPooledConnection, channel: any Channel) {
        let expired = state.withLockedValue { state -> Bool in
            guard let slot = state.slots[connection.id], slot.reserved == 0 else { return false }
            Self.forget(connection, in: &state)
            return true
        }
        if expired { channel.close(promise: nil) }
    }

    /// No new streams on this connection (GOAWAY received).
    func retire(_ connection: HBONEPooledConnection) {
        state.withLockedValue { state in
            state.slots[connection.id]?.usable = false
            state.byKey[connection.key]?.removeAll { $0 == connection.id }
            if state.byKey[connection.key]?.isEmpty == true { state.byKey[connection.key] = nil }
        }
    }

    /// The connection is gone (closed or failed to connect).
    func remove(_ connection: HBONEPooledConnection) {
        let timer = state.withLockedValue { state -> Scheduled<Void>? in
            let timer = state.slots[connection.id]?.idleTimer
            Self.forget(connection, in: &state)
            return timer
        }
        timer?.cancel()
    }

    /// The peer allows at most `limit` concurrent streams.
    func lowerLimit(_ connection: HBONEPooledConnection, to limit: Int) {
        state.withLockedValue { state in
            guard var slot = state.slots[connection.id] else { return }
            slot.limit = max(1, min(maxStreams, limit))
            state.slots[connection.id] = slot
        }
    }

    private static func forget(_ connection: HBONEPooledConnection, in state: inout State) {
        state.slots[connection.id] = nil
        state.byKey[connection.key]?.removeAll { $0 == connection.id }
        if state.byKey[connection.key]?.isEmpty == true { state.byKey[connection.key] = nil }
    }

    /// Takes every connection out of use (drain); they close once their streams end or at cleanup.
    func retireAll() {
        state.withLockedValue { state in
            for id in state.slots.keys { state.slots[id]?.usable = false }
            state.byKey = [:]
        }
    }

    /// Closes everything; later leases fail.
    func close() -> [any Channel] {
        let (channels, timers) = state.withLockedValue { state -> ([any Channel], [Scheduled<Void>]) in
            state.closed = true
            let channels = state.slots.values.compactMap(\.channel)
            let timers = state.slots.values.compactMap(\.idleTimer)
            state.slots = [:]
            state.byKey = [:]
            return (channels, timers)
        }
        for timer in timers { timer.cancel() }
        for channel in channels { channel.close(promise: nil) }
        return channels
    }

    /// Open connections per key, with streams in use and ever opened (tests, diagnostics).
    var snapshot: [(key: HBONEPoolKey, reserved: Int, opened: Int, usable: Bool)] {
        state.withLockedValue { state in
            state.slots.values.sorted { $0.connection.id < $1.connection.id }.map {
                ($0.connection.key, $0.reserved, $0.opened, $0.usable)
            }
        }
    }
}
