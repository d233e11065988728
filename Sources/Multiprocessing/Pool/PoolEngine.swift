import Logging
import Crypto
import Glibc
import SystemPackage

/// The machinery of a ``ProcessPool``: one dispatcher thread that starts
/// workers, hands them units, reads their replies, notices their deaths
/// (through their pidfds, never by polling `waitpid`), enforces time limits
/// and replaces workers. All scheduling state is behind one monitor; the
/// dispatcher does its I/O with the monitor released.
internal final class PoolEngine: UnitScheduler, @unchecked Sendable {  // mutable state is in `state`, behind a monitor
    enum Phase: Equatable {
        case running
        /// No new calls; leaves when the submitted ones are done.
        case closing
        /// Workers are killed and everything open fails.
        case terminating
        /// The dispatcher has left; every worker is reaped.
        case finished
    }

    struct Configuration {
        var processes: Int
        var startMethod: StartMethod
        var maxTasksPerChild: Int?
        var initializer: PoolInitializer?
        /// At most this many units are sent to a worker ahead of its answers.
        var pipelineDepth = 2
        var limits = WorkerLimits()
        var environment = WorkerEnvironment()
        /// How `limits.memory` is enforced (nil: no memory limit).
        var memoryEnforcement: WorkerLimits.MemoryEnforcement? = nil
        var restartBudget = RestartBudget.default
        /// A unit past its time is asked to stop (SIGTERM), then killed after this long.
        var gracePeriod: Duration? = nil
        /// How often a unit whose worker died runs again.
        var retries = 0
        /// Where the workers' standard output and error go.
        var output = WorkerOutput()
        /// Where the workers' lives are logged (nil: nowhere).
        var logger: Logger? = nil
        /// What the pool records through swift-metrics (nil: nothing).
        var metrics: PoolMeters? = nil
        /// Whether it keeps insights (``PoolInsights``).
        var insights = false
    }

    typealias Pending = PendingUnits

    struct State {
        var phase: Phase = .running
        /// Calls with units not yet ended.
        var calls: [Int: PoolCall] = [:]
        var pending: [Int: Pending] = [:]
        /// Named-work calls in submission order: job workers serve them first come, first served.
        var namedOrder: [Int] = []
        var workers: [PoolWorker] = []
        var startingNamed = 0
        var startingClosure = 0
        /// Set when named-work workers cannot start (their initializer failed).
        var namedFailure: ProcessError?
        var nextCallID = 1
        var nextUnitID: UInt64 = 1
        /// Items of each call counted as submitted so far (with metrics only).
        var countedItems: [Int: Int] = [:]
        var workerSerial = 0
        /// When workers of each kind died before they were ready, since one last was.
        var startupDeaths: [PoolWorker.Kind: [ContinuousClock.Instant]] = [:]
    }


    let configuration: Configuration
    /// Signs the closures sent to this pool's workers (see ``SentCode``);
    /// the workers get it when they start.
    let codeKey: [UInt8]
    let signingKey: SymmetricKey
    /// Closure code already located and signed, by address and work type.
    let sentCodes = Locked([SentCode.Key: SentCode]())
    let state: Monitor<State>
    /// Insights and event subscribers.
    let observations: PoolObservations
    private let wake: (readEnd: FileDescriptor, writeEnd: FileDescriptor)
    private var thread = pthread_t()

