import FuzzSupport
import Kernel
import XDS

/// xDS Workload API resources as istiod sends them (the body of a `Resource` in a delta
/// response) over arbitrary bytes: the first byte picks the type (even: `Address`, odd:
/// `Authorization`), the rest is the protobuf message.
///
/// Invariants: decoding and conversion return a model value or throw an
/// ``XDSResourceError`` naming the resource and saying why; a converted workload or
/// service has a key, a converted policy a non-empty name.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = fuzzBytes(data, size)
    guard let kind = bytes.first else { return 0 }
    let body = Array(bytes.dropFirst())
    do {
        if kind % 2 == 0 {
            switch try WorkloadAPI.address(serialized: body, name: "fuzz") {
            case .workload(let workload):
                invariant(!workload.uid.isEmpty, "workload without a uid: \(workload)")
                _ = "\(workload)"
            case .service(let service):
                invariant(!service.hostname.isEmpty, "service without a hostname: \(service)")
                _ = "\(service)"
            }
        } else {
            let policy = try WorkloadAPI.authorization(serialized: body, name: "fuzz")
            invariant(!policy.name.isEmpty, "policy without a name: \(policy)")
            _ = "\(policy)"
        }
    } catch {
        invariant(error.resource == "fuzz", "error names another resource: \(error)")
        invariant(!error.reason.isEmpty, "error without a reason: \(error)")
        _ = "\(error)"
    }
    return 0
}
