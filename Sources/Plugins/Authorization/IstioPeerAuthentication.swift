public import Kernel

/// An mTLS mode of a `PeerAuthentication` (`spec.mtls.mode`, `portLevelMtls[port].mode`).
public enum MutualTLSMode: String, Sendable, Hashable, CaseIterable, Decodable {
    /// Inherit from the parent (namespace, then mesh); the default.
    case unset = "UNSET"
    /// Plaintext allowed. A node proxy cannot turn HBONE's mTLS off, so this acts as
    /// PERMISSIVE, as in ztunnel.
    case disable = "DISABLE"
    /// mTLS and plaintext both accepted.
    case permissive = "PERMISSIVE"
    /// Only connections with an mTLS peer identity are accepted.
    case strict = "STRICT"

    public init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
}

/// An Istio `PeerAuthentication` (`security.istio.io/v1` or `v1beta1`) as read from a
/// policy file: mesh-wide in the root namespace without a selector, namespace-wide
/// without a selector elsewhere, or for the workloads its selector picks, with port-level
/// modes.
public struct PeerAuthentication: Sendable, Hashable {
    /// `metadata.name`.
    public var name: String
    /// `metadata.namespace`.
    public var namespace: String
    /// `spec.selector.matchLabels`; nil without a selector (an empty map is kept, and
    /// counts as no selector, as in Istio).
    public var selector: [String: String]?
    /// `spec.mtls.mode`, ``MutualTLSMode/unset`` when absent.
    public var mode: MutualTLSMode
    /// `spec.portLevelMtls`: workload port → mode. Only with a non-empty selector.
    public var portLevel: [UInt16: MutualTLSMode]
    /// `metadata.creationTimestamp` as written (RFC 3339), nil when absent: when two
    /// policies compete, the older wins, and one without a timestamp counts as oldest.
    public var creationTimestamp: String?
    /// Where the document starts.
    public var location: ConfigLocation

    /// Creates a policy.
    public init(
        name: String, namespace: String, selector: [String: String]? = nil, mode: MutualTLSMode = .unset,
        portLevel: [UInt16: MutualTLSMode] = [:], creationTimestamp: String? = nil,
        location: ConfigLocation = ConfigLocation(file: "", line: nil, path: "")
    ) {
        self.name = name
        self.namespace = namespace
        self.selector = selector
        self.mode = mode
        self.portLevel = portLevel
        self.creationTimestamp = creationTimestamp
        self.location = location
    }

    /// `namespace/name`.
    public var key: String { "\(namespace)/\(name)" }

    /// No selector, or one with no labels: a namespace-wide (or, in the root namespace,
    /// mesh-wide) policy.
    var isNamespaceWide: Bool { selector?.isEmpty ?? true }
}

/// One `PeerAuthentication` document, decoded strictly (unknown fields are errors naming
/// their path and line), with Istio's validation: port-level modes need a selector with
/// labels, `portLevelMtls` if written has an entry, ports are 1…65535.
struct PeerAuthenticationDocument: Decodable {
    var policy: PeerAuthentication

    enum CodingKeys: String, CodingKey, CaseIterable { case apiVersion, kind, metadata, spec, status }

    init(from decoder: any Decoder) throws {
        let location = ConfigDecoder.location(of: decoder) ?? ConfigLocation(file: "", line: nil, path: "")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let apiVersion = try c.decode(String.self, forKey: .apiVersion)
        guard IstioPolicyDocument.apiVersions.contains(apiVersion) else {
            throw DecodingError.dataCorruptedError(
                forKey: .apiVersion, in: c,
                debugDescription: "expected \(IstioPolicyDocument.apiVersions.joined(separator: " or ")), got \"\(apiVersion)\"")
        }
        _ = try c.decode(String.self, forKey: .kind)
        let metadata = try c.decode(IstioPolicyDocument.Metadata.self, forKey: .metadata)
        let spec = try c.decodeIfPresent(Spec.self, forKey: .spec) ?? Spec()
        _ = try c.decodeIfPresent(ConfigNode.self, forKey: .status)
        policy = PeerAuthentication(
            name: metadata.name, namespace: metadata.namespace, selector: spec.selector, mode: spec.mode,
            portLevel: spec.portLevel, creationTimestamp: metadata.creationTimestamp, location: location)
    }

    struct Spec: Decodable {
        var selector: [String: String]?
        var mode: MutualTLSMode = .unset
        var portLevel: [UInt16: MutualTLSMode] = [:]

        enum CodingKeys: String, CodingKey, CaseIterable { case selector, mtls, portLevelMtls }

