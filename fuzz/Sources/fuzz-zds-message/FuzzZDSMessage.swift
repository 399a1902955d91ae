import Capture
import FuzzSupport

/// istio-cni's ZDS messages over arbitrary bytes: the first byte says how many
/// descriptors came with the packet (low two bits) and whether the kernel truncated it
/// (bit 2) or its descriptors (bit 3); the rest is the packet.
///
/// Invariants: decoding returns a request or a protocol error with a message; an
/// `AddWorkload` is accepted only with exactly one descriptor, anything else only with
/// none; a truncated packet is never accepted; the ack encoding of any error text is a
/// non-empty message.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    guard let control = bytes.first else { return 0 }
    let descriptors = Int(control & 3)
    let truncated = control & 4 != 0
    let descriptorsTruncated = control & 8 != 0
    let packet = Array(bytes.dropFirst())
    switch ZDSMessage.decode(packet, descriptors: descriptors, truncated: truncated, descriptorsTruncated: descriptorsTruncated) {
    case .success(let request):
        invariant(!truncated && !descriptorsTruncated, "a truncated packet was accepted: \(request)")
        if case .add = request {
            invariant(descriptors == 1, "AddWorkload accepted with \(descriptors) descriptors")
        } else {
            invariant(descriptors == 0, "\(request) accepted with \(descriptors) descriptors")
        }
        _ = "\(request)"
    case .failure(let error):
        invariant(!error.message.isEmpty, "a protocol error without a message")
        invariant(!ZDSMessage.ack(error.message).isEmpty, "the ack of \(error) encodes to nothing")
    }
    return 0
}
