import Kernel
import NIOConcurrencyHelpers
import Testing

/// A sink that writes down every event it hears, in order.
private final class EventLog: TelemetrySink {
    let events = NIOLockedValueBox<[String]>([])

    func connectionOpened(_ connection: ConnectionRecord) { events.withLockedValue { $0.append("opened \(connection.id)") } }
    func connectionClosed(_ connection: ConnectionRecord) { events.withLockedValue { $0.append("closed \(connection.id)") } }
    func connectionDenied(_ connection: ConnectionRecord) { events.withLockedValue { $0.append("denied \(connection.id)") } }
    func connectionFailed(_ connection: ConnectionRecord) { events.withLockedValue { $0.append("failed \(connection.id)") } }
}

private func record() -> ConnectionRecord {
    ConnectionRecord(
        direction: .outbound, source: SocketAddr(ip: .v4(0x0a00_0001), port: 40000),
        destination: SocketAddr(ip: .v4(0x0a00_0002), port: 80), sourceWorkload: nil, destinationWorkload: nil,
        route: "direct")
}

@Suite("connection records report their life to telemetry once")
struct ConnectionRecordTests {
    @Test("opened then closed, each once, to every sink")
    func openedThenClosed() {
        let sinks = [EventLog(), EventLog()]
        let connection = record()
        #expect(!connection.report(.closed, to: sinks), "closed before opened is dropped")
        #expect(connection.report(.opened, to: sinks))
        #expect(!connection.report(.opened, to: sinks))
        #expect(!connection.report(.denied, to: sinks), "a relayed connection is not denied afterwards")
        #expect(connection.report(.closed, to: sinks))
        #expect(!connection.report(.closed, to: sinks))
        #expect(connection.reportedEvent == .closed)
        for sink in sinks {
            #expect(sink.events.withLockedValue { $0 } == ["opened \(connection.id)", "closed \(connection.id)"])
        }
    }

    @Test("denied or failed ends the record: nothing is reported after it")
    func terminalEvents() {
        let sink = EventLog()
        let denied = record()
        #expect(denied.report(.denied, to: [sink]))
        #expect(!denied.report(.failed, to: [sink]))
        #expect(!denied.report(.opened, to: [sink]))
        let failed = record()
        #expect(failed.report(.failed, to: [sink]))
        #expect(!failed.report(.denied, to: [sink]))
        #expect(!failed.report(.closed, to: [sink]))
        #expect(sink.events.withLockedValue { $0 } == ["denied \(denied.id)", "failed \(failed.id)"])
    }
}
