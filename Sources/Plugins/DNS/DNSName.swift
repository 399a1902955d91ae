/// A domain name as its labels, e.g. `["echo", "default", "svc", "cluster", "local"]`;
/// no labels is the root.
///
/// Labels keep the bytes (and case) they came with, which a response echoes; comparing
/// and looking up goes through ``lowercased``, as DNS names are case-insensitive (RFC
/// 4343). A name holds at most 63 bytes per label and 255 on the wire (RFC 1035 §2.3.4):
/// the parser and ``init(_:)`` refuse longer ones.
public struct DNSName: Sendable, Hashable, CustomStringConvertible {
    /// The labels, leftmost first.
    public private(set) var labels: [[UInt8]]

    /// The longest label.
    public static let maxLabelLength = 63
    /// The longest name in wire form (length bytes and the root's 0 included).
    public static let maxWireLength = 255

    /// The root name.
    public static let root = DNSName(unchecked: [])

    init(unchecked labels: [[UInt8]]) { self.labels = labels }

    /// A name from labels, nil when a label is empty or too long or the name too long.
    public init?(labels: [[UInt8]]) {
        guard labels.allSatisfy({ !$0.isEmpty && $0.count <= Self.maxLabelLength }),
            labels.reduce(1, { $0 + $1.count + 1 }) <= Self.maxWireLength
        else { return nil }
        self.labels = labels
    }

    /// Parses dotted text, `echo.default.svc` or `echo.default.svc.` (a trailing dot is
    /// allowed; `.` or the empty string is the root). Nil when a label is empty (`a..b`) or
    /// too long, or the name too long. No escapes: a label is the bytes between dots.
    public init?(_ text: String) {
        var text = Substring(text)
        if text.hasSuffix(".") { text = text.dropLast() }
        let labels = text.isEmpty ? [] : text.split(separator: ".", omittingEmptySubsequences: false).map { Array($0.utf8) }
        self.init(labels: labels)
    }

    /// The wire length: each label's bytes plus its length byte, plus the root's 0.
    public var wireLength: Int { labels.reduce(1) { $0 + $1.count + 1 } }

    /// The name with ASCII letters lowercased: the form to compare and look up by.
    public var lowercased: DNSName {
        DNSName(unchecked: labels.map { $0.map { (0x41...0x5A).contains($0) ? $0 | 0x20 : $0 } })
    }

    /// Whether the leftmost label is `*`.
    public var isWildcard: Bool { labels.first == [0x2A] }

    /// The dotted form without a trailing dot (`.` for the root). Bytes outside printable
    /// ASCII, dots and backslashes inside a label are written as `\DDD` (RFC 1035 §5.1).
    public var description: String {
        if labels.isEmpty { return "." }
        return labels.map { label in
            var text = ""
            for byte in label {
                if byte > 0x20, byte < 0x7F, byte != 0x2E, byte != 0x5C {
                    text.unicodeScalars.append(Unicode.Scalar(byte))
                } else {
                    let digits = String(byte)
                    text += "\\" + String(repeating: "0", count: 3 - digits.count) + digits
                }
            }
            return text
        }.joined(separator: ".")
    }

    /// The dotted form for a mesh lookup: lowercased, no trailing dot.
    var hostname: String { lowercased.description }

    /// `self` followed by `suffix`, nil when the result would be too long.
    func appending(_ suffix: DNSName) -> DNSName? { DNSName(labels: labels + suffix.labels) }

    /// Whether `domain` is a proper suffix of this name (compared without case): this
    /// name has more labels, and its last ones are `domain`'s.
    func hasProperSuffix(_ domain: DNSName) -> Bool {
        guard !domain.isWildcard, labels.count > domain.labels.count else { return false }
        return Array(lowercased.labels.suffix(domain.labels.count)) == domain.lowercased.labels
    }

    /// This name without `domain` at its end, nil unless ``hasProperSuffix(_:)``.
    func trimming(_ domain: DNSName) -> DNSName? {
        guard hasProperSuffix(domain) else { return nil }
        return DNSName(unchecked: Array(labels.dropLast(domain.labels.count)))
    }
}
