import AmbitRuntime
import Kernel
import NIOCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Which Istio response flag a relay that ended with an error is reported under, as
/// ztunnel decides it: a peer's reset is an ordinary end, other errors are CONNECT.
@Suite("relay errors: response flags")
struct RelayErrorFlagTests {
    struct Flagged: Error, ResponseFlagProviding {
        var responseFlag: ResponseFlag
    }

    @Test("a reset, a broken pipe, a lost socket or an unexpected close is -; a timeout or an unreachable host is CONNECT; a flagged error decides")
    func flags() {
        func flag(_ code: RelayError.Code, _ underlying: (any Error)?) -> ResponseFlag {
            RelayError(code: code, side: .upstream, underlying: underlying).responseFlag
        }
        for errno in [ECONNRESET, EPIPE, ENOTCONN] {
            #expect(flag(.channelError, IOError(errnoCode: errno, reason: "read")) == .noFlag, "errno \(errno)")
        }
        #expect(flag(.closedUnexpectedly, nil) == .noFlag)
        #expect(flag(.channelError, ChannelError.eof) == .noFlag)
        #expect(flag(.setupFailed, ChannelError.ioOnClosedChannel) == .noFlag)
        #expect(flag(.channelError, IOError(errnoCode: ETIMEDOUT, reason: "read")) == .connectFailure)
        #expect(flag(.channelError, IOError(errnoCode: EHOSTUNREACH, reason: "write")) == .connectFailure)
        #expect(flag(.channelError, Flagged(responseFlag: .noFlag)) == .noFlag)
        #expect(flag(.channelError, Flagged(responseFlag: .connectFailure)) == .connectFailure)
    }
}
