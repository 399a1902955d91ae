import FuzzSupport
import Kernel

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// The plugin API's address parser and printer (Swift, no C library) against the C
/// library's `inet_pton` and `inet_ntop`, over arbitrary text: HBONE authorities, SOCKS5
/// and config all reach this parser with untrusted input.
///
/// Invariants: `IPAddress(text)` accepts exactly what `inet_pton` accepts, with the same
/// bytes; every parsed address prints as `inet_ntop` prints it and reads back equal;
/// `SocketAddr` and `CIDR` never crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    let text = String(decoding: bytes, as: UTF8.self)
    let ours = IPAddress(text)
    invariant(ours?.bytes == reference(text), "IPAddress(\"\(text)\") = \(String(describing: ours)) differs from inet_pton")
    if let ours {
        invariant(IPAddress(ours.description) == ours, "\(ours) does not read back")
        if !ours.isIPv4 {
            invariant(ours.description == referenceText(ours.bytes), "\(ours) prints unlike inet_ntop")
        }
    }
    _ = SocketAddr(text)
    _ = CIDR(text)
    if bytes.count == 16, let address = IPAddress(bytes: bytes) {
        invariant(address.description == referenceText(bytes), "\(address) prints unlike inet_ntop")
        invariant(IPAddress(address.description) == address, "\(address) does not read back")
    }
    return 0
}

private func reference(_ text: String) -> [UInt8]? {
    guard !text.utf8.contains(0), text.utf8.count <= 45 else { return nil }
    var v4 = in_addr()
    if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
    return nil
}

private func referenceText(_ bytes: [UInt8]) -> String {
    var raw = in6_addr()
    withUnsafeMutableBytes(of: &raw) { buffer in
        for index in 0..<16 { buffer[index] = bytes[index] }
    }
    var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
    _ = inet_ntop(AF_INET6, &raw, &text, socklen_t(text.count))
    return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
