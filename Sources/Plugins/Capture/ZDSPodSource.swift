#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import AmbitRuntime
import CAmbitSystem
import Foundation
import IstioXDSAPI
public import Kernel
import Logging
import NIOConcurrencyHelpers
import SwiftProtobuf

/// One message istio-cni sends over ZDS, decoded and checked against the descriptors that
/// came with it.
public enum ZDSRequest: Sendable, Equatable {
    /// `AddWorkload`: a pod and (exactly one descriptor) its network namespace; `info` is
    /// nil when the message has no `workload_info`.
    case add(uid: String, info: PodWorkloadInfo?)
    /// `KeepWorkload`: a pod whose namespace istio-cni no longer holds (snapshot only).
    case keep(uid: String)
    /// `DelWorkload`.
    case delete(uid: String)
    /// `SnapshotSent`: the snapshot is complete.
    case snapshotSent
}

/// A message that breaks the protocol: acked with ``message`` and the connection dropped.
public struct ZDSProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The ack's text, in ztunnel's words where it has them.
    public var message: String

    /// Creates an error.
    public init(_ message: String) { self.message = message }

    public var description: String { message }
}

/// ZDS's messages as Ambit reads and writes them (istio.workload.zds protobufs, one per
/// packet, no length prefix): the decoder of untrusted input is separate from the socket so
/// it can be tested and fuzzed on its own.
public enum ZDSMessage {
    /// The largest message read (ztunnel reads into 1024 bytes; anything longer is an
    /// error, not a partial message).
    public static let maximumSize = 1024

    /// Decodes one packet: `bytes`, the number of descriptors that came with it, and
    /// whether the kernel cut the packet or its descriptors short.
    public static func decode(
        _ bytes: [UInt8], descriptors: Int, truncated: Bool = false, descriptorsTruncated: Bool = false
    ) -> Result<ZDSRequest, ZDSProtocolError> {
        if truncated { return .failure(ZDSProtocolError("failure to read message : message larger than \(maximumSize) bytes")) }
        if descriptorsTruncated { return .failure(ZDSProtocolError("failure to read message : too many file descriptors")) }
        let request: Istio_Workload_Zds_WorkloadRequest
        do {
            request = try Istio_Workload_Zds_WorkloadRequest(serializedBytes: bytes)
        } catch {
            return .failure(ZDSProtocolError("failure to read message : \(error)"))
        }
        if case .add = request.payload {} else if descriptors > 0 {
            return .failure(
                ZDSProtocolError("failure to read message : unexpected control message (only AddWorkload carries a descriptor)"))
        }
        switch request.payload {
        case .add(let add):
            guard descriptors == 1 else {
                return .failure(
                    ZDSProtocolError(
                        descriptors == 0
                            ? "failure to read message : no control message (AddWorkload must carry the pod's network namespace)"
                            : "failure to read message : \(descriptors) file descriptors, expected one"))
            }
            let info =
                add.hasWorkloadInfo
                ? PodWorkloadInfo(
                    name: add.workloadInfo.name, namespace: add.workloadInfo.namespace,
                    serviceAccount: add.workloadInfo.serviceAccount)
                : nil
            return .success(.add(uid: add.uid, info: info))
        case .keep(let keep): return .success(.keep(uid: keep.uid))
        case .del(let del): return .success(.delete(uid: del.uid))
        case .snapshotSent: return .success(.snapshotSent)
        case nil: return .failure(ZDSProtocolError("failure to read message : no payload (an unknown message type)"))
        }
    }

    /// `WorkloadResponse{ack: Ack{error}}`; an empty error acks success.
    public static func ack(_ error: String) -> [UInt8] {
        var response = Istio_Workload_Zds_WorkloadResponse()
        response.ack.error = error
        return (try? response.serializedBytes()) ?? []
    }

    /// `ZdsHello{version: V1}`.
    public static func hello() -> [UInt8] {
        var hello = Istio_Workload_Zds_ZdsHello()
        hello.version = .v1
        return (try? hello.serializedBytes()) ?? []
    }
}

