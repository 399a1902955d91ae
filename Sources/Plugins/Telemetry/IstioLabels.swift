public import Kernel

/// The label set of Istio's standard TCP metrics for one connection, in Istio's label
/// order, then ztunnel's four locality labels. Every label is always present; a value the node does not know is `unknown`,
/// so dashboards built for Istio (which group by these labels) work unchanged.
public struct IstioLabels: Sendable, Hashable {
    /// Istio's label names, in the order they are rendered.
    public static let names: [String] = [
        "reporter",
        "source_workload", "source_canonical_service", "source_canonical_revision",
        "source_workload_namespace", "source_principal", "source_app", "source_version", "source_cluster",
        "destination_service", "destination_service_namespace", "destination_service_name",
        "destination_workload", "destination_canonical_service", "destination_canonical_revision",
        "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
        "destination_cluster",
        "request_protocol", "response_flags", "connection_security_policy",
        // ztunnel's locality labels, after Istio's standard set as it renders them.
        "source_region", "source_zone", "destination_region", "destination_zone",
    ]

    /// The value Istio uses for anything it does not know.
    public static let unknown = "unknown"

    /// Values in the order of ``names``.
    public let values: [String]

    /// The value of label `name`, or nil for a name Istio does not use.
    public subscript(name: String) -> String? {
        Self.names.firstIndex(of: name).map { values[$0] }
    }

    /// The index of `response_flags` in ``names``.
    static let responseFlagsIndex = names.firstIndex(of: "response_flags")!

    /// The same labels with `response_flags` set to `flag`.
    func with(flag: ResponseFlag) -> IstioLabels {
        var values = values
        values[Self.responseFlagsIndex] = flag.rawValue
        return IstioLabels(values: values)
    }

    private init(values: [String]) {
        self.values = values
    }

    /// `(name, value)` pairs, as the Prometheus registry takes them.
    public var pairs: [(String, String)] { Array(zip(Self.names, values)) }

    /// The labels for `connection` as the node reports it.
    ///
    /// - `reporter`: `source` for outbound (this node speaks for the client), `destination`
    ///   for inbound.
    /// - Destination workload: the record's (through a waypoint the outbound path records
    ///   the waypoint, so the source reporter names it, as ztunnel does).
    /// - Principals: the destination's is its workload's SPIFFE identity (as ztunnel
    ///   reports it); the source's is only claimed when it is authenticated: the peer's
    ///   verified identity inbound, the local workload's own identity outbound over mutual
    ///   TLS (the node presents that identity's certificate).
    /// - `connection_security_policy`: `mutual_tls` for HBONE, else `unknown`.
    /// - `response_flags`: `flag` (the record's own flag when nil, else `-`).
    /// - Locality: `source_region`, `source_zone`, `destination_region`,
    ///   `destination_zone` from each workload's ``Workload/locality`` (the subzone is no
    ///   label), as ztunnel adds them.
    public init(_ connection: ConnectionRecord, flag: ResponseFlag? = nil) {
        let source = connection.sourceWorkload.map(WorkloadLabels.init)
        let destination = connection.destinationWorkload.map(WorkloadLabels.init)
        let service = connection.destinationService
        let sourcePrincipal: String?
        switch connection.direction {
        case .inbound:
            sourcePrincipal = connection.peerIdentity?.description
        case .outbound:
            sourcePrincipal = connection.isMutualTLS ? connection.sourceWorkload?.identity.description : nil
        }
        let known = { (value: String?) -> String in
            guard let value, !value.isEmpty else { return Self.unknown }
            return value
        }
        values = [
            connection.direction == .outbound ? "source" : "destination",
            known(source?.workload), known(source?.canonicalService), known(source?.canonicalRevision),
            known(source?.namespace), known(sourcePrincipal), known(source?.app), known(source?.version),
            known(source?.cluster),
            known(service?.hostname), known(service?.namespace), known(service?.name),
            known(destination?.workload), known(destination?.canonicalService),
            known(destination?.canonicalRevision), known(destination?.namespace),
            known(destination?.principal), known(destination?.app), known(destination?.version),
            known(destination?.cluster),
            "tcp", (flag ?? connection.responseFlag ?? .noFlag).rawValue,
            connection.isMutualTLS ? "mutual_tls" : Self.unknown,
            known(source?.region), known(source?.zone), known(destination?.region), known(destination?.zone),
        ]
    }
}

/// The labels one workload contributes, derived from the mesh model the way Istio derives
/// them from pod labels.
struct WorkloadLabels: Sendable, Hashable {
    var workload: String
    var canonicalService: String
    var canonicalRevision: String
    var namespace: String
    var principal: String
    var app: String
    var version: String
    var cluster: String
    var region: String
    var zone: String

    /// - `workload`: the owning workload (Deployment) name, else the pod name, as istiod
    ///   names bare pods.
    /// - canonical service: `canonicalName`, else label `service.istio.io/canonical-name`,
    ///   `app.kubernetes.io/name`, `app`, else the workload name (Istio's order).
    /// - canonical revision: `canonicalRevision`, else label
    ///   `service.istio.io/canonical-revision`, `app.kubernetes.io/version`, `version`,
    ///   else `latest`.
    /// - `app` / `version`: labels `app` / `version`, else the canonical service /
    ///   revision (ztunnel reports the canonical values there).
    /// - `region` / `zone`: the workload's locality (empty when unknown).
    init(_ workload: Workload) {
        let labels = workload.labels
        let name = workload.workloadName.isEmpty ? workload.name : workload.workloadName
        self.workload = name
        canonicalService = Self.first(
            workload.canonicalName, labels["service.istio.io/canonical-name"], labels["app.kubernetes.io/name"],
            labels["app"]) ?? name
        canonicalRevision = Self.first(
            workload.canonicalRevision, labels["service.istio.io/canonical-revision"],
            labels["app.kubernetes.io/version"], labels["version"]) ?? "latest"
        namespace = workload.namespace
        principal = workload.identity.description
        app = Self.first(labels["app"]) ?? canonicalService
        version = Self.first(labels["version"]) ?? canonicalRevision
        cluster = workload.clusterID
        region = workload.locality.region
        zone = workload.locality.zone
    }

    /// One string that changes whenever a label this workload contributes changes; a
    /// series keeps the fingerprints it was made with to notice a workload that left or
    /// was relabelled.
    var fingerprint: String {
        [workload, canonicalService, canonicalRevision, namespace, principal, app, version, cluster, region, zone]
            .joined(separator: "\u{0}")
    }

    private static func first(_ candidates: String?...) -> String? {
        candidates.lazy.compactMap { $0 }.first { !$0.isEmpty }
    }
}