        init() {}

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            selector = try c.decodeIfPresent(IstioPolicyDocument.Selector.self, forKey: .selector).map(\.matchLabels)
            mode = try c.decodeIfPresent(MTLS.self, forKey: .mtls)?.mode ?? .unset
            if let ports = try c.decodeIfPresent([String: MTLS].self, forKey: .portLevelMtls) {
                if ports.isEmpty {
                    throw DecodingError.dataCorruptedError(
                        forKey: .portLevelMtls, in: c, debugDescription: "port level mTLS, if defined, must have at least one element")
                }
                if selector?.isEmpty ?? true {
                    throw DecodingError.dataCorruptedError(
                        forKey: .portLevelMtls, in: c,
                        debugDescription: "mesh/namespace peer authentication cannot have port level mTLS (add a selector with labels)")
                }
                for (text, mtls) in ports {
                    guard let port = Int(text), (1...65535).contains(port) else {
                        throw DecodingError.dataCorruptedError(
                            forKey: .portLevelMtls, in: c, debugDescription: "port must be in range 1..65535, got \"\(text)\"")
                    }
                    portLevel[UInt16(port)] = mtls.mode
                }
            }
        }
    }

    struct MTLS: Decodable {
        var mode: MutualTLSMode
        enum CodingKeys: String, CodingKey, CaseIterable { case mode }
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            mode = try c.decodeIfPresent(MutualTLSMode.self, forKey: .mode) ?? .unset
        }
    }
}

/// PeerAuthentication enforced as istiod enforces it for ztunnel: turned into L4 DENY
/// policies and attached to the workloads whose effective mode asks for them.
///
/// - The effective mode of a workload comes from the oldest mesh-wide policy (root
///   namespace, no selector), overridden by the oldest namespace-wide one unless UNSET,
///   overridden by the oldest policy in the workload's namespace whose selector matches
///   its labels (a selector policy in the root namespace is ignored).
/// - Effective STRICT attaches `<root>/istio_converted_static_strict`: DENY any connection
///   without an mTLS identity (`notPrincipals: ["*"]`).
/// - A workload policy with port-level modes that differ from the effective mode attaches
///   `<ns>/converted_peer_authentication_<name>` instead (a STRICT top level with
///   PERMISSIVE/DISABLE ports: deny without identity except on those ports; a PERMISSIVE
///   top level with STRICT ports: deny without identity on those ports), merged with the
///   parent's strictness as istiod merges it, including its quirks (under a STRICT
///   parent, a workload with UNSET mode and a DISABLE port stays STRICT on that port).
struct PeerAuthenticationPolicies: Sendable {
    /// What one workload gets, with the reasons, for explanations.
    struct Attached: Sendable {
        var policies: [AuthorizationPolicy]
        var origin: String
    }

    static let staticStrictName = "istio_converted_static_strict"
    static let convertedPrefix = "converted_peer_authentication_"

    let rootNamespace: String
    let staticStrict: AuthorizationPolicy
    /// The oldest mesh-wide policy.
    let mesh: PeerAuthentication?
    /// The oldest namespace-wide policy per namespace (selector-less, as istiod indexes).
    let namespaceWide: [String: PeerAuthentication]
    /// Per namespace, the policies that may select workloads there, in age order.
    let candidates: [String: [PeerAuthentication]]
    /// The converted form of each workload policy with port-level modes, by key.
    let converted: [String: AuthorizationPolicy]

    /// No PeerAuthentication at all (the mesh-wide one is among the candidates too).
    var isEmpty: Bool { candidates.isEmpty }

    init(_ policies: [PeerAuthentication], rootNamespace: String) {
        self.rootNamespace = rootNamespace
        staticStrict = AuthorizationPolicy(
            name: Self.staticStrictName, namespace: rootNamespace, scope: .workloadSelector([:]), action: .deny,
            rules: [[[Self.withoutIdentity()]]])
        // Stable: equal timestamps keep file order, so the first written wins.
        let byAge = policies.enumerated().sorted { lhs, rhs in
            let (l, r) = (lhs.element.creationTimestamp ?? "", rhs.element.creationTimestamp ?? "")
            return l != r ? l < r : lhs.offset < rhs.offset
        }.map(\.element)
        mesh = byAge.first { $0.namespace == rootNamespace && $0.isNamespaceWide }
        var namespaceWide: [String: PeerAuthentication] = [:]
        var candidates: [String: [PeerAuthentication]] = [:]
        for policy in byAge {
            if policy.selector == nil && namespaceWide[policy.namespace] == nil { namespaceWide[policy.namespace] = policy }
            candidates[policy.namespace, default: []].append(policy)
        }
        self.namespaceWide = namespaceWide
        self.candidates = candidates
        var converted: [String: AuthorizationPolicy] = [:]
        let root = namespaceWide[rootNamespace]
        for policy in byAge where policy.namespace != rootNamespace && !(policy.selector?.isEmpty ?? true) {
            if let translated = Self.convert(policy, namespacePolicy: namespaceWide[policy.namespace], rootPolicy: root) {
                converted[policy.key] = translated
            }
        }
        self.converted = converted
    }

    /// `notPrincipals: ["*"]`: holds for a connection without an mTLS identity.
    static func withoutIdentity(ports: [UInt16] = []) -> PolicyMatch {
        var match = PolicyMatch()
        match.notPrincipals = [.presence]
        match.destinationPorts = ports
        return match
    }

