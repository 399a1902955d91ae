import Kernel

/// One Istio `AuthorizationPolicy` document (`security.istio.io/v1` or `v1beta1`) as
/// written, decoded strictly: unknown fields are errors naming their path and line.
///
/// Only what a node proxy can enforce is turned into rules (see
/// ``IstioPolicyTranslator``); HTTP-only fields are decoded, type-checked and kept with
/// their location so the translation can warn about them precisely.
struct IstioPolicyDocument: Decodable {
    var location: ConfigLocation
    var metadata: Metadata
    var spec: Spec

    static let apiVersions = ["security.istio.io/v1", "security.istio.io/v1beta1"]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case apiVersion, kind, metadata, spec, status
    }

    init(from decoder: any Decoder) throws {
        location = ConfigDecoder.location(of: decoder) ?? ConfigLocation(file: "", line: nil, path: "")
        let c = try decoder.container(keyedBy: CodingKeys.self)
        // Kind first: a document of another kind would otherwise drown in field errors.
        let kind = try c.decode(String.self, forKey: .kind)
        guard kind == "AuthorizationPolicy" else {
            throw DecodingError.dataCorruptedError(
                forKey: .kind, in: c, debugDescription: "expected AuthorizationPolicy or PeerAuthentication, got \"\(kind)\"")
        }
        let apiVersion = try c.decode(String.self, forKey: .apiVersion)
        guard Self.apiVersions.contains(apiVersion) else {
            throw DecodingError.dataCorruptedError(
                forKey: .apiVersion, in: c,
                debugDescription: "expected \(Self.apiVersions.joined(separator: " or ")), got \"\(apiVersion)\"")
        }
        metadata = try c.decode(Metadata.self, forKey: .metadata)
        spec = try c.decodeIfPresent(Spec.self, forKey: .spec) ?? Spec()
        // Written by the API server; accepted so `kubectl get -o yaml` output loads.
        _ = try c.decodeIfPresent(ConfigNode.self, forKey: .status)
    }

    struct Metadata: Decodable {
        var name: String
        var namespace: String
        var annotations: [String: String]
        var dryRun: Bool
        /// As written (RFC 3339); nil when absent.
        var creationTimestamp: String?

        enum CodingKeys: String, CodingKey, CaseIterable {
            case name, namespace, labels, annotations
            case uid, resourceVersion, generation, creationTimestamp, deletionTimestamp, deletionGracePeriodSeconds
            case managedFields, finalizers, ownerReferences, generateName, selfLink
        }

        static let dryRunAnnotation = "istio.io/dry-run"

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            name = try c.decode(String.self, forKey: .name)
            if name.isEmpty {
                throw DecodingError.dataCorruptedError(forKey: .name, in: c, debugDescription: "must not be empty")
            }
            // kubectl's default namespace when a manifest names none.
            namespace = try c.decodeIfPresent(String.self, forKey: .namespace).flatMap { $0.isEmpty ? nil : $0 } ?? "default"
            _ = try c.decodeIfPresent([String: String].self, forKey: .labels)
            annotations = try c.decodeIfPresent([String: String].self, forKey: .annotations) ?? [:]
            creationTimestamp = try c.decodeIfPresent(String.self, forKey: .creationTimestamp)
            for key in [CodingKeys.uid, .resourceVersion, .generation, .deletionTimestamp,
                .deletionGracePeriodSeconds, .managedFields, .finalizers, .ownerReferences, .generateName, .selfLink]
            {
                _ = try c.decodeIfPresent(ConfigNode.self, forKey: key)
            }
            dryRun = false
            if let text = annotations[Self.dryRunAnnotation] {
                switch text.lowercased() {
                case "true", "1", "t": dryRun = true
                case "false", "0", "f": dryRun = false
                default:
                    throw DecodingError.dataCorruptedError(
                        forKey: .annotations, in: c,
                        debugDescription: "annotation \(Self.dryRunAnnotation) must be \"true\" or \"false\", got \"\(text)\"")
                }
            }
        }
    }

    enum Action: String, CaseIterable, Decodable {
        case ALLOW, DENY, AUDIT, CUSTOM
        init(from decoder: any Decoder) throws { self = try ConfigDecoder.decodeCase(from: decoder) }
    }

    struct Spec: Decodable {
        /// `selector.matchLabels`; nil without a selector.
        var selector: [String: String]?
        /// Set when the policy names `targetRef(s)`: it is for a waypoint or gateway.
        var targetRefs: ConfigNode?
        var action: Action = .ALLOW
        var rules: [Rule] = []

        enum CodingKeys: String, CodingKey, CaseIterable {
            case selector, targetRef, targetRefs, action, provider, rules
        }

        init() {}

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            selector = try c.decodeIfPresent(Selector.self, forKey: .selector).map { $0.matchLabels }
            targetRefs = try c.decodeIfPresent(ConfigNode.self, forKey: .targetRefs)
                ?? c.decodeIfPresent(ConfigNode.self, forKey: .targetRef)
            action = try c.decodeIfPresent(Action.self, forKey: .action) ?? .ALLOW
            switch action {
            case .ALLOW, .DENY:
                break
            case .CUSTOM:
                throw DecodingError.dataCorruptedError(
                    forKey: .action, in: c,
                    debugDescription: "action CUSTOM is not supported: a node proxy enforces L4 ALLOW and DENY only "
                        + "(CUSTOM delegates to an external authorizer; use a waypoint)")
            case .AUDIT:
                throw DecodingError.dataCorruptedError(
                    forKey: .action, in: c,
                    debugDescription: "action AUDIT is not supported: a node proxy enforces L4 ALLOW and DENY only "
                        + "(AUDIT is an HTTP access-log feature; use a waypoint)")
            }
            _ = try c.decodeIfPresent(ConfigNode.self, forKey: .provider)
            rules = try c.decodeIfPresent([Rule].self, forKey: .rules) ?? []
        }
    }

    struct Selector: Decodable {
        var matchLabels: [String: String]
        enum CodingKeys: String, CodingKey, CaseIterable { case matchLabels }
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            matchLabels = try c.decodeIfPresent([String: String].self, forKey: .matchLabels) ?? [:]
        }
    }

    struct Rule: Decodable {
        var from: [Source]
        var to: [Operation]
        var when: [Condition]

        enum CodingKeys: String, CodingKey, CaseIterable { case from, to, when }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            from = try (c.decodeIfPresent([From].self, forKey: .from) ?? []).map(\.source)
            to = try (c.decodeIfPresent([To].self, forKey: .to) ?? []).map(\.operation)
            when = try c.decodeIfPresent([Condition].self, forKey: .when) ?? []
        }
    }

    struct From: Decodable {
        var source: Source
        enum CodingKeys: String, CodingKey, CaseIterable { case source }
    }

    struct To: Decodable {
        var operation: Operation
        enum CodingKeys: String, CodingKey, CaseIterable { case operation }
    }

    /// An HTTP-only field that was set, with where it was written.
    struct HTTPField {
        var name: String
        var location: ConfigLocation
    }

    struct Source: Decodable {
        var principals: [String] = []
        var notPrincipals: [String] = []
        var namespaces: [String] = []
        var notNamespaces: [String] = []
        var serviceAccounts: [String] = []
        var notServiceAccounts: [String] = []
        var ipBlocks: [CIDR] = []
        var notIpBlocks: [CIDR] = []
        var httpFields: [HTTPField] = []
        /// Fields istiod leaves out of ztunnel's policy without calling them HTTP
        /// (`trustDomains`, `notTrustDomains`).
        var ignoredFields: [HTTPField] = []
        /// Where the source sits, for warnings about its values.
        var location: ConfigLocation?

        enum CodingKeys: String, CodingKey, CaseIterable {
            case principals, notPrincipals, namespaces, notNamespaces, serviceAccounts, notServiceAccounts
            case ipBlocks, notIpBlocks, trustDomains, notTrustDomains
            // Istio's ztunnel translation treats these as HTTP attributes: remote IPs come
            // from X-Forwarded-For, which only an HTTP proxy sees.
            case remoteIpBlocks, notRemoteIpBlocks, requestPrincipals, notRequestPrincipals
        }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            location = ConfigDecoder.location(of: decoder)
            principals = try c.decodeIfPresent([String].self, forKey: .principals) ?? []
            notPrincipals = try c.decodeIfPresent([String].self, forKey: .notPrincipals) ?? []
            namespaces = try c.decodeIfPresent([String].self, forKey: .namespaces) ?? []
            notNamespaces = try c.decodeIfPresent([String].self, forKey: .notNamespaces) ?? []
            serviceAccounts = try c.decodeIfPresent([String].self, forKey: .serviceAccounts) ?? []
            notServiceAccounts = try c.decodeIfPresent([String].self, forKey: .notServiceAccounts) ?? []
            ipBlocks = try c.decodeIfPresent([CIDR].self, forKey: .ipBlocks) ?? []
            notIpBlocks = try c.decodeIfPresent([CIDR].self, forKey: .notIpBlocks) ?? []
            _ = try c.decodeIfPresent([CIDR].self, forKey: .remoteIpBlocks)
            _ = try c.decodeIfPresent([CIDR].self, forKey: .notRemoteIpBlocks)
            httpFields = try Self.httpFields(
                c, [.remoteIpBlocks, .notRemoteIpBlocks, .requestPrincipals, .notRequestPrincipals])
            ignoredFields = try Self.httpFields(c, [.trustDomains, .notTrustDomains])
            if isL4Empty && httpFields.isEmpty && ignoredFields.isEmpty {
                try ConfigDecoder.report("a source needs at least one field (an empty source is rejected by Istio)", in: decoder)
            }
        }

        static func httpFields<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ keys: [K]) throws -> [HTTPField] {
            var fields: [HTTPField] = []
            for key in keys {
                guard let node = try c.decodeIfPresent(ConfigNode.self, forKey: key) else { continue }
                _ = try c.decodeIfPresent([String].self, forKey: key)
                if case .sequence(let items)? = node.value?.content, items.isEmpty { continue }
                fields.append(HTTPField(name: key.stringValue, location: ConfigLocation(file: node.file, line: node.line, path: node.path)))
            }
            return fields
        }

        var isL4Empty: Bool {
            principals.isEmpty && notPrincipals.isEmpty && namespaces.isEmpty && notNamespaces.isEmpty
                && serviceAccounts.isEmpty && notServiceAccounts.isEmpty && ipBlocks.isEmpty && notIpBlocks.isEmpty
        }
    }

    struct Operation: Decodable {
        var ports: [UInt16] = []
        var notPorts: [UInt16] = []
        var httpFields: [HTTPField] = []

        enum CodingKeys: String, CodingKey, CaseIterable {
            case ports, notPorts, hosts, notHosts, methods, notMethods, paths, notPaths
        }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            ports = try (c.decodeIfPresent([Port].self, forKey: .ports) ?? []).map(\.value)
            notPorts = try (c.decodeIfPresent([Port].self, forKey: .notPorts) ?? []).map(\.value)
            httpFields = try Source.httpFields(c, [.hosts, .notHosts, .methods, .notMethods, .paths, .notPaths])
            if ports.isEmpty && notPorts.isEmpty && httpFields.isEmpty {
                try ConfigDecoder.report("an operation needs at least one field (an empty operation is rejected by Istio)", in: decoder)
            }
        }
    }

    /// A port as Istio writes it: a string (`"8080"`) or a number, 1…65535.
    struct Port: Decodable {
        var value: UInt16
        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let port = Int(text), (1...65535).contains(port) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "expected a port 1…65535, got \"\(text)\"")
            }
            value = UInt16(port)
        }
    }

    /// A `when` condition. L4 keys are decoded into typed values; HTTP keys are kept only
    /// to be warned about.
    struct Condition: Decodable {
        enum Key: String, CaseIterable {
            case sourceIP = "source.ip"
            case sourceNamespace = "source.namespace"
            case sourcePrincipal = "source.principal"
            case destinationIP = "destination.ip"
            case destinationPort = "destination.port"
        }

        var key: Key?
        var httpKey: HTTPField?
        var strings: [String] = []
        var notStrings: [String] = []
        var ips: [CIDR] = []
        var notIPs: [CIDR] = []
        var ports: [UInt16] = []
        var notPorts: [UInt16] = []
        /// Where the condition sits, for warnings about its values.
        var location: ConfigLocation?

        enum CodingKeys: String, CodingKey, CaseIterable { case key, values, notValues }

        /// Keys Istio accepts that ztunnel does not evaluate (istiod treats them as HTTP
        /// attributes): `request.headers[…]`, `request.auth.*`, `remote.ip`,
        /// `source.serviceAccount`, `source.trustDomain`, `connection.sni`,
        /// `experimental.*`.
        static func isHTTPKey(_ key: String) -> Bool {
            [
                "remote.ip", "source.serviceAccount", "source.trustDomain", "request.auth.principal",
                "request.auth.audiences", "request.auth.presenter", "connection.sni",
            ].contains(key)
                || (key.hasPrefix("request.headers[") && key.hasSuffix("]"))
                || (key.hasPrefix("request.auth.claims[") && key.hasSuffix("]"))
                || key.hasPrefix("experimental.")
        }

        /// Why Istio rejects a key it once knew, nil for keys it never knew.
        static func retiredKey(_ key: String) -> String? {
            if key == "destination.namespace" { return "replaced by the policy's metadata.namespace" }
            if key.hasPrefix("destination.labels[") { return "replaced by the workload selector" }
            if key == "destination.name" || key == "destination.user" { return "only supported in v1alpha1" }
            return nil
        }

        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            location = ConfigDecoder.location(of: decoder)
            let text = try c.decode(String.self, forKey: .key)
            let hasValues = try !(c.decodeIfPresent([String].self, forKey: .values) ?? []).isEmpty
            let hasNotValues = try !(c.decodeIfPresent([String].self, forKey: .notValues) ?? []).isEmpty
            if !hasValues && !hasNotValues {
                throw DecodingError.dataCorruptedError(
                    forKey: .key, in: c, debugDescription: "condition on \"\(text)\" needs values or notValues")
            }
            if let key = Key(rawValue: text) {
                self.key = key
                switch key {
                case .sourceIP, .destinationIP:
                    ips = try c.decodeIfPresent([CIDR].self, forKey: .values) ?? []
                    notIPs = try c.decodeIfPresent([CIDR].self, forKey: .notValues) ?? []
                case .destinationPort:
                    ports = try (c.decodeIfPresent([Port].self, forKey: .values) ?? []).map(\.value)
                    notPorts = try (c.decodeIfPresent([Port].self, forKey: .notValues) ?? []).map(\.value)
                case .sourceNamespace, .sourcePrincipal:
                    strings = try c.decodeIfPresent([String].self, forKey: .values) ?? []
                    notStrings = try c.decodeIfPresent([String].self, forKey: .notValues) ?? []
                }
            } else if Self.isHTTPKey(text) {
                let node = try c.decode(ConfigNode.self, forKey: .key)
                httpKey = HTTPField(name: text, location: ConfigLocation(file: node.file, line: node.line, path: node.path))
            } else if let why = Self.retiredKey(text) {
                throw DecodingError.dataCorruptedError(forKey: .key, in: c, debugDescription: "key \"\(text)\" is \(why)")
            } else {
                let known = Key.allCases.map(\.rawValue).joined(separator: ", ")
                throw DecodingError.dataCorruptedError(
                    forKey: .key, in: c,
                    debugDescription: "unknown key \"\(text)\"; L4 keys are \(known) "
                        + "(HTTP keys such as request.headers[…] are accepted but not enforceable here)")
            }
        }
    }
}
