import Foundation
public import IstioXDSAPI
public import Kernel
import SwiftProtobuf

/// One resource istiod sent that Ambit cannot take, and why: the NACK's `error_detail`
/// names each of these, and `/config_dump` lists them.
public struct XDSResourceError: Error, Sendable, Hashable, CustomStringConvertible, Encodable {
    /// The resource's name (`Resource.name`): a workload uid, `namespace/hostname`, or
    /// `namespace/name`.
    public var resource: String
    /// The field at fault, in the proto's names, e.g. `workload.addresses[1]`; empty when
    /// the whole resource is.
    public var field: String
    /// What is wrong with it.
    public var reason: String

    /// Creates an error.
    public init(resource: String, field: String, reason: String) {
        self.resource = resource
        self.field = field
        self.reason = reason
    }

    /// `<resource>: <field>: <reason>`, the form the NACK lists.
    public var description: String {
        field.isEmpty ? "\(resource): \(reason)" : "\(resource): \(field): \(reason)"
    }
}

/// Istio's Workload API (`istio.workload.Address`, `istio.security.Authorization`) turned
/// into the kernel's mesh model, one resource at a time.
///
/// The mapping gives the same ``Workload``, ``Service`` and ``AuthorizationPolicy`` as the
/// `local-config` plugin gives for the same content written in ztunnel's local-config
/// YAML (the tests check the two side by side), with the Workload API's defaults:
/// an empty service account is `default`, an empty trust domain `cluster.local`, an
/// empty cluster id `Kubernetes`, an unset capacity 1, a gateway's HBONE port 0 15008, an
/// application tunnel port 0 none, a service address with a prefix length shorter than
/// the address a `cidrVips` block (the full length is a VIP), and `AUTOMATIC` IP families
/// none. Workloads carry no labels over xDS: WorkloadSelector policies apply to the
/// workloads that list them in `authorization_policies`.
///
/// Every value the model cannot hold exactly is an error naming the resource, the field
/// and why, rather than a guess: an address that is not 4 or 16 bytes, a port above
/// 65535 (or a service port 0), an enum value this version does not know, the legacy
/// Istio mTLS tunnel protocol, a gateway address with no destination, a `services` key
/// or policy key without `/`, a CIDR prefix longer than its address, an empty string
/// match. ztunnel drops some of these silently inside a policy (a bad source IP, an
/// empty string match); Ambit rejects the policy instead, since dropping a condition
/// widens what the policy matches.
public enum WorkloadAPI {
    /// Workloads and services.
    public static let addressTypeURL = "type.googleapis.com/istio.workload.Address"
    /// Authorization policies.
    public static let authorizationTypeURL = "type.googleapis.com/istio.security.Authorization"

    /// What an `Address` resource holds.
    public enum Address: Sendable, Hashable {
        /// A workload, keyed by uid.
        case workload(Workload)
        /// A service, keyed by `namespace/hostname`.
        case service(Service)
    }

    // MARK: Resources

    /// Decodes and converts an `Address` resource.
    public static func address(from resource: Envoy_Service_Discovery_V3_Resource) throws(XDSResourceError) -> Address {
        let message = try unpack(Istio_Workload_Address.self, typeURL: addressTypeURL, from: resource)
        return try address(message, name: resource.name)
    }

    /// Decodes an `Address` message from its protobuf bytes and converts it; `name` is its
    /// resource name, for errors (the `xds-resource` fuzz target's entry).
    public static func address(serialized bytes: [UInt8], name: String) throws(XDSResourceError) -> Address {
        let message: Istio_Workload_Address
        do {
            message = try Istio_Workload_Address(serializedBytes: bytes)
        } catch {
            throw XDSResourceError(resource: name, field: "", reason: "cannot decode \(Istio_Workload_Address.protoMessageName): \(error)")
        }
        return try address(message, name: name)
    }

    /// Decodes an `Authorization` message from its protobuf bytes and converts it; `name`
    /// is its resource name, for errors (the `xds-resource` fuzz target's entry).
    public static func authorization(serialized bytes: [UInt8], name: String) throws(XDSResourceError) -> AuthorizationPolicy {
        let message: Istio_Security_Authorization
        do {
            message = try Istio_Security_Authorization(serializedBytes: bytes)
        } catch {
            throw XDSResourceError(
                resource: name, field: "", reason: "cannot decode \(Istio_Security_Authorization.protoMessageName): \(error)")
        }
        return try authorization(message, name: name)
    }