    /// The derived policies for a workload in `namespace` with `labels`.
    func attached(namespace: String, labels: [String: String]) -> Attached? {
        var meshPolicy: PeerAuthentication?
        var namespacePolicy: PeerAuthentication?
        var workloadPolicy: PeerAuthentication?
        // The oldest of each level, among the policies that apply (candidates are in age order).
        for policy in candidates[namespace] ?? [] {
            if let selector = policy.selector, !selector.isEmpty {
                guard namespace != rootNamespace, selector.allSatisfy({ labels[$0.key] == $0.value }) else { continue }
                if workloadPolicy == nil { workloadPolicy = policy }
            } else if namespace == rootNamespace {
                if meshPolicy == nil { meshPolicy = policy }
            } else if namespacePolicy == nil {
                namespacePolicy = policy
            }
        }
        if namespace != rootNamespace { meshPolicy = mesh }

        var strict = meshPolicy?.mode == .strict
        var origin = meshPolicy.map { "mesh-wide \($0.key) \($0.mode.rawValue)" } ?? "no mesh-wide policy"
        if let namespacePolicy, namespacePolicy.mode != .unset {
            strict = namespacePolicy.mode == .strict
            origin += ", namespace \(namespacePolicy.key) \(namespacePolicy.mode.rawValue)"
        }
        var portLevelKey: String?
        if let workloadPolicy {
            origin += ", workload \(workloadPolicy.key) \(workloadPolicy.mode.rawValue)"
            if workloadPolicy.mode == .strict { strict = true }
            if workloadPolicy.mode == .permissive || workloadPolicy.mode == .disable { strict = false }
            let ports = workloadPolicy.portLevel.values
            if !ports.isEmpty {
                origin += " with port-level modes"
                switch workloadPolicy.mode {
                case .strict:
                    if ports.contains(where: { $0 == .permissive || $0 == .disable }) {
                        portLevelKey = workloadPolicy.key
                        strict = false
                    }
                case .permissive, .disable:
                    if ports.contains(.strict) { portLevelKey = workloadPolicy.key }
                case .unset:
                    if strict {
                        // istiod looks for PERMISSIVE only here: a DISABLE port stays STRICT.
                        if ports.contains(.permissive) {
                            portLevelKey = workloadPolicy.key
                            strict = false
                        }
                    } else if ports.contains(.strict) {
                        portLevelKey = workloadPolicy.key
                    }
                }
            }
        }
        var policies: [AuthorizationPolicy] = []
        if strict { policies.append(staticStrict) }
        if let portLevelKey, let policy = converted[portLevelKey] { policies.append(policy) }
        if policies.isEmpty && meshPolicy == nil && namespacePolicy == nil && workloadPolicy == nil { return nil }
        return Attached(policies: policies, origin: "PeerAuthentication: " + origin + (strict ? " (effective STRICT)" : ""))
    }

    /// istiod's conversion of a workload policy with port-level modes into one DENY
    /// policy; nil when the static STRICT policy (or nothing) already says it all.
    static func convert(
        _ policy: PeerAuthentication, namespacePolicy: PeerAuthentication?, rootPolicy: PeerAuthentication?
    ) -> AuthorizationPolicy? {
        guard !policy.portLevel.isEmpty else { return nil }
        let mode = policy.mode
        var clauses: [[PolicyMatch]] = []
        var rules: [[[PolicyMatch]]] = []
        if mode == .strict { clauses.append([withoutIdentity()]) }
        // istiod's condition, with its precedence: the root's STRICT covers a STRICT port
        // when the namespace policy is absent or UNSET, whatever the workload's own mode.
        let parentStrict =
            mode == .strict
            || (mode == .unset && namespacePolicy?.mode == .strict)
            || ((namespacePolicy == nil || namespacePolicy?.mode == .unset) && rootPolicy?.mode == .strict)
        var foundNonStrict = false
        for port in policy.portLevel.keys.sorted() {
            switch policy.portLevel[port]! {
            case .strict:
                if parentStrict { continue }
                rules.append([[withoutIdentity(ports: [port])]])
            case .permissive, .disable:
                if mode == .permissive || mode == .disable { continue }
                if mode == .unset {
                    let effectiveStrict: Bool
                    if let namespacePolicy {
                        effectiveStrict = namespacePolicy.mode == .strict
                    } else {
                        effectiveStrict = rootPolicy?.mode == .strict
                    }
                    if !effectiveStrict { continue }
                }
                foundNonStrict = true
                var exempt = PolicyMatch()
                exempt.notDestinationPorts = [port]
                clauses.append([exempt])
            case .unset:
                continue
            }
        }
        if mode == .strict && !foundNonStrict { return nil }
        if clauses.isEmpty && rules.isEmpty { return nil }
        let mergeStrict =
            (rootPolicy?.mode == .strict
                && (namespacePolicy == nil || namespacePolicy?.mode == .unset || namespacePolicy?.mode == .strict))
            || namespacePolicy?.mode == .strict
        if mergeStrict && foundNonStrict { clauses.append([withoutIdentity()]) }
        if !clauses.isEmpty { rules.append(clauses) }
        return AuthorizationPolicy(
            name: convertedPrefix + policy.name, namespace: policy.namespace,
            scope: .workloadSelector(policy.selector ?? [:]), action: .deny, rules: rules)
    }
}
