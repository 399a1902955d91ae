import Foundation
public import Kernel
public import Logging
public import ServiceLifecycle
import Synchronization

/// The node's workload certificates: one per identity, fetched from a CA, cached,
/// rotated at half their lifetime.
///
/// - Fetches go through the kernel's ``KeyedWorkQueue``: most urgent first
///   (``WorkPriority/background`` rotation < ``WorkPriority/warmup`` prefetch <
///   ``WorkPriority/onDemand`` connection), at most `maxConcurrentFetches` at once, one
///   fetch per identity at a time (concurrent callers share it, so 50 callers make one
///   CSR). Each fetch makes a fresh P-256 key and CSR.
/// - Failures are retried by the queue with the configured ``Backoff`` while someone
///   still wants the identity (a prefetch, a rotation, a waiting caller); the old
///   certificate keeps being served while it is valid.
/// - A caller of ``certificate(for:priority:)`` gets a valid cached certificate at
///   once; otherwise it waits for the fetch and gets its certificate, or the first
///   failure that happens while it waits, or a timeout error after `fetchTimeout`:
///   it never hangs, so connections fail closed promptly.
///
/// The cache does work only while ``run()`` runs (a ServiceLifecycle `Service`).
public final class CertificateCache: IdentityProvider, CertificateStatusReporting, ServiceLifecycle.Service, Sendable {
    /// How the cache fetches.
    public struct Settings: Sendable {
        /// The only trust domain identities may be in.
        public var trustDomain: String
        /// Requested certificate lifetime.
        public var lifetime: Duration
        /// Fetches at once.
        public var maxConcurrentFetches: Int
        /// How long ``CertificateCache/certificate(for:priority:)`` waits for a fetch.
        public var fetchTimeout: Duration
        /// Retry delays after failed fetches.
        public var backoff: Backoff

        /// Creates settings; the defaults are Istio's (24 h, 8 at once, 500 ms ×2 ±20 % ≤ 150 s).
        public init(
            trustDomain: String = "cluster.local", lifetime: Duration = .seconds(86400), maxConcurrentFetches: Int = 8,
            fetchTimeout: Duration = .seconds(10), backoff: Backoff = Backoff()
        ) {
            self.trustDomain = trustDomain
            self.lifetime = lifetime
            self.maxConcurrentFetches = maxConcurrentFetches
            self.fetchTimeout = fetchTimeout
            self.backoff = backoff
        }
    }

    /// The settings.
    public let settings: Settings
    /// Where certificates come from.
    public let client: any CertificateAuthorityClient
    private let table: CertificateTable
    private let queue: KeyedWorkQueue<SpiffeID, WorkloadCertificate>
    private let refreshes: AsyncStream<CertificateTable.Refresh>
    private let logger: Logger

    /// Creates a store. Nothing is fetched until ``run()``.
    ///
    /// - Parameters:
    ///   - clock: measures retry backoff delays; inject a scaled or manual clock in tests.
    ///   - random: draws backoff jitter.
    public init(
        client: any CertificateAuthorityClient, settings: Settings = Settings(), logger: Logger,
        clock: some Clock<Duration> = ContinuousClock(),
        random: some RandomNumberGenerator & Sendable = SystemRandomNumberGenerator()
    ) {
        let (refreshes, scheduler) = AsyncStream.makeStream(of: CertificateTable.Refresh.self)
        let table = CertificateTable(scheduler: scheduler)
        self.settings = settings
        self.client = client
        self.table = table
        self.refreshes = refreshes
        self.logger = logger
        queue = KeyedWorkQueue(
            maxConcurrent: max(1, settings.maxConcurrentFetches), backoff: settings.backoff, maxAttempts: nil,
            clock: clock, random: random
        ) { identity in
            try await Self.fetch(identity, client: client, lifetime: settings.lifetime, table: table, logger: logger)
        }
    }

    // MARK: - IdentityProvider

    public func certificate(for identity: SpiffeID, priority: WorkPriority) async throws -> WorkloadCertificate {
        try checkTrustDomain(identity)
        let now = Date()
        if let certificate = table.certificate(for: identity), certificate.isValid(at: now) { return certificate }
        table.want(identity)
        let timeout = settings.fetchTimeout
        let result = await withTaskGroup(of: Result<WorkloadCertificate, any Error>?.self) { group in
            group.addTask { [queue] in
                do { return .success(try await queue.value(for: identity, priority: priority)) } catch { return .failure(error) }
            }
            group.addTask { [table] in
                // The first failure after this caller joined ends its wait: a connection
                // should not sit out the backoff.
                guard let error = await table.nextFailure(of: identity) else { return nil }
                return .failure(error)
            }
            group.addTask {
                do { try await Task.sleep(for: timeout) } catch { return nil }
                return .failure(
                    PKIError(
                        .unavailable, "no certificate for \(identity) after waiting \(ConfigDuration(timeout)); the CA may be down"))
            }
            var outcome: Result<WorkloadCertificate, any Error> = .failure(CancellationError())
            while let next = await group.next() {
                if let next {
                    outcome = next
                    break
                }
            }
            group.cancelAll()
            return outcome
        }
        switch result {
        case .success(let certificate):
            return certificate
        case .failure(let error as WorkQueueError) where error.code == .shutdown:
            throw PKIError(.unavailable, "no certificate for \(identity): the certificate cache is not running")
        case .failure(let error as WorkQueueError) where error.code == .cancelled:
            throw PKIError(.unavailable, "no certificate for \(identity): it is no longer needed on this node")
        case .failure(let error):
            throw error
        }
    }