/// istio-cni's pods over ZDS (`inPod.source: zds`): the proxy connects to the node agent's
/// SOCK_SEQPACKET socket, says `ZdsHello{V1}`, and is sent every pod of the node, each
/// with its network namespace attached (`AddWorkload` + one descriptor by SCM_RIGHTS, or
/// `KeepWorkload` for a pod whose namespace the agent no longer holds), then
/// `SnapshotSent`; after that, pods as they come and go (`AddWorkload`, `DelWorkload`).
/// Every message gets an `Ack`, empty on success.
///
/// - An added pod is written into the node's ``CapturedPods`` under its Kubernetes UID,
///   named by its `WorkloadInfo` (its mesh workload is the local one with the same name,
///   namespace and service account, whenever that reaches the mesh); the ack waits until
///   every in-pod server listens inside it, or says why one could not
///   (`failure to start proxy : …`; the servers retry on their own).
/// - `DelWorkload` removes the pod: its listeners close at once.
/// - `SnapshotSent` removes every pod of this source the snapshot did not mention.
/// - A protocol violation (an undecodable or truncated packet, a missing or extra
///   descriptor, `KeepWorkload` after the snapshot, a second snapshot) is acked with the
///   error and the connection is dropped and made again.
///
/// Readiness component `zds` is pending until the first snapshot is in and while the
/// agent is not connected; reconnects back off from 10 ms, doubling to 15 s. Pods stay
/// captured while the connection is down: the next snapshot says which still exist.
///
/// Thread-safe.
final class ZDSPodSource: PodSource {
    let origin = "zds"
    /// The readiness component this source holds.
    static let readinessComponent = "zds"

    private let socketPath: String
    private let mark: UInt32
    private let pods: CapturedPods
    private let readiness: Readiness
    private let logger: Logger
    /// How long an `AddWorkload` waits for the pod's listeners before acking an error
    /// (istio-cni waits 5 s for an ack).
    private let ackTimeout: Duration
    private let state = NIOLockedValueBox(State())

    private struct State {
        var connected = false
        var snapshotReceived = false
        var lastFailure: String?
        var sessions = 0
        var current: ZDSConnection?
        var stopped = false
    }

    init(
        socketPath: String, mark: UInt32, pods: CapturedPods, readiness: Readiness, logger: Logger,
        ackTimeout: Duration = .seconds(4)
    ) {
        self.socketPath = socketPath
        self.mark = mark
        self.pods = pods
        self.readiness = readiness
        self.logger = logger
        self.ackTimeout = ackTimeout
    }

    /// Holds readiness from the start (call from provision).
    func announce() {
        readiness.expect(Self.readinessComponent)
    }

    /// The connection's state: connected, snapshot received, connections made, last error.
    var status: (connected: Bool, snapshotReceived: Bool, sessions: Int, lastError: String?) {
        state.withLockedValue { ($0.connected, $0.snapshotReceived, $0.sessions, $0.lastFailure) }
    }

    /// Ends ``run(feeding:)`` and drops the connection.
    func stop() {
        let connection = state.withLockedValue { state -> ZDSConnection? in
            state.stopped = true
            return state.current
        }
        connection?.shutdown()
    }

