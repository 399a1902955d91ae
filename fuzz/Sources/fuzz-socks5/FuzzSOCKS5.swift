import Capture
import FuzzSupport

/// The SOCKS5 handshake parser over arbitrary client bytes, whole and in fragments.
///
/// Invariants: a step never consumes more than it was given; `needMoreData` consumes
/// nothing; an accepted greeting consumes something; after a request or a failure the
/// parser is finished; and the outcome does not depend on how the bytes were split.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    let whole = handshake(bytes, chunkSize: max(bytes.count, 1))
    let chunkSize = Int(bytes.first ?? 0) % 7 + 1
    let fragmented = handshake(bytes, chunkSize: chunkSize)
    invariant(whole == fragmented, "outcome depends on fragmentation (\(chunkSize)): \(whole) vs \(fragmented)")
    return 0
}

/// Feeds `bytes` in chunks of `chunkSize`, the way a server would as reads arrive; returns
/// the steps and how many bytes were left for the application.
private func handshake(_ bytes: [UInt8], chunkSize: Int) -> [String] {
    var parser = SOCKS5Parser()
    var pending: [UInt8] = []
    var offset = 0
    var steps: [String] = []
    while !parser.isFinished {
        guard offset < bytes.count else { break }
        let end = min(offset + chunkSize, bytes.count)
        pending += bytes[offset..<end]
        offset = end
        while !parser.isFinished, !pending.isEmpty {
            let (step, consumed) = parser.parse(pending)
            invariant(consumed >= 0 && consumed <= pending.count, "consumed \(consumed) of \(pending.count)")
            pending.removeFirst(consumed)
            switch step {
            case .needMoreData:
                invariant(consumed == 0, "needMoreData consumed \(consumed)")
            case .greetingAccepted:
                invariant(consumed >= 3, "an accepted greeting is at least 3 bytes, consumed \(consumed)")
                steps.append("greeting")
                continue
            case .request(let request):
                invariant(parser.isFinished, "not finished after a request")
                steps.append("request \(request)")
            case .failed(let failure):
                invariant(parser.isFinished, "not finished after a failure")
                steps.append("failed \(failure.answer) \(failure.message)")
            }
            break
        }
    }
    if parser.isFinished {
        let (step, consumed) = parser.parse(pending)
        invariant(consumed == 0, "a finished parser consumed \(consumed)")
        if case .failed = step {} else { invariant(false, "a finished parser did not fail: \(step)") }
        steps.append("application bytes \(pending.count + bytes.count - offset)")
    }
    return steps
}
