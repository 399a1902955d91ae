import NIOConcurrencyHelpers
import Synchronization

/// Byte counters of one connection, readable from any thread while it is open.
public final class ByteCounters: Sendable {
    private let upstream = Atomic<UInt64>(0)
    private let downstream = Atomic<UInt64>(0)

    /// Zeroed counters.
    public init() {}

    /// Bytes from the connection's originator towards its destination.
    public var sent: UInt64 { upstream.load(ordering: .relaxed) }
    /// Bytes from the destination back to the originator.
    public var received: UInt64 { downstream.load(ordering: .relaxed) }

    /// Adds to ``sent``.
    public func addSent(_ count: Int) { upstream.add(UInt64(count), ordering: .relaxed) }
    /// Adds to ``received``.
    public func addReceived(_ count: Int) { downstream.add(UInt64(count), ordering: .relaxed) }
}

/// Which way a connection flows through this node.
public enum ConnectionDirection: String, Sendable, Codable {
    /// From a local workload towards the mesh.
    case outbound
    /// From the mesh (or a plaintext client) towards a local workload.
    case inbound
}

/// One proxied connection, as drain, policy re-evaluation, telemetry and
/// `/config_dump` see it. Created by the path that accepted the connection.
public final class ConnectionRecord: Sendable, Identifiable {
    /// Process-unique id.
    public let id: UInt64
    /// Outbound or inbound.
    public let direction: ConnectionDirection
    /// The application-side source address.
    public let source: SocketAddr
    /// The original destination the application asked for.
    public let destination: SocketAddr
    /// The source workload, when known.
    public let sourceWorkload: Workload?
    /// The destination workload, when known: the workload the connection goes to. For an
    /// outbound connection through a waypoint, the waypoint.
    public let destinationWorkload: Workload?
    /// The service telemetry reports: outbound, the one the application addressed (nil for
    /// a pod address); inbound, the destination workload's service the client named, or
    /// else the one serving the destination port. Never an input to policy.
    public let destinationService: Service?
    /// The peer's authenticated identity (inbound mTLS), if any.
    public let peerIdentity: SpiffeID?
    /// How the connection is carried, e.g. `passthrough`, `direct`, `hbone`.
    public let route: String
    /// The tunnel's `:authority` (ztunnel's `hbone_addr`) when the connection is carried
    /// in an HBONE tunnel: the `ip:port` the tunnel asks for (outbound), or was asked for
    /// (inbound); nil otherwise.
    public let tunnelAuthority: String?
    /// The address of the TCP connection the node itself connected to (outbound) or
    /// accepted (inbound) for this one, when it is not ``destination``: an HBONE tunnel's
    /// peer (`ip:15008`, or a waypoint's) or its local end on the destination node, or the
    /// endpoint a service address was sent to. ztunnel's access log `dst.addr`. Nil when the
    /// node's connection goes to (or arrived for) ``destination`` itself.
    public let transportDestination: SocketAddr?
    /// Whether it travels over mutual TLS.
    public let isMutualTLS: Bool
    /// What the policy chain saw when it authorized the connection (inbound paths set
    /// it); ``PolicyChain/reevaluate(_:logger:)`` checks these records again when
    /// policies change. Nil for connections no policy governs (outbound).
    public var authorization: ConnectionAttributes? {
        switch policyInputs {
        case .none: nil
        case .recorded: recordedAttributes
        case .given(let box): box.value
        }
    }

    /// The record's own fields as policy inputs: the peer identity as the source identity,
    /// the addresses and workloads, and whether it is mutual TLS.
    package var recordedAttributes: ConnectionAttributes {
        ConnectionAttributes(
            sourceIdentity: peerIdentity, sourceAddress: source, sourceWorkload: sourceWorkload,
            destinationAddress: destination, destinationWorkload: destinationWorkload, isMutualTLS: isMutualTLS)
    }
    /// When it was accepted.
    public let openedAt: ContinuousClock.Instant
    /// Bytes each way, updated as they flow.
    public let bytes = ByteCounters()

    /// What changes over the connection's life, under one lock (a lock each would cost
    /// an allocation each, on every connection).
    private struct Mutable {
        var closer: (@Sendable () -> Void)?
        var failure: String?
        var flag: ResponseFlag?
        var verdict: AuthorizationDecision?
        var reported: ConnectionEvent?
    }

