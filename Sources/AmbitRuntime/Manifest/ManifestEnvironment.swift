import Foundation
public import Kernel

/// References to the process environment in a manifest's values.
///
/// In any scalar value (not in keys, not in files the plugins read themselves):
/// - `${NAME}` is the value of the environment variable `NAME`; unset is an error naming
///   the file, line and path of the value;
/// - `${NAME:-fallback}` is its value, or `fallback` when it is unset or empty (the
///   fallback is literal text up to the first `}`);
/// - `$$` is a literal `$`; any other `$` (`$HOME`, a trailing `$`) is kept as written.
///
/// `NAME` is letters, digits and `_`, not starting with a digit. A substituted value is
/// text, never YAML structure: it cannot add keys or items, and a plain (unquoted) scalar
/// stays plain, so `threads: ${THREADS}` still decodes as a number and `"${PORT}"` as a
/// string.
public enum ManifestEnvironment {
    /// This process's environment: what `ambit run` and `ambit validate` resolve in.
    public static var process: [String: String] { ProcessInfo.processInfo.environment }

    /// `value` with every reference resolved in `environment`, or every error found (each
    /// naming `file`, the scalar's line and its path).
    public static func substitute(
        _ value: ConfigValue, environment: [String: String], file: String
    ) -> (value: ConfigValue, errors: [ConfigError]) {
        var errors: [ConfigError] = []
        let result = substitute(value, path: "", environment: environment, file: file, errors: &errors)
        return (result, errors)
    }

    /// One scalar's text with its references resolved, or the first problem in it as a
    /// message (without location).
    public static func expand(_ text: String, environment: [String: String]) -> Result<String, Problem> {
        guard text.contains("$") else { return .success(text) }
        var output = ""
        var rest = Substring(text)
        while let dollar = rest.firstIndex(of: "$") {
            output += rest[..<dollar]
            let afterDollar = rest.index(after: dollar)
            guard afterDollar < rest.endIndex else {
                output += "$"
                rest = rest[afterDollar...]
                break
            }
            switch rest[afterDollar] {
            case "$":
                output += "$"
                rest = rest[rest.index(after: afterDollar)...]
            case "{":
                let bodyStart = rest.index(after: afterDollar)
                guard let close = rest[bodyStart...].firstIndex(of: "}") else {
                    return .failure(Problem(
                        "\"${\" without a closing \"}\" (write $$ for a literal $)"))
                }
                let body = rest[bodyStart..<close]
                let name: Substring
                let fallback: Substring?
                if let separator = body.range(of: ":-") {
                    name = body[..<separator.lowerBound]
                    fallback = body[separator.upperBound...]
                } else {
                    name = body
                    fallback = nil
                }
                guard isVariableName(name) else {
                    return .failure(Problem(
                        "\"${\(body)}\": expected ${NAME} or ${NAME:-fallback}, NAME being letters, digits and _ "
                            + "not starting with a digit (write $$ for a literal $)"))
                }
                let variable = String(name)
                if let fallback {
                    let value = environment[variable] ?? ""
                    output += value.isEmpty ? String(fallback) : value
                } else if let value = environment[variable] {
                    output += value
                } else {
                    return .failure(Problem(
                        "environment variable \(variable) is not set (write ${\(variable):-fallback} for a default, "
                            + "$$ for a literal $)",
                        variable: variable))
                }
                rest = rest[rest.index(after: close)...]
            default:
                output += "$"
                rest = rest[afterDollar...]
            }
        }
        output += rest
        return .success(output)
    }

    /// `text` written so that ``expand(_:environment:)`` gives it back unchanged: every
    /// `$` doubled.
    public static func escape(_ text: String) -> String {
        guard text.contains("$") else { return text }
        var escaped = ""
        for character in text {
            escaped.append(character)
            if character == "$" { escaped.append("$") }
        }
        return escaped
    }

    /// What is wrong with a reference.
    public struct Problem: Error, Sendable, Hashable, CustomStringConvertible {
        /// The message.
        public var message: String
        /// The unset variable, when that is the problem.
        public var variable: String?

        /// Creates a problem.
        public init(_ message: String, variable: String? = nil) {
            self.message = message
            self.variable = variable
        }

        public var description: String { message }
    }

    private static func isVariableName(_ name: Substring) -> Bool {
        guard let first = name.first, !first.isNumber else { return false }
        return name.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "_" }
    }

    private static func substitute(
        _ value: ConfigValue, path: String, environment: [String: String], file: String,
        errors: inout [ConfigError]
    ) -> ConfigValue {
        var result = value
        switch value.content {
        case .scalar(let text, let plain):
            switch expand(text, environment: environment) {
            case .success(let expanded):
                result.content = .scalar(expanded, plain: plain)
            case .failure(let problem):
                errors.append(ConfigError(file: file, line: value.line, path: path, message: problem.message))
            }
        case .sequence(let items):
            result.content = .sequence(
                items.enumerated().map { index, item in
                    var label = "\(path)[\(index)]"
                    // Plugin entries are named as the loader names them: `plugins[1] (capture)`.
                    if path == "plugins", let id = item["id"]?.scalarText { label += " (\(id))" }
                    return substitute(item, path: label, environment: environment, file: file, errors: &errors)
                })
        case .mapping(let entries):
            result.content = .mapping(
                entries.map { entry in
                    let key = entry.key.scalarText ?? "?"
                    let label = path.isEmpty ? key : "\(path).\(key)"
                    return ConfigValue.Entry(
                        key: entry.key,
                        value: substitute(entry.value, path: label, environment: environment, file: file, errors: &errors))
                })
        }
        return result
    }
}
