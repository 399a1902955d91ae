import Foundation
import IstioXDSAPI
import Kernel
import SwiftProtobuf
import Testing
import XDS

func workloadMessage(uid: String, ip: String, node: String = "node-a", services: [String: [(UInt32, UInt32)]] = [:])
    -> Istio_Workload_Workload
{
    var w = Istio_Workload_Workload()
    w.uid = uid
    w.name = String(uid.split(separator: "/").last ?? "")
    w.namespace = "default"
    w.addresses = [ipBytes(ip)]
    w.node = node
    for (key, ports) in services {
        var list = Istio_Workload_PortList()
        list.ports = portList(ports)
        w.services[key] = list
    }
    return w
}

func response(
    _ typeURL: String, nonce: String, resources: [Envoy_Service_Discovery_V3_Resource], removed: [String] = []
) -> Envoy_Service_Discovery_V3_DeltaDiscoveryResponse {
    var response = Envoy_Service_Discovery_V3_DeltaDiscoveryResponse()
    response.typeURL = typeURL
    response.nonce = nonce
    response.resources = resources
    response.removedResources = removed
    return response
}

@Suite("xds: the delta subscription state")
struct XDSSubscriptionsTests {
    @Test("a push is applied whole and ACKed with its nonce")
    func ack() {
        var subscriptions = XDSSubscriptions()
        let mesh = MeshStore()
        let origin = mesh.origin(named: "xds")
        var service = Istio_Workload_Service()
        service.name = "echo"
        service.namespace = "default"
        service.hostname = "echo.default.svc.cluster.local"
        let outcome = subscriptions.handle(
            response(
                WorkloadAPI.addressTypeURL, nonce: "n1",
                resources: [
                    addressResource(
                        "c//v1/Pod/default/a", workload: workloadMessage(uid: "c//v1/Pod/default/a", ip: "10.0.0.1"),
                        version: "v1"),
                    addressResource("default/echo.default.svc.cluster.local", service: service, version: "v2"),
                ]))
        #expect(outcome.reply.typeURL == WorkloadAPI.addressTypeURL)
        #expect(outcome.reply.responseNonce == "n1")
        #expect(!outcome.reply.hasErrorDetail)
        #expect(outcome.firstOfType)
        #expect(outcome.upserted == 2)
        let snapshot = mesh.apply(outcome.delta, from: origin)
        #expect(snapshot.workloads["c//v1/Pod/default/a"]?.workloadIPs == [IPAddress("10.0.0.1")!])
        #expect(
            snapshot.services[NamespacedHostname(namespace: "default", hostname: "echo.default.svc.cluster.local")]
                != nil)
        #expect(!subscriptions.isSynced)
        let second = subscriptions.handle(response(WorkloadAPI.authorizationTypeURL, nonce: "n2", resources: []))
        #expect(second.firstOfType)
        #expect(subscriptions.isSynced)
        #expect(
            subscriptions.types[WorkloadAPI.addressTypeURL]?.versions == [
                "c//v1/Pod/default/a": "v1", "default/echo.default.svc.cluster.local": "v2",
            ])
    }

    @Test("one bad resource is NACKed by name and reason; the rest of the push is applied")
    func partialAcceptance() {
        var subscriptions = XDSSubscriptions()
        let mesh = MeshStore()
        let origin = mesh.origin(named: "xds")
        var bad = workloadMessage(uid: "c//v1/Pod/default/bad", ip: "10.0.0.2")
        bad.addresses = [Data([1, 2, 3, 4, 5])]
        var badKey = workloadMessage(uid: "c//v1/Pod/default/badkey", ip: "10.0.0.3")
        badKey.services["nohost"] = Istio_Workload_PortList()
        let outcome = subscriptions.handle(
            response(
                WorkloadAPI.addressTypeURL, nonce: "n1",
                resources: [
                    addressResource(
                        "c//v1/Pod/default/good",
                        workload: workloadMessage(uid: "c//v1/Pod/default/good", ip: "10.0.0.1")),
                    addressResource("c//v1/Pod/default/bad", workload: bad),
                    addressResource("c//v1/Pod/default/badkey", workload: badKey),
                ]))
        #expect(outcome.reply.responseNonce == "n1")
        #expect(outcome.reply.errorDetail.code == 0)
        #expect(
            outcome.reply.errorDetail.message == """
                c//v1/Pod/default/bad: workload.addresses[0]: an IP address is 4 or 16 bytes, got 5; \
                c//v1/Pod/default/badkey: workload.services["nohost"]: expected a namespace/hostname key
                """)
        #expect(outcome.rejected.map(\.resource) == ["c//v1/Pod/default/bad", "c//v1/Pod/default/badkey"])
        let snapshot = mesh.apply(outcome.delta, from: origin)
        #expect(Set(snapshot.workloads.keys) == ["c//v1/Pod/default/good"])
        // Rejected names are left out of the versions a new stream reports.
        let initial = subscriptions.initialRequests(node: Envoy_Service_Discovery_V3_Node())
        #expect(initial.map(\.typeURL) == [WorkloadAPI.addressTypeURL, WorkloadAPI.authorizationTypeURL])
        #expect(initial[0].initialResourceVersions == ["c//v1/Pod/default/good": "1"])
        #expect(
            subscriptions.types[WorkloadAPI.addressTypeURL]?.rejected.keys.sorted() == [
                "c//v1/Pod/default/bad", "c//v1/Pod/default/badkey",
            ])
    }

    @Test("a resource that turns bad keeps its last good version in the mesh; a fixed one clears the rejection")
    func lastGoodState() {
        var subscriptions = XDSSubscriptions()
        let mesh = MeshStore()
        let origin = mesh.origin(named: "xds")
        let name = "c//v1/Pod/default/a"
        mesh.apply(
            subscriptions.handle(
                response(
                    WorkloadAPI.addressTypeURL, nonce: "n1",
                    resources: [
                        addressResource(name, workload: workloadMessage(uid: name, ip: "10.0.0.1"), version: "1")
                    ])
            ).delta, from: origin)
        var bad = workloadMessage(uid: name, ip: "10.0.0.1")
        bad.tunnelProtocol = .UNRECOGNIZED(42)
        let rejected = subscriptions.handle(
            response(
                WorkloadAPI.addressTypeURL, nonce: "n2", resources: [addressResource(name, workload: bad, version: "2")]
            ))
        #expect(
            rejected.reply.errorDetail.message.contains(
                "\(name): workload.tunnel_protocol: unknown TunnelProtocol value 42"))
        #expect(mesh.apply(rejected.delta, from: origin).workloads[name]?.workloadIPs == [IPAddress("10.0.0.1")!])
        #expect(
            subscriptions.initialRequests(node: Envoy_Service_Discovery_V3_Node())[0].initialResourceVersions.isEmpty)
        let fixed = subscriptions.handle(
            response(
                WorkloadAPI.addressTypeURL, nonce: "n3",
                resources: [
                    addressResource(name, workload: workloadMessage(uid: name, ip: "10.0.0.9"), version: "3")
                ]))
        #expect(!fixed.reply.hasErrorDetail)
        #expect(mesh.apply(fixed.delta, from: origin).workloads[name]?.workloadIPs == [IPAddress("10.0.0.9")!])
        #expect(subscriptions.types[WorkloadAPI.addressTypeURL]?.rejected.isEmpty == true)
    }

    @Test("removed_resources remove workloads by uid, services by namespace/hostname and policies by namespace/name")
    func removals() {
        var subscriptions = XDSSubscriptions()
        let mesh = MeshStore()
        let origin = mesh.origin(named: "xds")
        var service = Istio_Workload_Service()
        service.namespace = "default"
        service.hostname = "echo.default.svc.cluster.local"
        var policy = Istio_Security_Authorization()
        policy.name = "deny"
        policy.namespace = "default"
        mesh.apply(
            subscriptions.handle(
                response(
                    WorkloadAPI.addressTypeURL, nonce: "n1",
                    resources: [
                        addressResource("w1", workload: workloadMessage(uid: "w1", ip: "10.0.0.1")),
                        addressResource("w2", workload: workloadMessage(uid: "w2", ip: "10.0.0.2")),
                        addressResource("default/echo.default.svc.cluster.local", service: service),
                    ])
            ).delta, from: origin)
        mesh.apply(
            subscriptions.handle(
                response(WorkloadAPI.authorizationTypeURL, nonce: "n2", resources: [resource("default/deny", policy)])
            ).delta, from: origin)
        #expect(mesh.snapshot.policies["default/deny"] != nil)
        let removal = subscriptions.handle(
            response(
                WorkloadAPI.addressTypeURL, nonce: "n3", resources: [],
                removed: ["w1", "default/echo.default.svc.cluster.local", "never-seen"]))
        #expect(removal.removed == 3)
        let snapshot = mesh.apply(removal.delta, from: origin)
        #expect(Set(snapshot.workloads.keys) == ["w2"])
        #expect(snapshot.services.isEmpty)
        let policyRemoval = subscriptions.handle(
            response(WorkloadAPI.authorizationTypeURL, nonce: "n4", resources: [], removed: ["default/deny"]))
        #expect(mesh.apply(policyRemoval.delta, from: origin).policies.isEmpty)
        #expect(subscriptions.types[WorkloadAPI.addressTypeURL]?.versions.keys.sorted() == ["w2"])
        #expect(subscriptions.types[WorkloadAPI.authorizationTypeURL]?.versions.isEmpty == true)
    }

    @Test("an unnamed resource and a type not subscribed to are NACKed")
    func malformedResponses() {
        var subscriptions = XDSSubscriptions()
        var unnamed = addressResource("x", workload: workloadMessage(uid: "x", ip: "10.0.0.1"))
        unnamed.name = ""
        let outcome = subscriptions.handle(response(WorkloadAPI.addressTypeURL, nonce: "n1", resources: [unnamed]))
        #expect(outcome.reply.errorDetail.message == "resources[0]: name: must not be empty")
        let other = subscriptions.handle(
            response("type.googleapis.com/envoy.config.cluster.v3.Cluster", nonce: "n2", resources: []))
        #expect(other.reply.responseNonce == "n2")
        #expect(other.reply.errorDetail.message.contains("is not subscribed to"))
    }

    @Test("initial requests carry the node, a wildcard subscription and the versions held, Address first")
    func initialRequests() {
        var subscriptions = XDSSubscriptions()
        _ = subscriptions.handle(
            response(
                WorkloadAPI.authorizationTypeURL, nonce: "n1",
                resources: [
                    resource(
                        "default/p",
                        { () -> Istio_Security_Authorization in
                            var p = Istio_Security_Authorization()
                            p.name = "p"
                            p.namespace = "default"
                            return p
                        }(), version: "7")
                ]))
        let identity = XDSNodeIdentity(
            podName: "ztunnel-abc", podNamespace: "istio-system", instanceIP: "10.1.2.3", nodeName: "node-a")
        let requests = subscriptions.initialRequests(node: identity.node)
        #expect(
            requests.map(\.typeURL) == [
                "type.googleapis.com/istio.workload.Address", "type.googleapis.com/istio.security.Authorization",
            ])
        #expect(
            requests.allSatisfy {
                $0.node.id == identity.id && $0.resourceNamesSubscribe.isEmpty && $0.resourceNamesUnsubscribe.isEmpty
                    && $0.responseNonce.isEmpty
            })
        #expect(requests[0].initialResourceVersions.isEmpty)
        #expect(requests[1].initialResourceVersions == ["default/p": "7"])
    }

    @Test("the node id and metadata are ztunnel's, from its environment variables")
    func nodeIdentity() {
        let identity = XDSNodeIdentity(
            environment: [
                "POD_NAME": "ztunnel-abc", "POD_NAMESPACE": "istio-system", "INSTANCE_IP": "10.1.2.3",
                "NODE_NAME": "worker-1",
                "ISTIO_META_CLUSTER_ID": "cluster1", "ISTIO_META_DNS_CAPTURE": "true", "ISTIO_META_": "ignored",
                "PATH": "/bin",
            ], fallbackNodeName: "manifest-node")
        #expect(identity.id == "ztunnel~10.1.2.3~ztunnel-abc.istio-system~istio-system.svc.cluster.local")
        #expect(
            identity.metadataFields == [
                "NAME": "ztunnel-abc", "NAMESPACE": "istio-system", "INSTANCE_IPS": "10.1.2.3", "NODE_NAME": "worker-1",
                "CLUSTER_ID": "cluster1", "DNS_CAPTURE": "true",
            ])
        let node = identity.node
        #expect(node.metadata.fields["NODE_NAME"]?.stringValue == "worker-1")
        #expect(node.metadata.fields["CLUSTER_ID"]?.stringValue == "cluster1")
        let bare = XDSNodeIdentity(environment: [:], fallbackNodeName: "manifest-node")
        #expect(bare.id == "ztunnel~1.1.1.1~.~.svc.cluster.local")
        #expect(bare.nodeName == "manifest-node")
    }

    @Test("the address takes host:port, [v6]:port and https://")
    func endpoints() {
        #expect(XDSEndpoint("istiod.istio-system.svc:15012")?.host == "istiod.istio-system.svc")
        #expect(XDSEndpoint("https://istiod.istio-system.svc:15012")?.port == 15012)
        #expect(XDSEndpoint("[fd00::1]:15012")?.host == "fd00::1")
        #expect(XDSEndpoint("[fd00::1]:15012")?.description == "[fd00::1]:15012")
        #expect(XDSEndpoint("istiod") == nil)
        #expect(XDSEndpoint("istiod:0") == nil)
        #expect(XDSEndpoint("istiod:99999") == nil)
    }
}
