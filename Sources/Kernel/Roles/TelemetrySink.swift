/// Role ``PluginRole/telemetry``: receives connection events from the kernel and the
/// capture and tunnel plugins.
///
/// Threading: called on event-loop threads; must not block. Every method has a no-op
/// default, so implement only what you need.
public protocol TelemetrySink: AnyObject, Sendable {
    /// A connection was accepted and its destination decided.
    func connectionOpened(_ connection: ConnectionRecord)
    /// A connection ended; its byte counters are final.
    func connectionClosed(_ connection: ConnectionRecord)
}

extension TelemetrySink {
    public func connectionOpened(_ connection: ConnectionRecord) {}
    public func connectionClosed(_ connection: ConnectionRecord) {}
}