    /// The policy inputs, boxed: most records (outbound) have none, and a nil box costs
    /// a pointer where the attributes inline would cost two workloads' worth of bytes.
    private final class AuthorizationBox: Sendable {
        let value: ConnectionAttributes
        init(_ value: ConnectionAttributes) { self.value = value }
    }

    /// Where ``authorization`` comes from: nowhere, the record's own fields (what the
    /// inbound path asks about is exactly what it records), or attributes of their own.
    private enum PolicyInputs: Sendable {
        case none
        case recorded
        case given(AuthorizationBox)
    }

    private let policyInputs: PolicyInputs
    private let state = NIOLockedValueBox(Mutable())
    private static let nextID = Atomic<UInt64>(1)

    /// Creates a record with a fresh id.
    public convenience init(
        direction: ConnectionDirection, source: SocketAddr, destination: SocketAddr,
        sourceWorkload: Workload?, destinationWorkload: Workload?, destinationService: Service? = nil,
        peerIdentity: SpiffeID? = nil, route: String, isMutualTLS: Bool = false,
        authorization: ConnectionAttributes? = nil, tunnelAuthority: String? = nil,
        transportDestination: SocketAddr? = nil
    ) {
        self.init(
            direction: direction, source: source, destination: destination, sourceWorkload: sourceWorkload,
            destinationWorkload: destinationWorkload, destinationService: destinationService,
            peerIdentity: peerIdentity, route: route, isMutualTLS: isMutualTLS,
            policyInputs: authorization.map { .given(AuthorizationBox($0)) } ?? .none, tunnelAuthority: tunnelAuthority,
            transportDestination: transportDestination)
    }

    /// Creates a record with a fresh id for a connection the policy chain governs, whose
    /// ``authorization`` is what the record itself holds: the peer identity as the source
    /// identity, the addresses and workloads, and whether it is mutual TLS (kept once, not
    /// twice, on every inbound connection).
    public convenience init(
        governed direction: ConnectionDirection, source: SocketAddr, destination: SocketAddr,
        sourceWorkload: Workload?, destinationWorkload: Workload?, destinationService: Service? = nil,
        peerIdentity: SpiffeID?, route: String, isMutualTLS: Bool, tunnelAuthority: String? = nil,
        transportDestination: SocketAddr? = nil
    ) {
        self.init(
            direction: direction, source: source, destination: destination, sourceWorkload: sourceWorkload,
            destinationWorkload: destinationWorkload, destinationService: destinationService,
            peerIdentity: peerIdentity, route: route, isMutualTLS: isMutualTLS, policyInputs: .recorded,
            tunnelAuthority: tunnelAuthority, transportDestination: transportDestination)
    }

    private init(
        direction: ConnectionDirection, source: SocketAddr, destination: SocketAddr,
        sourceWorkload: Workload?, destinationWorkload: Workload?, destinationService: Service?,
        peerIdentity: SpiffeID?, route: String, isMutualTLS: Bool, policyInputs: PolicyInputs,
        tunnelAuthority: String?, transportDestination: SocketAddr?
    ) {
        self.id = Self.nextID.add(1, ordering: .relaxed).oldValue
        self.direction = direction
        self.source = source
        self.destination = destination
        self.sourceWorkload = sourceWorkload
        self.destinationWorkload = destinationWorkload
        self.destinationService = destinationService
        self.peerIdentity = peerIdentity
        self.route = route
        self.tunnelAuthority = tunnelAuthority
        self.transportDestination = transportDestination == destination ? nil : transportDestination
        self.isMutualTLS = isMutualTLS
        self.policyInputs = policyInputs
        self.openedAt = .now
    }

    /// Sets how to force the connection closed (drain deadline, policy change).
    public func setCloser(_ closer: @escaping @Sendable () -> Void) {
        state.withLockedValue { $0.closer = closer }
    }

    /// Forces the connection closed; a no-op before a closer is set.
    public func close() {
        let closer = state.withLockedValue { $0.closer }
        closer?()
    }

    /// Records why the connection failed (kept for the access log); first one wins.
    public func recordFailure(_ reason: String) {
        state.withLockedValue { if $0.failure == nil { $0.failure = reason } }
    }

    /// Why the connection failed, if it did.
    public var failure: String? { state.withLockedValue { $0.failure } }

    /// Records why the connection failed and the Istio response flag that classifies it
    /// (telemetry's `response_flags` label); the first reason and the first flag win.
    public func recordFailure(_ reason: String, flag: ResponseFlag) {
        state.withLockedValue {
            if $0.failure == nil { $0.failure = reason }
            if $0.flag == nil { $0.flag = flag }
        }
    }

