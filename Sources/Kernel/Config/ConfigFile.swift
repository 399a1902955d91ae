import Foundation

/// Reading configuration files with errors that name the file and the reason.
///
/// Written on Foundation's file API so that the plugin API links no C library; the
/// reasons read as the system's (`No such file or directory`, `Is a directory`,
/// `Permission denied`).
public enum ConfigFile {
    /// The largest file read (64 MiB): configuration, not data.
    public static let maximumSize = 64 * 1024 * 1024

    /// The file's text; a ``ConfigErrors`` naming the file and the reason (`No such file
    /// or directory`, `Permission denied`, `Is a directory`, not UTF-8) otherwise.
    public static func read(_ path: String) throws(ConfigErrors) -> String {
        func failure(_ reason: String) -> ConfigErrors {
            ConfigErrors([ConfigError(file: path, line: nil, path: "", message: "cannot read: \(reason)")])
        }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw failure("No such file or directory")
        }
        if isDirectory.boolValue { throw failure("Is a directory") }
        guard FileManager.default.isReadableFile(atPath: path), let handle = FileHandle(forReadingAtPath: path) else {
            throw failure("Permission denied")
        }
        defer { try? handle.close() }
        var bytes = Data()
        do {
            while let chunk = try handle.read(upToCount: 64 * 1024), !chunk.isEmpty {
                bytes.append(chunk)
                if bytes.count > maximumSize { throw failure("larger than 64 MiB") }
            }
        } catch let error as ConfigErrors {
            throw error
        } catch {
            throw failure("\(error.localizedDescription)")
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw failure("not valid UTF-8")
        }
        return text
    }

    /// The directory part of `path` (`.` for a bare file name).
    public static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        if slash == path.startIndex { return "/" }
        return String(path[..<slash])
    }
}
