import Kernel

/// Why a SOCKS5 handshake was refused, and what (if anything) to tell the client before
/// closing.
public struct SOCKS5ParseFailure: Sendable, Equatable, CustomStringConvertible {
    /// What the server writes before it closes the connection.
    public enum Answer: Sendable, Equatable {
        /// Nothing: the peer does not speak SOCKS5, so no SOCKS5 message would mean
        /// anything to it.
        case none
        /// The method-selection message `05 FF`: none of the offered methods is acceptable.
        case noAcceptableMethod
        /// A reply message with this code and a zero bound address.
        case reply(SOCKS5Reply)
    }

    /// What to send before closing.
    public var answer: Answer
    /// What was wrong, for logs.
    public var message: String

    /// Creates a failure.
    public init(_ answer: Answer, _ message: String) {
        self.answer = answer
        self.message = message
    }

    public var description: String { message }
}

/// The server side of the SOCKS5 handshake as a pure state machine over bytes.
///
/// Feed it the bytes received so far that it has not consumed yet; it answers with one
/// ``Step`` and how many bytes that step consumed. The caller drops those bytes and calls
/// again while bytes remain and the step was not ``Step/needMoreData``. Bytes may arrive
/// in any fragmentation: until a message is complete the parser consumes nothing, and as
/// no message is longer than 262 bytes a caller that drops consumed bytes never holds more
/// than that while the handshake is in progress.
///
/// Validation is strict and fails fast, as soon as the offending byte is visible: the
/// version must be 5; the greeting must offer "no authentication" (method 0); the request
/// must have version 5, reserved byte 0, command CONNECT and address type 1, 3 or 4; a
/// domain must be 1 to 255 bytes of letters, digits, `-`, `.`, `_` or `:`. A zero-length
/// or otherwise malformed domain is answered with ``SOCKS5Reply/generalFailure`` (the
/// address type is supported, the request is broken).
///
/// Threading: a value type with no shared state; use one per connection.
public struct SOCKS5Parser: Sendable {
    /// The outcome of one call to ``parse(_:)``.
    public enum Step: Sendable, Equatable {
        /// The next message is incomplete; nothing was consumed.
        case needMoreData
        /// The greeting offers "no authentication": answer `05 00` and go on.
        case greetingAccepted
        /// The CONNECT request is complete. The handshake is over; bytes after it belong
        /// to the application.
        case request(SOCKS5Request)
        /// The handshake is refused: send the failure's answer and close.
        case failed(SOCKS5ParseFailure)
    }

    private enum Phase: Sendable {
        case greeting
        case request
        case finished
    }

    private var phase: Phase = .greeting

    /// A parser waiting for the client's greeting.
    public init() {}

    /// True once the parser has returned ``Step/request(_:)`` or ``Step/failed(_:)``.
    public var isFinished: Bool {
        if case .finished = phase { return true }
        return false
    }

    /// Examines `input`, the unconsumed bytes in arrival order, and returns the next step
    /// and how many bytes of `input` it consumed. After the handshake has finished every
    /// call fails without consuming anything.
    public mutating func parse(_ input: some Collection<UInt8>) -> (step: Step, consumed: Int) {
        let bytes = Array(input.prefix(SOCKS5Wire.maximumRequestLength))
        let result: (step: Step, consumed: Int)
        switch phase {
        case .greeting:
            result = Self.parseGreeting(bytes)
            if case .greetingAccepted = result.step { phase = .request }
        case .request:
            result = Self.parseRequest(bytes)
        case .finished:
            return (.failed(SOCKS5ParseFailure(.none, "SOCKS5 handshake already finished")), 0)
        }
        switch result.step {
        case .request, .failed: phase = .finished
        case .needMoreData, .greetingAccepted: break
        }
        return result
    }