    /// Decodes and converts an `Authorization` resource.
    public static func authorization(
        from resource: Envoy_Service_Discovery_V3_Resource
    ) throws(XDSResourceError) -> AuthorizationPolicy {
        let message = try unpack(Istio_Security_Authorization.self, typeURL: authorizationTypeURL, from: resource)
        return try authorization(message, name: resource.name)
    }

    private static func unpack<M: SwiftProtobuf.Message>(
        _ type: M.Type, typeURL: String, from resource: Envoy_Service_Discovery_V3_Resource
    ) throws(XDSResourceError) -> M {
        let name = resource.name
        guard resource.hasResource else {
            throw XDSResourceError(resource: name, field: "resource", reason: "no resource body")
        }
        guard resource.resource.typeURL == typeURL else {
            let got = resource.resource.typeURL.isEmpty ? "value with no type" : resource.resource.typeURL
            throw XDSResourceError(resource: name, field: "resource", reason: "expected a \(typeURL), got a \(got)")
        }
        do {
            return try M(serializedBytes: resource.resource.value)
        } catch {
            throw XDSResourceError(resource: name, field: "", reason: "cannot decode \(M.protoMessageName): \(error)")
        }
    }

    /// Converts a decoded `Address`; `name` is its resource name, for errors.
    public static func address(_ address: Istio_Workload_Address, name: String) throws(XDSResourceError) -> Address {
        var fields = FieldPath(resource: name)
        switch address.type {
        case .workload(let workload):
            fields.push("workload")
            return .workload(try self.workload(workload, fields))
        case .service(let service):
            fields.push("service")
            return .service(try self.service(service, fields))
        case nil:
            throw fields.error("neither workload nor service is set")
        }
    }

    /// Converts a decoded `Workload`; `name` is its resource name, for errors.
    public static func workload(_ workload: Istio_Workload_Workload, name: String) throws(XDSResourceError) -> Workload
    {
        var fields = FieldPath(resource: name)
        fields.push("workload")
        return try self.workload(workload, fields)
    }

    /// Converts a decoded `Service`; `name` is its resource name, for errors.
    public static func service(_ service: Istio_Workload_Service, name: String) throws(XDSResourceError) -> Service {
        var fields = FieldPath(resource: name)
        fields.push("service")
        return try self.service(service, fields)
    }

    // MARK: Workload

    private static func workload(_ w: Istio_Workload_Workload, _ at: FieldPath) throws(XDSResourceError) -> Workload {
        guard !w.uid.isEmpty else { throw at.error("uid", "must not be empty") }
        var ips: [IPAddress] = []
        for (index, bytes) in w.addresses.enumerated() {
            ips.append(try ip(bytes, at.appending("addresses[\(index)]")))
        }
        let tunnel: TunnelProtocol
        switch w.tunnelProtocol {
        case .none: tunnel = .tcp
        case .hbone: tunnel = .hbone
        case .legacyIstioMtls:
            throw at.error(
                "tunnel_protocol", "LEGACY_ISTIO_MTLS is not supported (a node proxy cannot send legacy Istio mTLS)")
        case .UNRECOGNIZED(let value): throw at.error("tunnel_protocol", unknownEnum(value, "TunnelProtocol"))
        }
        let status: HealthStatus
        switch w.status {
        case .healthy: status = .healthy
        case .unhealthy: status = .unhealthy
        case .UNRECOGNIZED(let value): throw at.error("status", unknownEnum(value, "WorkloadStatus"))
        }
        let networkMode: NetworkMode
        switch w.networkMode {
        case .standard: networkMode = .standard
        case .hostNetwork: networkMode = .hostNetwork
        case .UNRECOGNIZED(let value): throw at.error("network_mode", unknownEnum(value, "NetworkMode"))
        }
        var services: [NamespacedHostname: [UInt16: UInt16]] = [:]
        for key in w.services.keys.sorted() {
            let field = at.appending("services[\"\(key)\"]")
            guard let service = NamespacedHostname(key) else {
                throw field.error("expected a namespace/hostname key")
            }
            services[service] = try portMap(
                w.services[key]?.ports ?? [], field.appending("ports"), allowZeroServicePort: true)
        }
        for (index, policy) in w.authorizationPolicies.enumerated() where NamespacedHostname(policy) == nil {
            throw at.error(
                "authorization_policies[\(index)]", "expected a namespace/name policy key, got \"\(policy)\"")
        }
        let applicationTunnel: ApplicationTunnel?
        if w.hasApplicationTunnel {
            let tunnel = w.applicationTunnel
            let kind: ApplicationTunnel.Kind
            switch tunnel.protocol {
            case .none: kind = .plain
            case .proxy: kind = .proxy
            case .UNRECOGNIZED(let value):
                throw at.error("application_tunnel.protocol", unknownEnum(value, "ApplicationTunnel.Protocol"))
            }
            let port = try self.port(tunnel.port, at.appending("application_tunnel.port"))
            applicationTunnel = ApplicationTunnel(protocol: kind, port: port == 0 ? nil : port)
        } else {
            applicationTunnel = nil
        }
        return Workload(
            uid: w.uid, name: w.name, namespace: w.namespace,
            serviceAccount: w.serviceAccount.isEmpty ? "default" : w.serviceAccount,
            trustDomain: w.trustDomain.isEmpty ? "cluster.local" : w.trustDomain,
            workloadIPs: ips, tunnelProtocol: tunnel, node: w.node, network: w.network,
            waypoint: w.hasWaypoint ? try gateway(w.waypoint, at.appending("waypoint")) : nil,
            status: status,
            capacity: w.hasCapacity ? w.capacity.value : 1,
            services: services, labels: [:],
            canonicalName: w.canonicalName, canonicalRevision: w.canonicalRevision, workloadName: w.workloadName,
            clusterID: w.clusterID.isEmpty ? "Kubernetes" : w.clusterID, netns: nil,
            authorizationPolicies: w.authorizationPolicies,
            locality: w.hasLocality
                ? Locality(region: w.locality.region, zone: w.locality.zone, subzone: w.locality.subzone) : Locality(),
            networkMode: networkMode, applicationTunnel: applicationTunnel,
            networkGateway: w.hasNetworkGateway ? try gateway(w.networkGateway, at.appending("network_gateway")) : nil,
            hostname: w.hostname)
    }

