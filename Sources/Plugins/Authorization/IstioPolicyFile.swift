public import Kernel
import AmbitRuntime
import ConfigYAML

/// Something in a policy file that loads but does not do all it says, with where it is
/// written: an HTTP attribute a node proxy cannot check, or a policy meant for a
/// waypoint.
public struct PolicyWarning: Sendable, Hashable, CustomStringConvertible {
    /// Where: file, line and path of the field.
    public var location: ConfigLocation
    /// The policy, `namespace/name`.
    public var policy: String
    /// The field, e.g. `methods` or `when key request.headers[x]`.
    public var field: String
    /// What happens instead.
    public var message: String

    /// `file:line: path: policy ns/name: field: message`.
    public var description: String { "\(location): policy \(policy): \(field): \(message)" }
}

/// Policies loaded from Istio `AuthorizationPolicy` files, in the kernel's rule form.
public struct LoadedPolicies: Sendable {
    /// The translated policies, in file and document order.
    public var policies: [AuthorizationPolicy]
    /// What was translated with a loss (see ``PolicyWarning``).
    public var warnings: [PolicyWarning]
    /// `PeerAuthentication` documents, in file and document order; ``PolicyIndex``
    /// turns them into DENY policies per workload as istiod does.
    public var peerAuthentications: [PeerAuthentication]

    /// Creates a set.
    public init(
        policies: [AuthorizationPolicy] = [], warnings: [PolicyWarning] = [], peerAuthentications: [PeerAuthentication] = []
    ) {
        self.policies = policies
        self.warnings = warnings
        self.peerAuthentications = peerAuthentications
    }
}

