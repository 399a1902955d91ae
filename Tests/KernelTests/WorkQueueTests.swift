import AmbitRuntime
import Kernel
import Synchronization
import Testing

// MARK: - Test doubles

/// A clock that moves only when told to, so backoff delays are observed, not waited for.
final class ManualClock: Clock, Sendable {
    struct Instant: InstantProtocol {
        var offset: Duration
        func advanced(by duration: Duration) -> Instant { Instant(offset: offset + duration) }
        func duration(to other: Instant) -> Duration { other.offset - offset }
        static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.offset < rhs.offset }
    }

    private struct Sleeper {
        var deadline: Instant
        var continuation: CheckedContinuation<Void, any Error>
    }

    private struct State {
        var now = Instant(offset: .zero)
        var sleepers: [UInt64: Sleeper] = [:]
        var nextID: UInt64 = 0
    }

    private let state = Mutex(State())

    var now: Instant { state.withLock { $0.now } }
    var minimumResolution: Duration { .zero }

    /// How far ahead of now each sleeper's deadline is, soonest first.
    var pendingDelays: [Duration] {
        state.withLock { state in state.sleepers.values.map { state.now.duration(to: $0.deadline) }.sorted() }
    }

    func sleep(until deadline: Instant, tolerance: Duration?) async throws {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let immediate: Result<Void, any Error>? = state.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if deadline <= state.now { return .success(()) }
                    state.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let sleeper = state.withLock { $0.sleepers.removeValue(forKey: id) }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves time forward and wakes every sleeper whose deadline has passed.
    func advance(by duration: Duration) {
        let due = state.withLock { state in
            state.now = state.now.advanced(by: duration)
            let now = state.now
            let due = state.sleepers.filter { $0.value.deadline <= now }
            for id in due.keys { state.sleepers[id] = nil }
            return Array(due.values)
        }
        for sleeper in due { sleeper.continuation.resume() }
    }
}

/// A barrier operations wait on until the test opens it; cancellable so shutdown tests
/// cannot hang on it.
final class Gate: Sendable {
    private struct State {
        var isOpen = false
        var waiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var nextID: UInt64 = 0
    }
    private let state = Mutex(State())

    func wait() async throws {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let immediate: Result<Void, any Error>? = state.withLock { state in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if state.isOpen { return .success(()) }
                    state.waiters[id] = continuation
                    return nil
                }
                if let immediate { continuation.resume(with: immediate) }
            }
        } onCancel: {
            let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
    }

    func open() {
        let waiters = state.withLock { state in
            state.isOpen = true
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// What the operations did: start order, invocation counts, concurrency high-water mark.
final class Recorder: Sendable {
    private struct State {
        var started: [String] = []
        var finished: [String] = []
        var current = 0
        var maximum = 0
    }
    private let state = Mutex(State())

    func start(_ key: String) {
        state.withLock { state in
            state.started.append(key)
            state.current += 1
            state.maximum = max(state.maximum, state.current)
        }
    }

    func finish(_ key: String) {
        state.withLock { state in
            state.current -= 1
            state.finished.append(key)
        }
    }

    var started: [String] { state.withLock { $0.started } }
    var finished: [String] { state.withLock { $0.finished } }
    var maximum: Int { state.withLock { $0.maximum } }
    func runs(of key: String) -> Int { state.withLock { state in state.started.count(where: { $0 == key }) } }
}

struct TestFailure: Error, Equatable {
    var attempt: Int
}

/// Polls `condition` for up to 10 s (1 ms steps): waits for the queue's background work
/// without fixed sleeps, and fails instead of hanging.
func eventually(_ condition: () -> Bool) async -> Bool {
    for _ in 0..<10_000 {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return condition()
}

/// Runs `body` while `queue.run()` runs in a child task; stops the queue afterwards.
func whileRunning<Key: Hashable & Sendable, Value: Sendable>(
    _ queue: KeyedWorkQueue<Key, Value>, _ body: () async throws -> Void
) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await queue.run() }
        defer { group.cancelAll() }
        try await body()
    }
}