    // MARK: Service

    private static func service(_ s: Istio_Workload_Service, _ at: FieldPath) throws(XDSResourceError) -> Service {
        guard !s.hostname.isEmpty else { throw at.error("hostname", "must not be empty") }
        var vips: [NetworkAddress] = []
        var cidrs: [NetworkCIDR] = []
        for (index, address) in s.addresses.enumerated() {
            let field = at.appending("addresses[\(index)]")
            let ip = try self.ip(address.address, field.appending("address"))
            let width: UInt32 = ip.isIPv4 ? 32 : 128
            if address.hasLength && address.length != width {
                guard address.length < width else {
                    throw field.error(
                        "length", "prefix length \(address.length) is longer than the \(width)-bit address")
                }
                cidrs.append(
                    NetworkCIDR(network: address.network, cidr: CIDR(address: ip, prefixLength: Int(address.length))))
            } else {
                vips.append(NetworkAddress(network: address.network, ip: ip))
            }
        }
        var weighted: [WeightedWaypoint] = []
        for (index, entry) in s.weightedWaypoints.enumerated() {
            let field = at.appending("weighted_waypoints[\(index)]")
            guard entry.hasDestination else { throw field.error("destination", "must be set") }
            weighted.append(
                WeightedWaypoint(
                    destination: try gateway(entry.destination, field.appending("destination")), weight: entry.weight))
        }
        let ipFamilies: IPFamilies?
        switch s.ipFamilies {
        case .automatic: ipFamilies = nil
        case .ipv4Only: ipFamilies = .ipv4
        case .ipv6Only: ipFamilies = .ipv6
        case .dual: ipFamilies = .dual
        case .UNRECOGNIZED(let value): throw at.error("ip_families", unknownEnum(value, "IPFamilies"))
        }
        let visibility: ServiceVisibility
        switch s.visibility {
        case .public: visibility = .everywhere
        case .namespace: visibility = .namespace
        case .UNRECOGNIZED(let value): throw at.error("visibility", unknownEnum(value, "Service.Visibility"))
        }
        return Service(
            name: s.name, namespace: s.namespace, hostname: s.hostname, vips: vips,
            ports: try portMap(s.ports, at.appending("ports"), allowZeroServicePort: false),
            subjectAltNames: s.subjectAltNames,
            waypoint: s.hasWaypoint ? try gateway(s.waypoint, at.appending("waypoint")) : nil,
            cidrVIPs: cidrs, weightedWaypoints: weighted,
            loadBalancer: s.hasLoadBalancing ? try loadBalancer(s.loadBalancing, at.appending("load_balancing")) : nil,
            ipFamilies: ipFamilies, canonical: s.canonical, visibility: visibility)
    }

