import AmbitRuntime
import Kernel
import Logging
import NIOCore

extension PluginContext {
    /// Relays `downstream` ↔ `upstream` for `record` (registered while it runs) and tells
    /// every telemetry sink once that it opened, now, and once that it closed, when both
    /// sides are: the one sequence the inbound and outbound paths share. The future
    /// completes once both sides are closed.
    func relayReporting(
        downstream: any Channel, upstream: any Channel, record: ConnectionRecord, initialData: ByteBuffer? = nil
    ) -> EventLoopFuture<Void> {
        let sinks = providers(of: (any TelemetrySink).self)
        let logger = self.logger
        let inbound = record.direction == .inbound
        for sink in sinks { sink.connectionOpened(record) }
        logger.debug(
            inbound ? "inbound relaying" : "relaying",
            metadata: {
                var metadata: Logger.Metadata = [
                    "id": "\(record.id)", "source": "\(record.source)", "destination": "\(record.destination)",
                    "route": "\(record.route)",
                ]
                if inbound { metadata["peer"] = "\(record.peerIdentity.map { "\($0)" } ?? "none")" }
                return metadata
            }())
        let done = Relay.join(
            downstream: downstream, upstream: upstream, record: record, registry: connections, initialData: initialData)
        done.whenComplete { _ in
            for sink in sinks { sink.connectionClosed(record) }
            logger.debug(
                inbound ? "inbound connection closed" : "connection closed",
                metadata: ["id": "\(record.id)", "sent": "\(record.bytes.sent)", "received": "\(record.bytes.received)"])
        }
        return done
    }
}
