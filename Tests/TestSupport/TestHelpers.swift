import Foundation
import AmbitRuntime
public import Kernel
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
public func eventually(
    timeout: Duration = .seconds(10), interval: Duration = .milliseconds(20),
    _ condition: () async throws -> Bool
) async rethrows -> Bool {
    let clock = ContinuousClock()
    let end = clock.now.advanced(by: timeout)
    while clock.now < end {
        if try await condition() { return true }
        try? await Task.sleep(for: interval)
    }
    return try await condition()
}

/// A fresh temporary directory, removed by ``remove()``.
public struct TemporaryDirectory: Sendable {
    /// Its path.
    public let path: String

    /// Creates the directory.
    public init() throws {
        path = NSTemporaryDirectory() + "ambit-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// Writes `contents` to `name` inside the directory and returns the file's path.
    @discardableResult
    public func write(_ name: String, _ contents: String) throws -> String {
        let file = path + "/" + name
        try contents.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    /// Deletes the directory and its contents.
    public func remove() {
        try? FileManager.default.removeItem(atPath: path)
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read, close).
public func freePort() -> UInt16 {
    do {
        let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .bind(host: "127.0.0.1", port: 0).wait()
        defer { try? channel.close().wait() }
        return UInt16(channel.localAddress?.port ?? 0)
    } catch {
        fatalError("freePort: cannot bind 127.0.0.1:0: \(error)")
    }
}

/// An HTTP/1.1 request over a plain socket (off the concurrency threads); returns status
/// and body.
public func httpRequest(
    _ method: String, _ address: SocketAddr, _ path: String, timeoutSeconds: Int = 5
) async throws -> (status: Int, body: String) {
    let response = try await offload {
        let socket = try BlockingSocket(connectingTo: address, timeoutSeconds: timeoutSeconds)
        try socket.send("\(method) \(path) HTTP/1.1\r\nHost: \(address)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        return try socket.receiveToEnd()
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let headerEnd = text.range(of: "\r\n\r\n") else { throw TestFailure("no HTTP response: \(text)") }
    let statusLine = text[..<headerEnd.lowerBound].split(separator: "\r\n").first ?? ""
    let parts = statusLine.split(separator: " ")
    guard parts.count >= 2, let status = Int(parts[1]) else { throw TestFailure("bad status line \(statusLine)") }
    return (status, String(text[headerEnd.upperBound...]))
}

/// A test failure with a message.
public struct TestFailure: Error, CustomStringConvertible {
    /// What went wrong.
    public var description: String
    /// Creates a failure.
    public init(_ description: String) { self.description = description }
}
