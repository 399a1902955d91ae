public import ServiceLifecycle
import Synchronization

/// Why a job of a ``KeyedWorkQueue`` ended without a value (the operation's own errors are
/// rethrown as they are).
public struct WorkQueueError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What happened. A struct so codes can be added without breaking exhaustive switches.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Value: String, Sendable, Hashable {
            case cancelled, shutdown, alreadyRunning
        }
        private let value: Value
        private init(_ value: Value) { self.value = value }

        /// ``KeyedWorkQueue/cancel(_:)`` dropped the job.
        public static let cancelled = Code(.cancelled)
        /// The queue stopped (its ``KeyedWorkQueue/run()`` ended) before the job finished.
        public static let shutdown = Code(.shutdown)
        /// ``KeyedWorkQueue/run()`` was called a second time.
        public static let alreadyRunning = Code(.alreadyRunning)

        public var description: String { value.rawValue }
    }

    /// The code.
    public var code: Code
    /// What happened, for the log.
    public var message: String

    /// Creates an error.
    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}

/// A keyed priority work queue: runs an async operation per key, at most `maxConcurrent`
/// at a time, most urgent first, one run per key at a time, retrying failures with
/// exponential backoff. Built for fetches such as certificates (one key per identity).
///
/// ## Running
/// The queue is a ServiceLifecycle `Service`: it does work only while ``run()`` is running (in a
/// `ServiceGroup`, or a task of your own). Nothing is started in the initialiser. Work
/// queued before `run()` starts waits for it. When `run()` ends — graceful shutdown or
/// cancellation of its task — every waiting caller gets ``WorkQueueError/Code/shutdown``,
/// running operations are cancelled, and later calls fail at once. `run()` can be called
/// once.
///
/// ## Semantics
/// - Order: higher ``WorkPriority`` first; FIFO within a priority. A caller with a higher
///   priority raises a queued job's priority. A job that failed and waits out its backoff
///   re-enters the queue behind jobs of its priority queued meanwhile.
/// - Single flight: callers for a key share one run and its result. The result is not
///   cached: once delivered, the next call for the key runs the operation again (caching
///   is the caller's business, e.g. the certificate store).
/// - Retries: a failed run is retried after ``Backoff/delay(attempt:using:)`` while
///   someone still wants the key (a waiting caller, or ``enqueue(_:priority:)``), up to
///   `maxAttempts` runs in total (nil: until success, cancel or shutdown); then the last
///   error is thrown to the callers. The backoff delay does not hold a concurrency slot.
/// - A caller whose task is cancelled gets `CancellationError`; a queued job nobody wants
///   any more is dropped. ``cancel(_:)`` fails the key's callers with
///   ``WorkQueueError/Code/cancelled``; an operation already running is not interrupted
///   (its result is discarded unless new callers joined it meanwhile).
///
/// Thread-safe: every method may be called from any task or thread. Picking the next job
/// is linear in the number of queued jobs, which suits per-identity work (hundreds of
/// keys), not per-connection work.
public final class KeyedWorkQueue<Key: Hashable & Sendable, Value: Sendable>: ServiceLifecycle.Service, Sendable {
    /// Where a job is in its life.
    public enum JobState: String, Sendable, Hashable {
        /// Waiting for a concurrency slot.
        case pending
        /// The operation is running.
        case running
        /// Failed; waiting out its backoff before it is queued again.
        case backingOff
    }

    /// A job as seen from outside, for tests and `/config_dump`.
    public struct JobInfo: Sendable {
        /// The job's key.
        public var key: Key
        /// Its current priority.
        public var priority: WorkPriority
        /// Where it is.
        public var state: JobState
        /// Failed runs so far.
        public var failures: Int
        /// Callers waiting in ``KeyedWorkQueue/value(for:priority:)``.
        public var waiters: Int
        /// Whether ``KeyedWorkQueue/enqueue(_:priority:)`` keeps it wanted without waiters.
        public var retained: Bool
    }

