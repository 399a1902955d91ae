/// The ports an Istio ambient proxy listens on (the facts file's port table), which no
/// tunnel or captured connection may name as its destination.
public enum ProxyPorts {
    /// Outbound capture 15001, inbound plaintext 15006, HBONE 15008, SOCKS5 15080.
    public static let own: Set<UInt16> = [15001, 15006, 15008, 15080]
    /// The port HBONE-capable proxies accept tunnels on.
    public static let hbone: UInt16 = 15008
}
