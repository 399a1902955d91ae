public import Kernel

/// What the proxy does with one query, decided from the mesh alone (ztunnel's rules).
public enum DNSLocalOutcome: Sendable, Hashable {
    /// Answer with this message (an answer from the mesh or an error).
    case answer(DNSMessage)
    /// Not the mesh's to answer: send it to the upstream resolvers.
    case forward
}

/// Answers `A` and `AAAA` queries for mesh services from a ``MeshSnapshot`` the way
/// ztunnel's DNS proxy does, and says which queries must go upstream.
///
/// The rules, in order:
/// - a message that is a response: FORMERR; an opcode other than a standard query:
///   NOTIMP; not exactly one question: FORMERR;
/// - an unknown client (nil): SERVFAIL;
/// - a type other than A or AAAA (or a class other than IN): forwarded;
/// - the name is tried as asked, then expanded by its label count with the client's
///   namespace and the cluster domain (``candidates(for:namespace:)``), then with the
///   search domains `<ns>.svc.<domain>`, `svc.<domain>` and `<domain>` stripped (and
///   expanded again); each candidate as itself and then as wildcards (`*.example.com`,
///   `*.com`);
/// - the first candidate naming a service visible to the client's namespace, with VIPs
///   or headless under `svc.<domain>`, answers (the client's namespace preferred, then
///   ``preferredServiceNamespace``, then a canonical one): its VIPs on the client's
///   network of the asked family, or for a headless service one address of that family
///   per endpoint workload; shuffled, TTL 30, authoritative. A candidate from a stripped
///   search domain (not a wildcard) answers with a CNAME from the asked name to the
///   stripped one and the addresses on the stripped name. A family the service (or
///   ``ipv6Enabled``) does not allow, or no addresses: NOERROR with no answers;
/// - no service: forwarded.
///
/// A value type, thread-safe.
public struct MeshDNSResolver: Sendable {
    /// The TTL of every answer.
    public static let ttl: UInt32 = 30

    /// The cluster's DNS domain.
    public var clusterDomain: DNSName
    /// Whether AAAA queries may be answered with addresses (off: always empty).
    public var ipv6Enabled: Bool
    /// The namespace to prefer after the client's when services in several namespaces
    /// share a hostname (ztunnel's `PREFERED_SERVICE_NAMESPACE`).
    public var preferredServiceNamespace: String?

    private var svcDomain: DNSName

    /// A resolver for `clusterDomain` (an invalid domain falls back to `cluster.local`).
    public init(clusterDomain: String = "cluster.local", ipv6Enabled: Bool = true, preferredServiceNamespace: String? = nil) {
        let domain = DNSName(clusterDomain).flatMap { $0.labels.isEmpty ? nil : $0.lowercased } ?? DNSName("cluster.local")!
        self.clusterDomain = domain
        self.svcDomain = DNSName(unchecked: [Array("svc".utf8)] + domain.labels)
        self.ipv6Enabled = ipv6Enabled
        self.preferredServiceNamespace = preferredServiceNamespace
    }

    /// What to do with `query` from `client` (nil: a client the proxy does not know).
    public func resolve(_ query: DNSMessage, client: DNSClientInfo?, mesh: MeshSnapshot) -> DNSLocalOutcome {
        if query.header.isResponse { return .answer(Self.error(.formatError, to: query)) }
        if query.header.opcode != .query { return .answer(Self.error(.notImplemented, to: query)) }
        guard query.questions.count == 1, let question = query.questions.first else {
            return .answer(Self.error(.formatError, to: query))
        }
        guard let client else { return .answer(Self.error(.serverFailure, to: query)) }
        guard question.type == .a || question.type == .aaaa, question.recordClass == .internet else { return .forward }
        guard let found = findService(question.name, client: client, mesh: mesh) else { return .forward }

        var response = Self.response(to: query, code: .noError, authoritative: true)
        guard familyAllowed(found.service, question.type) else { return .answer(response) }
        var addresses = addresses(of: found.service, type: question.type, client: client, mesh: mesh)
        guard !addresses.isEmpty else { return .answer(response) }
        addresses.shuffle()
        var owner = question.name
        if let stripped = found.stripped, !found.matched.isWildcard {
            response.answers.append(DNSResourceRecord(name: question.name, ttl: Self.ttl, data: .cname(stripped)))
            owner = stripped
        }
        for ip in addresses {
            response.answers.append(
                DNSResourceRecord(name: owner, ttl: Self.ttl, data: question.type == .a ? .a(ip) : .aaaa(ip)))
        }
        return .answer(response)
    }

    /// A candidate name to look up, and the name with a search domain stripped it came
    /// from (nil: from the name as asked).
    struct Alias: Equatable {
        var name: DNSName
        var stripped: DNSName?
    }

    /// The names `name` may mean to a client in `namespace`, in the order they are tried
    /// (before wildcards), without repeats.
    func aliases(for name: DNSName, namespace: String) -> [Alias] {
        var out: [Alias] = []
        var seen: Set<DNSName> = []
        func add(_ alias: Alias) {
            if seen.insert(alias.name.lowercased).inserted { out.append(alias) }
        }
        add(Alias(name: name, stripped: nil))
        for expanded in candidates(for: name, namespace: namespace) { add(Alias(name: expanded, stripped: nil)) }
        for domain in searchDomains(namespace: namespace) {
            guard let stripped = name.trimming(domain) else { continue }
            add(Alias(name: stripped, stripped: stripped))
            for expanded in candidates(for: stripped, namespace: namespace) { add(Alias(name: expanded, stripped: stripped)) }
        }
        return out
    }