    /// The response flag recorded with ``recordFailure(_:flag:)``, if any.
    public var responseFlag: ResponseFlag? { state.withLockedValue { $0.flag } }

    /// Records the policy chain's decision on the connection (inbound paths do, allowed
    /// or denied, before they report it to telemetry); the first one wins.
    public func recordDecision(_ decision: AuthorizationDecision) {
        state.withLockedValue { if $0.verdict == nil { $0.verdict = decision } }
    }

    /// The policy chain's decision, naming the deciding plugin, once the inbound path has
    /// asked; nil for connections no policy governs (outbound).
    public var decision: AuthorizationDecision? { state.withLockedValue { $0.verdict } }

    /// Tells every sink in `sinks` of `event`, if the record's lifecycle allows it now:
    /// ``ConnectionEvent/opened`` then ``ConnectionEvent/closed``, or one of
    /// ``ConnectionEvent/denied`` and ``ConnectionEvent/failed``, each once. Anything else
    /// (a second `opened`, `closed` without `opened`, `denied` after `opened`) is dropped,
    /// so a connection is counted once however many paths see it end.
    ///
    /// - Returns: whether the event was reported.
    @discardableResult
    public func report(_ event: ConnectionEvent, to sinks: [any TelemetrySink]) -> Bool {
        let allowed = state.withLockedValue { state -> Bool in
            switch (state.reported, event) {
            case (nil, .opened), (nil, .denied), (nil, .failed), (.opened?, .closed):
                state.reported = event
                return true
            default:
                return false
            }
        }
        guard allowed else { return false }
        for sink in sinks {
            switch event {
            case .opened: sink.connectionOpened(self)
            case .closed: sink.connectionClosed(self)
            case .denied: sink.connectionDenied(self)
            case .failed: sink.connectionFailed(self)
            }
        }
        return true
    }

    /// The last lifecycle event reported (``report(_:to:)``), if any.
    public var reportedEvent: ConnectionEvent? { state.withLockedValue { $0.reported } }
}

/// A step in a connection's life as telemetry hears of it (``TelemetrySink``).
public enum ConnectionEvent: String, Sendable {
    /// Relaying started.
    case opened
    /// Relaying ended; the byte counters are final.
    case closed
    /// Refused before any byte was relayed.
    case denied
    /// Connecting to the destination failed.
    case failed
}

/// Every open proxied connection of the node. Drain waits on it; policy re-evaluation
/// walks it.
///
/// Thread-safe.
public final class ConnectionRegistry: Sendable {
    private let open = NIOLockedValueBox<[UInt64: ConnectionRecord]>([:])

    /// An empty registry.
    public init() {}

    /// Adds a connection.
    public func register(_ record: ConnectionRecord) {
        open.withLockedValue { $0[record.id] = record }
    }

    /// Removes a connection (idempotent).
    public func unregister(_ record: ConnectionRecord) {
        let removed = open.withLockedValue { $0.removeValue(forKey: record.id) != nil }
        if removed { closedCount.add(1, ordering: .relaxed) }
    }

    private let closedCount = Atomic<UInt64>(0)

    /// How many connections have been unregistered since the registry was made.
    public var closedTotal: UInt64 { closedCount.load(ordering: .relaxed) }

    /// How many connections are open.
    public var count: Int { open.withLockedValue { $0.count } }

    /// The open connections, oldest first.
    public var records: [ConnectionRecord] {
        open.withLockedValue { Array($0.values) }.sorted { $0.id < $1.id }
    }

    /// Forces every open connection closed.
    public func closeAll() {
        for record in records { record.close() }
    }

    /// How a drain ended.
    public struct DrainOutcome: Sendable, Equatable {
        /// Connections open when the drain started.
        public var atStart: Int
        /// Connections still open at the deadline and closed by force.
        public var forced: Int
    }

    /// Waits until every connection has finished or `deadline` has passed, then closes
    /// whatever is left.
    public func drain(deadline: Duration, pollInterval: Duration = .milliseconds(20)) async -> DrainOutcome {
        let atStart = count
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: deadline)
        while count > 0 && clock.now < end {
            try? await Task.sleep(for: min(pollInterval, clock.now.duration(to: end)))
        }
        let left = records
        for record in left { record.close() }
        return DrainOutcome(atStart: atStart, forced: left.count)
    }
}
