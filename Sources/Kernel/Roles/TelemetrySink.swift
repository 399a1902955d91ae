/// Role ``PluginRole/telemetry``: receives connection events from the kernel and the
/// capture and tunnel plugins.
///
/// Every connection a path accepts ends in exactly one of three ways, each reported once:
/// - ``connectionOpened(_:)`` when relaying starts, then ``connectionClosed(_:)`` when it
///   ends (the record's byte counters move in between; sinks may read them at any time);
/// - ``connectionDenied(_:)`` when it is refused before any byte is relayed (policy, no
///   route), without an `opened`;
/// - ``connectionFailed(_:)`` when connecting upstream fails, without an `opened`.
///
/// The record enforces this itself: paths report through
/// ``ConnectionRecord/report(_:to:)``, which drops any event out of that order.
///
/// For denials and failures the path records why on the record first
/// (``ConnectionRecord/recordFailure(_:flag:)``), so the sink finds the reason and the
/// Istio response flag there.
///
/// Threading: called on event-loop threads; must not block. Every method has a no-op
/// default, so implement only what you need.
public protocol TelemetrySink: AnyObject, Sendable {
    /// A connection was accepted and its destination decided; relaying starts.
    func connectionOpened(_ connection: ConnectionRecord)
    /// A connection ended; its byte counters are final.
    func connectionClosed(_ connection: ConnectionRecord)
    /// A connection was refused before relaying (policy: ``ResponseFlag/denied``; no
    /// route or no healthy endpoint). Not preceded by ``connectionOpened(_:)``.
    func connectionDenied(_ connection: ConnectionRecord)
    /// Connecting to the destination (or opening the tunnel) failed
    /// (``ResponseFlag/connectFailure``; a tunnel without a workload certificate
    /// ``ResponseFlag/identityError``, one whose connect timed out
    /// ``ResponseFlag/networkPolicy``). Not preceded by ``connectionOpened(_:)``.
    func connectionFailed(_ connection: ConnectionRecord)
}

extension TelemetrySink {
    public func connectionOpened(_ connection: ConnectionRecord) {}
    public func connectionClosed(_ connection: ConnectionRecord) {}
    public func connectionDenied(_ connection: ConnectionRecord) {}
    public func connectionFailed(_ connection: ConnectionRecord) {}
}

/// Why a connection did not complete normally, in the words of Istio's `response_flags`
/// metric label (Envoy's response flags). A struct rather than an enum so that new
/// flags do not break exhaustive switches in plugins.
public struct ResponseFlag: Sendable, Hashable, CustomStringConvertible {
    /// The label value, e.g. `DENY`.
    public let rawValue: String

    /// A flag by its label value; prefer the named constants.
    public init(_ rawValue: String) { self.rawValue = rawValue }

    public var description: String { rawValue }

    /// Nothing went wrong: `-`. (Not `none`, which reads as `Optional.none`.)
    public static let noFlag = ResponseFlag("-")
    /// Refused by authorization policy: `DENY`.
    public static let denied = ResponseFlag("DENY")
    /// The upstream connection (or tunnel) could not be established: `CONNECT`.
    public static let connectFailure = ResponseFlag("CONNECT")
    /// The TLS handshake with the upstream failed (e.g. wrong identity): `TLS_FAILURE`.
    public static let tlsFailure = ResponseFlag("TLS_FAILURE")
    /// The addressed service has no healthy endpoint: `UH`.
    public static let noHealthyUpstream = ResponseFlag("UH")
    /// No route to the destination (e.g. a loop back into the proxy, or a tunnel that
    /// is needed but not enabled): `NR`.
    public static let noRoute = ResponseFlag("NR")
    /// The tunnel could not be opened because the source workload has no certificate
    /// (the identity provider failed or has none for it): `IDENTITY_ERROR`.
    public static let identityError = ResponseFlag("IDENTITY_ERROR")
    /// The TCP connection to the peer's tunnel port (HBONE 15008) timed out, as it does
    /// when a NetworkPolicy drops it: `NETWORK_POLICY`.
    public static let networkPolicy = ResponseFlag("NETWORK_POLICY")
}

/// An error that says which ``ResponseFlag`` a connection failing with it is reported
/// under, so the path that reports the failure need not know the plugin that raised it.
/// The node proxy asks a ``TunnelDialer``'s errors; one that does not conform is
/// ``ResponseFlag/connectFailure``.
public protocol ResponseFlagProviding: Error {
    /// The flag telemetry records (`response_flags`).
    var responseFlag: ResponseFlag { get }
}
