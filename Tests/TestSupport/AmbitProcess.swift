public import Foundation

/// The built `ambit` binary, run as a child process, with its output captured.
public final class AmbitProcess: @unchecked Sendable {
    /// The process.
    public let process = Process()
    private let output = Pipe()
    private let errors = Pipe()
    private let lock = NSLock()
    private var stdoutData = Data()
    private var stderrData = Data()

    /// The path of the `ambit` executable next to the test bundle (or `$AMBIT_BIN`).
    public static var executablePath: String {
        if let path = ProcessInfo.processInfo.environment["AMBIT_BIN"] { return path }
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [bundle, bundle.deletingLastPathComponent()] {
            let path = candidate.appendingPathComponent("ambit").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        // `swift test` runs from the package root; fall back to the default debug path.
        return FileManager.default.currentDirectoryPath + "/.build/debug/ambit"
    }

    /// Starts `ambit <arguments>`, in `environment` when given (else this process's).
    public init(_ arguments: [String], currentDirectory: String? = nil, environment: [String: String]? = nil) throws {
        process.executableURL = URL(fileURLWithPath: Self.executablePath)
        process.arguments = arguments
        if let environment { process.environment = environment }
        if let currentDirectory { process.currentDirectoryURL = URL(fileURLWithPath: currentDirectory) }
        process.standardOutput = output
        process.standardError = errors
        output.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            self?.lock.withLock { self?.stdoutData.append(data) }
        }
        errors.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            self?.lock.withLock { self?.stderrData.append(data) }
        }
        try process.run()
    }

    /// Everything written to stdout so far.
    public var stdout: String { lock.withLock { String(decoding: stdoutData, as: UTF8.self) } }
    /// Everything written to stderr so far.
    public var stderr: String { lock.withLock { String(decoding: stderrData, as: UTF8.self) } }

    /// Sends a signal.
    public func signal(_ signal: Int32) {
        kill(process.processIdentifier, signal)
    }

    /// Waits for exit (up to `timeout`) and returns the exit status; kills it past the timeout.
    @discardableResult
    public func wait(timeout: Duration = .seconds(30)) async -> Int32? {
        let clock = ContinuousClock()
        let end = clock.now.advanced(by: timeout)
        while process.isRunning && clock.now < end {
            try? await Task.sleep(for: .milliseconds(20))
        }
        if process.isRunning {
            process.terminate()
            kill(process.processIdentifier, SIGKILL)
            return nil
        }
        // Let the readability handlers drain the pipes.
        try? await Task.sleep(for: .milliseconds(50))
        return process.terminationStatus
    }

    /// Runs `ambit <arguments>` to completion and returns status, stdout and stderr.
    public static func run(
        _ arguments: [String], currentDirectory: String? = nil, environment: [String: String]? = nil,
        timeout: Duration = .seconds(60)
    ) async throws -> (status: Int32?, stdout: String, stderr: String) {
        let child = try AmbitProcess(arguments, currentDirectory: currentDirectory, environment: environment)
        let status = await child.wait(timeout: timeout)
        return (status, child.stdout, child.stderr)
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}
