import Capture
import FuzzSupport
import Kernel
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded

/// The SOCKS5 server handler on an embedded channel: client bytes in arbitrary reads, a
/// delegate that connects, refuses or never answers, and the handshake timeout.
///
/// Input: byte 0 picks the delegate's behaviour, byte 1 the read size; the rest is what the
/// client sends. Invariants: the handler writes only SOCKS5 messages (`05 xx`), never
/// crashes or leaks a promise, and when the delegate connects, the bytes the client sent
/// after its request reach `start`, in order and complete.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    guard bytes.count >= 2 else { return 0 }
    let behaviour = bytes[0] % 3
    let readSize = Int(bytes[1] % 16) + 1
    let client = Array(bytes.dropFirst(2))

    let loop = EmbeddedEventLoop()
    let channel = EmbeddedChannel(loop: loop)
    let started = NIOLockedValueBox<[UInt8]?>(nil)
    let pending = NIOLockedValueBox<EventLoopPromise<SOCKS5Connected>?>(nil)
    let handler = SOCKS5ServerHandler(handshakeTimeout: .seconds(10)) { request, channel in
        switch behaviour {
        case 0:
            let connected = SOCKS5Connected(
                boundAddress: SocketAddr(ip: IPAddress("127.0.0.1")!, port: 1080),
                start: { early in
                    let bytes = early.map { Array($0.readableBytesView) } ?? []
                    started.withLockedValue { $0 = bytes }
                })
            return channel.eventLoop.makeSucceededFuture(connected)
        case 1:
            return channel.eventLoop.makeFailedFuture(SOCKS5Error(.connectionRefused, "fuzz: refused \(request)"))
        default:
            let promise = channel.eventLoop.makePromise(of: SOCKS5Connected.self)
            pending.withLockedValue { $0 = promise }
            return promise.futureResult
        }
    }
    do {
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 40000)).wait()
    } catch {
        fatalError("fuzz setup: \(error)")
    }
    var offset = 0
    while offset < client.count, channel.isActive {
        let end = min(offset + readSize, client.count)
        do {
            try channel.writeInbound(ByteBuffer(bytes: client[offset..<end]))
        } catch {
            break  // the handler closed the channel
        }
        offset = end
    }
    loop.advanceTime(by: .seconds(11))
    // A delegate that never answered: fail it now, as the upstream dial would at last.
    pending.withLockedValue { $0 }?.fail(SOCKS5Error(.ttlExpired, "fuzz: gave up"))

    var written: [UInt8] = []
    while let buffer = try? channel.readOutbound(as: ByteBuffer.self) {
        written += buffer.readableBytesView
    }
    invariant(written.isEmpty || written.first == 5, "wrote a non-SOCKS5 message: \(written.prefix(8))")
    if let early = started.withLockedValue({ $0 }) {
        // The parser says where the handshake ended; what follows is the client's data.
        var parser = SOCKS5Parser()
        var rest = client[...]
        while !parser.isFinished, !rest.isEmpty {
            let (step, consumed) = parser.parse(rest)
            rest = rest.dropFirst(consumed)
            if case .needMoreData = step { break }
        }
        invariant(Array(rest.prefix(early.count)) == early, "early data differs from what the client sent")
    }
    _ = try? channel.finish(acceptAlreadyClosed: true)
    try? loop.syncShutdownGracefully()
    return 0
}