    func run(feeding feed: PodFeed) async {
        readiness.expect(Self.readinessComponent)
        var delay = Duration.milliseconds(10)
        while !Task.isCancelled && !state.withLockedValue({ $0.stopped }) {
            let connection: ZDSConnection
            do {
                connection = try ZDSConnection.connect(path: socketPath)
            } catch {
                noteFailure("cannot connect to istio-cni's ZDS socket \(socketPath): \(error)", retry: delay)
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(15))
                continue
            }
            let stopped = state.withLockedValue { state -> Bool in
                state.current = connection
                state.connected = true
                state.sessions += 1
                return state.stopped
            }
            if stopped {
                connection.shutdown()
                break
            }
            logger.info("connected to istio-cni's ZDS socket", metadata: ["socket": "\(socketPath)"])
            let ending = await withTaskCancellationHandler {
                await session(connection, feed: feed)
            } onCancel: {
                connection.shutdown()
            }
            connection.shutdown()
            let hadSnapshot = state.withLockedValue { state -> Bool in
                defer {
                    state.connected = false
                    state.current = nil
                }
                return state.snapshotReceived
            }
            readiness.expect(Self.readinessComponent)
            if Task.isCancelled || state.withLockedValue({ $0.stopped }) { break }
            // A session that got through its snapshot worked: start the backoff over.
            if hadSnapshot { delay = .milliseconds(10) }
            noteFailure(ending, retry: delay)
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(15))
        }
        state.withLockedValue {
            $0.connected = false
            $0.current = nil
        }
    }

    /// Logs a failure once per change (not per retry) and keeps it for status pages.
    private func noteFailure(_ failure: String, retry: Duration) {
        let changed = state.withLockedValue { state -> Bool in
            defer { state.lastFailure = failure }
            return state.lastFailure != failure
        }
        if changed {
            logger.warning(
                "istio-cni's ZDS connection is down; the node is not ready until it is back (retrying with backoff up to 15s)",
                metadata: ["socket": "\(socketPath)", "error": "\(failure)", "nextTry": "\(retry)"])
        }
    }

    // MARK: One connection

    /// Runs one connection until it ends; returns why it ended.
    private func session(_ connection: ZDSConnection, feed: PodFeed) async -> String {
        state.withLockedValue { $0.snapshotReceived = false }
        do {
            try connection.send(ZDSMessage.hello())
        } catch {
            return "cannot send the hello: \(error)"
        }
        feed.beginSnapshot()
        var snapshotDone = false

        func ack(_ error: String = "") throws {
            try connection.send(ZDSMessage.ack(error))
        }

        /// Acks `error` and ends the connection (a protocol error).
        func violation(_ error: String) -> String {
            logger.error("ZDS protocol error; reconnecting", metadata: ["error": "\(error)"])
            try? ack(error)
            return error
        }

        do {
            for try await packet in connection.packets {
                let request: ZDSRequest
                switch ZDSMessage.decode(
                    packet.bytes, descriptors: packet.descriptors.count, truncated: packet.truncated,
                    descriptorsTruncated: packet.descriptorsTruncated)
                {
                case .success(let decoded): request = decoded
                case .failure(let error):
                    packet.closeDescriptors()
                    return violation(error.message)
                }
                switch request {
                case .add(let uid, let info):
                    try ack(await addPod(uid: uid, info: info, descriptor: packet.descriptors[0], feed: feed))
                case .keep(let uid):
                    if snapshotDone { return violation("pod keep received after snapshot") }
                    if !feed.keep(uid: uid) {
                        logger.notice(
                            "istio-cni keeps a pod this proxy has no namespace for; it is not served until istio-cni sends it again",
                            metadata: ["pod": "\(uid)"])
                    }
                    try ack()
                case .delete(let uid):
                    if pods.pods[uid]?.origin == origin {
                        logger.info("pod removed by istio-cni; closing its listeners", metadata: ["pod": "\(uid)"])
                    }
                    feed.remove(uid: uid)
                    try ack()
                case .snapshotSent:
                    if snapshotDone { return violation("pod snapshot received already") }
                    snapshotDone = true
                    let drained = feed.endSnapshot()
                    logger.info(
                        "istio-cni's snapshot is in",
                        metadata: ["pods": "\(feed.uids.count)", "drained": "\(drained.joined(separator: ","))"])
                    state.withLockedValue {
                        $0.snapshotReceived = true
                        $0.lastFailure = nil
                    }
                    readiness.markReady(Self.readinessComponent)
                    try ack()
                }
            }
            return "istio-cni closed the connection"
        } catch {
            return "the connection failed: \(error)"
        }
    }

    /// Takes over one pod: adopts its namespace, writes it into the registry and waits
    /// for its listeners. Returns the ack's error text, empty when the pod is served.
    private func addPod(uid: String, info: PodWorkloadInfo?, descriptor: Int32, feed: PodFeed) async -> String {
        guard !uid.isEmpty else {
            Glibc.close(descriptor)
            return "failure to start proxy : AddWorkload has an empty uid"
        }
        guard let info else {
            Glibc.close(descriptor)
            return "failure to start proxy : AddWorkload for pod \(uid) has no workload_info"
        }
        let namespace: NetworkNamespace
        do {
            namespace = try NetworkNamespace(adopting: descriptor, name: "pod \(uid) (\(info.namespace)/\(info.name), from istio-cni)", mark: mark)
        } catch {
            logger.error("cannot capture pod from istio-cni", metadata: ["pod": "\(uid)", "error": "\(error)"])
            return "failure to start proxy : \(error)"
        }
        feed.add(CapturedPods.Pod(uid: uid, namespace: namespace, mark: mark, workloadInfo: info))
        switch await pods.waitUntilServed(uid: uid, timeout: ackTimeout) {
        case .served, .removed:
            logger.info("pod added by istio-cni", metadata: ["pod": "\(uid)", "workload": "\(info)"])
            return ""
        case .failed(let reason):
            return "failure to start proxy : \(reason) (retrying)"
        case .timedOut:
            return "failure to start proxy : the pod's listeners did not start within \(ackTimeout) (retrying)"
        }
    }
}

