import AmbitRuntime
public import Kernel

extension ConnectionAttributes {
    /// An mTLS (HBONE) connection from `identity` (`spiffe://td/ns/NS/sa/SA` or the
    /// principal `td/ns/NS/sa/SA`): what a policy sees for a peer that proved its
    /// identity. Addresses are `ip` / `ip:port` text; invalid text stops the test.
    public static func mTLS(
        from identity: String, sourceIP: String = "10.0.0.1", sourceWorkload: Workload? = nil,
        to destination: String = "10.0.0.2:8080", destinationWorkload: Workload? = nil
    ) -> ConnectionAttributes {
        ConnectionAttributes(
            sourceIdentity: TestValues.identity(identity), sourceAddress: TestValues.address(sourceIP, port: 40000),
            sourceWorkload: sourceWorkload, destinationAddress: TestValues.address(destination),
            destinationWorkload: destinationWorkload, isMutualTLS: true)
    }

    /// A plaintext connection: no identity, only a source address.
    public static func plaintext(
        from sourceIP: String = "10.0.0.1", sourceWorkload: Workload? = nil, to destination: String = "10.0.0.2:8080",
        destinationWorkload: Workload? = nil
    ) -> ConnectionAttributes {
        ConnectionAttributes(
            sourceIdentity: nil, sourceAddress: TestValues.address(sourceIP, port: 40000), sourceWorkload: sourceWorkload,
            destinationAddress: TestValues.address(destination), destinationWorkload: destinationWorkload,
            isMutualTLS: false)
    }
}

extension Workload {
    /// A workload for tests: the service account defaults to the name, the uid follows
    /// Kubernetes' form, labels and node as given.
    public static func test(
        name: String, namespace: String = "default", serviceAccount: String? = nil, ip: String = "10.0.0.2",
        node: String = "node-a", labels: [String: String] = [:]
    ) -> Workload {
        Workload(
            uid: "Kubernetes//Pod/\(namespace)/\(name)", name: name, namespace: namespace,
            serviceAccount: serviceAccount ?? name, workloadIPs: [TestValues.ip(ip)], node: node, labels: labels)
    }
}

/// Parsing of test literals; a typo is a bug in the test, so it stops with a message.
enum TestValues {
    static func identity(_ text: String) -> SpiffeID {
        let full = text.hasPrefix("spiffe://") ? text : "spiffe://" + text
        guard let id = try? SpiffeID(parsing: full) else { fatalError("not a SPIFFE ID: \(text)") }
        return id
    }

    static func ip(_ text: String) -> IPAddress {
        guard let ip = IPAddress(text) else { fatalError("not an IP address: \(text)") }
        return ip
    }

    static func address(_ text: String, port: UInt16 = 0) -> SocketAddr {
        if let address = SocketAddr(text) { return address }
        return SocketAddr(ip: ip(text), port: port)
    }
}
