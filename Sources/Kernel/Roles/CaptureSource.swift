/// Role ``PluginRole/capture``: a plugin that takes application connections (SOCKS5,
/// in-pod redirection) and hands them to the outbound or inbound path.
public protocol CaptureSource: AnyObject, Sendable {
    /// The addresses it listens on, once bound (empty before ``Plugin/run()``).
    var captureAddresses: [SocketAddr] { get }
}
