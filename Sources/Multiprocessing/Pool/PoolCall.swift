import Glibc
import Synchronization

/// The work of a closure call, run only in the workers forked for it: the
/// encoded outcome of a range of items.
@usableFromInline
internal final class ClosureProgram: @unchecked Sendable {  // its closures run only in forked children, never here
    let execute: (Range<Int>) -> (tag: UInt8, body: [UInt8])
    @usableFromInline
    init(execute: @escaping (Range<Int>) -> (tag: UInt8, body: [UInt8])) { self.execute = execute }
}

/// One call on a pool (an apply, a map): its units, and their outcomes as
/// they arrive. The engine schedules the units; the typed front ends
/// (``AsyncResult``, ``MapResult``, ``PoolResults``) wait on and decode the outcomes.
internal final class PoolCall: @unchecked Sendable {  // mutable state is in `state`, behind a monitor
    enum Work {
        /// Work named by type: the kind, type name and encoded value, and
        /// each unit's encoded inputs (none for a `.job`).
        /// A sent closure's `code` comes with its requests.
        case named(kind: UnitRequest.Kind, typeName: String, payload: [UInt8], inputs: [[UInt8]], code: SentCode? = nil, runner: SentCode? = nil)
        /// A closure over items the forked workers hold.
        case closure(ClosureProgram)
    }

    /// The work and units of a call about to be submitted.
    struct Pending {
        var work: Work
        var ranges: [Range<Int>]
    }

    struct State {
        var outcomes: [Result<UnitOutcome, ProcessError>?]
        /// Units in the order they completed.
        var completionOrder: [Int] = []
        var completedItems = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
        var isFinished: Bool { completionOrder.count == outcomes.count }
    }

    let id: Int
    let work: Work
    /// The items of each unit.
    let ranges: [Range<Int>]
    let itemCount: Int
    /// The limit per item; a unit of n items has n times this.
    let timeout: Duration?
    private let progress: (@Sendable (PoolProgress) -> Void)?
    /// Called once, on the thread that completes the call. Not `@Sendable`:
    /// it decodes a generic output type there, which is safe but not provably so.
    private let completion: ((PoolCall) -> Void)?
    let state: Monitor<State>
    /// Set by the pool: cancels the call's outstanding work.
    var cancelHandler: (@Sendable (PoolCall) -> Void)?
    /// Set by the pool: forgets the call once every unit has ended, however
    /// it ended (answered, failed, cancelled from any thread).
    var finishHandler: (@Sendable (PoolCall) -> Void)?

    init(id: Int, work: Work, ranges: [Range<Int>], timeout: Duration?,
         progress: (@Sendable (PoolProgress) -> Void)?, completion: ((PoolCall) -> Void)?) {
        self.id = id
        self.work = work
        self.ranges = ranges
        self.itemCount = ranges.last?.upperBound ?? 0
        self.timeout = timeout
        self.progress = progress
        self.completion = completion
        self.state = Monitor(State(outcomes: Array(repeating: nil, count: ranges.count)))
    }

    var isClosureCall: Bool {
        if case .closure = work { true } else { false }
    }

    /// The request for unit `unit`, numbered `id`.
    func request(unit: Int, id: UInt64) -> UnitRequest {
        switch work {
        case let .named(kind, typeName, payload, inputs, code, runner):
            UnitRequest(kind: kind, id: id, typeName: typeName, payload: payload, code: code, runner: runner, inputs: kind == .job || kind == .sentJob ? [] : inputs[unit])
        case .closure:
            UnitRequest(kind: .closureChunk, id: id, lower: ranges[unit].lowerBound, upper: ranges[unit].upperBound)
        }
    }

    /// Records how `unit` ended, unless it already has; wakes waiters.
    func deliver(_ unit: Int, _ outcome: Result<UnitOutcome, ProcessError>) {
        deliver([(unit, outcome)])
    }

    /// Records outcomes of several units at once. Progress and callbacks
    /// come before waiters wake, so a caller woken by the end of a call has
    /// seen its last progress report and its callback.
    func deliver(_ outcomes: [(Int, Result<UnitOutcome, ProcessError>)]) {
        if let progress {
            let completed = state.withLock { state in
                state.completedItems + Set(outcomes.map(\.0)).filter { state.outcomes[$0] == nil }.reduce(0) { $0 + ranges[$1].count }
            }
            progress(PoolProgress(completed: completed, total: itemCount))
        }
        let (changed, finished) = state.withLock { state -> (Bool, Bool) in
            var changed = false
            for (unit, outcome) in outcomes where state.outcomes[unit] == nil {
                state.outcomes[unit] = outcome
                state.completionOrder.append(unit)
                state.completedItems += ranges[unit].count
                changed = true
            }
            return (changed, changed && state.isFinished)
        }
        guard changed else { return }
        if finished { finishedFlag.store(true, ordering: .releasing) }
        // As in Python, callbacks run before waiters wake.
        if finished {
            completion?(self)
            finishHandler?(self)
        }
        let waiters = state.update { state in
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        waiters.forEach { $0.resume() }
    }

    /// Fails every unit that has not ended with `error`.
    func failRemaining(_ error: ProcessError) {
        let open = state.withLock { state in state.outcomes.indices.filter { state.outcomes[$0] == nil } }
        if !open.isEmpty { deliver(open.map { ($0, .failure(error)) }) }
    }

    var isFinished: Bool { state.withLock(\.isFinished) }

    /// Set once every unit has ended: read without the lock, for spinning.
    private let finishedFlag = Atomic<Bool>(false)

    /// Spins for a short while (a few tens of microseconds) until the call
    /// finishes: a round trip to an idle worker often ends in that time, and
    /// a waiter that has not gone to sleep needs no wake-up.
    func spinBriefly() {
        let deadline = ContinuousClock.now + .microseconds(40)
        while !finishedFlag.load(ordering: .acquiring) && ContinuousClock.now < deadline {
            sched_yield()
        }
    }

    /// Cancels what has not ended: it fails with ``ProcessError/cancelled``
    /// and workers running it are killed.
    func cancel() {
        cancelHandler?(self)
        failRemaining(.cancelled)
    }

    /// Waits until `ready` gives a value or the deadline passes.
    func wait<T>(until deadline: ContinuousClock.Instant?, _ ready: (State) -> T?) -> T? {
        state.wait(until: deadline) { ready($0) }
    }

    /// Waits without blocking a thread until `ready` gives a value. A
    /// cancelled task cancels the call, whose open units then fail with
    /// ``ProcessError/cancelled``.
    func wait<T>(_ ready: @escaping (State) -> T?) async -> T? {
        await withTaskCancellationHandler {
            while !Task.isCancelled {
                if let value = state.withLock({ ready($0) }) { return value }
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { state -> Bool in
                        if ready(state) != nil { return true }
                        state.waiters[state.nextWaiter] = continuation
                        state.nextWaiter += 1
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
            return state.withLock { ready($0) }
        } onCancel: {
            cancel()
        }
    }
}

/// How far a call has come: items completed (delivered or failed) of the total.
public struct PoolProgress: Sendable, Equatable {
    /// Items that have ended, successfully or not.
    public var completed: Int
    /// Items in the call.
    public var total: Int

    /// `completed` as a fraction of `total` (1 for an empty call).
    public var fraction: Double { total == 0 ? 1 : Double(completed) / Double(total) }
}
