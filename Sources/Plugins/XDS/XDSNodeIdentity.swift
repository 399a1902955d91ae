public import IstioXDSAPI
import SwiftProtobuf

/// Who the node proxy says it is to istiod: the `Node` of every initial request, built
/// as ztunnel builds it so that istiod treats Ambit as a ztunnel.
///
/// - id: `ztunnel~<INSTANCE_IP>~<POD_NAME>.<POD_NAMESPACE>~<POD_NAMESPACE>.svc.cluster.local`
///   (istiod splits it on `~`; `1.1.1.1` stands in for a missing IP, as in ztunnel);
/// - metadata: `NAME` (POD_NAME), `NAMESPACE` (POD_NAMESPACE), `INSTANCE_IPS`
///   (INSTANCE_IP), `NODE_NAME`, and every `ISTIO_META_<K>=<v>` as `<K>: <v>` (the chart
///   sets `ISTIO_META_CLUSTER_ID`, which becomes `CLUSTER_ID`).
public struct XDSNodeIdentity: Sendable, Hashable {
    /// The pod's name (`POD_NAME`).
    public var podName: String
    /// The pod's namespace (`POD_NAMESPACE`).
    public var podNamespace: String
    /// The pod's IP (`INSTANCE_IP`).
    public var instanceIP: String
    /// The Kubernetes node (`NODE_NAME`).
    public var nodeName: String
    /// Extra metadata, from `ISTIO_META_*` with the prefix stripped.
    public var metadata: [String: String]

    /// Creates an identity from its parts.
    public init(
        podName: String, podNamespace: String, instanceIP: String, nodeName: String, metadata: [String: String] = [:]
    ) {
        self.podName = podName
        self.podNamespace = podNamespace
        self.instanceIP = instanceIP
        self.nodeName = nodeName
        self.metadata = metadata
    }

    /// Reads ztunnel's environment variables. `fallbackNodeName` (the manifest's
    /// `node.name`) stands in for a missing `NODE_NAME`.
    public init(environment: [String: String], fallbackNodeName: String = "") {
        var extra: [String: String] = [:]
        for (key, value) in environment where key.hasPrefix("ISTIO_META_") && key.count > "ISTIO_META_".count {
            extra[String(key.dropFirst("ISTIO_META_".count))] = value
        }
        self.init(
            podName: environment["POD_NAME"] ?? "", podNamespace: environment["POD_NAMESPACE"] ?? "",
            instanceIP: environment["INSTANCE_IP"] ?? "",
            nodeName: environment["NODE_NAME"].flatMap { $0.isEmpty ? nil : $0 } ?? fallbackNodeName, metadata: extra)
    }

    /// `ztunnel~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local`.
    public var id: String {
        let ip = instanceIP.isEmpty ? "1.1.1.1" : instanceIP
        return "ztunnel~\(ip)~\(podName).\(podNamespace)~\(podNamespace).svc.cluster.local"
    }

    /// The metadata sent, `ISTIO_META_*` entries first so the fixed keys win a clash.
    public var metadataFields: [String: String] {
        var fields = metadata
        fields["NAME"] = podName
        fields["NAMESPACE"] = podNamespace
        fields["INSTANCE_IPS"] = instanceIP
        fields["NODE_NAME"] = nodeName
        return fields
    }

    /// The `Node` message.
    public var node: Envoy_Service_Discovery_V3_Node {
        var node = Envoy_Service_Discovery_V3_Node()
        node.id = id
        node.metadata = Google_Protobuf_Struct(
            fields: metadataFields.mapValues { Google_Protobuf_Value(stringValue: $0) })
        return node
    }
}
