import Foundation
import Subprocess
import SystemPackage

/// Runs the programs that install and remove the in-pod redirect rules (`nsenter`,
/// `iptables-restore`, `ip6tables-save`, `nft`, `ip`): no shell, the arguments as given,
/// the program found on `PATH`, its standard input fed from a string, its standard output
/// and error collected. A program that cannot start or exits non-zero is a
/// ``RuleToolError`` naming the command, how it ended and what it wrote to standard error.
///
/// Standard input comes from an unlinked temporary file, not a pipe Subprocess writes:
/// swift-subprocess 1.0.2 traps (`FileDescriptor … was not closed`) when the program exits
/// before reading everything it was fed, which a failing `iptables-restore` may do, and
/// a rule failure must be an error, never a crashed node.
enum RuleTool {
    /// The most standard output collected: a pod's `iptables-save` is a few kilobytes, so
    /// more means something is wrong rather than a reason to read on.
    static let outputLimit = 16 * 1024 * 1024
    /// The most standard error collected.
    static let errorLimit = 256 * 1024

    /// Runs `arguments[0]` with the rest as its arguments, `input` on its standard input
    /// (closed at once when nil). Returns its standard output.
    ///
    /// - Throws: ``RuleToolError``: ``RuleToolError/Code/cannotRun`` when it could not be
    ///   started or its output not read, ``RuleToolError/Code/failed`` when it exited
    ///   non-zero or was killed.
    static func run(_ arguments: [String], input: String? = nil) async throws -> String {
        guard let program = arguments.first, !program.isEmpty else {
            throw RuleToolError(.cannotRun, command: arguments, "no program named")
        }
        let status: TerminationStatus
        let output: String
        let errors: String
        do {
            let arguments = Arguments(Array(arguments.dropFirst()))
            if let input, !input.isEmpty {
                let file = try inputFile(input)
                let result = try await Subprocess.run(
                    .name(program), arguments: arguments, input: .fileDescriptor(file, closeAfterSpawningProcess: true),
                    output: .string(limit: outputLimit), error: .string(limit: errorLimit))
                (status, output, errors) = (result.terminationStatus, result.standardOutput, result.standardError)
            } else {
                let result = try await Subprocess.run(
                    .name(program), arguments: arguments, input: .none,
                    output: .string(limit: outputLimit), error: .string(limit: errorLimit))
                (status, output, errors) = (result.terminationStatus, result.standardOutput, result.standardError)
            }
        } catch {
            throw RuleToolError(.cannotRun, command: arguments, "\(error)")
        }
        guard status.isSuccess else {
            throw RuleToolError(command: arguments, status: status, standardError: errors.trimmingWhitespace)
        }
        return output
    }

    /// `text` in a temporary file already unlinked, open for reading from its start.
    private static func inputFile(_ text: String) throws -> FileDescriptor {
        var path = Array("\(NSTemporaryDirectory())/ambit-rules-XXXXXX".utf8CString)
        let raw = path.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard raw >= 0 else { throw Errno(rawValue: errno) }
        unlink(path.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        let file = FileDescriptor(rawValue: raw)
        do {
            _ = try file.writeAll(text.utf8)
            _ = try file.seek(offset: 0, from: .start)
        } catch {
            try? file.close()
            throw error
        }
        return file
    }
}

/// A rule program that could not run or failed.
struct RuleToolError: Error, CustomStringConvertible, Sendable {
    /// What went wrong.
    struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }

        /// The program could not be started (not installed, not executable) or its output
        /// could not be read (more than ``RuleTool/outputLimit``).
        static let cannotRun = Code("cannot run")
        /// It ran and exited non-zero or was killed by a signal.
        static let failed = Code("failed")

        var description: String { name }
    }

    var code: Code
    /// The command line, program first.
    var command: [String]
    /// How it ended; nil when it never ran.
    var status: TerminationStatus?
    /// What it wrote to standard error (trimmed).
    var standardError: String
    /// Why it could not run, for ``Code/cannotRun``.
    var reason: String?

    init(_ code: Code, command: [String], _ reason: String) {
        self.code = code
        self.command = command
        self.status = nil
        self.standardError = ""
        self.reason = reason
    }

    init(command: [String], status: TerminationStatus, standardError: String) {
        self.code = .failed
        self.command = command
        self.status = status
        self.standardError = standardError
        self.reason = nil
    }

    var description: String {
        let line = command.joined(separator: " ")
        if code == .cannotRun { return "cannot run `\(line)`: \(reason ?? "unknown reason")" }
        let ending: String
        switch status {
        case .exited(let code)?: ending = "exited with status \(code)"
        case .signaled(let signal)?: ending = "was killed by signal \(signal)"
        case nil: ending = "failed"
        }
        return "`\(line)` \(ending)" + (standardError.isEmpty ? " (nothing on standard error)" : ": \(standardError)")
    }
}

extension String {
    fileprivate var trimmingWhitespace: String {
        var text = Substring(self)
        while let first = text.first, first.isWhitespace { text.removeFirst() }
        while let last = text.last, last.isWhitespace { text.removeLast() }
        return String(text)
    }
}
