import CAmbitSystem
import Foundation
public import IstioXDSAPI
import NIOConcurrencyHelpers
import SwiftProtobuf

#if canImport(Glibc)
import Glibc
#endif

/// istio-cni's side of ZDS, for tests: listens on a SOCK_SEQPACKET socket, accepts the
/// proxy, and exchanges one message at a time (the agent waits for each ack), as the node
/// agent does. A stand-in: the real one needs Kubernetes. Blocking calls run on threads
/// of their own, never on the test's task threads.
public final class ZDSAgentStandIn: Sendable {
    /// The socket it listens on (the proxy's `inPod.zdsSocket`).
    public let path: String
    private let listener: Int32
    private let connection = NIOLockedValueBox<Int32>(-1)

    /// Listens on `<directory>/ztunnel.sock`.
    public init(directory: String) throws {
        path = directory + "/ztunnel.sock"
        listener = ambit_seqpacket_listen(path, 4)
        guard listener >= 0 else { throw ZDSAgentError("cannot listen on \(path): \(String(cString: strerror(errno)))") }
    }

    deinit {
        let fd = connection.withLockedValue { $0 }
        if fd >= 0 { close(fd) }
        close(listener)
        unlink(path)
    }

    /// What went wrong on the agent's side.
    public struct ZDSAgentError: Error, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    /// Runs `body` on a thread of its own.
    private static func blocking<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            let thread = Thread { continuation.resume(with: Result { try body() }) }
            thread.start()
        }
    }

    /// Accepts the next proxy connection and reads its hello; returns the version.
    public func accept(timeout: Int = 10) async throws -> Istio_Workload_Zds_Version {
        let listener = self.listener
        let fd = try await Self.blocking { () throws -> Int32 in
            var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else { throw ZDSAgentError("no proxy connected within \(timeout)s") }
            let fd = Glibc.accept(listener, nil, nil)
            guard fd >= 0 else { throw ZDSAgentError("accept: \(String(cString: strerror(errno)))") }
            var limit = timeval(tv_sec: timeout, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
            return fd
        }
        let old = connection.withLockedValue { current -> Int32 in
            defer { current = fd }
            return current
        }
        if old >= 0 { close(old) }
        let hello = try Istio_Workload_Zds_ZdsHello(serializedBytes: try await receive())
        return hello.version
    }

    /// Closes the connection to the proxy (the agent restarts).
    public func disconnect() {
        let fd = connection.withLockedValue { current -> Int32 in
            defer { current = -1 }
            return current
        }
        if fd >= 0 { close(fd) }
    }

    /// One packet from the proxy; empty at end of stream.
    public func receive() async throws -> [UInt8] {
        let fd = connection.withLockedValue { $0 }
        return try await Self.blocking {
            var buffer = [UInt8](repeating: 0, count: 2048)
            var fds = [Int32](repeating: -1, count: 2)
            var count: Int32 = 0
            var flags: Int32 = 0
            let received = buffer.withUnsafeMutableBytes { bytes in
                fds.withUnsafeMutableBufferPointer {
                    ambit_seqpacket_receive(fd, bytes.baseAddress, bytes.count, $0.baseAddress, 2, &count, &flags)
                }
            }
            guard received >= 0 else { throw ZDSAgentError("receive: \(String(cString: strerror(errno)))") }
            return Array(buffer.prefix(received))
        }
    }

    /// Sends `bytes` with `fds` attached and returns the ack's error text; nil when the
    /// proxy closed the connection instead of acking.
    public func exchange(_ bytes: [UInt8], fds: [Int32] = []) async throws -> String? {
        let fd = connection.withLockedValue { $0 }
        let sent = bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer { ambit_seqpacket_send(fd, raw.baseAddress, raw.count, $0.baseAddress, Int32(fds.count)) }
        }
        guard sent == bytes.count else { throw ZDSAgentError("send: \(String(cString: strerror(errno)))") }
        let reply = try await receive()
        if reply.isEmpty { return nil }
        let response = try Istio_Workload_Zds_WorkloadResponse(serializedBytes: reply)
        guard case .ack(let ack) = response.payload else { throw ZDSAgentError("not an ack: \(response)") }
        return ack.error
    }

    /// `AddWorkload` for a pod, its namespace (opened from `netns`) attached.
    public func add(uid: String, name: String, namespace: String = "default", serviceAccount: String, netns: String?) async throws -> String? {
        var request = Istio_Workload_Zds_WorkloadRequest()
        var add = Istio_Workload_Zds_AddWorkload()
        add.uid = uid
        add.workloadInfo.name = name
        add.workloadInfo.namespace = namespace
        add.workloadInfo.serviceAccount = serviceAccount
        request.add = add
        guard let netns else { return try await exchange(try request.serializedBytes()) }
        let fd = open(netns, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw ZDSAgentError("cannot open \(netns)") }
        defer { close(fd) }
        return try await exchange(try request.serializedBytes(), fds: [fd])
    }

    /// `KeepWorkload`; returns the ack's error.
    public func keep(_ uid: String) async throws -> String? {
        var request = Istio_Workload_Zds_WorkloadRequest()
        request.keep.uid = uid
        return try await exchange(try request.serializedBytes())
    }

    /// `DelWorkload`; returns the ack's error.
    public func delete(_ uid: String) async throws -> String? {
        var request = Istio_Workload_Zds_WorkloadRequest()
        request.del.uid = uid
        return try await exchange(try request.serializedBytes())
    }

    /// `SnapshotSent` (with `fds` attached, to break the protocol); returns the ack's error.
    public func snapshotSent(fds: [Int32] = []) async throws -> String? {
        var request = Istio_Workload_Zds_WorkloadRequest()
        request.snapshotSent = Istio_Workload_Zds_SnapshotSent()
        return try await exchange(try request.serializedBytes(), fds: fds)
    }
}

