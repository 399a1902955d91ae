import AmbitRuntime
import Kernel
import Logging
import NIOCore

extension PluginContext {
    /// Relays `downstream` ↔ `upstream` for `record` (registered while it runs); the record
    /// reports itself opened now and closed when both sides are
    /// (``ConnectionRecord/report(_:to:)``, once each): the one sequence the inbound and
    /// outbound paths share. The future
    /// completes once both sides are closed.
    func relayReporting(
        downstream: any Channel, upstream: any Channel, record: ConnectionRecord, initialData: ByteBuffer? = nil
    ) -> EventLoopFuture<Void> {
        let sinks = providers(of: (any TelemetrySink).self)
        let logger = self.logger
        let inbound = record.direction == .inbound
        record.report(.opened, to: sinks)
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
            record.report(.closed, to: sinks)
            logger.debug(
                inbound ? "inbound connection closed" : "connection closed",
                metadata: ["id": "\(record.id)", "sent": "\(record.bytes.sent)", "received": "\(record.bytes.received)"])
        }
        return done
    }
}
