public import IstioXDSAPI
public import Kernel
import SwiftProtobuf

/// The client side of a delta xDS session for the Workload API's two wildcard types, as
/// a value: what to send when a stream opens, and what each response becomes (a mesh
/// delta and the ACK or NACK to send back). No sockets, so it is tested on its own; the
/// ``XDSPlugin`` drives it from the gRPC stream.
///
/// It outlives streams: after a reconnect the first request of each type carries the
/// versions held (``initialRequests(node:)``), names rejected last time left out so that
/// istiod sends them again.
public struct XDSSubscriptions: Sendable {
    /// The types subscribed to, in the order their initial requests go out (Address
    /// first, as ztunnel does).
    public static let typeURLs = [WorkloadAPI.addressTypeURL, WorkloadAPI.authorizationTypeURL]

    /// What is known of one type.
    public struct TypeState: Sendable, Encodable {
        /// The type URL.
        public var typeURL: String
        /// Accepted resources: name → the version istiod gave it.
        public var versions: [String: String] = [:]
        /// Resources rejected by their last push: name → why. Their last good version (if
        /// any) stays in the mesh.
        public var rejected: [String: XDSResourceError] = [:]
        /// The nonce of the last response handled.
        public var lastNonce: String?
        /// Its `system_version_info`.
        public var lastSystemVersion: String?
        /// Responses handled, all streams together.
        public var responses: Int = 0
        /// Whether a response of this type has been applied (and answered) since the
        /// plugin started: readiness waits for both types.
        public var synced: Bool = false
        /// Resource name → the mesh key it was stored under, for removals.
        var keys: [String: MeshKey] = [:]

