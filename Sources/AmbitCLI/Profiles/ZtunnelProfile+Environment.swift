import AmbitRuntime
import Foundation
import Kernel
import Logging

extension ZtunnelProfile {
    /// Reads ztunnel's variables, collecting one error per bad variable (path: the
    /// variable's name, file: `environment`), so every mistake is reported at once.
    struct Reader {
        let environment: [String: String]
        let workingDirectory: String
        private(set) var errors: [ConfigError] = []

        init(environment: [String: String], workingDirectory: String) {
            self.environment = environment
            self.workingDirectory = workingDirectory
        }

        mutating func fail(_ name: String, _ message: String) {
            errors.append(ConfigError(file: "environment", line: nil, path: name, message: message))
        }

        /// The variable's value; empty counts as unset (Kubernetes sets empty values).
        func value(_ name: String) -> String? {
            guard let value = environment[name], !value.isEmpty else { return nil }
            return value
        }

        /// A comment naming where a value came from: the variable, or its default.
        func source(_ name: String) -> String {
            value(name) == nil ? "default (\(name) unset)" : name
        }

        /// `host:port` or `https://host:port` (a trailing `/` allowed), as `host:port`;
        /// IPv6 in brackets.
        mutating func address(_ name: String) -> String? {
            guard let raw = value(name) else { return nil }
            let form = "expected host:port or https://host:port"
            var text = Substring(raw)
            if let scheme = text.range(of: "://") {
                guard text[..<scheme.lowerBound].lowercased() == "https" else {
                    fail(name, "\(form), got \"\(raw)\": only https:// is supported (xDS and the CA are TLS)")
                    return nil
                }
                text = text[scheme.upperBound...]
            }
            if text.hasSuffix("/") { text = text.dropLast() }
            guard let colon = text.lastIndex(of: ":") else {
                fail(name, "\(form), got \"\(raw)\": no port")
                return nil
            }
            let portText = text[text.index(after: colon)...]
            guard let port = Int(portText), (1...65535).contains(port), portText.allSatisfy(\.isNumber) else {
                fail(name, "\(form), got \"\(raw)\": the port must be 1…65535")
                return nil
            }
            var host = text[..<colon]
            if host.hasPrefix("[") && host.hasSuffix("]") {
                host = host.dropFirst().dropLast()
                guard let ip = IPAddress(host), !ip.isIPv4 else {
                    fail(name, "\(form), got \"\(raw)\": \"[\(host)]\" is not an IPv6 address")
                    return nil
                }
                return "[\(host)]:\(port)"
            }
            let hostCharacters = host.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_") }
            guard !host.isEmpty, hostCharacters else {
                fail(name, "\(form), got \"\(raw)\": \"\(host)\" is not a host name or IPv4 address (IPv6 goes in brackets)")
                return nil
            }
            return "\(host):\(port)"
        }

        /// A file path, absolute (relative ones against the working directory).
        func path(_ name: String) -> String? {
            value(name).map(absolute)
        }

        func absolute(_ path: String) -> String {
            if path.hasPrefix("/") { return path }
            let base = workingDirectory.hasSuffix("/") ? String(workingDirectory.dropLast()) : workingDirectory
            var relative = Substring(path)
            while relative.hasPrefix("./") { relative = relative.dropFirst(2) }
            return relative.isEmpty ? base : "\(base)/\(relative)"
        }

        /// `XDS_ROOT_CA` / `CA_ROOT_CA`: a file. ztunnel's other forms (`SYSTEM`, inline
        /// PEM) are errors saying so.
        mutating func rootCertificate(_ name: String) -> String {
            guard let raw = value(name) else { return ZtunnelProfile.defaultRootCertificate }
            if raw == "SYSTEM" {
                fail(name, "SYSTEM (the operating system's roots) is not supported: give the root certificate's file")
            } else if raw.contains("-----BEGIN") {
                fail(name, "an inline PEM certificate is not supported: write it to a file and give its path")
            }
            return absolute(raw)
        }

        /// `true` or `false`, in any letter case (ztunnel takes exactly these).
        mutating func bool(_ name: String) -> Bool? {
            guard let raw = value(name) else { return nil }
            switch raw.lowercased() {
            case "true": return true
            case "false": return false
            default:
                fail(name, "expected true or false, got \"\(raw)\"")
                return nil
            }
        }

        /// A duration as the manifest writes one (500ms, 5s, 2m, 1h, seconds).
        mutating func duration(_ name: String) -> ConfigDuration? {
            guard let raw = value(name) else { return nil }
            guard let duration = ConfigDuration(parsing: raw), duration.duration > .zero else {
                fail(name, "expected a duration such as 500ms, 5s, 2m or 24h, got \"\(raw)\"")
                return nil
            }
            return duration
        }