/// Reads Istio `AuthorizationPolicy` and `PeerAuthentication` YAML (`security.istio.io/v1`
/// and `v1beta1`; one or many documents per file, separated by `---`) into the kernel's
/// L4 rule form (PeerAuthentication: see ``PeerAuthentication``; ``PolicyIndex`` applies
/// them per workload as istiod does for ztunnel).
///
/// Errors name the file, the line, and the path inside the document, prefixed with the
/// document's index among the file's non-empty documents:
/// `policies.yaml:14: document[1].spec.rules[0].from[0].source.ipBlocks[0]: expected an
/// IP address or CIDR block, got "10.0.0.0/33"`.
///
/// Translation (Istio's own ztunnel translation):
/// - scope: a `selector` with labels → `WorkloadSelector`; no selector (or no labels) →
///   `Namespace`, or `Global` in the root namespace; a root-namespace selector selects
///   workloads in every namespace (``PolicyIndex``);
/// - each rule → one clause for `to` (its operations OR'ed), one for `from` (its sources
///   OR'ed), one per `when` condition, all AND'ed; a rule with none of them matches every
///   connection (`rules: [{}]` allows all) and a policy with no rules matches none
///   (`spec: {}` on ALLOW is allow-nothing);
/// - `source`: principals (Istio wildcards `*`, `x*`, `*x`; compared in
///   `trust-domain/ns/NS/sa/SA` form, so a `spiffe://`-prefixed value never matches, as in
///   Istio, and is reported as a ``PolicyWarning`` with the fix), namespaces, serviceAccounts (`ns/sa`, or `sa` in the policy's namespace),
///   ipBlocks, each with its `not…` form; `operation`: ports, notPorts; `when`:
///   source.ip, source.namespace, source.principal, destination.ip, destination.port;
/// - HTTP attributes (hosts, methods, paths, requestPrincipals, remoteIpBlocks, their
///   `not…` forms, `when` keys other than the five above), as istiod translates them for
///   ztunnel: an ALLOW rule using any is omitted; in a DENY rule each `from`/`to` entry
///   keeps only its L4 fields and an HTTP `when` keeps nothing, and an entry left with no
///   field is an empty match, which never matches, so a clause of such entries never holds
///   and neither does its rule. A DENY is broader than written only where one entry mixes
///   L4 and HTTP fields. One ``PolicyWarning`` per policy carries istiod's message ("has no
///   enforceable rules at ztunnel and will have no effect", "more restrictive than
///   requested"); `source.trustDomains`/`notTrustDomains` are dropped as istiod drops
///   them for ztunnel, with a warning;
/// - actions CUSTOM and AUDIT are errors; a policy with `targetRef(s)` is for a waypoint
///   and is skipped with a warning;
/// - the annotation `istio.io/dry-run: "true"` makes the policy dry-run.
public enum IstioPolicyFile {
    /// Parses one file's text. `rootNamespace` decides which selector-less policies are
    /// mesh-wide. Throws every error found.
    public static func parse(yaml: String, file: String, rootNamespace: String = "istio-system") throws(ConfigErrors)
        -> LoadedPolicies
    {
        var errors: [ConfigError] = []
        var loaded = LoadedPolicies()
        var seen: [String: ConfigLocation] = [:]
        var seenPeer: [String: ConfigLocation] = [:]
        for (index, document) in documents(of: yaml).enumerated() {
            let node: ConfigNode
            do throws(ConfigErrors) {
                node = try parseDocument(document.text, file: file, path: "document[\(index)]", lineOffset: document.firstLine - 1)
            } catch {
                errors += error.errors
                continue
            }
            if node.value?["kind"]?.scalarText == "PeerAuthentication" {
                do throws(ConfigErrors) {
                    let policy = try ConfigDecoder.decode(PeerAuthenticationDocument.self, from: node).policy
                    if let first = seenPeer[policy.key] {
                        errors.append(ConfigError(
                            at: policy.location,
                            "duplicate PeerAuthentication \(policy.key), first at \(first.path)\(first.line.map { " (line \($0))" } ?? "")"))
                    } else {
                        seenPeer[policy.key] = policy.location
                        loaded.peerAuthentications.append(policy)
                    }
                } catch {
                    errors += error.errors
                }
                continue
            }
            let decoded: IstioPolicyDocument
            do throws(ConfigErrors) {
                decoded = try ConfigDecoder.decode(IstioPolicyDocument.self, from: node)
            } catch {
                errors += error.errors
                continue
            }
            let key = "\(decoded.metadata.namespace)/\(decoded.metadata.name)"
            if let first = seen[key] {
                errors.append(ConfigError(
                    at: decoded.location,
                    "duplicate policy \(key), first at \(first.path)\(first.line.map { " (line \($0))" } ?? "")"))
                continue
            }
            seen[key] = decoded.location
            let translated = IstioPolicyTranslator.translate(decoded, rootNamespace: rootNamespace)
            loaded.warnings += translated.warnings
            if let policy = translated.policy { loaded.policies.append(policy) }
        }
        if !errors.isEmpty { throw ConfigErrors(errors) }
        return loaded
    }

    /// Reads and parses every file; a policy key defined in two files is an error. Throws
    /// every error found in every file.
    public static func load(paths: [String], rootNamespace: String = "istio-system") throws(ConfigErrors) -> LoadedPolicies {
        var files: [(path: String, text: String)] = []
        var errors: [ConfigError] = []
        for path in paths {
            do throws(ConfigErrors) {
                files.append((path, try ConfigFile.read(path)))
            } catch {
                errors += error.errors
            }
        }
        do throws(ConfigErrors) {
            let loaded = try parse(files: files, rootNamespace: rootNamespace)
            if errors.isEmpty { return loaded }
        } catch {
            errors += error.errors
        }
        throw ConfigErrors(errors)
    }