    private typealias Waiter = CheckedContinuation<Value, any Error>

    private struct Job {
        /// Distinguishes this job from a later one for the same key, so a late wake-up
        /// from a cancelled job's backoff cannot touch its successor.
        let id: UInt64
        var priority: WorkPriority
        var sequence: UInt64
        var state: JobState = .pending
        var failures = 0
        var waiters: [UInt64: Waiter] = [:]
        var retained = false

        /// Nobody is interested: no caller waits and nobody enqueued it.
        var isUnwanted: Bool { waiters.isEmpty && !retained }
    }

    private enum Phase { case idle, running, finished }

    private struct State {
        var jobs: [Key: Job] = [:]
        /// Operations in flight, including ones whose callers were cancelled.
        var running = 0
        var nextID: UInt64 = 0
        var phase: Phase = .idle
        var random: any RandomNumberGenerator & Sendable

        mutating func makeID() -> UInt64 {
            nextID += 1
            return nextID
        }
    }

    private let maxConcurrent: Int
    private let backoff: Backoff
    private let maxAttempts: Int?
    private let sleep: @Sendable (Duration) async throws -> Void
    private let operation: @Sendable (Key) async throws -> Value
    private let state: Mutex<State>
    /// Pokes the run loop after any change that may let a job start. Buffering only the
    /// newest element coalesces pokes without losing one: the loop re-reads all state.
    private let wakeups: AsyncStream<Void>
    private let wakeup: AsyncStream<Void>.Continuation