    public var availableIdentities: [SpiffeID] {
        let now = Date()
        return table.certificates().filter { $0.isValid(at: now) }.map(\.identity).sorted()
    }

    // MARK: - Cache control

    /// Queues a fetch at ``WorkPriority/warmup`` unless a valid certificate is cached: a
    /// workload with this identity appeared on the node.
    public func prefetch(_ identity: SpiffeID) {
        guard identity.trustDomain == settings.trustDomain else {
            logger.warning(
                "not prefetching a certificate for an identity outside the trust domain",
                metadata: ["identity": "\(identity)", "trust_domain": "\(settings.trustDomain)"])
            return
        }
        table.want(identity)
        if let certificate = table.certificate(for: identity), certificate.isValid() { return }
        queue.enqueue(identity, priority: .warmup)
    }

    /// Drops an identity: its certificate, queued fetches and rotation (its last local
    /// workload left the node).
    public func forget(_ identity: SpiffeID) {
        table.forget(identity)
        queue.cancel(identity)
        logger.info("forgot certificate", metadata: ["identity": "\(identity)"])
    }

    /// Identities the cache holds or fetches.
    public var identities: [SpiffeID] { table.identities }

    /// The fetch job for an identity, if one is queued, running or backing off.
    public func job(for identity: SpiffeID) -> KeyedWorkQueue<SpiffeID, WorkloadCertificate>.JobInfo? {
        queue.job(for: identity)
    }

    public var certificateStatuses: [CertificateStatus] {
        let now = Date()
        return table.snapshot().map { identity, entry in
            let job = queue.job(for: identity)
            let certificate = entry.certificate
            let state: String
            switch job?.state {
            case .pending?: state = "pending"
            case .running?: state = "fetching"
            case .backingOff?: state = "failed"
            case nil:
                if let certificate, certificate.isValid(at: now) {
                    state = "available"
                } else if entry.lastError != nil {
                    state = "failed"
                } else if certificate != nil {
                    state = "expired"
                } else {
                    state = "pending"
                }
            }
            return CertificateStatus(
                identity: identity, state: state, priority: job?.priority, serial: certificate?.serial,
                notBefore: certificate?.notBefore, notAfter: certificate?.notAfter, chain: certificate?.chainPEM ?? [],
                failures: entry.failures, lastError: entry.lastError,
                chainDetails: certificate.map { CertificateDetails.parsing($0.chainPEM) } ?? [],
                roots: certificate.map { CertificateDetails.parsing($0.rootsPEM) } ?? [])
        }.sorted { $0.identity < $1.identity }
    }

    // MARK: - Service

    /// Runs the fetch queue and the rotation timers until graceful shutdown or
    /// cancellation. Cached certificates stay readable afterwards.
    public func run() async throws {
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                group.addTask { [queue] in try? await queue.run() }
                group.addTask { await self.runRotationTimers() }
            }
        } onGracefulShutdown: { [table] in
            table.stopScheduling()
        }
    }

    /// One sleeping task per certificate, enqueuing its rotation at half its lifetime.
    private func runRotationTimers() async {
        await withDiscardingTaskGroup { timers in
            for await refresh in refreshes {
                timers.addTask { [queue, table, logger] in
                    let delay = refresh.at.timeIntervalSinceNow
                    if delay > 0 {
                        do { try await Task.sleep(for: .nanoseconds(Int64(delay * 1e9))) } catch { return }
                    }
                    guard table.isCurrent(refresh) else { return }
                    logger.debug("rotating certificate", metadata: ["identity": "\(refresh.identity)"])
                    queue.enqueue(refresh.identity, priority: .background)
                }
            }
            timers.cancelAll()
        }
    }

    private func checkTrustDomain(_ identity: SpiffeID) throws(PKIError) {
        guard identity.trustDomain == settings.trustDomain else {
            throw PKIError(
                .wrongTrustDomain,
                "\(identity) is not in trust domain \(settings.trustDomain); this node only holds certificates of that domain (certificates.trustDomain)")
        }
    }

    private static func fetch(
        _ identity: SpiffeID, client: any CertificateAuthorityClient, lifetime: Duration, table: CertificateTable,
        logger: Logger
    ) async throws -> WorkloadCertificate {
        do {
            let key = try WorkloadKey(identity: identity)
            let certificate = try await client.certificate(for: key, lifetime: lifetime)
            let kept = table.store(certificate)
            logger.info(
                "certificate issued",
                metadata: [
                    "identity": "\(identity)", "serial": "\(certificate.serial)",
                    "not_after": "\(certificate.notAfter.formatted(.iso8601))", "ca": "\(client.name)",
                    "cached": "\(kept)",
                ])
            return certificate
        } catch {
            let (failures, current) = table.recordFailure(identity, error)
            var metadata: Logger.Metadata = [
                "identity": "\(identity)", "error": "\(error)", "failures": "\(failures)", "ca": "\(client.name)",
            ]
            if let current, current.isValid() {
                metadata["serving_until"] = "\(current.notAfter.formatted(.iso8601))"
            }
            logger.warning("certificate fetch failed; will retry with backoff while needed", metadata: metadata)
            throw error
        }
    }
}

