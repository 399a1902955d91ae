/// A workload identity in SPIFFE form: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Parsing is strict: exactly these segments, none empty. Istio writes principals in
/// authorization policies without the `spiffe://` prefix; ``principal`` gives that form.
public struct SpiffeID: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    /// The trust domain, e.g. `cluster.local`.
    public var trustDomain: String
    /// The Kubernetes namespace.
    public var namespace: String
    /// The service account.
    public var serviceAccount: String

    /// Creates an identity from its parts.
    public init(trustDomain: String, namespace: String, serviceAccount: String) {
        self.trustDomain = trustDomain
        self.namespace = namespace
        self.serviceAccount = serviceAccount
    }

    /// Why a string is not a SPIFFE ID.
    public struct ParseError: Error, Sendable, Equatable, CustomStringConvertible {
        /// The text that failed to parse.
        public var input: String
        /// What is wrong with it.
        public var reason: String
        public var description: String { "invalid SPIFFE ID \"\(input)\": \(reason)" }
    }

    /// Parses `spiffe://td/ns/NS/sa/SA`, throwing a ``ParseError`` that says what is wrong.
    public init(parsing text: String) throws(ParseError) {
        let prefix = "spiffe://"
        guard text.hasPrefix(prefix) else {
            throw ParseError(input: text, reason: "must start with spiffe://")
        }
        let parts = text.dropFirst(prefix.count).split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 5 else {
            throw ParseError(input: text, reason: "expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")
        }
        guard parts[1] == "ns", parts[3] == "sa" else {
            throw ParseError(input: text, reason: "path must be /ns/<namespace>/sa/<service-account>")
        }
        guard !parts[0].isEmpty, !parts[2].isEmpty, !parts[4].isEmpty else {
            throw ParseError(input: text, reason: "trust domain, namespace and service account must not be empty")
        }
        self.init(trustDomain: String(parts[0]), namespace: String(parts[2]), serviceAccount: String(parts[4]))
    }

    /// The URI form, `spiffe://td/ns/NS/sa/SA`.
    public var description: String { "spiffe://\(principal)" }

    /// The form Istio authorization policies use: `td/ns/NS/sa/SA`.
    public var principal: String { "\(trustDomain)/ns/\(namespace)/sa/\(serviceAccount)" }

    public static func < (lhs: SpiffeID, rhs: SpiffeID) -> Bool { lhs.description < rhs.description }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        do {
            try self.init(parsing: text)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