        /// `node.drainDeadline` and where it came from: CONNECTION_TERMINATION_DEADLINE,
        /// else TERMINATION_GRACE_PERIOD_SECONDS less a margin (ztunnel's rule, so the
        /// drain ends before Kubernetes' SIGKILL), else 5s.
        mutating func drainDeadline() -> (ConfigDuration, String) {
            if let deadline = duration("CONNECTION_TERMINATION_DEADLINE") {
                return (deadline, "CONNECTION_TERMINATION_DEADLINE")
            }
            if let raw = value("TERMINATION_GRACE_PERIOD_SECONDS") {
                guard let seconds = Int(raw), seconds >= 0 else {
                    fail("TERMINATION_GRACE_PERIOD_SECONDS", "expected a whole number of seconds, got \"\(raw)\"")
                    return (ConfigDuration(.seconds(5)), "")
                }
                let drain = max(seconds > 10 ? seconds - 5 : seconds - 1, 1)
                return (ConfigDuration(.seconds(drain)), "TERMINATION_GRACE_PERIOD_SECONDS")
            }
            return (ConfigDuration(.seconds(5)), "default")
        }

        /// `RUST_LOG`: comma-separated directives, `level` (the last one wins) or
        /// `target=level`. Ambit has one level for the process, so target directives are
        /// checked and returned as ignored. Levels: trace, debug, info, warn, error, off
        /// (Ambit's critical), in any letter case; Ambit's own names are accepted too.
        mutating func logLevel() -> (Logger.Level, ignored: [String]) {
            guard let raw = value("RUST_LOG") else { return (.info, []) }
            var level = Logger.Level.info
            var ignored: [String] = []
            let names = "trace, debug, info, warn, error or off"
            for piece in raw.split(separator: ",") {
                let directive = piece.trimmingWhitespace
                if directive.isEmpty { continue }
                if let equals = directive.firstIndex(of: "=") {
                    let target = directive[..<equals]
                    let value = directive[directive.index(after: equals)...]
                    guard !target.isEmpty, Self.level(value) != nil else {
                        fail("RUST_LOG", "\"\(directive)\": expected target=level with a level of \(names)")
                        continue
                    }
                    ignored.append(String(directive))
                } else if let parsed = Self.level(directive) {
                    level = parsed
                } else {
                    fail("RUST_LOG", "\"\(directive)\": expected a level (\(names)) or target=level")
                }
            }
            return (level, ignored)
        }

        static func level(_ text: Substring) -> Logger.Level? {
            text.lowercased() == "off" ? .critical : LogLevelControl.parse(String(text))
        }

        /// `LOG_FORMAT`: ztunnel's `plain` (Ambit's `text`) or `json`.
        mutating func logFormat() -> LogFormat {
            guard let raw = value("LOG_FORMAT") else { return .text }
            switch raw.lowercased() {
            case "plain", "text": return .text
            case "json": return .json
            default:
                fail("LOG_FORMAT", "expected plain or json, got \"\(raw)\"")
                return .text
            }
        }

        /// `INSTANCE_IP`: one or more IP addresses, comma-separated.
        mutating func instanceIPs() -> [String] {
            guard let raw = value("INSTANCE_IP") else { return [] }
            var addresses: [String] = []
            for piece in raw.split(separator: ",", omittingEmptySubsequences: false) {
                let text = piece.trimmingWhitespace
                guard let ip = IPAddress(text) else {
                    fail("INSTANCE_IP", "expected IP addresses (comma-separated), got \"\(raw)\": \"\(text)\" is not one")
                    return []
                }
                addresses.append(ip.description)
            }
            return addresses
        }

        /// `TRUST_DOMAIN`, default cluster.local.
        mutating func trustDomain() -> String {
            guard let raw = value("TRUST_DOMAIN") else { return "cluster.local" }
            if raw.contains("/") || raw.contains(" ") {
                fail("TRUST_DOMAIN", "expected a trust domain such as cluster.local, got \"\(raw)\"")
            }
            return raw
        }

        /// `PACKET_MARK`: a non-zero 32-bit mark, decimal or 0x hex.
        mutating func mark() -> UInt32? {
            guard let raw = value("PACKET_MARK") else { return nil }
            let lowered = raw.lowercased()
            let parsed = lowered.hasPrefix("0x") ? UInt32(lowered.dropFirst(2), radix: 16) : UInt32(lowered)
            guard let mark = parsed, mark != 0 else {
                fail("PACKET_MARK", "expected a non-zero 32-bit mark (decimal or 0x hex), got \"\(raw)\"")
                return nil
            }
            return mark
        }

        /// Every `ISTIO_META_<K>` as `<K>` (empty values included: metadata may be empty).
        func istioMetadata() -> [String: String] {
            var metadata: [String: String] = [:]
            for (name, value) in environment where name.hasPrefix("ISTIO_META_") && name.count > "ISTIO_META_".count {
                metadata[String(name.dropFirst("ISTIO_META_".count))] = value
            }
            return metadata
        }
    }
}

extension StringProtocol {
    /// Without leading and trailing whitespace.
    fileprivate var trimmingWhitespace: Substring {
        var text = Substring(self)
        while text.first?.isWhitespace == true { text.removeFirst() }
        while text.last?.isWhitespace == true { text.removeLast() }
        return text
    }
}