    private static func loadBalancer(_ lb: Istio_Workload_LoadBalancing, _ at: FieldPath) throws(XDSResourceError)
        -> LoadBalancer
    {
        var preferences: [LoadBalancer.Scope] = []
        for (index, scope) in lb.routingPreference.enumerated() {
            let field = at.appending("routing_preference[\(index)]")
            switch scope {
            case .region: preferences.append(.region)
            case .zone: preferences.append(.zone)
            case .subzone: preferences.append(.subzone)
            case .node: preferences.append(.node)
            case .cluster: preferences.append(.cluster)
            case .network: preferences.append(.network)
            case .unspecifiedScope: throw field.error("UNSPECIFIED_SCOPE is not a scope")
            case .UNRECOGNIZED(let value): throw field.error(unknownEnum(value, "LoadBalancing.Scope"))
            }
        }
        let mode: LoadBalancer.Mode
        switch lb.mode {
        case .unspecifiedMode: mode = .standard
        case .strict: mode = .strict
        case .failover: mode = .failover
        case .passthrough: mode = .passthrough
        case .UNRECOGNIZED(let value): throw at.error("mode", unknownEnum(value, "LoadBalancing.Mode"))
        }
        let health: LoadBalancer.HealthPolicy
        switch lb.healthPolicy {
        case .onlyHealthy: health = .onlyHealthy
        case .allowAll: health = .allowAll
        case .UNRECOGNIZED(let value): throw at.error("health_policy", unknownEnum(value, "LoadBalancing.HealthPolicy"))
        }
        return LoadBalancer(routingPreferences: preferences, mode: mode, healthPolicy: health)
    }

    // MARK: Authorization

    /// Converts a decoded `Authorization`; `name` is its resource name, for errors.
    public static func authorization(
        _ a: Istio_Security_Authorization, name: String
    ) throws(XDSResourceError) -> AuthorizationPolicy {
        let at = FieldPath(resource: name)
        guard !a.name.isEmpty else { throw at.error("name", "must not be empty") }
        guard !a.namespace.isEmpty else { throw at.error("namespace", "must not be empty") }
        let scope: AuthorizationPolicy.Scope
        switch a.scope {
        case .global: scope = .global
        case .namespace: scope = .namespace
        // Selected by name: workloads list the policy in `authorization_policies`.
        case .workloadSelector: scope = .workloadSelector([:])
        case .UNRECOGNIZED(let value): throw at.error("scope", unknownEnum(value, "Scope"))
        }
        let action: AuthorizationPolicy.Action
        switch a.action {
        case .allow: action = .allow
        case .deny: action = .deny
        case .UNRECOGNIZED(let value): throw at.error("action", unknownEnum(value, "Action"))
        }
        var rules: [[[PolicyMatch]]] = []
        for (r, rule) in a.rules.enumerated() {
            var clauses: [[PolicyMatch]] = []
            for (c, clause) in rule.clauses.enumerated() {
                var matches: [PolicyMatch] = []
                for (m, match) in clause.matches.enumerated() {
                    matches.append(try self.match(match, at.appending("rules[\(r)].clauses[\(c)].matches[\(m)]")))
                }
                clauses.append(matches)
            }
            rules.append(clauses)
        }
        return AuthorizationPolicy(
            name: a.name, namespace: a.namespace, scope: scope, action: action, dryRun: a.dryRun, rules: rules)
    }