    /// Parses several files' texts as one set; a policy key defined in two files is an
    /// error. Throws every error found in every file.
    public static func parse(files: [(path: String, text: String)], rootNamespace: String = "istio-system") throws(ConfigErrors)
        -> LoadedPolicies
    {
        var errors: [ConfigError] = []
        var result = LoadedPolicies()
        var owner: [String: String] = [:]
        var peerOwner: [String: String] = [:]
        for (path, text) in files {
            do throws(ConfigErrors) {
                let loaded = try parse(yaml: text, file: path, rootNamespace: rootNamespace)
                for policy in loaded.peerAuthentications {
                    if let first = peerOwner[policy.key] {
                        errors.append(ConfigError(
                            file: path, line: policy.location.line, path: policy.location.path,
                            message: "duplicate PeerAuthentication \(policy.key), first in \(first)"))
                    }
                    peerOwner[policy.key] = peerOwner[policy.key] ?? path
                }
                result.peerAuthentications += loaded.peerAuthentications
                for policy in loaded.policies {
                    if let first = owner[policy.key] {
                        errors.append(ConfigError(
                            file: path, line: nil, path: "", message: "duplicate policy \(policy.key), first in \(first)"))
                    }
                    owner[policy.key] = owner[policy.key] ?? path
                }
                result.policies += loaded.policies
                result.warnings += loaded.warnings
            } catch {
                errors += error.errors
            }
        }
        if !errors.isEmpty { throw ConfigErrors(errors) }
        return result
    }

    /// The non-empty documents of a YAML stream with the line each starts on. A line
    /// starting with `---` (then nothing, a space or a tab) separates documents.
    static func documents(of yaml: String) -> [(text: String, firstLine: Int)] {
        var result: [(text: String, firstLine: Int)] = []
        var current: [Substring] = []
        var start = 1
        var lineNumber = 0
        func flush() {
            let text = current.joined(separator: "\n")
            let meaningful = current.contains { line in
                let trimmed = line.drop { $0 == " " || $0 == "\t" }
                return !trimmed.isEmpty && !trimmed.hasPrefix("#") && !trimmed.hasPrefix("---") && trimmed != "..."
            }
            if meaningful { result.append((text, start)) }
        }
        for line in yaml.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            if line.hasPrefix("---") && (line.count == 3 || line.dropFirst(3).first == " " || line.dropFirst(3).first == "\t") {
                flush()
                current = [line]
                start = lineNumber
            } else {
                current.append(line)
            }
        }
        flush()
        return result
    }

    /// Parses one document and moves its line numbers (and those of its errors) to where
    /// the document sits in the file.
    static func parseDocument(_ text: String, file: String, path: String, lineOffset: Int) throws(ConfigErrors) -> ConfigNode {
        do {
            var node = try ConfigNode.parse(yaml: text, file: file, path: path)
            node.value = node.value.map { shift($0, by: lineOffset) }
            node.line = node.value?.line
            return node
        } catch {
            throw ConfigErrors(error.errors.map { error in
                var moved = error
                moved.line = error.line.map { $0 + lineOffset }
                if moved.path.isEmpty { moved.path = path }
                return moved
            })
        }
    }

    private static func shift(_ value: ConfigValue, by offset: Int) -> ConfigValue {
        var moved = value
        moved.line = value.line.map { $0 + offset }
        switch value.content {
        case .scalar:
            break
        case .sequence(let items):
            moved.content = .sequence(items.map { shift($0, by: offset) })
        case .mapping(let entries):
            moved.content = .mapping(entries.map { .init(key: shift($0.key, by: offset), value: shift($0.value, by: offset)) })
        }
        return moved
    }
}

/// Istio `AuthorizationPolicy` → kernel ``AuthorizationPolicy`` (see ``IstioPolicyFile``).
enum IstioPolicyTranslator {
    struct Result {
        var policy: AuthorizationPolicy?
        var warnings: [PolicyWarning]
    }