    /// The Kubernetes forms of `name` by label count: 1 label → `<n>.<ns>.svc.<domain>`;
    /// 2 → `+.svc.<domain>`, `+.<ns>.svc.<domain>`; 3 → `+.<domain>` when it ends in `svc`,
    /// and `+.svc.<domain>`; 4 ending in `svc` → `+.<domain>`. Others: none.
    public func candidates(for name: DNSName, namespace: String) -> [DNSName] {
        let namespaced = DNSName(labels: [Array(namespace.utf8)] + svcDomain.labels)
        let endsInSvc = name.labels.last.map { DNSName(unchecked: [$0]).lowercased.labels == [Array("svc".utf8)] } ?? false
        var out: [DNSName?] = []
        switch name.labels.count {
        case 1:
            out.append(namespaced.flatMap(name.appending))
        case 2:
            out.append(name.appending(svcDomain))
            out.append(namespaced.flatMap(name.appending))
        case 3:
            if endsInSvc { out.append(name.appending(clusterDomain)) }
            out.append(name.appending(svcDomain))
        case 4 where endsInSvc:
            out.append(name.appending(clusterDomain))
        default:
            break
        }
        return out.compactMap { $0 }
    }

    /// The search domains a Kubernetes pod in `namespace` has.
    func searchDomains(namespace: String) -> [DNSName] {
        [DNSName(labels: [Array(namespace.utf8)] + svcDomain.labels), svcDomain, clusterDomain].compactMap { $0 }
    }

    /// `name` itself, then with its leftmost label replaced by `*`, then its parent's the
    /// same way, down to `*.<last label>`.
    static func wildcards(of name: DNSName) -> [DNSName] {
        var out = [name]
        var labels = name.labels[...]
        while labels.count > 1 {
            out.append(DNSName(unchecked: [[0x2A]] + labels.dropFirst()))
            labels = labels.dropFirst()
        }
        return out
    }

    struct Match {
        var service: Service
        /// The name (maybe a wildcard) the service was found under.
        var matched: DNSName
        var stripped: DNSName?
    }

    func findService(_ name: DNSName, client: DNSClientInfo, mesh: MeshSnapshot) -> Match? {
        let headlessSuffix = "." + svcDomain.description
        for alias in aliases(for: name, namespace: client.namespace) {
            for candidate in Self.wildcards(of: alias.name) {
                let services = mesh.services(hostname: candidate.hostname).filter {
                    (!$0.vips.isEmpty || $0.hostname.lowercased().hasSuffix(headlessSuffix))
                        && $0.isVisible(to: client.namespace)
                }
                if let best = best(services, client: client) {
                    return Match(service: best, matched: candidate, stripped: alias.stripped)
                }
            }
        }
        return nil
    }

    private func best(_ services: [Service], client: DNSClientInfo) -> Service? {
        func rank(_ service: Service) -> [Int] {
            [
                service.namespace == client.namespace ? 1 : 0,
                service.namespace == preferredServiceNamespace ? 1 : 0,
                service.canonical ? 1 : 0,
            ]
        }
        return services.max { lhs, rhs in
            let (l, r) = (rank(lhs), rank(rhs))
            // Ties go to the lesser namespace, so the answer does not depend on table order.
            return l == r ? lhs.namespace > rhs.namespace : l.lexicographicallyPrecedes(r)
        }
    }

    private func familyAllowed(_ service: Service, _ type: DNSRecordType) -> Bool {
        if type == .aaaa, !ipv6Enabled { return false }
        switch service.ipFamilies {
        case .ipv4: return type == .a
        case .ipv6: return type == .aaaa
        case .dual, nil: return true
        }
    }

    private func addresses(of service: Service, type: DNSRecordType, client: DNSClientInfo, mesh: MeshSnapshot) -> [IPAddress] {
        let wantIPv4 = type == .a
        if service.vips.isEmpty {
            return mesh.endpoints(of: service.namespacedHostname).compactMap { workload in
                workload.workloadIPs.first { $0.isIPv4 == wantIPv4 }
            }
        }
        return service.vips.filter { $0.network == client.network && $0.ip.isIPv4 == wantIPv4 }.map(\.ip)
    }

    /// A response to `query` with its question and EDNS echoed (payload at least 512).
    static func response(to query: DNSMessage, code: DNSResponseCode, authoritative: Bool = false) -> DNSMessage {
        var edns: DNSEDNS?
        if let asked = query.edns {
            edns = DNSEDNS(udpPayloadSize: max(asked.udpPayloadSize, 512), version: asked.version, dnssecOK: asked.dnssecOK)
        }
        return DNSMessage(
            header: query.header.response(code, authoritative: authoritative), questions: query.questions, edns: edns)
    }

    /// An error response to `query`.
    public static func error(_ code: DNSResponseCode, to query: DNSMessage) -> DNSMessage {
        response(to: query, code: code)
    }

    /// An error response from just a header (a query that could not be parsed further):
    /// id, opcode and RD echoed, no question.
    public static func error(_ code: DNSResponseCode, toHeader header: DNSHeader) -> DNSMessage {
        DNSMessage(header: header.response(code))
    }
}