    private static func match(_ m: Istio_Security_Match, _ at: FieldPath) throws(XDSResourceError) -> PolicyMatch {
        func strings(_ list: [Istio_Security_StringMatch], _ field: String) throws(XDSResourceError) -> [StringMatch] {
            var result: [StringMatch] = []
            for (index, match) in list.enumerated() {
                switch match.matchType {
                case .exact(let text): result.append(.exact(text))
                case .prefix(let text): result.append(.prefix(text))
                case .suffix(let text): result.append(.suffix(text))
                case .presence: result.append(.presence)
                case nil:
                    throw at.error("\(field)[\(index)]", "a string match with no exact, prefix, suffix or presence")
                }
            }
            return result
        }
        func accounts(_ list: [Istio_Security_ServiceAccountMatch]) -> [StringMatch] {
            list.map { .serviceAccount(namespace: $0.namespace, serviceAccount: $0.serviceAccount) }
        }
        func blocks(_ list: [Istio_Security_Address], _ field: String) throws(XDSResourceError) -> [CIDR] {
            var result: [CIDR] = []
            for (index, block) in list.enumerated() {
                let here = at.appending("\(field)[\(index)]")
                let ip = try self.ip(block.address, here.appending("address"))
                let width: UInt32 = ip.isIPv4 ? 32 : 128
                guard block.length <= width else {
                    throw here.error("length", "prefix length \(block.length) is longer than the \(width)-bit address")
                }
                result.append(CIDR(address: ip, prefixLength: Int(block.length)))
            }
            return result
        }
        func ports(_ list: [UInt32], _ field: String) throws(XDSResourceError) -> [UInt16] {
            var result: [UInt16] = []
            for (index, value) in list.enumerated() {
                result.append(try port(value, at.appending("\(field)[\(index)]")))
            }
            return result
        }
        var match = PolicyMatch()
        match.namespaces = try strings(m.namespaces, "namespaces")
        match.notNamespaces = try strings(m.notNamespaces, "not_namespaces")
        match.principals = try strings(m.principals, "principals").map(\.asPrincipal)
        match.notPrincipals = try strings(m.notPrincipals, "not_principals").map(\.asPrincipal)
        match.serviceAccounts = accounts(m.serviceAccounts)
        match.notServiceAccounts = accounts(m.notServiceAccounts)
        match.sourceIPs = try blocks(m.sourceIps, "source_ips")
        match.notSourceIPs = try blocks(m.notSourceIps, "not_source_ips")
        match.destinationIPs = try blocks(m.destinationIps, "destination_ips")
        match.notDestinationIPs = try blocks(m.notDestinationIps, "not_destination_ips")
        match.destinationPorts = try ports(m.destinationPorts, "destination_ports")
        match.notDestinationPorts = try ports(m.notDestinationPorts, "not_destination_ports")
        return match
    }

    // MARK: Shared pieces

    private static func gateway(_ g: Istio_Workload_GatewayAddress, _ at: FieldPath) throws(XDSResourceError)
        -> GatewayAddress
    {
        let destination: GatewayAddress.Destination
        switch g.destination {
        case .address(let address):
            destination = .address(
                NetworkAddress(network: address.network, ip: try ip(address.address, at.appending("address.address"))))
        case .hostname(let name):
            guard !name.hostname.isEmpty else { throw at.error("hostname.hostname", "must not be empty") }
            destination = .hostname(NamespacedHostname(namespace: name.namespace, hostname: name.hostname))
        case nil:
            throw at.error("destination", "a gateway address needs an address or a hostname")
        }
        let port = try self.port(g.hboneMtlsPort, at.appending("hbone_mtls_port"))
        // proto3 cannot tell 0 from unset: 0 is the HBONE port, as the local file's default.
        return GatewayAddress(destination: destination, hboneMtlsPort: port == 0 ? 15008 : port)
    }

    private static func portMap(
        _ ports: [Istio_Workload_Port], _ at: FieldPath, allowZeroServicePort: Bool
    ) throws(XDSResourceError) -> [UInt16: UInt16] {
        var map: [UInt16: UInt16] = [:]
        for (index, entry) in ports.enumerated() {
            let field = at.appending("[\(index)]", separator: "")
            let servicePort = try port(entry.servicePort, field.appending("service_port"))
            if servicePort == 0 && !allowZeroServicePort { throw field.error("service_port", "0 is not a port") }
            map[servicePort] = try port(entry.targetPort, field.appending("target_port"))
        }
        return map
    }

    private static func port(_ value: UInt32, _ at: FieldPath) throws(XDSResourceError) -> UInt16 {
        guard let port = UInt16(exactly: value) else { throw at.error("\(value) is not a port (0-65535)") }
        return port
    }

    private static func ip(_ bytes: Data, _ at: FieldPath) throws(XDSResourceError) -> IPAddress {
        guard let ip = IPAddress(bytes: bytes) else {
            throw at.error("an IP address is 4 or 16 bytes, got \(bytes.count)")
        }
        return ip
    }

    private static func unknownEnum(_ value: Int, _ type: String) -> String {
        "unknown \(type) value \(value)"
    }
}

/// Where in a resource a conversion is, for its errors.
struct FieldPath {
    let resource: String
    private(set) var path: String = ""

    init(resource: String) { self.resource = resource }

    mutating func push(_ field: String) {
        path = path.isEmpty ? field : "\(path).\(field)"
    }

    func appending(_ field: String, separator: String = ".") -> FieldPath {
        var copy = self
        copy.path = path.isEmpty ? field : "\(path)\(separator)\(field)"
        return copy
    }

    func error(_ reason: String) -> XDSResourceError {
        XDSResourceError(resource: resource, field: path, reason: reason)
    }

    func error(_ field: String, _ reason: String) -> XDSResourceError {
        appending(field).error(reason)
    }
}
