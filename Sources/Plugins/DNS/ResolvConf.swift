#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
public import Kernel

/// The parts of a `resolv.conf(5)` the forwarder uses: the `nameserver` lines.
///
/// The `search` list is read but not applied: a client has already expanded its names
/// with its own search list before asking, so the proxy forwards names as they come.
public struct ResolvConf: Sendable, Hashable {
    /// The nameservers, in file order, port 53.
    public var nameservers: [SocketAddr]
    /// The `search` (or `domain`) list, for information.
    public var search: [String]

    /// Parses the text of a `resolv.conf`. Lines that are not understood are skipped, as
    /// the C library does; an IPv6 nameserver's zone (`fe80::1%eth0`) is dropped.
    public init(parsing text: String) {
        var nameservers: [SocketAddr] = []
        var search: [String] = []
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
            let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let keyword = words.first, !keyword.hasPrefix("#"), !keyword.hasPrefix(";") else { continue }
            switch keyword {
            case "nameserver":
                guard words.count >= 2 else { continue }
                let host = words[1].split(separator: "%", maxSplits: 1).first ?? words[1]
                if let ip = IPAddress(host) { nameservers.append(SocketAddr(ip: ip, port: 53)) }
            case "search", "domain":
                search = words.dropFirst().map(String.init)
            default:
                continue
            }
        }
        self.nameservers = nameservers
        self.search = search
    }

    /// Reads and parses `path`; nil when it cannot be read.
    public static func load(path: String = "/etc/resolv.conf") -> ResolvConf? {
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count <= 0 { break }
            bytes += buffer[0..<count]
            if bytes.count > 1 << 20 { break }  // no resolv.conf is a megabyte
        }
        return ResolvConf(parsing: String(decoding: bytes, as: UTF8.self))
    }
}