/// The certificate cache proper: entries by identity, rotation generations, and callers
/// waiting for a fetch failure. Thread-safe.
final class CertificateTable: Sendable {
    struct Entry {
        var certificate: WorkloadCertificate?
        var failures = 0
        var lastError: String?
        /// Bumped on every store and forget, so stale rotation timers do nothing.
        var generation: UInt64 = 0
    }

    struct Refresh: Sendable {
        var identity: SpiffeID
        var generation: UInt64
        var at: Date
    }

    private typealias FailureWaiter = CheckedContinuation<(any Error)?, Never>

    private struct State {
        var entries: [SpiffeID: Entry] = [:]
        var nextGeneration: UInt64 = 0
        var failureWaiters: [SpiffeID: [UInt64: FailureWaiter]] = [:]
        var nextWaiter: UInt64 = 0
        var scheduling = true
    }

    private let state = Mutex(State())
    private let scheduler: AsyncStream<Refresh>.Continuation

    init(scheduler: AsyncStream<Refresh>.Continuation) {
        self.scheduler = scheduler
    }

    func certificate(for identity: SpiffeID) -> WorkloadCertificate? {
        state.withLock { $0.entries[identity]?.certificate }
    }

    func certificates() -> [WorkloadCertificate] {
        state.withLock { $0.entries.values.compactMap(\.certificate) }
    }

    var identities: [SpiffeID] { state.withLock { $0.entries.keys.sorted() } }

    func snapshot() -> [(SpiffeID, Entry)] {
        state.withLock { state in state.entries.map { ($0.key, $0.value) } }
    }

    /// Makes sure the identity has an entry, so a fetch result is kept.
    func want(_ identity: SpiffeID) {
        state.withLock { state in
            if state.entries[identity] == nil { state.entries[identity] = Entry() }
        }
    }

    /// Keeps a new certificate if the identity is still wanted and schedules its rotation
    /// at half its lifetime. Returns whether it was kept.
    func store(_ certificate: WorkloadCertificate) -> Bool {
        let refresh = state.withLock { state -> Refresh? in
            guard var entry = state.entries[certificate.identity] else { return nil }
            state.nextGeneration += 1
            entry.certificate = certificate
            entry.failures = 0
            entry.lastError = nil
            entry.generation = state.nextGeneration
            state.entries[certificate.identity] = entry
            let half = certificate.notAfter.timeIntervalSince(certificate.notBefore) / 2
            return state.scheduling
                ? Refresh(identity: certificate.identity, generation: entry.generation, at: certificate.notBefore + half)
                : nil
        }
        guard let refresh else { return false }
        scheduler.yield(refresh)
        return true
    }

    /// Records a failed fetch, wakes callers waiting for one, and returns the failure
    /// count and the certificate still held.
    func recordFailure(_ identity: SpiffeID, _ error: any Error) -> (Int, WorkloadCertificate?) {
        let (result, waiters) = state.withLock { state -> ((Int, WorkloadCertificate?), [FailureWaiter]) in
            var failures = 1
            var current: WorkloadCertificate?
            if var entry = state.entries[identity] {
                entry.failures += 1
                entry.lastError = "\(error)"
                failures = entry.failures
                current = entry.certificate
                state.entries[identity] = entry
            }
            let waiting = state.failureWaiters.removeValue(forKey: identity) ?? [:]
            return ((failures, current), Array(waiting.values))
        }
        for waiter in waiters { waiter.resume(returning: error) }
        return result
    }

    /// Waits until a fetch of `identity` fails (returns its error); nil when the calling
    /// task is cancelled.
    func nextFailure(of identity: SpiffeID) async -> (any Error)? {
        let id = state.withLock { state -> UInt64 in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: FailureWaiter) in
                let cancelled = state.withLock { state -> Bool in
                    if Task.isCancelled { return true }
                    state.failureWaiters[identity, default: [:]][id] = continuation
                    return false
                }
                if cancelled { continuation.resume(returning: nil) }
            }
        } onCancel: {
            let waiter = state.withLock { state in state.failureWaiters[identity]?.removeValue(forKey: id) }
            waiter?.resume(returning: nil)
        }
    }

    func isCurrent(_ refresh: Refresh) -> Bool {
        state.withLock { $0.entries[refresh.identity]?.generation == refresh.generation }
    }

    func forget(_ identity: SpiffeID) {
        state.withLock { _ = $0.entries.removeValue(forKey: identity) }
    }

    func stopScheduling() {
        state.withLock { $0.scheduling = false }
        scheduler.finish()
    }
}