    /// `VER NMETHODS METHODS…`
    private static func parseGreeting(_ bytes: [UInt8]) -> (step: Step, consumed: Int) {
        guard let version = bytes.first else { return (.needMoreData, 0) }
        guard version == SOCKS5Wire.version else {
            return (.failed(SOCKS5ParseFailure(.none, "not a SOCKS5 greeting: version byte \(version)")), 0)
        }
        guard bytes.count >= 2 else { return (.needMoreData, 0) }
        let methodCount = Int(bytes[1])
        guard methodCount > 0 else {
            return (.failed(SOCKS5ParseFailure(.noAcceptableMethod, "SOCKS5 greeting offers no methods")), 0)
        }
        let length = 2 + methodCount
        guard bytes.count >= length else { return (.needMoreData, 0) }
        guard bytes[2..<length].contains(SOCKS5Wire.methodNoAuthentication) else {
            let offered = bytes[2..<length].map(String.init).joined(separator: ",")
            return (
                .failed(SOCKS5ParseFailure(
                    .noAcceptableMethod, "SOCKS5 greeting does not offer no-authentication (offered \(offered))")),
                0
            )
        }
        return (.greetingAccepted, length)
    }

    /// `VER CMD RSV ATYP DST.ADDR DST.PORT`
    private static func parseRequest(_ bytes: [UInt8]) -> (step: Step, consumed: Int) {
        func fail(_ reply: SOCKS5Reply, _ message: String) -> (step: Step, consumed: Int) {
            (.failed(SOCKS5ParseFailure(.reply(reply), message)), 0)
        }
        // Check each header byte as soon as it is present, so a broken request is refused
        // without waiting for bytes that may never come.
        if bytes.count >= 1, bytes[0] != SOCKS5Wire.version {
            return fail(.generalFailure, "SOCKS5 request with version byte \(bytes[0])")
        }
        if bytes.count >= 2, bytes[1] != SOCKS5Wire.commandConnect {
            let name: String
            switch bytes[1] {
            case SOCKS5Wire.commandBind: name = "BIND"
            case SOCKS5Wire.commandUDPAssociate: name = "UDP ASSOCIATE"
            default: name = "command \(bytes[1])"
            }
            return fail(.commandNotSupported, "SOCKS5 \(name) is not supported, only CONNECT")
        }
        if bytes.count >= 3, bytes[2] != 0 {
            return fail(.generalFailure, "SOCKS5 request with non-zero reserved byte \(bytes[2])")
        }
        guard bytes.count >= 4 else { return (.needMoreData, 0) }

        let addressType = bytes[3]
        let addressLength: Int
        let addressStart: Int
        switch addressType {
        case SOCKS5Wire.addressTypeIPv4:
            addressStart = 4
            addressLength = 4
        case SOCKS5Wire.addressTypeIPv6:
            addressStart = 4
            addressLength = 16
        case SOCKS5Wire.addressTypeDomain:
            guard bytes.count >= 5 else { return (.needMoreData, 0) }
            addressStart = 5
            addressLength = Int(bytes[4])
            if addressLength == 0 {
                return fail(.generalFailure, "SOCKS5 request with an empty domain name")
            }
        default:
            return fail(.addressTypeNotSupported, "SOCKS5 request with address type \(addressType)")
        }

        let portStart = addressStart + addressLength
        let length = portStart + 2
        guard bytes.count >= length else { return (.needMoreData, 0) }
        let addressBytes = bytes[addressStart..<portStart]
        let port = UInt16(bytes[portStart]) << 8 | UInt16(bytes[portStart + 1])

        let address: SOCKS5Address
        if addressType == SOCKS5Wire.addressTypeDomain {
            guard addressBytes.allSatisfy(isHostNameByte) else {
                return fail(.generalFailure, "SOCKS5 request with a malformed domain name")
            }
            address = .domain(String(decoding: addressBytes, as: UTF8.self))
        } else {
            // 4 or 16 bytes by construction, so the initialiser cannot fail.
            guard let ip = IPAddress(bytes: addressBytes) else {
                return fail(.generalFailure, "SOCKS5 request with a malformed address")
            }
            address = .ip(ip)
        }
        return (.request(SOCKS5Request(address: address, port: port)), length)
    }

    /// Letters, digits and the punctuation of host names and IP literals. Anything else
    /// (spaces, controls, NUL, non-ASCII) has no business in a name we hand to a resolver.
    private static func isHostNameByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
            UInt8(ascii: "_"), UInt8(ascii: ":"):
            return true
        default:
            return false
        }
    }
}