private func errorCode(_ body: () async throws -> String) async -> WorkQueueError.Code? {
    do {
        _ = try await body()
        return nil
    } catch let error as WorkQueueError {
        return error.code
    } catch {
        return nil
    }
}

// MARK: - Tests

@Suite("Keyed work queue", .timeLimit(.minutes(1)))
struct WorkQueueTests {
    @Test("at most maxConcurrent operations run at once")
    func maxConcurrency() async throws {
        let gate = Gate()
        let recorder = Recorder()
        let queue = KeyedWorkQueue<String, String>(maxConcurrent: 3) { key in
            recorder.start(key)
            defer { recorder.finish(key) }
            try await gate.wait()
            return key
        }
        try await whileRunning(queue) {
            for index in 0..<10 { queue.enqueue("key-\(index)", priority: .background) }
            #expect(await eventually { recorder.started.count == 3 })
            // Give the run loop a chance to (wrongly) start more.
            try await Task.sleep(for: .milliseconds(20))
            #expect(recorder.started.count == 3)
            #expect(queue.runningCount == 3)
            #expect(queue.pendingCount == 7)
            gate.open()
            #expect(await eventually { recorder.finished.count == 10 })
            #expect(recorder.maximum == 3)
            #expect(await eventually { queue.pendingCount == 0 && queue.runningCount == 0 })
        }
    }

    @Test("a saturated queue starts higher priorities first, FIFO within a priority")
    func priorityOrder() async throws {
        let gate = Gate()
        let recorder = Recorder()
        let queue = KeyedWorkQueue<String, String>(maxConcurrent: 1) { key in
            recorder.start(key)
            defer { recorder.finish(key) }
            if key == "block" { try await gate.wait() }
            return key
        }
        try await whileRunning(queue) {
            queue.enqueue("block", priority: .background)
            #expect(await eventually { queue.runningCount == 1 })
            queue.enqueue("low-1", priority: .background)
            queue.enqueue("high", priority: .onDemand)
            queue.enqueue("mid", priority: .warmup)
            queue.enqueue("low-2", priority: .background)
            queue.enqueue("custom", priority: WorkPriority(rawValue: 150))
            #expect(queue.jobs().map(\.key) == ["block", "high", "custom", "mid", "low-1", "low-2"])
            gate.open()
            #expect(await eventually { recorder.finished.count == 6 })
            #expect(recorder.started == ["block", "high", "custom", "mid", "low-1", "low-2"])
        }
    }