// MARK: - The socket

/// One SOCK_SEQPACKET connection to istio-cni: packets are read on a thread of its own
/// (a blocking `recvmsg`, so no event loop or task thread ever waits on it) and handed
/// over as an async sequence; sends are one `sendmsg` each. The descriptor is closed
/// when the connection is released, never while a send could still use it.
///
/// Thread-safe.
final class ZDSConnection: Sendable {
    /// One packet and the descriptors that came with it.
    struct Packet: Sendable {
        var bytes: [UInt8]
        var descriptors: [Int32]
        var truncated: Bool
        var descriptorsTruncated: Bool

        /// Closes the descriptors (a packet that is refused must not leak them).
        func closeDescriptors() {
            for descriptor in descriptors { Glibc.close(descriptor) }
        }
    }

    private let descriptor: Int32
    private let isShutDown = NIOLockedValueBox(false)
    /// The packets, until the agent closes the connection or ``shutdown()``.
    let packets: AsyncThrowingStream<Packet, any Error>

    private init(descriptor: Int32) {
        self.descriptor = descriptor
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: Packet.self, throwing: (any Error).self)
        packets = stream
        let thread = Thread {
            var buffer = [UInt8](repeating: 0, count: ZDSMessage.maximumSize)
            var fds = [Int32](repeating: -1, count: 4)
            while true {
                var count: Int32 = 0
                var flags: Int32 = 0
                let received = buffer.withUnsafeMutableBytes { bytes in
                    fds.withUnsafeMutableBufferPointer { fdBuffer in
                        ambit_seqpacket_receive(
                            descriptor, bytes.baseAddress, bytes.count, fdBuffer.baseAddress, Int32(fdBuffer.count), &count,
                            &flags)
                    }
                }
                if received < 0 {
                    let code = errno
                    continuation.finish(throwing: SocketError(code: .connectFailed, message: "reading istio-cni's ZDS socket: \(String(cString: strerror(code)))"))
                    break
                }
                let descriptors = Array(fds.prefix(Int(count)))
                if received == 0 && descriptors.isEmpty {
                    continuation.finish()
                    break
                }
                continuation.yield(
                    Packet(
                        bytes: Array(buffer.prefix(received)), descriptors: descriptors, truncated: flags & 1 != 0,
                        descriptorsTruncated: flags & 2 != 0))
            }
        }
        thread.name = "ambit-zds"
        thread.start()
    }

    deinit {
        shutdown()
        Glibc.close(descriptor)
    }

    /// Connects to the socket at `path`.
    static func connect(path: String) throws -> ZDSConnection {
        let fd = ambit_seqpacket_connect(path)
        guard fd >= 0 else {
            throw SocketError(code: .connectionRefused, message: String(cString: strerror(errno)))
        }
        return ZDSConnection(descriptor: fd)
    }

    /// Sends one message.
    func send(_ bytes: [UInt8]) throws {
        guard !isShutDown.withLockedValue({ $0 }) else {
            throw SocketError(code: .connectFailed, message: "the ZDS connection is closed")
        }
        let sent = bytes.withUnsafeBytes { ambit_seqpacket_send(descriptor, $0.baseAddress, $0.count, nil, 0) }
        guard sent == bytes.count else {
            throw SocketError(code: .connectFailed, message: "writing istio-cni's ZDS socket: \(String(cString: strerror(errno)))")
        }
    }

    /// Ends the connection: the reader sees the end and closes the descriptor. Idempotent.
    func shutdown() {
        let first = isShutDown.withLockedValue { done -> Bool in
            defer { done = true }
            return !done
        }
        if first { _ = Glibc.shutdown(descriptor, Int32(SHUT_RDWR)) }
    }
}
