import NIOCore
import NIOHTTP2

/// Reads the frame headers NIOHTTP2 writes on an HBONE connection (it sits between TLS and
/// `NIOHTTP2Handler`) and reports the two frames that say what an error meant: a GOAWAY
/// (NIOHTTP2 answers every *connection* error with one, carrying the error code) and a
/// RST_STREAM (a *stream* error, or a stream ended early).
///
/// NIOHTTP2 reports both kinds of error to the connection's pipeline the same way, as the
/// bare underlying error, and some error types are stream errors at one time and connection
/// errors at another (flow-control violations, bad window increments). RFC 9113 decides by
/// where the error happened, and so does NIOHTTP2: the frame it sends in answer is the one
/// reliable witness. NIOHTTP2 writes that GOAWAY unbuffered, before it reports the error.
///
/// Cost on the hot path: a DATA frame's payload is written separately from its header, so
/// for payload bytes this only subtracts a count; headers (9 bytes) are parsed once per frame.
///
/// Threading: a channel handler; used on the connection's event loop only.
final class HTTP2FrameWatcher: ChannelOutboundHandler {
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    /// What the watcher reports, on the connection's event loop.
    struct Events {
        /// A GOAWAY was written with this error code.
        var goAway: (HTTP2ErrorCode) -> Void = { _ in }
        /// A RST_STREAM was written for this stream with this error code.
        var reset: (HTTP2StreamID, HTTP2ErrorCode) -> Void = { _, _ in }
        /// Every frame header written (type, flags, stream, payload length); for tests.
        var frame: ((UInt8, UInt8, HTTP2StreamID, Int) -> Void)?
    }

    private static let headerLength = 9
    private static let goAwayType: UInt8 = 0x7
    private static let resetType: UInt8 = 0x3

    var events = Events()
    /// The client's connection preface ("PRI * HTTP/2.0…", 24 bytes) precedes the first frame.
    private var prefaceRemaining: Int
    /// The current frame's header, then (for GOAWAY and RST_STREAM) the start of its payload.
    private var pending: [UInt8] = []
    /// Bytes of the current frame's payload still to come.
    private var payloadRemaining = 0
    /// Payload bytes of the current frame still wanted in `pending`.
    private var wanted = 0

    /// - Parameter isClient: the client writes the connection preface first.
    init(isClient: Bool) {
        prefaceRemaining = isClient ? 24 : 0
        pending.reserveCapacity(Self.headerLength + 8)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .byteBuffer(let buffer):
            observe(buffer)
        case .fileRegion(let region):
            // Never written by NIOHTTP2 on these connections; count it as payload to stay in step.
            skip(region.readableBytes)
        }
        context.write(data, promise: promise)
    }

    private func skip(_ count: Int) {
        var count = count
        let preface = min(prefaceRemaining, count)
        prefaceRemaining -= preface
        count -= preface
        payloadRemaining -= min(payloadRemaining, count)
    }

    private func observe(_ buffer: ByteBuffer) {
        var index = buffer.readerIndex
        let end = buffer.writerIndex
        while index < end {
            if prefaceRemaining > 0 {
                let count = min(prefaceRemaining, end - index)
                prefaceRemaining -= count
                index += count
            } else if payloadRemaining > 0 {
                let count = min(payloadRemaining, end - index)
                if wanted > 0 {
                    let take = min(wanted, count)
                    pending.append(contentsOf: buffer.getBytes(at: index, length: take) ?? [])
                    wanted -= take
                    if wanted == 0 { report() }
                }
                payloadRemaining -= count
                index += count
            } else {
                let take = min(Self.headerLength - pending.count, end - index)
                pending.append(contentsOf: buffer.getBytes(at: index, length: take) ?? [])
                index += take
                if pending.count == Self.headerLength { startFrame() }
            }
        }
    }

    private func startFrame() {
        let length = Int(pending[0]) << 16 | Int(pending[1]) << 8 | Int(pending[2])
        payloadRemaining = length
        if let frame = events.frame {
            let stream = UInt32(pending[5] & 0x7f) << 24 | UInt32(pending[6]) << 16 | UInt32(pending[7]) << 8 | UInt32(pending[8])
            frame(pending[3], pending[4], HTTP2StreamID(Int32(stream)), length)
        }
        switch pending[3] {
        case Self.goAwayType where length >= 8: wanted = 8
        case Self.resetType where length >= 4: wanted = 4
        default: wanted = 0
        }
        if wanted == 0 { pending.removeAll(keepingCapacity: true) }
    }

    private func report() {
        let header = Self.headerLength
        func word(_ at: Int) -> UInt32 {
            UInt32(pending[at]) << 24 | UInt32(pending[at + 1]) << 16 | UInt32(pending[at + 2]) << 8 | UInt32(pending[at + 3])
        }
        let stream = HTTP2StreamID(Int32(bitPattern: word(5) & 0x7fff_ffff))
        if pending[3] == Self.goAwayType {
            events.goAway(HTTP2ErrorCode(networkCode: Int(word(header + 4))))
        } else {
            events.reset(stream, HTTP2ErrorCode(networkCode: Int(word(header))))
        }
        pending.removeAll(keepingCapacity: true)
    }
}