    /// Creates a queue. Nothing runs until ``run()``.
    ///
    /// - Parameters:
    ///   - maxConcurrent: operations allowed at once (at least 1).
    ///   - backoff: delays between retries of a failing key.
    ///   - maxAttempts: runs per job before its callers get the error; nil retries until
    ///     success, ``cancel(_:)`` or shutdown (callers bound their wait with task
    ///     cancellation).
    ///   - clock: measures backoff delays; inject a manual clock in tests.
    ///   - random: draws backoff jitter; inject a seeded generator in tests.
    ///   - operation: the work for a key. Called on arbitrary tasks, never twice at once
    ///     for the same key; should honour task cancellation so shutdown is prompt.
    public init(
        maxConcurrent: Int, backoff: Backoff = Backoff(), maxAttempts: Int? = nil,
        clock: some Clock<Duration> = ContinuousClock(),
        random: some RandomNumberGenerator & Sendable = SystemRandomNumberGenerator(),
        operation: @escaping @Sendable (Key) async throws -> Value
    ) {
        precondition(maxConcurrent >= 1, "maxConcurrent must be at least 1")
        precondition(maxAttempts.map { $0 >= 1 } ?? true, "maxAttempts must be at least 1")
        self.maxConcurrent = maxConcurrent
        self.backoff = backoff
        self.maxAttempts = maxAttempts
        self.sleep = { try await clock.sleep(for: $0) }
        self.operation = operation
        self.state = Mutex(State(random: random))
        (wakeups, wakeup) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    // MARK: - Callers

    /// Queues (or joins) the job for `key` at `priority` and waits for its value.
    ///
    /// Throws the operation's last error once retries are exhausted,
    /// ``WorkQueueError/Code/cancelled`` after ``cancel(_:)``,
    /// ``WorkQueueError/Code/shutdown`` when the queue stops, or `CancellationError` when
    /// the calling task is cancelled.
    public func value(for key: Key, priority: WorkPriority = .onDemand) async throws -> Value {
        let waiterID = state.withLock { $0.makeID() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: Waiter) in
                let rejection: (any Error)? = state.withLock { state in
                    // The cancellation flag is set before the handler below runs, so either
                    // this sees it or the handler sees the registered waiter.
                    if Task.isCancelled { return CancellationError() }
                    if state.phase == .finished { return Self.stoppedError }
                    Self.join(&state, key: key, priority: priority) { $0.waiters[waiterID] = continuation }
                    return nil
                }
                if let rejection {
                    continuation.resume(throwing: rejection)
                } else {
                    wakeup.yield()
                }
            }
        } onCancel: {
            let continuation = state.withLock { state in Self.removeWaiter(&state, key: key, id: waiterID) }
            continuation?.resume(throwing: CancellationError())
        }
    }

    /// Queues the job for `key` without waiting (e.g. a certificate prefetch at
    /// ``WorkPriority/warmup``), or raises its priority if already queued. The job is
    /// retried until it succeeds, is cancelled, or runs out of attempts. Ignored once the
    /// queue has stopped.
    public func enqueue(_ key: Key, priority: WorkPriority) {
        let queued = state.withLock { state in
            guard state.phase != .finished else { return false }
            Self.join(&state, key: key, priority: priority) { $0.retained = true }
            return true
        }
        if queued { wakeup.yield() }
    }

    /// Drops the work for `key` (e.g. an identity no longer needed on this node): its
    /// callers get ``WorkQueueError/Code/cancelled``, a queued or backing-off job is
    /// removed. A running operation finishes; its result goes only to callers that joined
    /// after this call.
    public func cancel(_ key: Key) {
        let waiters = state.withLock { state -> [Waiter] in
            guard var job = state.jobs[key] else { return [] }
            let waiters = Array(job.waiters.values)
            if job.state == .running {
                job.waiters = [:]
                job.retained = false
                state.jobs[key] = job
            } else {
                state.jobs[key] = nil
            }
            return waiters
        }
        let error = WorkQueueError(code: .cancelled, message: "work for \(key) was cancelled")
        for waiter in waiters { waiter.resume(throwing: error) }
    }

    /// Jobs not running: queued, or waiting out a backoff.
    public var pendingCount: Int {
        state.withLock { state in state.jobs.values.count(where: { $0.state != .running }) }
    }

    /// Operations in flight (at most `maxConcurrent`).
    public var runningCount: Int {
        state.withLock { $0.running }
    }

    /// The job for `key`, if there is one.
    public func job(for key: Key) -> JobInfo? {
        state.withLock { state in state.jobs[key].map { Self.info(key, $0) } }
    }

    /// Every job: running first, then in the order they would start, then backing off.
    public func jobs() -> [JobInfo] {
        state.withLock { state in
            state.jobs.sorted { lhs, rhs in
                let rank: (JobState) -> Int = { $0 == .running ? 0 : $0 == .pending ? 1 : 2 }
                if rank(lhs.value.state) != rank(rhs.value.state) {
                    return rank(lhs.value.state) < rank(rhs.value.state)
                }
                return Self.runsBefore(lhs.value, rhs.value)
            }.map { Self.info($0.key, $0.value) }
        }
    }

    // MARK: - Service

    /// Processes jobs until graceful shutdown or cancellation of the calling task, then
    /// fails every waiting caller with ``WorkQueueError/Code/shutdown`` and cancels running
    /// operations; returns once they have returned.
    ///
    /// Throws ``WorkQueueError/Code/alreadyRunning`` when called a second time.
    public func run() async throws {
        let starting = state.withLock { state in
            guard state.phase == .idle else { return false }
            state.phase = .running
            return true
        }
        guard starting else {
            throw WorkQueueError(code: .alreadyRunning, message: "a KeyedWorkQueue can run only once")
        }
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                // Ends when stop() finishes the stream or the task is cancelled.
                for await _ in wakeups {
                    while let next = state.withLock({ self.takeNext(&$0) }) {
                        group.addTask { await self.execute(next.key, jobID: next.id) }
                    }
                }
                stop()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.stop()
        }
    }

    // MARK: - Internals

    private static var stoppedError: WorkQueueError {
        WorkQueueError(code: .shutdown, message: "the work queue has stopped")
    }

    private static func info(_ key: Key, _ job: Job) -> JobInfo {
        JobInfo(
            key: key, priority: job.priority, state: job.state, failures: job.failures,
            waiters: job.waiters.count, retained: job.retained)
    }

    /// Higher priority first, then earlier sequence.
    private static func runsBefore(_ lhs: Job, _ rhs: Job) -> Bool {
        lhs.priority != rhs.priority ? lhs.priority > rhs.priority : lhs.sequence < rhs.sequence
    }

    private static func join(_ state: inout State, key: Key, priority: WorkPriority, update: (inout Job) -> Void) {
        if var job = state.jobs[key] {
            job.priority = max(job.priority, priority)
            update(&job)
            state.jobs[key] = job
        } else {
            let id = state.makeID()
            var job = Job(id: id, priority: priority, sequence: id)
            update(&job)
            state.jobs[key] = job
        }
    }

    /// Removes a cancelled caller; drops its job if nobody else wants it and it is not
    /// running. Returns the caller's continuation if it was still registered.
    private static func removeWaiter(_ state: inout State, key: Key, id: UInt64) -> Waiter? {
        guard var job = state.jobs[key], let waiter = job.waiters.removeValue(forKey: id) else { return nil }
        state.jobs[key] = job.isUnwanted && job.state != .running ? nil : job
        return waiter
    }

    /// Marks the most urgent pending job running if a slot is free.
    private func takeNext(_ state: inout State) -> (key: Key, id: UInt64)? {
        guard state.phase == .running, state.running < maxConcurrent else { return nil }
        var best: (key: Key, job: Job)?
        for (key, job) in state.jobs where job.state == .pending {
            if best.map({ Self.runsBefore(job, $0.job) }) ?? true { best = (key, job) }
        }
        guard let best else { return nil }
        state.jobs[best.key]?.state = .running
        state.running += 1
        return (best.key, best.job.id)
    }

    private enum Outcome {
        case deliver([Waiter], Result<Value, any Error>)
        case retry(after: Duration)
    }

    private func execute(_ key: Key, jobID: UInt64) async {
        let result: Result<Value, any Error>
        do {
            result = .success(try await operation(key))
        } catch {
            result = .failure(error)
        }
        let outcome = state.withLock { state -> Outcome in
            state.running -= 1
            guard state.phase == .running, var job = state.jobs[key], job.id == jobID else {
                return .deliver([], result)
            }
            if case .failure = result {
                job.failures += 1
                let exhausted = maxAttempts.map { job.failures >= $0 } ?? false
                if !exhausted && !job.isUnwanted {
                    job.state = .backingOff
                    state.jobs[key] = job
                    return .retry(after: backoff.delay(attempt: job.failures, using: &state.random))
                }
            }
            state.jobs[key] = nil
            return .deliver(Array(job.waiters.values), result)
        }
        // A slot is free.
        wakeup.yield()

        switch outcome {
        case .deliver(let waiters, let result):
            for waiter in waiters { waiter.resume(with: result) }
        case .retry(let delay):
            // Sleeping here keeps the retry inside the run loop's task group (so shutdown
            // cancels it) while the slot is already released above.
            do { try await sleep(delay) } catch { return }
            let requeued = state.withLock { state in
                guard state.phase == .running, var job = state.jobs[key], job.id == jobID,
                    job.state == .backingOff
                else { return false }
                job.state = .pending
                job.sequence = state.makeID()
                state.jobs[key] = job
                return true
            }
            if requeued { wakeup.yield() }
        }
    }

    /// Stops taking work and fails every waiting caller. Idempotent.
    private func stop() {
        let waiters = state.withLock { state -> [Waiter] in
            state.phase = .finished
            let waiters = state.jobs.values.flatMap { $0.waiters.values }
            state.jobs = [:]
            return waiters
        }
        wakeup.finish()
        for waiter in waiters { waiter.resume(throwing: Self.stoppedError) }
    }
}
