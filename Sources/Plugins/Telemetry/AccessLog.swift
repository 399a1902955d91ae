public import Kernel
import Logging
import NIOConcurrencyHelpers
import NIOPosix

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
public import AmbitRuntime

/// One access-log line per connection at completion, in the node's log formats (the
/// kernel's ``LogLineRenderer``), with ztunnel's field names:
///
/// `src.addr`, `src.workload`, `src.namespace`, `src.identity`, `src.cluster`,
/// `dst.addr` (the address of the node's own TCP connection, as ztunnel logs it: an HBONE
/// tunnel's `ip:15008` on both nodes, the endpoint a service address was sent to, else the
/// destination), `dst.hbone_addr` (the HBONE `:authority`, for tunnelled connections),
/// `dst.service`, `dst.workload`, `dst.namespace`, `dst.identity`, `dst.cluster`,
/// `direction`, `bytes_sent`, `bytes_recv`, `duration` (e.g. `12ms`), `response_flags`,
/// `route`, `connection_id`, and `error` when the connection failed. Unknown values are
/// left out.
///
/// `bytes_sent` / `bytes_recv` are from the local workload's point of view, as in
/// ztunnel's log: outbound, what the local client sent and received; inbound, what the
/// local server sent (its responses) and received.
public enum AccessLog {
    /// The line for `connection`, ending in a newline.
    ///
    /// - Parameters:
    ///   - outcome: the event's message: `connection complete`, `connection denied` or
    ///     `connection failed`.
    ///   - format: `text` or `json`.
    ///   - now: when it ended (the duration runs from ``ConnectionRecord/openedAt``).
    public static func line(
        for connection: ConnectionRecord, outcome: String = "connection complete", format: LogFormat,
        now: ContinuousClock.Instant = .now, time: LogTimestamp = .now()
    ) -> String {
        let labels = IstioLabels(connection)
        var metadata: Logger.Metadata = [:]
        func put(_ key: String, _ value: String?) {
            if let value, !value.isEmpty, value != IstioLabels.unknown { metadata[key] = .string(value) }
        }
        put("src.addr", connection.source.description)
        put("src.workload", connection.sourceWorkload?.name)
        put("src.namespace", labels["source_workload_namespace"])
        put("src.identity", labels["source_principal"])
        put("src.cluster", labels["source_cluster"])
        // The address of the node's own connection (an HBONE tunnel's ip:15008, the endpoint
        // a service address was sent to), as ztunnel logs it; the tunnel's :authority is
        // dst.hbone_addr.
        put("dst.addr", (connection.transportDestination ?? connection.destination).description)
        put("dst.hbone_addr", connection.tunnelAuthority)
        put("dst.service", labels["destination_service"])
        put("dst.workload", connection.destinationWorkload?.name)
        put("dst.namespace", labels["destination_workload_namespace"])
        put("dst.identity", connection.isMutualTLS ? labels["destination_principal"] : nil)
        put("dst.cluster", labels["destination_cluster"])
        put("direction", connection.direction.rawValue)
        let (sent, received) =
            connection.direction == .outbound
            ? (connection.bytes.sent, connection.bytes.received)
            : (connection.bytes.received, connection.bytes.sent)
        put("bytes_sent", String(sent))
        put("bytes_recv", String(received))
        let elapsed = connection.openedAt.duration(to: now).components
        put("duration", "\(elapsed.seconds * 1000 + elapsed.attoseconds / 1_000_000_000_000_000)ms")
        put("response_flags", labels["response_flags"])
        put("route", connection.route)
        put("authz", connection.decision?.description)
        put("connection_id", String(connection.id))
        let level: Logger.Level = connection.failure == nil ? .info : .error
        switch format {
        case .text:
            return LogLineRenderer.text(
                time: time, level: level, label: "access", message: outcome, metadata: metadata,
                error: connection.failure)
        case .json:
            return LogLineRenderer.json(
                time: time, level: level, label: "access", message: outcome, metadata: metadata,
                error: connection.failure)
        }
    }
}

/// Appends access-log lines to stderr or a file without blocking the caller: lines are
/// queued and written in order by one job at a time on NIO's blocking-I/O thread pool.
/// The queue is bounded; past the bound lines are dropped and counted rather than
/// letting a slow disk stall the event loops.
///
/// Thread-safe.
final class AccessLogWriter: Sendable {
    private struct Queue: Sendable {
        var lines: [String] = []
        var writing = false
        var closed = false
        var dropped = 0
    }

    private let fd: Int32
    private let ownsDescriptor: Bool
    private let limit: Int
    private let queue = NIOLockedValueBox(Queue())

    /// Opens `path` for appending (created if missing), or writes to stderr when nil.
    init(path: String?, limit: Int = 65_536) throws {
        if let path {
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else {
                throw PluginError(
                    .unavailable, plugin: TelemetryPlugin.id,
                    "cannot open access log \(path): \(String(cString: strerror(errno)))")
            }
            self.fd = fd
            ownsDescriptor = true
        } else {
            fd = STDERR_FILENO
            ownsDescriptor = false
        }
        self.limit = limit
    }

    /// Lines dropped because the queue was full.
    var dropped: Int { queue.withLockedValue { $0.dropped } }

    /// Queues a line; never blocks on I/O. Lines after ``close()`` are dropped.
    func write(_ line: String) {
        let startWriter = queue.withLockedValue { queue -> Bool in
            guard !queue.closed, queue.lines.count < limit else {
                queue.dropped += 1
                return false
            }
            queue.lines.append(line)
            if queue.writing { return false }
            queue.writing = true
            return true
        }
        if startWriter {
            NIOThreadPool.singleton.submit { _ in self.drain() }
        }
    }

    /// The pool job: writes until the queue is empty.
    private func drain() {
        while true {
            let lines = queue.withLockedValue { queue -> [String] in
                let lines = queue.lines
                queue.lines = []
                if lines.isEmpty { queue.writing = false }
                return lines
            }
            if lines.isEmpty { return }
            writeAll(lines)
        }
    }

    private func writeAll(_ lines: [String]) {
        var bytes: [UInt8] = []
        for line in lines { bytes += line.utf8 }
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if written < 0 && errno == EINTR { continue }
            if written <= 0 { return }  // a broken log must not take the proxy down
            offset += written
        }
    }

    /// Writes what is still queued and closes the file. Blocks briefly while a pool job
    /// finishes; call it from cleanup, not from an event loop.
    func close() {
        // Closed first, so no new pool job starts; then let a running one finish the queue.
        queue.withLockedValue { $0.closed = true }
        while queue.withLockedValue({ $0.writing }) { usleep(1000) }
        let rest = queue.withLockedValue { queue -> [String] in
            defer { queue.lines = [] }
            return queue.lines
        }
        writeAll(rest)
        if ownsDescriptor { Glibc.close(fd) }
    }
}