    @Test("single flight: ten callers share one run and its value")
    func singleFlight() async throws {
        let gate = Gate()
        let recorder = Recorder()
        let queue = KeyedWorkQueue<String, String>(maxConcurrent: 4) { key in
            recorder.start(key)
            defer { recorder.finish(key) }
            try await gate.wait()
            return "value-of-\(key)"
        }
        try await whileRunning(queue) {
            try await withThrowingTaskGroup(of: String.self) { callers in
                for _ in 0..<10 {
                    callers.addTask { try await queue.value(for: "identity", priority: .onDemand) }
                }
                #expect(
                    await eventually {
                        queue.job(for: "identity")?.waiters == 10 && queue.job(for: "identity")?.state == .running
                    })
                gate.open()
                var values: [String] = []
                for try await value in callers { values.append(value) }
                #expect(values == Array(repeating: "value-of-identity", count: 10))
            }
            #expect(recorder.runs(of: "identity") == 1)
            // Not cached: a later caller runs the operation again.
            #expect(try await queue.value(for: "identity", priority: .background) == "value-of-identity")
            #expect(recorder.runs(of: "identity") == 2)
        }
    }

    @Test("a higher-priority caller raises a pending job")
    func priorityRaise() async throws {
        let gate = Gate()
        let recorder = Recorder()
        let queue = KeyedWorkQueue<String, String>(maxConcurrent: 1) { key in
            recorder.start(key)
            defer { recorder.finish(key) }
            if key == "block" { try await gate.wait() }
            return key
        }
        try await whileRunning(queue) {
            queue.enqueue("block", priority: .background)
            #expect(await eventually { queue.runningCount == 1 })
            queue.enqueue("a", priority: .background)
            queue.enqueue("b", priority: .background)
            try await withThrowingTaskGroup(of: String.self) { callers in
                callers.addTask { try await queue.value(for: "b", priority: .onDemand) }
                #expect(await eventually { queue.job(for: "b")?.priority == .onDemand })
                // A lower priority never lowers it.
                queue.enqueue("b", priority: .background)
                #expect(queue.job(for: "b")?.priority == .onDemand)
                #expect(queue.jobs().map(\.key) == ["block", "b", "a"])
                gate.open()
                let value = try await callers.next()
                #expect(value == "b")
            }
            #expect(await eventually { recorder.finished.count == 3 })
            #expect(recorder.started == ["block", "b", "a"])
        }
    }

    @Test("failures are retried after a jittered exponential backoff that holds no slot")
    func retryWithBackoff() async throws {
        let clock = ManualClock()
        let recorder = Recorder()
        let queue = KeyedWorkQueue<String, String>(
            maxConcurrent: 1, clock: clock, random: SplitMix64(seed: 5)
        ) { key in
            recorder.start(key)
            defer { recorder.finish(key) }
            let attempt = recorder.runs(of: key)
            if key == "flaky" && attempt < 3 { throw TestFailure(attempt: attempt) }
            return "\(key)#\(attempt)"
        }
        try await whileRunning(queue) {
            try await withThrowingTaskGroup(of: String.self) { callers in
                callers.addTask { try await queue.value(for: "flaky", priority: .onDemand) }

                #expect(await eventually { clock.pendingDelays.count == 1 })
                #expect(queue.job(for: "flaky")?.state == .backingOff)
                #expect(queue.job(for: "flaky")?.failures == 1)
                let first = try #require(clock.pendingDelays.first)
                #expect(first >= .milliseconds(400) && first <= .milliseconds(600), "\(first)")

                // The only slot is free while "flaky" backs off.
                #expect(queue.runningCount == 0)
                #expect(try await queue.value(for: "other", priority: .background) == "other#1")

                clock.advance(by: first)
                #expect(await eventually { queue.job(for: "flaky")?.failures == 2 && clock.pendingDelays.count == 1 })
                let second = try #require(clock.pendingDelays.first)
                #expect(second >= .milliseconds(800) && second <= .milliseconds(1200), "\(second)")

                clock.advance(by: second)
                #expect(try await callers.next() == "flaky#3")
            }
            #expect(recorder.runs(of: "flaky") == 3)
            #expect(queue.job(for: "flaky") == nil)
        }
    }

    @Test("after maxAttempts runs the callers get the operation's last error")
    func attemptsExhausted() async throws {
        let recorder = Recorder()
        let queue = KeyedWorkQueue<String, String>(
            maxConcurrent: 2, backoff: Backoff(initial: .milliseconds(1), jitter: 0), maxAttempts: 3
        ) { key in
            recorder.start(key)
            defer { recorder.finish(key) }
            throw TestFailure(attempt: recorder.runs(of: key))
        }
        try await whileRunning(queue) {
            await #expect(throws: TestFailure(attempt: 3)) {
                try await queue.value(for: "broken", priority: .onDemand)
            }
            #expect(recorder.runs(of: "broken") == 3)
            #expect(queue.job(for: "broken") == nil)
        }
    }

    @Test("cancel fails the key's callers and drops its queued job")
    func cancelPending() async throws {
        let gate = Gate()
        let recorder = Recorder()
        let queue = KeyedWorkQueue<String, String>(maxConcurrent: 1) { key in
            recorder.start(key)
            defer { recorder.finish(key) }
            if key == "block" { try await gate.wait() }
            return key
        }
        try await whileRunning(queue) {
            queue.enqueue("block", priority: .background)
            #expect(await eventually { queue.runningCount == 1 })
            try await withThrowingTaskGroup(of: WorkQueueError.Code?.self) { callers in
                callers.addTask { await errorCode { try await queue.value(for: "x", priority: .onDemand) } }
                #expect(await eventually { queue.job(for: "x")?.waiters == 1 })
                queue.cancel("x")
                let code = try await callers.next()
                #expect(code == .cancelled)
            }
            #expect(queue.job(for: "x") == nil)
            #expect(queue.pendingCount == 0)
            gate.open()
            #expect(await eventually { recorder.finished == ["block"] })
            try await Task.sleep(for: .milliseconds(20))
            #expect(recorder.runs(of: "x") == 0)
        }
    }

    @Test("cancel during backoff stops the retries")
    func cancelDuringBackoff() async throws {
        let clock = ManualClock()
        let recorder = Recorder()
        let queue = KeyedWorkQueue<String, String>(
            maxConcurrent: 1, clock: clock, random: SplitMix64(seed: 1)
        ) { key in
            recorder.start(key)
            defer { recorder.finish(key) }
            throw TestFailure(attempt: recorder.runs(of: key))
        }
        try await whileRunning(queue) {
            queue.enqueue("doomed", priority: .warmup)
            #expect(await eventually { queue.job(for: "doomed")?.state == .backingOff })
            queue.cancel("doomed")
            #expect(queue.job(for: "doomed") == nil)
            clock.advance(by: .seconds(1))
            try await Task.sleep(for: .milliseconds(20))
            #expect(recorder.runs(of: "doomed") == 1)
            #expect(queue.pendingCount == 0)
        }
    }

    @Test("a cancelled caller gets CancellationError and its unwanted job is dropped")
    func callerCancellation() async throws {
        let gate = Gate()
        let queue = KeyedWorkQueue<String, String>(maxConcurrent: 1) { key in
            if key == "block" { try await gate.wait() }
            return key
        }
        try await whileRunning(queue) {
            queue.enqueue("block", priority: .background)
            #expect(await eventually { queue.runningCount == 1 })
            let caller = Task { try await queue.value(for: "y", priority: .onDemand) }
            #expect(await eventually { queue.job(for: "y")?.waiters == 1 })
            caller.cancel()
            await #expect(throws: CancellationError.self) { try await caller.value }
            #expect(queue.job(for: "y") == nil)
            gate.open()
        }
    }

    @Test("stopping the queue fails waiting callers; later calls fail at once; run is once")
    func shutdown() async throws {
        let gate = Gate()
        let queue = KeyedWorkQueue<String, String>(maxConcurrent: 1) { key in
            try await gate.wait()
            return key
        }
        // Queued before run(): waits for it rather than failing.
        let early = Task { await errorCode { try await queue.value(for: "running", priority: .onDemand) } }
        #expect(await eventually { queue.job(for: "running")?.waiters == 1 })
        let runner = Task { try await queue.run() }
        #expect(await eventually { queue.runningCount == 1 })
        let queued = Task { await errorCode { try await queue.value(for: "queued", priority: .onDemand) } }
        #expect(await eventually { queue.job(for: "queued")?.waiters == 1 })

        runner.cancel()
        try await runner.value
        #expect(await early.value == .shutdown)
        #expect(await queued.value == .shutdown)
        #expect(await errorCode { try await queue.value(for: "late", priority: .onDemand) } == .shutdown)
        queue.enqueue("ignored", priority: .background)
        #expect(queue.pendingCount == 0)
        await #expect(throws: WorkQueueError(code: .alreadyRunning, message: "a KeyedWorkQueue can run only once")) {
            try await queue.run()
        }
    }

    @Test("priorities order by raw value and describe themselves")
    func priorities() {
        #expect(WorkPriority.background < .warmup)
        #expect(WorkPriority.warmup < .onDemand)
        #expect(WorkPriority(rawValue: 150) > .warmup)
        #expect(WorkPriority.onDemand.description == "onDemand")
        #expect(WorkPriority(rawValue: 7).description == "priority(7)")
    }
}