    init(_ configuration: Configuration) throws {
        // The forkserver's image loads while the pool gets ready to ask it for workers.
        if configuration.startMethod == .forkserver { ForkServerClient.shared.prepare() }
        self.configuration = configuration
        var random = SystemRandomNumberGenerator()
        self.codeKey = (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) }
        self.signingKey = SymmetricKey(data: codeKey)
        self.state = Monitor(State())
        self.observations = PoolObservations(keepsInsights: configuration.insights)
        wake = try Syscall.pipe()
        try Syscall.setNonBlocking(wake.readEnd, true)
        try Syscall.setNonBlocking(wake.writeEnd, true)
        thread = SystemThread.start { [self] in serve() }
    }

    deinit {
        Syscall.close(wake.readEnd)
        Syscall.close(wake.writeEnd)
    }

    /// Whether the caller is the dispatcher thread (which must never wait for itself).
    var isDispatcherThread: Bool { pthread_equal(pthread_self(), thread) != 0 }

    private func signal() {
        var byte: UInt8 = 1
        _ = try? withUnsafeBytes(of: &byte) { try Syscall.write(wake.writeEnd, $0) }
    }

    // MARK: - Calls

    /// Types whose worker-side decoding was done once here (see `prepareForFork`).
    private let prepared = Locked(Set<String>())

    /// With the fork start method, workers are copies of this process: do
    /// once, here, the type lookups and decoding a worker will do for this
    /// call's type, before any worker for it is forked.
    private func prepareForFork(_ call: PoolCall) {
        guard configuration.startMethod == .fork, case let .named(_, typeName, _, _, _) = call.work, let (first, _) = call.request(unit: 0, id: 0) else { return }
        guard prepared.withLock({ $0.insert(typeName).inserted }) else { return }
        guard let (head, body) = try? first.wire(), let request = try? UnitRequest.decode(head + body) else { return }
        ChunkRunner.prepareInParent(request)
    }

    /// Adds a call: its units are sent to workers as they free up.
    func submit(_ call: PoolCall) throws(PoolError) {
        prepareForFork(call)
        if configuration.metrics != nil { countSubmitted(call) }
        call.retries = configuration.retries
        call.cancelHandler = { [weak self] call in self?.cancel(call) }
        call.finishHandler = { [weak self] call in self?.finish(call) }
        call.unitsHandler = { [weak self] call, count, inputEnded in self?.unitsRead(call, count: count, inputEnded: inputEnded) }
        let failure = try state.withLock { state throws(PoolError) -> ProcessError? in
            guard state.phase == .running else { throw .notRunning }
            if !call.isClosureCall, let failure = state.namedFailure { return failure }
            state.calls[call.id] = call
            let (count, inputEnded) = call.state.withLock { ($0.unitCount, $0.inputEnded) }
            state.pending[call.id] = Pending(count: count, inputEnded: inputEnded)
            if !call.isClosureCall { state.namedOrder.append(call.id) }
            return nil
        }
        if let failure {
            call.failRemaining(failure)
            return
        }
        if call.isFinished { finish(call) }  // nothing will ever be delivered
        // Units that idle workers take at once need no wake-up of the
        // dispatcher: it hears the answers anyway. One thread hop less per apply.
        let handedOver = call.timeout == nil && state.withLock { sendToIdleWorkers(call, &$0) }
        if !handedOver { signal() }
    }

    /// More units of `call` were read, or its input ended.
    private func unitsRead(_ call: PoolCall, count: Int, inputEnded: Bool) {
        if configuration.metrics != nil { countSubmitted(call) }
        let handedOver = state.withLock { state -> Bool in
            guard var pending = state.pending[call.id] else { return true }
            pending.count = max(pending.count, count)
            pending.inputEnded = pending.inputEnded || inputEnded
            state.pending[call.id] = pending
            // Its end may let workers retire: the dispatcher looks again.
            return !inputEnded && call.timeout == nil && sendToIdleWorkers(call, &state)
        }
        if !handedOver { signal() }
    }

    /// Counts the items of `call` read since it was last counted as submitted.
    private func countSubmitted(_ call: PoolCall) {
        let read = call.state.withLock(\.itemsRead)
        let new = state.withLock { state -> Int in
            let counted = state.countedItems[call.id] ?? 0
            guard read > counted else { return 0 }
            state.countedItems[call.id] = read
            return read - counted
        }
        if new > 0 { configuration.metrics?.submitted.increment(by: Int64(new)) }
    }

    /// Sends units of `call` straight to idle workers, with the lock held;
    /// returns whether no unit is left to send. Only requests that fit in
    /// the worker's pipe go this way: an idle worker has read everything
    /// sent to it, so the write cannot block.
    private func sendToIdleWorkers(_ call: PoolCall, _ state: inout State) -> Bool {
        let kind: PoolWorker.Kind = call.isClosureCall ? .closure(callID: call.id) : .jobs
        for worker in state.workers where worker.kind == kind && !worker.retiring && worker.outstanding.isEmpty {
            if let limit = configuration.maxTasksPerChild, worker.unitsDone >= limit { continue }
            if worker.overMemory { continue }
            guard let unit = state.pending[call.id]?.take() else { break }
            let id = state.nextUnitID
            guard let (request, items) = request(call, unit: unit, id: id), let (head, body) = try? request.wire(),
                  head.count + body.count + 64 <= worker.requestCapacity else {
                state.pending[call.id]?.returned.append(unit)
                return false
            }
            state.nextUnitID += 1
            worker.startedAt = .now
            worker.outstanding.append(.init(call: call, unit: unit, id: id, items: items))
            if (try? worker.connection.sendBytes(head: head, body: body)) == nil { worker.kill(for: nil) }
        }
        return state.pending[call.id]?.isEmpty ?? true
    }

    /// The request for `unit` of `call`, with its CPU time limit.
    private func request(_ call: PoolCall, unit: Int, id: UInt64) -> (UnitRequest, items: Int)? {
        guard case (var request, let items)? = call.request(unit: unit, id: id) else { return nil }
        if let seconds = configuration.limits.cpuSeconds { request.cpuLimit = seconds * items }
        return (request, items)
    }

    func makeCallID() -> Int {
        state.withLock { state in
            defer { state.nextCallID += 1 }
            return state.nextCallID
        }
    }

    /// Forgets a call whose units have all ended.
    private func finish(_ call: PoolCall) {
        state.withLock { state in
            state.calls[call.id] = nil
            state.pending[call.id] = nil
            state.countedItems[call.id] = nil
            state.namedOrder.removeAll { $0 == call.id }
        }
        signal()
    }

    /// Drops a call's unsent units and kills the workers running its units.
    private func cancel(_ call: PoolCall) {
        state.withLock { state in
            state.pending[call.id] = nil
            state.namedOrder.removeAll { $0 == call.id }
            for worker in state.workers {
                if worker.kind == .closure(callID: call.id) || worker.outstanding.first?.call === call {
                    worker.kill(for: .cancelled)
                }
            }
        }
        signal()
    }

    // MARK: - Ending

    /// Takes no more calls. Calls still reading their input read the rest
    /// without waiting for their consumers (see ``PoolCall/readWithoutBound()``),
    /// so that the pool can finish.
    func close() {
        let calls = state.update { state -> [PoolCall] in
            if state.phase == .running { state.phase = .closing }
            return Array(state.calls.values)
        }
        calls.forEach { $0.readWithoutBound() }
        signal()
    }

    /// Takes no more calls, and cancels what has not started: every call
    /// reads no more input, and its units not yet sent to a worker fail
    /// with ``ProcessError/cancelled``; the units workers hold finish.
    func shutdown() {
        let calls = state.update { state -> [(PoolCall, sent: Set<Int>)] in
            guard state.phase == .running || state.phase == .closing else { return [] }
            state.phase = .closing
            state.namedOrder.removeAll()
            return state.calls.values.map { call in
                state.pending[call.id] = nil
                let sent = state.workers.flatMap(\.outstanding).filter { $0.call === call }.map(\.unit)
                return (call, Set(sent))
            }
        }
        for (call, sent) in calls { call.failRemaining(.cancelled, except: sent) }
        signal()
    }

    func terminate() {
        let calls = state.update { state -> [PoolCall] in
            guard state.phase == .running || state.phase == .closing else { return [] }
            state.phase = .terminating
            state.pending.removeAll()
            state.namedOrder.removeAll()
            for worker in state.workers { worker.kill(for: .poolTerminated) }
            return Array(state.calls.values)
        }
        calls.forEach { $0.failRemaining(.poolTerminated) }
        signal()
    }

    var phase: Phase { state.withLock(\.phase) }

    var isRunning: Bool { phase == .running }

    func waitUntilEnded() { _ = waitUntilFinished() }

    /// Waits until the dispatcher has left and every worker is reaped.
    func waitUntilFinished(until deadline: ContinuousClock.Instant? = nil) -> Bool {
        state.wait(until: deadline) { $0.phase == .finished ? true : nil } ?? false
    }

    /// The process identifiers of the workers now running.
    var workerPIDs: [Int32] {
        state.withLock { $0.workers.compactMap { $0.process.pid } }
    }

    // MARK: - The dispatcher

    private struct Plan {
        var sends: [(PoolWorker, head: [UInt8], body: [UInt8])] = []
        var starts: [PoolWorker.Kind] = []
        var failures: [(PoolCall, Int, ProcessError)] = []
        var watched: [PoolWorker] = []
        var timeout: Int32 = -1
        var done = false
    }

    private func serve() {
        // Kept across rounds: a round allocates nothing for its poll.
        var pollfds: [pollfd] = []
        var relays: [OutputRelay] = []
        func watch(_ descriptor: FileDescriptor) {
            pollfds.append(pollfd(fd: descriptor.rawValue, events: Int16(POLLIN), revents: 0))
        }
        var workerFreed = false
        while true {
            var plan = state.withLock { makePlan(&$0) }
            deliverFailures(plan.failures)
            if plan.done { break }
            for (worker, head, body) in plan.sends {
                do {
                    try worker.connection.sendBytes(head: head, body: body)
                } catch {
                    // It is gone or not reading: its end comes through its pidfd.
                    locked { worker.kill(for: nil) }
                }
            }
            plan.sends.removeAll()
            if !plan.starts.isEmpty {
                plan.starts.forEach(startWorker)
                continue
            }
            pollfds.removeAll(keepingCapacity: true)
            relays.removeAll(keepingCapacity: true)
            watch(wake.readEnd)
            for worker in plan.watched {
                watch(worker.exitDescriptor)
                watch(worker.connectionEnded ? worker.exitDescriptor : worker.connection.fileDescriptor)
            }
            // Forwarded output, after the pairs above.
            for worker in plan.watched {
                for relay in worker.relays where !relay.ended {
                    relays.append(relay)
                    watch(relay.source)
                }
            }
            // A worker that just answered and has nothing more to do often
            // gets its next unit within microseconds, from a caller applying
            // one task after another (handed over without this thread): still
            // awake, this thread hears the answer without a wake-up across
            // CPUs, which costs more than the whole exchange on this kind of VM.
            if workerFreed && plan.timeout != 0 { spinUntilReady(&pollfds, for: .microseconds(50)) }
            guard (try? Syscall.poll(&pollfds, timeout: plan.timeout)) != nil else { continue }
            workerFreed = false
            if pollfds[0].revents != 0 { drainWake() }
            // Output first: a worker writes what it prints before it answers or dies.
            let relaysStart = 1 + 2 * plan.watched.count
            for (index, relay) in relays.enumerated() where pollfds[relaysStart + index].revents != 0 {
                relay.drain()
            }
            for (index, worker) in plan.watched.enumerated() {
                let exited = pollfds[1 + 2 * index].revents != 0
                let readable = pollfds[2 + 2 * index].revents != 0 && !worker.connectionEnded
                if readable || exited {
                    receiveReplies(from: worker)
                    // Idle now: a caller may hand it the next unit itself.
                    if !exited && state.withLock({ _ in worker.outstanding.isEmpty }) { workerFreed = true }
                }
                if exited { reap(worker) }
            }
        }
        // The wake pipe stays open until the engine is gone (`deinit`):
        // `signal()` may still be called after this, and a byte written to
        // a closed number that another pipe has taken corrupted that pipe's
        // messages (a pool worker then waited for ever on a bad frame).
        state.update { $0.phase = .finished }
        observations.finish()
    }

    /// Polls `pollfds` without blocking, yielding between tries, until one is
    /// ready or `duration` has passed.
    private func spinUntilReady(_ pollfds: inout [pollfd], for duration: Duration) {
        let deadline = ContinuousClock.now + duration
        while ContinuousClock.now < deadline {
            if ((try? Syscall.poll(&pollfds, timeout: 0)) ?? 1) != 0 { return }
            sched_yield()
        }
    }

    /// Runs `body` with the lock held (for the workers' fields).
    private func locked(_ body: () -> Void) {
        state.withLock { (_: inout State) in body() }
    }

    private func drainWake() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while let count = try? buffer.withUnsafeMutableBytes({ try Syscall.read(wake.readEnd, into: $0) }), count > 0 {}
    }

    /// Decides, with the lock held, what the dispatcher does next.
    private func makePlan(_ state: inout State) -> Plan {
        var plan = Plan()
        let now = ContinuousClock.now
        if state.phase == .terminating {
            state.workers.forEach { $0.kill(for: .poolTerminated) }
        }
        // Idle workers first, then starting new ones, then sending ahead.
        assign(&state, &plan, depth: 1)
        plan.starts = workersToStart(state)
        for kind in plan.starts {
            if kind == .jobs { state.startingNamed += 1 } else { state.startingClosure += 1 }
        }
        if plan.starts.isEmpty { assign(&state, &plan, depth: configuration.pipelineDepth) }
        // Time limits.
        var nearest: ContinuousClock.Instant? = nil
        for worker in state.workers {
            guard let stopDeadline = worker.stopDeadline else { continue }
            if stopDeadline <= now {
                worker.kill(for: nil)
                worker.stopDeadline = nil
            } else if nearest.map({ stopDeadline < $0 }) ?? true {
                nearest = stopDeadline
            }
        }
        for worker in state.workers where worker.killedFor == nil {
            guard let first = worker.outstanding.first, let timeout = first.call.timeout, let startedAt = worker.startedAt else { continue }
            let deadline = startedAt + timeout * first.items
            if deadline <= now {
                let seconds = Double(timeout.components.seconds) + Double(timeout.components.attoseconds) / 1e18
                let reason = ProcessError.timedOut(seconds: seconds * Double(first.items))
                if let grace = configuration.gracePeriod {
                    worker.askToStop(for: reason, killingAt: now + grace)
                    if nearest.map({ now + grace < $0 }) ?? true { nearest = now + grace }
                } else {
                    worker.kill(for: reason)
                }
            } else if nearest.map({ deadline < $0 }) ?? true {
                nearest = deadline
            }
        }
        if let nearest {
            let remaining = nearest - now
            plan.timeout = Int32(clamping: remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000 + 1)
        }
        // Retire the workers with nothing left to do.
        for worker in state.workers where !worker.retiring && worker.outstanding.isEmpty {
            let exhausted = worker.overMemory || (configuration.maxTasksPerChild.map { worker.unitsDone >= $0 } ?? false)
            let idle: Bool
            switch worker.kind {
            case .jobs: idle = state.phase != .running && !hasPending(state, for: .jobs)
            case let .closure(callID): idle = state.pending[callID]?.drained ?? true
            }
            if exhausted || idle {
                worker.retiring = true
                if let (head, body) = try? UnitRequest(kind: .stop, id: 0).wire() { plan.sends.append((worker, head, body)) }
            }
        }
        plan.watched = state.workers
        if let metrics = configuration.metrics {
            metrics.workers.record(state.workers.count)
            metrics.queueDepth.record(state.pending.values.reduce(0) { $0 + $1.remaining })
        }
        let quiet = state.workers.isEmpty && state.startingNamed == 0 && state.startingClosure == 0
        plan.done = quiet && (state.phase == .terminating || (state.phase == .closing && state.calls.isEmpty))
        return plan
    }

    private func hasPending(_ state: State, for kind: PoolWorker.Kind) -> Bool {
        switch kind {
        case .jobs: state.namedOrder.contains { !(state.pending[$0]?.drained ?? true) }
        case let .closure(callID): !(state.pending[callID]?.drained ?? true)
        }
    }

    /// Gives each worker units until it has `depth` outstanding.
    private func assign(_ state: inout State, _ plan: inout Plan, depth: Int) {
        for worker in state.workers where !worker.retiring {
            while worker.outstanding.count < depth {
                if let limit = configuration.maxTasksPerChild, worker.unitsDone + worker.outstanding.count >= limit { break }
                if worker.overMemory { break }
                guard let (call, unit) = takeUnit(&state, for: worker.kind) else { break }
                let id = state.nextUnitID
                guard let (request, items) = request(call, unit: unit, id: id), let (head, body) = try? request.wire() else {
                    plan.failures.append((call, unit, .corruptRequest("the request did not encode")))
                    continue
                }
                // Sent ahead, a request must fit in the pipe (with its frame
                // header) once the worker has read the one before: the worker
                // reads a request whole before running it, so the send cannot
                // block on a worker that is itself blocked sending its answer.
                if !worker.outstanding.isEmpty && head.count + body.count + 64 > worker.requestCapacity {
                    state.pending[call.id]?.returned.append(unit)
                    break
                }
                state.nextUnitID += 1
                if worker.outstanding.isEmpty { worker.startedAt = .now }
                worker.outstanding.append(.init(call: call, unit: unit, id: id, items: items))
                plan.sends.append((worker, head, body))
            }
        }
    }

    private func takeUnit(_ state: inout State, for kind: PoolWorker.Kind) -> (PoolCall, Int)? {
        switch kind {
        case .jobs:
            for callID in state.namedOrder {
                if let unit = state.pending[callID]?.take(), let call = state.calls[callID] { return (call, unit) }
            }
            return nil
        case let .closure(callID):
            guard let unit = state.pending[callID]?.take(), let call = state.calls[callID] else { return nil }
            return (call, unit)
        }
    }

    /// The workers to start for units no worker can take now.
    private func workersToStart(_ state: State) -> [PoolWorker.Kind] {
        guard state.phase == .running || state.phase == .closing else { return [] }
        let processes = configuration.processes
        var starts: [PoolWorker.Kind] = []
        // Named work.
        if state.namedFailure == nil {
            let waiting = state.namedOrder.reduce(0) { $0 + (state.pending[$1]?.remaining ?? 0) }
            let live = state.workers.filter { $0.kind == .jobs && !$0.retiring }.count + state.startingNamed
            let count = min(waiting, processes - live)
            if count > 0 { starts += Array(repeating: .jobs, count: count) }
        }
        // Closure calls, oldest first, sharing `processes` forked workers.
        var closureLive = state.workers.filter { $0.kind != .jobs && !$0.retiring }.count + state.startingClosure
        for (callID, pending) in state.pending.sorted(by: { $0.key < $1.key }) where !pending.isEmpty {
            guard let call = state.calls[callID], call.isClosureCall else { continue }
            let own = state.workers.filter { $0.kind == .closure(callID: callID) && !$0.retiring }.count
            let idleOwn = state.workers.filter { $0.kind == .closure(callID: callID) && !$0.retiring && $0.outstanding.isEmpty }.count
            let want = min(pending.remaining - idleOwn, processes - own, processes - closureLive)
            if want > 0 {
                starts += Array(repeating: .closure(callID: callID), count: want)
                closureLive += want
            }
        }
        return starts
    }

    private func startWorker(_ kind: PoolWorker.Kind) {
        let call: PoolCall? = {
            guard case let .closure(callID) = kind else { return nil }
            return state.withLock { $0.calls[callID] }
        }()
        let worker: Result<PoolWorker, any Error>
        if case .closure = kind, call == nil {
            worker = .failure(ProcessError.cancelled)  // the call ended meanwhile
        } else {
            let name = workerName()
            worker = Result {
                let (setup, group) = try workerSetup()
                return try PoolWorker.start(kind: kind, name: name, memoryGroup: group, output: configuration.output, launch: { connection, ends in
                    var setup = setup
                    setup.standardOutput = ends.standardOutput
                    setup.standardError = ends.standardError
                    setup.capturedStreams = CapturedOutput.streams(of: configuration.output)
                    return try launch(kind, name: name, call: call, setup: setup, connection: connection)
                })
            }
        }
        var failed: [PoolCall] = []
        var error: ProcessError = .cancelled
        state.withLock { state in
            if kind == .jobs { state.startingNamed -= 1 } else { state.startingClosure -= 1 }
            switch worker {
            case let .success(worker):
                state.workers.append(worker)
                if state.phase == .terminating { worker.kill(for: .poolTerminated) }
            case let .failure(startError):
                // A worker that cannot start fails the work waiting for it, so nothing waits for ever.
                if let call { if state.pending[call.id] != nil { failed = [call] } } else {
                    failed = state.namedOrder.compactMap { state.calls[$0] }
                }
                error = (startError as? ProcessError) ?? .systemCall("starting a pool worker: \(startError)", errno: 0)
                for call in failed { state.pending[call.id] = nil }
                state.namedOrder.removeAll { id in failed.contains { $0.id == id } }
            }
        }
        if case let .success(worker) = worker { observations.started(worker) }
        if let logger = configuration.logger {
            switch worker {
            case let .success(worker): logger.debug("pool worker started", metadata: Self.metadata(of: worker))
            case .failure where error != .cancelled: logger.warning("a pool worker could not start", metadata: ["error": "\(error)"])
            case .failure: break
            }
        }
        for call in failed {
            call.failRemaining(error)
        }
    }

    private func workerName() -> String {
        state.withLock { state in
            state.workerSerial += 1
            return "PoolWorker-\(state.workerSerial)"
        }
    }

    /// What a new worker sets up, and the memory control group it joins.
    private func workerSetup() throws -> (WorkerSetup, MemoryGroup?) {
        try WorkerSetup.make(configuration.limits, configuration.environment, enforcement: configuration.memoryEnforcement,
                             handlesStopRequests: configuration.gracePeriod != nil)
    }

    private func launch(_ kind: PoolWorker.Kind, name: String, call: PoolCall?, setup: WorkerSetup, connection: Connection) throws -> ChildProcess {
        let process: ChildProcess
        switch kind {
        case .jobs:
            var job = PoolWorkerJob(connection: connection, initializerType: nil, initializerPayload: [], codeKey: codeKey, setup: setup)
            if case let .job(typeName, payload, _)? = configuration.initializer?.storage {
                job.initializerType = typeName
                job.initializerPayload = payload
            }
            if configuration.startMethod == .fork, case let .closure(body)? = configuration.initializer?.storage {
                // Forked, the worker runs this very value: the closure is there.
                job.forkedInitializer = body
            }
            process = try ChildProcess(job: job, startMethod: configuration.startMethod, name: name, daemon: true)
        case .closure:
            guard case let .closure(program)? = call.map(\.work) else { throw ProcessError.cancelled }
            let initializer = configuration.initializer
            process = ChildProcess(name: name, daemon: true) {
                WorkerLoop.serve(connection, setup: setup, initialize: { initializer?.runHere() }, execute: { request in
                    guard request.kind == .closureChunk, request.lower >= 0, request.lower <= request.upper else {
                        return UnitOutcome.failed(.corruptRequest("a closure worker was sent a \(request.kind) request")).wire()
                    }
                    return program.execute(request)
                })
            }
        }
        try process.start()
        return process
    }

    // MARK: - Replies and deaths

    private func receiveReplies(from worker: PoolWorker) {
        #if DEBUG
        if !worker.connection.closed, let expected = worker.readIdentity,
           let now = Syscall.identity(of: worker.connection.fileDescriptor), now != expected {
            let message = "swift-multiprocessing: pool worker \(worker.process.pid ?? 0): descriptor \(worker.connection.fileDescriptor.rawValue) was closed elsewhere and reused\n"
            _ = message.withCString { write(2, $0, strlen($0)) }
        }
        #endif
        while !worker.connectionEnded, (try? worker.connection.poll(timeout: .zero)) == true {
            let reply: (id: UInt64, outcome: UnitOutcome, captured: CapturedOutput?)
            do {
                reply = try UnitReply.decodeCapturing(try worker.connection.receiveBytes())
            } catch let error as WireError where error == .endOfFile {
                locked { worker.connectionEnded = true }
                return
            } catch {
                locked {
                    worker.connectionEnded = true
                    worker.kill(for: .corruptReply(String(describing: error)))
                }
                return
            }
            handle(reply, from: worker)
        }
    }

    private func handle(_ reply: (id: UInt64, outcome: UnitOutcome, captured: CapturedOutput?), from worker: PoolWorker) {
        if reply.id == 0 {
            if case let .failed(error) = reply.outcome {
                initializerFailed(error, in: worker)
            } else {
                state.withLock { state in
                    worker.ready = true
                    state.startupDeaths[worker.kind] = nil
                }
                observations.ready(worker)
            }
            return
        }
        // Recycling by memory: a worker past the threshold gets no more units.
        let overMemory = configuration.limits.recycleAbove.map { limit in
            worker.process.pid.flatMap(Syscall.residentMemory(of:)).map { $0 > limit } ?? false
        } ?? false
        var started: ContinuousClock.Instant?
        let assignment: PoolWorker.Assignment? = state.withLock { state in
            guard let first = worker.outstanding.first, first.id == reply.id else {
                worker.kill(for: .corruptReply("an answer to a unit it was not running"))
                return nil
            }
            started = worker.startedAt
            worker.outstanding.removeFirst()
            worker.unitsDone += 1
            if overMemory { worker.overMemory = true }
            worker.startedAt = worker.outstanding.isEmpty ? nil : .now
            return first
        }
        guard let assignment else { return }
        if configuration.metrics != nil || observations.isObserving { observe(reply.outcome, of: assignment, by: worker, startedAt: started) }
        if let captured = reply.captured { assignment.call.record(captured, of: assignment.unit) }
        assignment.call.deliver(assignment.unit, .success(reply.outcome))
    }

    /// Tells the insights, the events' subscribers and the metrics that
    /// `assignment` ended with `outcome` (only when one of them is on).
    private func observe(_ outcome: UnitOutcome, of assignment: PoolWorker.Assignment, by worker: PoolWorker, startedAt started: ContinuousClock.Instant?) {
        let failedItems: Int
        switch outcome {
        case .values: failedItems = 0
        case let .mixed(items): failedItems = items.filter { if case .failed = $0 { true } else { false } }.count
        case .failed: failedItems = assignment.items
        }
        let duration = started.map { ContinuousClock.now - $0 }
        if let duration {
            observations.unitEnded(worker, items: assignment.items, duration: duration, failed: failedItems > 0,
                                   report: assignment.call.crashReport(unit: assignment.unit, message: nil))
        }
        if let metrics = configuration.metrics {
            if let duration { metrics.unitDuration.recordNanoseconds(duration.nanoseconds) }
            if failedItems > 0 { metrics.failed.increment(by: Int64(failedItems)) }
            if failedItems < assignment.items { metrics.completed.increment(by: Int64(assignment.items - failedItems)) }
        }
    }

    private func initializerFailed(_ error: ProcessError, in worker: PoolWorker) {
        let failed: [PoolCall] = state.withLock { state in
            worker.kill(for: error)
            let calls: [PoolCall]
            switch worker.kind {
            case .jobs:
                state.namedFailure = error
                calls = state.namedOrder.compactMap { state.calls[$0] }
                state.namedOrder.removeAll()
            case let .closure(callID):
                calls = state.calls[callID].map { [$0] } ?? []
            }
            for call in calls { state.pending[call.id] = nil }
            return calls
        }
        for call in failed {
            call.failRemaining(error)
        }
    }

    /// The worker ended: reap it, fail the unit it was running and give
    /// back the ones it had not started.
    private func reap(_ worker: PoolWorker) {
        let code = (try? worker.process.join()) ?? -SIGKILL
        worker.connection.close()
        Syscall.close(worker.exitDescriptor)
        // Everything it wrote is in the pipes now.
        for relay in worker.relays {
            relay.drain()
            relay.close()
        }
        // What it wrote while it ran the unit it ended in, if captured (a
        // worker that ended between units wrote nothing anyone waits for).
        let head = state.withLock { _ in worker.outstanding.first }
        let captured = worker.captures.isEmpty || head == nil ? nil : worker.captures.read()
        worker.captures.close()
        if let captured, let head { head.call.record(captured, of: head.unit) }
        var crash: CrashReport?
        if code < 0 {
            // The runtime's last words: in the captured stream, or read by the relay.
            let lastWords = worker.captures.standardError != nil ? captured?.runtimeMessage()
                : worker.errorRelay.map { ($0.runtimeMessage, $0.runtimeBacktrace) }
            var report = head.map { $0.call.crashReport(unit: $0.unit, message: nil) } ?? CrashReport()
            if let lastWords { report.take(lastWords, signal: -code) }
            report.output = captured
            crash = report
        }
        let oomKilled = worker.memoryGroup?.oomKilled ?? false
        worker.memoryGroup?.remove()
        var reason = ProcessError.exited(status: code)
        var budgetSpent: [PoolCall] = []
        var budgetError = reason
        // Units it held that cannot go back: their call takes no more (shut down).
        var orphaned: [PoolWorker.Assignment] = []
        let (failed, alsoFailed): (PoolWorker.Assignment?, [PoolWorker.Assignment]) = state.withLock { state in
            reason = worker.killedFor ?? limitCause(of: worker, code: code, oomKilled: oomKilled) ?? (code < 0 ? .crashed(signal: -code, report: crash ?? CrashReport()) : .exited(status: code))
            state.workers.removeAll { $0 === worker }
            var outstanding = worker.outstanding
            worker.outstanding.removeAll()
            if !worker.ready && worker.killedFor == nil {
                // It died before it was ready: it ran none of its units.
                for assignment in outstanding.reversed() {
                    if state.pending[assignment.call.id] != nil {
                        state.pending[assignment.call.id]!.returned.append(assignment.unit)
                    } else {
                        orphaned.append(assignment)
                    }
                }
                if let error = spendRestart(worker.kind, reason, &state) {
                    budgetError = error
                    budgetSpent = calls(of: worker.kind, state)
                    for call in budgetSpent { state.pending[call.id] = nil }
                    // Their siblings still starting would only die the same way.
                    for other in state.workers where other.kind == worker.kind && !other.ready { other.kill(for: error) }
                    if worker.kind == .jobs {
                        state.namedFailure = error
                        state.namedOrder.removeAll()
                    }
                }
                return (nil, [])
            }
            guard !outstanding.isEmpty else { return (nil, []) }
            var first: PoolWorker.Assignment? = outstanding.removeFirst()
            // Idempotent work runs again, after the units that wait.
            if let unit = first, state.pending[unit.call.id] != nil {
                if let error = unit.call.retry(unit.unit, after: reason) {
                    if case .retriesExhausted = error { reason = error }
                } else {
                    state.pending[unit.call.id]!.returned.insert(unit.unit, at: 0)
                    first = nil
                }
            }
            // Units it never started cannot run in a worker whose initializer
            // fails; otherwise they go back to be sent again.
            if case .initializerFailed = worker.killedFor { return (first, outstanding) }
            for assignment in outstanding.reversed() {
                if state.pending[assignment.call.id] != nil {
                    state.pending[assignment.call.id]!.returned.append(assignment.unit)
                } else {
                    orphaned.append(assignment)
                }
            }
            return (first, [])
        }
        if let failed {
            configuration.metrics?.failed.increment(by: Int64(([failed] + alsoFailed).reduce(0) { $0 + $1.items }))
            for assignment in [failed] + alsoFailed {
                assignment.call.deliver(assignment.unit, .failure(reason))
            }
        }
        // It left when asked (its work done, recycled), or it died or was killed.
        let left = code == 0 && worker.killedFor == nil
        if !left && reason != .poolTerminated { configuration.metrics?.restarts.increment() }
        if let logger = configuration.logger { log(worker, left: left, code: code, reason: reason, to: logger) }
        observations.ended(worker, error: left ? nil : reason)
        if !budgetSpent.isEmpty { configuration.logger?.warning("the pool stopped starting workers", metadata: ["error": "\(budgetError)"]) }
        for call in budgetSpent { call.failRemaining(budgetError) }
        for assignment in orphaned { assignment.call.deliver(assignment.unit, .failure(.cancelled)) }
        signal()
    }

    // MARK: - Logging

    /// The metadata that names `worker` in a log record.
    private static func metadata(of worker: PoolWorker) -> Logger.Metadata {
        var metadata: Logger.Metadata = ["pool.worker": "\(worker.process.name)"]
        if let pid = worker.process.pid { metadata["pool.worker.pid"] = "\(pid)" }
        if case let .closure(callID) = worker.kind { metadata["pool.call"] = "\(callID)" }
        return metadata
    }

    /// Logs how `worker` ended: a worker that left when asked at debug, one
    /// that died or was killed at info (its task's caller gets the error).
    private func log(_ worker: PoolWorker, left: Bool, code: Int32, reason: ProcessError, to logger: Logger) {
        var metadata = Self.metadata(of: worker)
        metadata["pool.worker.tasks"] = "\(worker.unitsDone)"
        if left {
            let why = worker.overMemory ? "recycled: its memory passed the limit"
                : configuration.maxTasksPerChild.map { worker.unitsDone >= $0 } == true ? "recycled: maxTasksPerChild" : "its work is done"
            metadata["pool.worker.reason"] = "\(why)"
            logger.debug("pool worker left", metadata: metadata)
            return
        }
        metadata["pool.worker.status"] = "\(code)"
        metadata["error"] = "\(reason)"
        switch reason {
        case .poolTerminated: logger.debug("pool worker ended", metadata: metadata)
        case .timedOut: logger.info("pool worker killed: its task ran past its time", metadata: metadata)
        case .crashed: logger.info("pool worker crashed", metadata: metadata)
        default: logger.info("pool worker ended", metadata: metadata)
        }
    }

    /// The limit that ended `worker`, if one did (with the lock held).
    private func limitCause(of worker: PoolWorker, code: Int32, oomKilled: Bool) -> ProcessError? {
        configuration.limits.cause(ofExit: code, oomKilled: oomKilled, enforcement: configuration.memoryEnforcement,
                                   items: worker.outstanding.first?.items ?? 1)
    }

    /// Counts a death before ready; the error that ends the restarts once
    /// the budget is spent.
    private func spendRestart(_ kind: PoolWorker.Kind, _ reason: ProcessError, _ state: inout State) -> ProcessError? {
        guard state.phase == .running || state.phase == .closing else { return nil }
        let budget = configuration.restartBudget
        let now = ContinuousClock.now
        var deaths = state.startupDeaths[kind, default: []].filter { now - $0 < budget.window }
        deaths.append(now)
        state.startupDeaths[kind] = deaths
        guard deaths.count >= budget.deaths else { return nil }
        state.startupDeaths[kind] = nil
        let span = now - deaths[0]
        let seconds = Double(span.components.seconds) + Double(span.components.attoseconds) / 1e18
        return .restartBudgetExceeded(deaths: deaths.count, seconds: (seconds * 1000).rounded() / 1000, last: reason)
    }

    /// The calls whose units workers of `kind` run.
    private func calls(of kind: PoolWorker.Kind, _ state: State) -> [PoolCall] {
        switch kind {
        case .jobs: state.namedOrder.compactMap { state.calls[$0] }
        case let .closure(callID): state.calls[callID].map { [$0] } ?? []
        }
    }

    private func deliverFailures(_ failures: [(PoolCall, Int, ProcessError)]) {
        for (call, unit, error) in failures {
            if let metrics = configuration.metrics { metrics.failed.increment(by: Int64(call.input(of: unit)?.items ?? 1)) }
            call.deliver(unit, .failure(error))
        }
    }
}

/// Units still to send for one call.
package struct PendingUnits {
    var next = 0
    /// Units read so far (a streaming call reads more as it has room).
    package var count: Int
    /// No more units will be read.
    package var inputEnded: Bool
    /// Units given back by a worker that died before running them; they go first.
    package var returned: [Int] = []
    /// Nothing to send now.
    package var isEmpty: Bool { returned.isEmpty && next == count }
    /// Nothing to send, ever.
    package var drained: Bool { isEmpty && inputEnded }
    var remaining: Int { returned.count + count - next }

    package init(count: Int, inputEnded: Bool) {
        self.count = count
        self.inputEnded = inputEnded
    }

    package mutating func take() -> Int? {
        if let unit = returned.popLast() { return unit }
        guard next < count else { return nil }
        defer { next += 1 }
        return next
    }
}