    static func translate(_ document: IstioPolicyDocument, rootNamespace: String) -> Result {
        let namespace = document.metadata.namespace
        let key = "\(namespace)/\(document.metadata.name)"
        let spec = document.spec
        if let targets = spec.targetRefs {
            return Result(policy: nil, warnings: [
                PolicyWarning(
                    location: ConfigLocation(file: targets.file, line: targets.line, path: targets.path), policy: key,
                    field: "targetRefs", message: "targets a waypoint or gateway; the node proxy ignores this policy")
            ])
        }
        let scope: AuthorizationPolicy.Scope
        if let labels = spec.selector, !labels.isEmpty {
            scope = .workloadSelector(labels)
        } else {
            scope = namespace == rootNamespace ? .global : .namespace
        }
        let action: AuthorizationPolicy.Action = spec.action == .DENY ? .deny : .allow
        var warnings: [PolicyWarning] = []
        var rules: [[[PolicyMatch]]] = []
        var httpFields: [IstioPolicyDocument.HTTPField] = []
        for rule in spec.rules {
            // istiod's handleRule: every entry keeps only its L4 fields, even when that
            // leaves it empty. ztunnel skips an empty match, so a clause of empty matches
            // never holds, and neither does its rule.
            var clauses: [[PolicyMatch]] = []
            var ruleHTTP: [IstioPolicyDocument.HTTPField] = []
            if !rule.to.isEmpty {
                clauses.append(rule.to.map { operation in
                    ruleHTTP += operation.httpFields
                    var match = PolicyMatch()
                    match.destinationPorts = operation.ports
                    match.notDestinationPorts = operation.notPorts
                    return match
                })
            }
            if !rule.from.isEmpty {
                clauses.append(rule.from.map { source in
                    ruleHTTP += source.httpFields
                    warnings += spiffePrincipalWarnings(
                        [("principals", source.principals), ("notPrincipals", source.notPrincipals)],
                        at: source.location, policy: key)
                    warnings += source.ignoredFields.map { field in
                        PolicyWarning(
                            location: field.location, policy: key, field: field.name,
                            message: "not enforced by a node proxy: istiod leaves \(field.name) out of the policy it sends "
                                + "to ztunnel, so this entry is checked without it (enforce it at a waypoint)")
                    }
                    return sourceMatch(source, namespace: namespace)
                })
            }
            for condition in rule.when {
                if condition.key == .sourcePrincipal {
                    warnings += spiffePrincipalWarnings(
                        [("when source.principal values", condition.strings),
                         ("when source.principal notValues", condition.notStrings)],
                        at: condition.location, policy: key)
                }
                if let http = condition.httpKey {
                    ruleHTTP.append(http)
                    clauses.append([PolicyMatch()])
                    continue
                }
                clauses.append([conditionMatch(condition)])
            }
            httpFields += ruleHTTP
            // In an ALLOW policy a rule with any HTTP attribute is omitted entirely.
            if action == .allow && !ruleHTTP.isEmpty { continue }
            rules.append(clauses)
        }
        if let first = httpFields.first {
            warnings.append(PolicyWarning(
                location: first.location, policy: key, field: "HTTP attributes",
                message: httpWarning(found: httpFields.map(\.name), action: action, rules: rules)))
        }
        return Result(
            policy: AuthorizationPolicy(
                name: document.metadata.name, namespace: namespace, scope: scope, action: action,
                dryRun: document.metadata.dryRun, rules: rules),
            warnings: warnings)
    }

    /// istiod's status message for a policy with HTTP attributes, so that `ambit validate`,
    /// the node log and `istioctl` users read the same words.
    static func httpWarning(found: [String], action: AuthorizationPolicy.Action, rules: [[[PolicyMatch]]]) -> String {
        let consequence: String
        switch action {
        case .deny where !hasEffectiveRules(rules):
            consequence = "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at "
                + "ztunnel and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy."
        case .deny:
            consequence = "DENY policy with HTTP attributes is enforced without the HTTP rules. "
                + "This will be more restrictive than requested."
        case .allow:
            consequence = "Within an ALLOW policy, rules matching HTTP attributes are omitted. "
                + "This will be more restrictive than requested."
        }
        return "ztunnel does not support HTTP attributes (found: \(Set(found).sorted().joined(separator: ", "))). "
            + "In ambient mode you must use a waypoint proxy to enforce HTTP rules. " + consequence
    }

