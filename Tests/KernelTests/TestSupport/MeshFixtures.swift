import Kernel

// Parsers for the literals the mesh-model tests write (forwarding and inbound decisions);
// a bad literal is a bug in the test, so it stops the test binary.

func ip(_ text: String) -> IPAddress {
    guard let address = IPAddress(text) else { fatalError("bad test IP \(text)") }
    return address
}

func addr(_ text: String) -> SocketAddr {
    guard let address = SocketAddr(text) else { fatalError("bad test address \(text)") }
    return address
}

func name(_ text: String) -> NamespacedHostname {
    guard let name = NamespacedHostname(text) else { fatalError("bad test name \(text)") }
    return name
}
