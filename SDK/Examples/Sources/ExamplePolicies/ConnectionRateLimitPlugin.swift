import CoreMetrics
import Foundation
import Kernel
import Logging
import Synchronization

/// Limits how often each source may open connections: a token bucket per source
/// identity, refilled at `connectionsPerSecond` up to `burst`.
///
/// ```yaml
/// - id: connection-rate-limit
///   config:
///     connectionsPerSecond: 5     # sustained rate per source (default 10)
///     burst: 20                   # connections allowed at once (default: the rate, at least 1)
///     maxSources: 10000           # buckets kept; idle full ones are dropped first (default 10000)
/// ```
///
/// The source is the authenticated identity (mTLS); a plaintext connection has none
/// and is counted against its source IP instead, so it is limited rather than let
/// through. A connection over the limit is denied; it does not use up a token.
///
/// Denials are counted in `connection_rate_limit_denied_total` (on the node's
/// `/metrics` with the `telemetry` plugin), and each is logged at debug level.
public final class ConnectionRateLimitPlugin: Plugin, ConnectionAuthorizer {
    /// `connection-rate-limit` configuration.
    public struct Config: Decodable, Sendable {
        /// Tokens added per second.
        public var connectionsPerSecond: Double = 10
        /// Bucket size.
        public var burst: Int = 10
        /// How many sources are tracked.
        public var maxSources: Int = 10_000

        enum CodingKeys: String, CodingKey, CaseIterable { case connectionsPerSecond, burst, maxSources }

        /// A config; `burst` defaults to the rate.
        public init(connectionsPerSecond: Double, burst: Int? = nil, maxSources: Int = 10_000) {
            self.connectionsPerSecond = connectionsPerSecond
            self.burst = burst ?? max(1, Int(connectionsPerSecond))
            self.maxSources = maxSources
        }

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            connectionsPerSecond = try c.decodeIfPresent(Double.self, forKey: .connectionsPerSecond) ?? connectionsPerSecond
            if !(connectionsPerSecond > 0) || !connectionsPerSecond.isFinite {
                throw DecodingError.dataCorruptedError(
                    forKey: .connectionsPerSecond, in: c, debugDescription: "must be a number greater than 0, got \(connectionsPerSecond)")
            }
            burst = try c.decodeIfPresent(Int.self, forKey: .burst) ?? max(1, Int(connectionsPerSecond))
            if burst < 1 {
                throw DecodingError.dataCorruptedError(forKey: .burst, in: c, debugDescription: "must be at least 1, got \(burst)")
            }
            maxSources = try c.decodeIfPresent(Int.self, forKey: .maxSources) ?? maxSources
            if maxSources < 1 {
                throw DecodingError.dataCorruptedError(forKey: .maxSources, in: c, debugDescription: "must be at least 1, got \(maxSources)")
            }
        }
    }

    /// One source's bucket.
    struct Bucket {
        var tokens: Double
        var updated: Date
    }

    public static let id = "connection-rate-limit"
    public static let summary = "limit new connections per source identity (token bucket)"
    public static let provides: Set<PluginRole> = [.policy]

    private let config: Config
    private let context: PluginContext
    private let now: @Sendable () -> Date
    private let buckets = Mutex<[String: Bucket]>([:])
    private let denials = Mutex<Counter?>(nil)

    /// Built by the kernel: the system clock.
    public convenience init(config: Config, context: PluginContext) throws {
        self.init(config: config, context: context, now: Date.init)
    }

    /// Built by tests: `now` is the clock (see AmbitTestKit's `ManualClock`).
    public init(config: Config, context: PluginContext, now: @escaping @Sendable () -> Date) {
        self.config = config
        self.context = context
        self.now = now
    }

    public func provision() async throws {
        // From provision on, `context.metrics` reaches the node's telemetry plugin. No
        // per-identity label: the number of identities is unbounded.
        let counter = Counter(label: "connection_rate_limit_denied_total", factory: context.metrics)
        denials.withLock { $0 = counter }
    }

    /// How many sources have a bucket.
    public var trackedSources: Int { buckets.withLock { $0.count } }

    public func authorize(_ connection: ConnectionAttributes) async -> AuthorizationDecision {
        let source = connection.authenticatedIdentity.map { $0.principal } ?? "ip:\(connection.sourceAddress.ip)"
        let time = now()
        let (rate, burst, limit) = (config.connectionsPerSecond, Double(config.burst), config.maxSources)
        let allowed = buckets.withLock { buckets -> Bool in
            var bucket = buckets[source] ?? Bucket(tokens: burst, updated: time)
            let elapsed = max(0, time.timeIntervalSince(bucket.updated))
            bucket.tokens = min(burst, bucket.tokens + elapsed * rate)
            bucket.updated = time
            let allowed = bucket.tokens >= 1
            if allowed { bucket.tokens -= 1 }
            if buckets[source] == nil && buckets.count >= limit { Self.evict(&buckets, at: time, rate: rate, burst: burst) }
            buckets[source] = bucket
            return allowed
        }
        guard allowed else {
            denials.withLock { $0?.increment() }
            context.logger.debug("connection over the rate limit", metadata: ["source": "\(source)"])
            return .deny(reason: "\(source) exceeded \(rate) connections/s (burst \(config.burst))")
        }
        return .allow(reason: "\(source) is within \(rate)/s")
    }

    /// Makes room: drops buckets that have refilled (forgetting them changes nothing),
    /// else the least recently used one.
    private static func evict(_ buckets: inout [String: Bucket], at time: Date, rate: Double, burst: Double) {
        let before = buckets.count
        buckets = buckets.filter { $0.value.tokens + time.timeIntervalSince($0.value.updated) * rate < burst }
        if buckets.count == before, let oldest = buckets.min(by: { $0.value.updated < $1.value.updated }) {
            buckets[oldest.key] = nil
        }
    }
}