    /// Whether some rule can match: it has no clauses, or each of its clauses has a
    /// match with a field (a clause of empty matches never holds).
    static func hasEffectiveRules(_ rules: [[[PolicyMatch]]]) -> Bool {
        rules.contains { rule in rule.allSatisfy { clause in clause.contains { !$0.isEmpty } } }
    }

    static func sourceMatch(_ source: IstioPolicyDocument.Source, namespace: String) -> PolicyMatch {
        var match = PolicyMatch()
        match.principals = source.principals.map(principal)
        match.notPrincipals = source.notPrincipals.map(principal)
        match.namespaces = source.namespaces.map(wildcard)
        match.notNamespaces = source.notNamespaces.map(wildcard)
        match.serviceAccounts = source.serviceAccounts.map { serviceAccount($0, namespace: namespace) }
        match.notServiceAccounts = source.notServiceAccounts.map { serviceAccount($0, namespace: namespace) }
        match.sourceIPs = source.ipBlocks
        match.notSourceIPs = source.notIpBlocks
        return match
    }

    static func conditionMatch(_ condition: IstioPolicyDocument.Condition) -> PolicyMatch {
        var match = PolicyMatch()
        switch condition.key {
        case .sourceIP?:
            match.sourceIPs = condition.ips
            match.notSourceIPs = condition.notIPs
        case .destinationIP?:
            match.destinationIPs = condition.ips
            match.notDestinationIPs = condition.notIPs
        case .destinationPort?:
            match.destinationPorts = condition.ports
            match.notDestinationPorts = condition.notPorts
        case .sourceNamespace?:
            match.namespaces = condition.strings.map(wildcard)
            match.notNamespaces = condition.notStrings.map(wildcard)
        case .sourcePrincipal?:
            match.principals = condition.strings.map(principal)
            match.notPrincipals = condition.notStrings.map(principal)
        case nil:
            break
        }
        return match
    }

    /// Istio's string form: `*` any value, `x*` prefix, `*x` suffix, else exact.
    static func wildcard(_ text: String) -> StringMatch {
        if text == "*" { return .presence }
        if text.hasPrefix("*") { return .suffix(String(text.dropFirst())) }
        if text.hasSuffix("*") { return .prefix(String(text.dropLast())) }
        return .exact(text)
    }

    /// Principals are compared as Istio writes them, `trust-domain/ns/NS/sa/SA`: a value
    /// with `spiffe://` is kept as written, so it never matches, as in Istio (warned about
    /// by ``spiffePrincipalWarnings(_:at:policy:)``).
    static func principal(_ text: String) -> StringMatch {
        wildcard(text)
    }

    /// One warning per `spiffe://`-prefixed principal: Istio never matches them, so an
    /// ALLOW listing one admits nobody by it and a DENY listing one denies nobody by it.
    static func spiffePrincipalWarnings(
        _ fields: [(name: String, values: [String])], at location: ConfigLocation?, policy: String
    ) -> [PolicyWarning] {
        var warnings: [PolicyWarning] = []
        for (name, values) in fields {
            for value in values where value.hasPrefix("spiffe://") {
                let fixed = String(value.dropFirst("spiffe://".count))
                warnings.append(PolicyWarning(
                    location: location ?? ConfigLocation(file: "", line: nil, path: ""), policy: policy, field: name,
                    message: "principal \"\(value)\" never matches: Istio compares principals without "
                        + "`spiffe://` (trust-domain/ns/NAMESPACE/sa/ACCOUNT); write \"\(fixed)\""))
            }
        }
        return warnings
    }

    /// `ns/sa`, or a bare `sa` in the policy's namespace; matched exactly.
    static func serviceAccount(_ text: String, namespace: String) -> StringMatch {
        .exact(text.contains("/") ? text : "\(namespace)/\(text)")
    }
}