        enum CodingKeys: String, CodingKey {
            case typeURL, versions, rejected, lastNonce, lastSystemVersion, responses, synced
        }

        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(typeURL, forKey: .typeURL)
            try c.encode(versions, forKey: .versions)
            try c.encode(rejected.mapValues(\.description), forKey: .rejected)
            try c.encodeIfPresent(lastNonce, forKey: .lastNonce)
            try c.encodeIfPresent(lastSystemVersion, forKey: .lastSystemVersion)
            try c.encode(responses, forKey: .responses)
            try c.encode(synced, forKey: .synced)
        }
    }

    /// Where a resource went in the mesh store.
    enum MeshKey: Sendable, Hashable {
        case workload(String)
        case service(NamespacedHostname)
        case policy(String)
    }

    /// What one response became.
    public struct Outcome: Sendable {
        /// The changes to apply to the mesh store, all at once.
        public var delta: MeshDelta
        /// The ACK, or the NACK naming every rejected resource.
        public var reply: Envoy_Service_Discovery_V3_DeltaDiscoveryRequest
        /// The resources rejected by this response.
        public var rejected: [XDSResourceError]
        /// Resources upserted.
        public var upserted: Int
        /// Names removed.
        public var removed: Int
        /// Whether this was the first response of its type since the plugin started.
        public var firstOfType: Bool
    }

    /// Per type URL.
    public private(set) var types: [String: TypeState]

    /// A session with nothing received yet.
    public init() {
        types = Dictionary(uniqueKeysWithValues: Self.typeURLs.map { ($0, TypeState(typeURL: $0)) })
    }

    /// Whether a response of every type has been applied and answered.
    public var isSynced: Bool { types.values.allSatisfy(\.synced) }

    /// The first request of each type on a new stream: the node, the type, a wildcard
    /// subscription (no names), and the versions held minus the rejected names.
    public func initialRequests(node: Envoy_Service_Discovery_V3_Node)
        -> [Envoy_Service_Discovery_V3_DeltaDiscoveryRequest]
    {
        Self.typeURLs.map { typeURL in
            var request = Envoy_Service_Discovery_V3_DeltaDiscoveryRequest()
            request.node = node
            request.typeURL = typeURL
            if let state = types[typeURL] {
                request.initialResourceVersions = state.versions.filter { state.rejected[$0.key] == nil }
            }
            return request
        }
    }

    /// Converts a response into a mesh delta and the reply to send once it is applied.
    /// Bad resources are rejected one by one (their last good version stays); the good
    /// ones of the same response are taken (ztunnel's partial acceptance). A response of
    /// a type not subscribed to is NACKed whole.
    public mutating func handle(_ response: Envoy_Service_Discovery_V3_DeltaDiscoveryResponse) -> Outcome {
        var reply = Envoy_Service_Discovery_V3_DeltaDiscoveryRequest()
        reply.typeURL = response.typeURL
        reply.responseNonce = response.nonce
        // Taken out of the dictionary (and put back at the end) so the writes below
        // mutate it in place instead of copying its maps (O(resources)) per response.
        guard var state = types.removeValue(forKey: response.typeURL) else {
            reply.errorDetail = Google_Rpc_Status.with {
                $0.message = "type \(response.typeURL.isEmpty ? "(empty)" : response.typeURL) is not subscribed to"
            }
            return Outcome(delta: MeshDelta(), reply: reply, rejected: [], upserted: 0, removed: 0, firstOfType: false)
        }
        var delta = MeshDelta()
        var rejected: [XDSResourceError] = []
        var upserted = 0
        for (index, resource) in response.resources.enumerated() {
            guard !resource.name.isEmpty else {
                rejected.append(
                    XDSResourceError(resource: "resources[\(index)]", field: "name", reason: "must not be empty"))
                continue
            }
            do throws(XDSResourceError) {
                let key: MeshKey
                switch response.typeURL {
                case WorkloadAPI.addressTypeURL:
                    switch try WorkloadAPI.address(from: resource) {
                    case .workload(let workload):
                        key = .workload(workload.uid)
                        Self.remove(state.keys[resource.name], unless: key, from: &delta)
                        delta.upsert(workload)
                    case .service(let service):
                        key = .service(service.namespacedHostname)
                        Self.remove(state.keys[resource.name], unless: key, from: &delta)
                        delta.upsert(service)
                    }
                default:
                    let policy = try WorkloadAPI.authorization(from: resource)
                    key = .policy(policy.key)
                    Self.remove(state.keys[resource.name], unless: key, from: &delta)
                    delta.upsert(policy)
                }
                state.keys[resource.name] = key
                state.versions[resource.name] = resource.version
                state.rejected[resource.name] = nil
                upserted += 1
            } catch {
                rejected.append(error)
                state.rejected[resource.name] = error
                // Not in initial_resource_versions any more, so a new stream asks again.
                state.versions[resource.name] = nil
            }
        }
        for name in response.removedResources {
            if let key = state.keys[name] {
                Self.remove(key, unless: nil, from: &delta)
            } else if response.typeURL == WorkloadAPI.addressTypeURL {
                // Never stored under this name (e.g. rejected when first sent): try it
                // as a workload uid, then as a service's namespace/hostname.
                delta.remove(Workload.self, key: name)
                if let service = NamespacedHostname(name) { delta.remove(Service.self, key: service) }
            } else {
                delta.remove(AuthorizationPolicy.self, key: name)
            }
            state.keys[name] = nil
            state.versions[name] = nil
            state.rejected[name] = nil
        }
        if !rejected.isEmpty {
            reply.errorDetail = Google_Rpc_Status.with {
                $0.message = rejected.map(\.description).joined(separator: "; ")
            }
        }
        let first = !state.synced
        state.synced = true
        state.responses += 1
        state.lastNonce = response.nonce
        state.lastSystemVersion = response.systemVersionInfo
        types[response.typeURL] = state
        return Outcome(
            delta: delta, reply: reply, rejected: rejected, upserted: upserted,
            removed: response.removedResources.count,
            firstOfType: first)
    }

    private static func remove(_ key: MeshKey?, unless kept: MeshKey?, from delta: inout MeshDelta) {
        guard let key, key != kept else { return }
        switch key {
        case .workload(let uid): delta.remove(Workload.self, key: uid)
        case .service(let name): delta.remove(Service.self, key: name)
        case .policy(let name): delta.remove(AuthorizationPolicy.self, key: name)
        }
    }
}
