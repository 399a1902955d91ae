#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The C library's address functions: the reference the plugin API's Swift parser and
/// printer are compared with.
enum ReferenceParser {
    /// `inet_pton` for IPv4, then IPv6: the network-order bytes, or nil.
    static func parse(_ text: String) -> [UInt8]? {
        guard !text.utf8.contains(0) else { return nil }
        // Byte arrays, not `in_addr`/`in6_addr`: with NIOEmbedded in the test target their
        // zero initialisers count as CNIOLinux's, which MemberImportVisibility rejects.
        var v4 = [UInt8](repeating: 0, count: 4)
        if inet_pton(AF_INET, text, &v4) == 1 { return v4 }
        var v6 = [UInt8](repeating: 0, count: 16)
        if inet_pton(AF_INET6, text, &v6) == 1 { return v6 }
        return nil
    }

    /// `inet_ntop` of 16 network-order bytes.
    static func format(_ bytes: [UInt8]) -> String {
        precondition(bytes.count == 16)
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(AF_INET6, bytes, &text, socklen_t(text.count))
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
