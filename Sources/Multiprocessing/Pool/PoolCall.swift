import DequeModule
import Glibc
import Synchronization

/// One call on a pool (an apply, a map): its units as they are read from
/// its input, and their outcomes as they arrive. The engine schedules the
/// units; the typed front ends (``AsyncResult``, ``MapResult``,
/// ``PoolResults``) wait on, take and decode the outcomes.
///
/// A call holds what is in flight, not what it was given: a unit's input is
/// dropped once it has ended, and its outcome once it is taken (`imap`).
/// A call with an ``CallInput`` reads more units only while fewer than
/// `bufferSize` are held (see ``room(_:)``).
package final class PoolCall: @unchecked Sendable {  // mutable state is in `state`, behind a monitor
    enum Work {
        /// Work named by type: the kind, type name and encoded value; each
        /// unit carries its encoded inputs (none for a `.job`).
        /// A sent closure's `code` comes with its requests.
        case named(kind: UnitRequest.Kind, typeName: String, payload: [UInt8], code: SentCode? = nil, runner: SentCode? = nil)
        /// A closure over items the forked workers hold.
        case closure(ClosureProgram)
    }

    /// How the outcomes are consumed, which says when they are dropped and
    /// what counts against the buffer.
    package enum Consumption {
        /// All at the end (apply, map): kept until the call is dropped; the
        /// buffer counts units not yet ended.
        case atEnd
        /// Taken one by one in input order (`imap`); the buffer counts units not yet taken.
        case inOrder
        /// Taken one by one as they complete (`imapUnordered`).
        case asCompleted
    }

    /// One unit read from the input: how many items, and their encoding
    /// (empty for a closure call, whose workers hold the items).
    package struct UnitInput {
        package var items: Int
        package var bytes: [UInt8] = []

        package init(items: Int, bytes: [UInt8] = []) {
            self.items = items
            self.bytes = bytes
        }
    }

    struct Unit {
        /// The index of its first item.
        let lower: Int
        let items: Int
        /// Dropped once the unit has ended.
        var input: [UInt8]
        var outcome: Result<UnitOutcome, ProcessError>?
        var taken = false
        /// The errors of the attempts that failed and were retried.
        var failedAttempts: [ProcessError] = []
        /// What its worker wrote while it ran, when the pool captures output.
        var output: CapturedOutput?
    }

    /// What a consumer takes next.
    enum Taken {
        case unit(items: Int, Result<UnitOutcome, ProcessError>)
        /// The input failed after the units read before it.
        case inputFailed(ProcessError)
        case end
    }

    struct State {
        /// Units `base ..< base + units.count`; those before `base` were taken.
        var units: Deque<Unit> = []
        var base = 0
        /// Units read so far.
        var unitCount = 0
        var itemsRead = 0
        /// No more units will be read (the input ended, failed, or the call is over).
        var inputEnded: Bool
        var inputError: ProcessError?
        var inputErrorTaken = false
        var endedUnits = 0
        var completedItems = 0
        /// Ended units not yet taken, in completion order (`asCompleted` only).
        var completions: Deque<Int> = []
        var takenUnits = 0
        /// The unit an `inOrder` consumer takes next.
        var nextInOrder = 0
        /// A thread is reading the input; `readAgain` asks it to look for room once more.
        var reading = false
        var readAgain = false
        /// The pool is closing: the rest is read whether it is taken or not.
        var unbounded = false
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
        /// Counts the changes waiters are woken for.
        var generation: UInt64 = 0
        var isFinished: Bool { inputEnded && endedUnits == unitCount }

        func unit(_ number: Int) -> Unit? {
            let index = number - base
            return index >= 0 && index < units.count ? units[index] : nil
        }

        /// The outcome of `number`, if it has ended and is still held.
        func outcome(of number: Int) -> Result<UnitOutcome, ProcessError>? { unit(number)?.outcome }
    }

    package let id: Int
    let work: Work
    let consumption: Consumption
    /// The most units held at once (see ``room(_:)``).
    let bufferSize: Int
    /// The limit per item; a unit of n items has n times this.
    package let timeout: Duration?
    private let progress: (@Sendable (PoolProgress) -> Void)?
    /// Called once, on the thread that completes the call. Not `@Sendable`:
    /// it decodes a generic output type there, which is safe but not provably so.
    private let completion: ((PoolCall) -> Void)?
    /// Where further units come from; nil when they were all given at the start.
    private let input: CallInput?
    let state: Monitor<State>
    /// Set by the pool: cancels the call's outstanding work.
    package var cancelHandler: (@Sendable (PoolCall) -> Void)?
    /// Set by the pool: forgets the call once every unit has ended, however
    /// it ended (answered, failed, cancelled from any thread).
    package var finishHandler: (@Sendable (PoolCall) -> Void)?
    /// Set by whoever relays a call's outcomes elsewhere (an MPI rank):
    /// called with each unit's outcome as it ends, before waiters wake.
    package var outcomeHandler: (@Sendable (Int, Result<UnitOutcome, ProcessError>) -> Void)?
    /// Set by the pool: more units were read (up to the count given) or the input ended.
    package var unitsHandler: (@Sendable (PoolCall, _ unitCount: Int, _ inputEnded: Bool) -> Void)?

    init(id: Int, work: Work, units: [UnitInput], input: CallInput? = nil, consumption: Consumption = .atEnd, bufferSize: Int = .max,
         timeout: Duration?, progress: (@Sendable (PoolProgress) -> Void)?, completion: ((PoolCall) -> Void)?) {
        self.id = id
        self.work = work
        self.consumption = consumption
        self.bufferSize = max(1, bufferSize)
        self.timeout = timeout
        self.progress = progress
        self.completion = completion
        self.input = input
        var state = State(inputEnded: input == nil)
        for unit in units { Self.append(unit, to: &state) }
        self.state = Monitor(state)
    }

    /// A call of work named by type, with every unit given: what an MPI
    /// rank makes of the units it is sent, to run in its local pool.
    package static func named(id: Int, kind: UnitRequest.Kind, typeName: String, payload: [UInt8], units: [UnitInput], timeout: Duration?) -> PoolCall {
        PoolCall(id: id, work: .named(kind: kind, typeName: typeName, payload: payload), units: units, timeout: timeout, progress: nil, completion: nil)
    }

    private static func append(_ unit: UnitInput, to state: inout State) {
        state.units.append(Unit(lower: state.itemsRead, items: unit.items, input: unit.bytes))
        state.unitCount += 1
        state.itemsRead += unit.items
    }

    package var isClosureCall: Bool {
        if case .closure = work { true } else { false }
    }

    /// The request for unit `unit`, numbered `id`, and its item count;
    /// nil if the unit is no longer held.
    package func request(unit: Int, id: UInt64) -> (UnitRequest, items: Int)? {
        guard let held = state.withLock({ $0.unit(unit) }) else { return nil }
        switch work {
        case let .named(kind, typeName, payload, code, runner):
            return (UnitRequest(kind: kind, id: id, typeName: typeName, payload: payload, code: code, runner: runner, inputs: held.input), held.items)
        case .closure:
            return (UnitRequest(kind: .closureChunk, id: id, lower: held.lower, upper: held.lower + held.items, inputs: held.input), held.items)
        }
    }

    /// What a crash report says unit `unit` was: its items' indices in the
    /// input (nil for a single task) and the work's readable type name (nil
    /// for a closure).
    func crashReport(unit: Int, message: String?) -> CrashReport {
        let range = state.withLock { $0.unit(unit) }.map { $0.lower..<($0.lower + $0.items) }
        switch work {
        case let .named(kind, typeName, _, _, _):
            switch kind {
            case .job: return CrashReport(message: message, work: TypeNames.readable(typeName))
            case .sentJob: return CrashReport(message: message)
            case .sentChunk: return CrashReport(message: message, items: range)
            default: return CrashReport(message: message, items: range, work: TypeNames.readable(typeName))
            }
        case .closure:
            let single = state.withLock { $0.inputEnded && $0.itemsRead == 1 }
            return CrashReport(message: message, items: single ? nil : range)
        }
    }

    /// `error`, which unit `unit` of this call failed with in a pool that
    /// ran it as a call of its own (an MPI rank's local pool): its crash
    /// report names this call's items.
    package func rebased(_ error: ProcessError, unit: Int) -> ProcessError {
        switch error {
        case let .crashed(signal, report) where report.items != nil:
            var report = report
            report.items = state.withLock { $0.unit(unit) }.map { $0.lower..<($0.lower + $0.items) }
            return .crashed(signal: signal, report: report)
        case let .retriesExhausted(attempts):
            return .retriesExhausted(attempts: attempts.map { rebased($0, unit: unit) })
        default:
            return error
        }
    }

    /// Work named by type without a sent closure: its kind, type name and
    /// encoded value (what another machine can run); nil otherwise.
    package var namedWork: (kind: UnitRequest.Kind, typeName: String, payload: [UInt8])? {
        guard case let .named(kind, typeName, payload, nil, nil) = work else { return nil }
        return (kind, typeName, payload)
    }

    /// Unit `unit`'s item count and encoded inputs, if it is still held.
    package func input(of unit: Int) -> (items: Int, bytes: [UInt8])? {
        state.withLock { $0.unit(unit) }.map { ($0.items, $0.input) }
    }

    // MARK: - Reading the input

    /// How many more units the call may read now.
    func room(_ state: State) -> Int {
        guard !state.inputEnded else { return 0 }
        if state.unbounded { return Int.max }
        let held = state.unitCount - (consumption == .atEnd ? state.endedUnits : state.takenUnits)
        return max(0, bufferSize - held)
    }

    /// Reads units from a sequence input while there is room, on this
    /// thread. One thread reads at a time; a call made while another reads
    /// makes that one look for room again instead.
    func refill() {
        guard case let .sequence(reader)? = input else { return }
        let mine = state.withLock { state -> Bool in
            if state.reading {
                state.readAgain = true
                return false
            }
            state.reading = true
            return true
        }
        guard mine else { return }
        while true {
            let room = state.withLock { state -> Int in
                state.readAgain = false
                return self.room(state)
            }
            if room > 0 {
                for _ in 0..<room {
                    let read = reader.next()
                    guard add(read) else { break }
                }
                continue
            }
            let stop = state.withLock { state -> Bool in
                guard !state.readAgain || state.inputEnded else { return false }
                state.reading = false
                return true
            }
            if stop { return }
        }
    }

    /// Starts whatever reads the rest of the input when nobody consuming
    /// will (a map's outputs are all taken at the end): a thread for a
    /// sequence, a task for an asynchronous sequence.
    func startReading() {
        switch input {
        case nil:
            return
        case .sequence:
            refill()
            guard consumption == .atEnd, !state.withLock(\.inputEnded) else { return }
            _ = SystemThread.start { [self] in
                while state.wait(until: nil, { state in state.inputEnded ? false : (self.room(state) > 0 ? true : nil) }) == true {
                    refill()
                }
            }
        case .asynchronous:
            return  // its task was started with it (see AsyncReader.read)
        }
    }

    /// The pool is closing, and `join` waits for every call to end: the
    /// rest of the input is read at once rather than as the consumer takes
    /// results (as Python's `imap` reads it), and the results wait to be taken.
    package func readWithoutBound() {
        let wasBounded = state.withLock { state -> Bool in
            defer { state.unbounded = true }
            return !state.unbounded && !state.inputEnded
        }
        guard wasBounded else { return }
        switch input {
        case .sequence?:
            // A map's thread is reading already; an imap's consumer may never come.
            if consumption != .atEnd { _ = SystemThread.start { [self] in refill() } }
            settle(finished: false)
        case .asynchronous?:
            settle(finished: false)  // wakes its reader
        case nil:
            return
        }
    }

    /// Adds a unit read (or the end of the input); returns whether to read on.
    @discardableResult
    func add(_ read: InputRead) -> Bool {
        let (count, ended, finished) = state.withLock { state -> (Int, Bool, Bool) in
            guard !state.inputEnded else { return (state.unitCount, true, false) }
            switch read {
            case let .unit(unit):
                Self.append(unit, to: &state)
            case .end:
                state.inputEnded = true
            case let .failed(error):
                state.inputEnded = true
                state.inputError = error
            }
            return (state.unitCount, state.inputEnded, state.isFinished)
        }
        unitsHandler?(self, count, ended)
        guard ended else { return true }
        reportProgress()  // the total is known now
        settle(finished: finished)
        return false
    }

    // MARK: - Outcomes

    /// Records how `unit` ended, unless it already has; wakes waiters.
    /// How often a unit whose worker died is run again (idempotent work).
    package var retries = 0

    /// A unit's attempt ended with `error`: whether it is to run again
    /// (the error is kept), or the error it fails with.
    func retry(_ unit: Int, after error: ProcessError) -> ProcessError? {
        guard retries > 0 else { return error }
        switch error {
        case .crashed, .exited, .timedOut, .memoryLimitExceeded, .cpuTimeLimitExceeded, .sandboxViolation, .corruptReply: break
        default: return error
        }
        return state.withLock { state in
            let index = unit - state.base
            guard index >= 0, index < state.units.count, state.units[index].outcome == nil else { return error }
            state.units[index].failedAttempts.append(error)
            let attempts = state.units[index].failedAttempts
            return attempts.count > retries ? .retriesExhausted(attempts: attempts) : nil
        }
    }

    package func deliver(_ unit: Int, _ outcome: Result<UnitOutcome, ProcessError>) {
        deliver([(unit, outcome)])
    }

    /// Keeps what the worker wrote while it ran `unit` (before its outcome
    /// is delivered, so that whoever wakes for the outcome sees it).
    func record(_ output: CapturedOutput, of unit: Int) {
        state.withLock { state in
            let index = unit - state.base
            guard index >= 0, index < state.units.count, state.units[index].outcome == nil else { return }
            state.units[index].output = output
        }
    }

    /// What the worker wrote while it ran `unit`, if the pool captured it.
    func output(of unit: Int) -> CapturedOutput? {
        state.withLock { $0.unit(unit)?.output }
    }

    /// Records outcomes of several units at once. Progress and callbacks
    /// come before waiters wake, so a caller woken by the end of a call has
    /// seen its last progress report and its callback.
    package func deliver(_ outcomes: [(Int, Result<UnitOutcome, ProcessError>)]) {
        var ended: [(Int, Result<UnitOutcome, ProcessError>)] = []
        let (changed, finished) = state.withLock { state -> (Bool, Bool) in
            var changed = false
            for (unit, outcome) in outcomes {
                let index = unit - state.base
                guard index >= 0, index < state.units.count, state.units[index].outcome == nil else { continue }
                state.units[index].outcome = outcome
                state.units[index].input = []
                state.endedUnits += 1
                state.completedItems += state.units[index].items
                if consumption == .asCompleted { state.completions.append(unit) }
                changed = true
                ended.append((unit, outcome))
            }
            return (changed, changed && state.isFinished)
        }
        guard changed else { return }
        if let outcomeHandler { ended.forEach(outcomeHandler) }
        reportProgress()
        settle(finished: finished)
    }

    /// Serializes progress reports, so that the last one a callback sees is the latest.
    private let progressOrder = Locked(())

    /// Calls `progress` with where the call stands now.
    private func reportProgress() {
        guard let progress else { return }
        progressOrder.withLock { _ in
            progress(state.withLock { PoolProgress(completed: $0.completedItems, total: $0.itemsRead, isTotalKnown: $0.inputEnded) })
        }
    }

    /// After a change: runs the end-of-call work if it just finished, then wakes every waiter.
    private func settle(finished: Bool) {
        if finished {
            finishedFlag.store(true, ordering: .releasing)
            // As in Python, callbacks run before waiters wake.
            completion?(self)
            finishHandler?(self)
        }
        let waiters = state.update { state in
            state.generation &+= 1
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        waiters.forEach { $0.resume() }
    }

    /// Ends the call: reads no more input, and fails every unit that has
    /// not ended with `error`, but for the units in `spared`.
    package func failRemaining(_ error: ProcessError, except spared: Set<Int> = []) {
        let (open, stoppedReading) = state.withLock { state -> ([Int], Bool) in
            let stopped = !state.inputEnded
            state.inputEnded = true
            let open = state.units.indices.filter { state.units[$0].outcome == nil }.map { $0 + state.base }.filter { !spared.contains($0) }
            return (open, stopped)
        }
        if stoppedReading {
            if case let .asynchronous(reader)? = input { reader.stop() }
            unitsHandler?(self, state.withLock(\.unitCount), true)
        }
        if open.isEmpty {
            settle(finished: stoppedReading && isFinished)
        } else {
            deliver(open.map { ($0, .failure(error)) })
        }
    }

    package var isFinished: Bool { state.withLock(\.isFinished) }

    /// The units read so far, and whether the input has ended.
    package var unitsRead: (count: Int, inputEnded: Bool) { state.withLock { ($0.unitCount, $0.inputEnded) } }

    /// Takes the next outcome for an `imap` consumer, if one is ready (the
    /// consumer then waits); drops it from the call.
    func take(_ state: inout State) -> Taken? {
        let number: Int
        switch consumption {
        case .inOrder:
            guard state.nextInOrder < state.unitCount else { return state.inputEnded ? endOfTaking(&state) : nil }
            guard state.outcome(of: state.nextInOrder) != nil else { return nil }
            number = state.nextInOrder
            state.nextInOrder += 1
        case .asCompleted, .atEnd:
            guard let first = state.completions.popFirst() else {
                return state.inputEnded && state.takenUnits == state.unitCount ? endOfTaking(&state) : nil
            }
            number = first
        }
        let index = number - state.base
        let unit = state.units[index]
        state.units[index].taken = true
        state.units[index].outcome = nil
        state.takenUnits += 1
        while let first = state.units.first, first.taken {
            state.units.removeFirst()
            state.base += 1
        }
        return .unit(items: unit.items, unit.outcome!)
    }

    private func endOfTaking(_ state: inout State) -> Taken {
        guard let error = state.inputError, !state.inputErrorTaken else { return .end }
        state.inputErrorTaken = true
        return .inputFailed(error)
    }

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

    /// Cancels what has not ended: it fails with ``ProcessError/cancelled``,
    /// workers running it are killed, and no more input is read.
    package func cancel() {
        cancelHandler?(self)
        failRemaining(.cancelled)
    }

    /// Waits until `ready` gives a value or the deadline passes.
    func wait<T>(until deadline: ContinuousClock.Instant?, _ ready: (inout State) -> T?) -> T? {
        state.wait(until: deadline) { ready(&$0) }
    }

    /// Waits without blocking a thread until `ready` gives a value. A
    /// cancelled task cancels the call, whose open units then fail with
    /// ``ProcessError/cancelled``.
    func wait<T>(_ ready: @escaping (inout State) -> T?) async -> T? {
        await withTaskCancellationHandler {
            while !Task.isCancelled {
                let (value, seen) = state.withLock { state in (ready(&state), state.generation) }
                if let value { return value }
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { state -> Bool in
                        // Changed since `ready` looked: look again rather than sleep.
                        if state.generation != seen { return true }
                        state.waiters[state.nextWaiter] = continuation
                        state.nextWaiter += 1
                        return false
                    }
                    if resumeNow { continuation.resume() }
                }
            }
            return state.withLock { ready(&$0) }
        } onCancel: {
            cancel()
        }
    }

    /// After a consumer took an outcome: there is room to read more.
    func tookOutcome() {
        switch input {
        case .sequence?: refill()
        case .asynchronous?: settle(finished: false)
        case nil: return
        }
    }
}

/// How far a call has come: items completed (delivered or failed) of those read.
public struct PoolProgress: Sendable, Equatable {
    /// Items that have ended, successfully or not.
    public var completed: Int
    /// Items read from the input so far (all of them once ``isTotalKnown``).
    public var total: Int
    /// Whether the input has ended, so that ``total`` is final.
    public var isTotalKnown: Bool

    /// Creates a progress report.
    public init(completed: Int, total: Int, isTotalKnown: Bool = true) {
        self.completed = completed
        self.total = total
        self.isTotalKnown = isTotalKnown
    }

    /// `completed` as a fraction of `total` (1 for an empty call).
    public var fraction: Double { total == 0 ? 1 : Double(completed) / Double(total) }
}
