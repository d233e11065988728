import Logging

/// A pool of worker processes: Python's `multiprocessing.Pool`, built so
/// that nothing a worker does can make a call hang.
///
/// Work is given two ways:
/// - **named by type** — a ``ProcessJob`` (`apply`, `applyAsync`) or a
///   ``ProcessFunction`` mapped over inputs (`map`, `imap`, …). These run in
///   the pool's long-lived workers, started by its ``StartMethod`` when work
///   first arrives.
/// - **closures given their captures** — `apply(capturing: args) { args in … }`,
///   `map(items, capturing: c) { c, item in … }`: a closure that uses nothing
///   but its arguments runs in the same long-lived workers, its arguments
///   sent (see ``applyAsync(capturing:timeout:onSuccess:onFailure:_:)``).
/// - **closures** — `apply { … }`, `map(items) { … }`. Each such call forks
///   its own workers from this process (at most `processes` at a time), so a
///   closure may capture anything, and a large value it reads is shared
///   copy-on-write rather than sent. The items stay here too: only the
///   outputs travel. Forked workers run synchronous code only.
///
/// A worker that traps, segfaults or is killed fails only the unit it was
/// running (one task, or one chunk), with ``ProcessError/crashed(signal:report:)``
/// naming the signal, the items and, for a trap, the Swift runtime's
/// message (read from the worker's standard error; see ``WorkerOutput``); the pool starts another worker and every other task
/// goes on. A unit running past its `timeout` kills its worker and fails
/// with ``ProcessError/timedOut(seconds:)``. Cancelling a Swift task that
/// awaits a result cancels the work.
///
/// End a pool with ``close()`` then ``join()``, or ``terminate()``; or use
/// `withProcessPool(processes:startMethod:initializer:maxTasksPerChild:limits:restartBudget:environment:gracePeriod:retries:output:logger:metrics:insights:_:)`,
/// which always does. A pool dropped without either is terminated.
public final class ProcessPool: WorkerPool {
    let engine: PoolEngine

    public var _scheduler: PoolScheduler { PoolScheduler(engine) }

    /// How many workers run at once (for named work; and again, at most, for closure calls).
    public var processes: Int { engine.configuration.processes }

    /// How the workers for named work are started.
    public var startMethod: StartMethod { engine.configuration.startMethod }

    /// What the workers did so far — or, once the pool ended, in all — if
    /// the pool was made with `insights: true`; nil otherwise.
    public var insights: PoolInsights? { engine.observations.insights() }

    /// What happens to the workers from now on, as it happens: started,
    /// ready, each unit answered, ended. The stream ends when the pool has
    /// ended; a subscriber that falls 10,000 events behind loses the oldest.
    /// No subscriber, no cost.
    public func events() -> AsyncStream<PoolEvent> { engine.observations.subscribe() }

    /// Creates a pool. Workers start when work arrives.
    ///
    /// - Parameters:
    ///   - processes: how many workers; nil means ``usableCPUCount()``.
    ///   - startMethod: how workers for named work and closures given their
    ///     captures start (other closure calls fork).
    ///   - initializer: what each worker runs before its first task.
    ///   - maxTasksPerChild: a worker leaves after this many units and a
    ///     fresh one replaces it (nil: workers live as long as the pool).
    ///   - limits: what each worker may use (memory, CPU time per task,
    ///     open files, core dumps); see ``WorkerLimits``.
    ///   - restartBudget: how many workers in a row may die before they are
    ///     ready before the pool fails their work instead of starting more.
    ///   - environment: each worker's environment variables, working
    ///     directory, CPU affinity and niceness; see ``WorkerEnvironment``.
    ///   - gracePeriod: soft timeouts. A unit past its `timeout` is first
    ///     asked to stop — its worker gets SIGTERM, which sets
    ///     ``isStopRequested()`` instead of ending it — and killed if it is
    ///     still there after this long. nil: killed at once.
    ///   - retries: for idempotent work: a unit whose worker ended under it
    ///     — a crash, a kill, a timeout, a limit, the sandbox — runs again, up
    ///     to this many more times, in a new worker; if every attempt fails
    ///     the unit fails with ``ProcessError/retriesExhausted(attempts:)``,
    ///     which keeps each attempt's error. An error the task throws is its
    ///     answer, and is not retried; nor is cancellation.
    ///   - output: where the workers' standard output and error go: as they
    ///     are, or read by the pool and written here line by line, with the
    ///     worker's name or without; see ``WorkerOutput``.
    ///   - logger: where the workers' lives are logged: started and left at
    ///     `debug`, crashed, killed past their time or ended otherwise at
    ///     `info` (the caller of the task gets the error too), the pool
    ///     giving up on workers that die at start at `warning`. Metadata:
    ///     `pool.worker` (its name), `pool.worker.pid`, `pool.worker.tasks`,
    ///     `pool.worker.reason`, `pool.worker.status`, `error`. nil: nowhere.
    ///   - metrics: what the pool records through swift-metrics (tasks
    ///     submitted, completed and failed, unit durations, queue depth,
    ///     workers alive, restarts); see ``PoolMetrics``. nil: nothing.
    ///   - insights: whether the pool keeps ``insights`` (each worker's
    ///     start-up, busy and idle time and tasks; the slowest units).
    /// - Throws: ``PoolError/invalidArgument(_:)`` for a count below 1 or a
    ///   limit out of range. A closure initializer with a start method other
    ///   than `.fork` for named work is accepted but runs only in forked workers.
    public init(processes: Int? = nil, startMethod: StartMethod = .forkserver, initializer: PoolInitializer? = nil, maxTasksPerChild: Int? = nil, limits: WorkerLimits = WorkerLimits(), restartBudget: RestartBudget = .default, environment: WorkerEnvironment = WorkerEnvironment(), gracePeriod: Duration? = nil, retries: Int = 0, output: WorkerOutput = WorkerOutput(), logger: Logger? = nil, metrics: PoolMetrics? = nil, insights: Bool = false) throws {
        let processes = processes ?? usableCPUCount()
        guard processes >= 1 else { throw PoolError.invalidArgument("processes must be at least 1, not \(processes)") }
        if let maxTasksPerChild, maxTasksPerChild < 1 {
            throw PoolError.invalidArgument("maxTasksPerChild must be at least 1, not \(maxTasksPerChild)")
        }
        try restartBudget.validate()
        try environment.validate()
        try Self.validate(gracePeriod: gracePeriod, retries: retries)
        let memoryEnforcement = try limits.resolved()
        engine = try PoolEngine(.init(processes: processes, startMethod: startMethod, maxTasksPerChild: maxTasksPerChild, initializer: initializer,
                                      limits: limits, environment: environment, memoryEnforcement: memoryEnforcement, restartBudget: restartBudget,
                                      gracePeriod: gracePeriod, retries: retries, output: output, logger: logger, metrics: metrics?.make(), insights: insights))
    }

    /// A pool that sends each worker up to `pipelineDepth` units ahead of
    /// its answers: an MPI rank's local pool, whose units are small and
    /// already spread over ranks by rank 0, keeps its workers busier so.
    package init(processes: Int?, startMethod: StartMethod, initializer: PoolInitializer?, maxTasksPerChild: Int?, pipelineDepth: Int,
                 limits: WorkerLimits = WorkerLimits(), environment: WorkerEnvironment = WorkerEnvironment(),
                 gracePeriod: Duration? = nil, retries: Int = 0) throws {
        let processes = processes ?? usableCPUCount()
        guard processes >= 1 else { throw PoolError.invalidArgument("processes must be at least 1, not \(processes)") }
        try environment.validate()
        try Self.validate(gracePeriod: gracePeriod, retries: retries)
        let memoryEnforcement = try limits.resolved()
        engine = try PoolEngine(.init(processes: processes, startMethod: startMethod, maxTasksPerChild: maxTasksPerChild, initializer: initializer,
                                      pipelineDepth: max(1, pipelineDepth), limits: limits, environment: environment, memoryEnforcement: memoryEnforcement,
                                      gracePeriod: gracePeriod, retries: retries))
    }

    /// Refuses a grace period that is not positive and a negative retry count.
    package static func validate(gracePeriod: Duration?, retries: Int) throws(PoolError) {
        guard retries >= 0 else { throw .invalidArgument("retries must be 0 or more, not \(retries)") }
        if let gracePeriod, gracePeriod <= .zero { throw .invalidArgument("gracePeriod must be positive, not \(gracePeriod)") }
    }

    deinit {
        engine.terminate()
        if !engine.isDispatcherThread { _ = engine.waitUntilFinished() }
    }

    // MARK: - Ending

    /// Takes no more work; the workers leave once the submitted work is done.
    public func close() { engine.close() }

    /// Takes no more work and cancels what has not started, but lets what
    /// runs finish (`concurrent.futures`' `shutdown(cancel_futures=True)`):
    /// every call reads no more of its input, its units not yet sent to a
    /// worker fail with ``ProcessError/cancelled``, and those a worker holds
    /// — the one it runs, and the one sent ahead to it, if any — end as
    /// they would have. A call that streams its input gives outcomes for the
    /// items it had read. The workers then leave; ``join()`` or
    /// ``join(timeout:)`` waits for them.
    public func shutdown() { engine.shutdown() }

    /// Waits at most `timeout` until every worker has left, after
    /// ``close()``, ``shutdown()`` or ``terminate()``; returns whether they have.
    ///
    /// - Throws: ``PoolError/stillRunning`` if the pool was neither closed nor terminated.
    @available(*, noasync, message: "use the async join(timeout:)")
    public func join(timeout: Duration) throws -> Bool {
        guard !engine.isRunning else { throw PoolError.stillRunning }
        return engine.waitUntilFinished(until: .now + timeout)
    }

    /// Waits at most `timeout`, without blocking the cooperative pool, until
    /// every worker has left; returns whether they have.
    ///
    /// - Throws: ``PoolError/stillRunning`` if the pool was neither closed nor terminated.
    public func join(timeout: Duration) async throws -> Bool {
        guard !engine.isRunning else { throw PoolError.stillRunning }
        let engine = engine
        let deadline = ContinuousClock.now + timeout
        return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            _ = SystemThread.start { continuation.resume(returning: engine.waitUntilFinished(until: deadline)) }
        }
    }

    /// Kills every worker at once; work not yet done fails with
    /// ``ProcessError/poolTerminated``. Returns once the workers are reaped.
    public func terminate() {
        engine.terminate()
        if !engine.isDispatcherThread { _ = engine.waitUntilFinished() }
    }


    /// The process identifiers of the workers now running.
    public var workerProcessIDs: [Int32] { engine.workerPIDs }

    // MARK: - Submitting

    /// Python's default chunk size for `map`: about four chunks per worker.
    func defaultChunkSize(_ count: Int) -> Int {
        max(1, (count + 4 * processes - 1) / (4 * processes))
    }

    /// The units of `count` items held here, `chunkSize` at a time.
    static func units(count: Int, chunkSize: Int) -> [PoolCall.UnitInput] {
        stride(from: 0, to: count, by: chunkSize).map { PoolCall.UnitInput(items: min(chunkSize, count - $0)) }
    }
}


// MARK: - Scoped

/// Runs `body` with a new pool, then closes and joins it; if `body` throws,
/// the pool is terminated instead. The workers never outlive the call.
@available(*, noasync, message: "use the async withProcessPool")
public func withProcessPool<Result>(processes: Int? = nil, startMethod: StartMethod = .forkserver, initializer: PoolInitializer? = nil, maxTasksPerChild: Int? = nil,
                                   limits: WorkerLimits = WorkerLimits(), restartBudget: RestartBudget = .default, environment: WorkerEnvironment = WorkerEnvironment(),
                                   gracePeriod: Duration? = nil, retries: Int = 0, output: WorkerOutput = WorkerOutput(), logger: Logger? = nil, metrics: PoolMetrics? = nil, insights: Bool = false, _ body: (ProcessPool) throws -> Result) throws -> Result {
    try withPool({ try ProcessPool(processes: processes, startMethod: startMethod, initializer: initializer, maxTasksPerChild: maxTasksPerChild, limits: limits, restartBudget: restartBudget, environment: environment, gracePeriod: gracePeriod, retries: retries, output: output, logger: logger, metrics: metrics, insights: insights) }, body)
}

/// Runs `body` with a new pool, then closes and joins it; if `body` throws
/// (or its task is cancelled), the pool is terminated instead.
public func withProcessPool<Result>(processes: Int? = nil, startMethod: StartMethod = .forkserver, initializer: PoolInitializer? = nil, maxTasksPerChild: Int? = nil,
                                   limits: WorkerLimits = WorkerLimits(), restartBudget: RestartBudget = .default, environment: WorkerEnvironment = WorkerEnvironment(),
                                   gracePeriod: Duration? = nil, retries: Int = 0, output: WorkerOutput = WorkerOutput(), logger: Logger? = nil, metrics: PoolMetrics? = nil, insights: Bool = false, _ body: (ProcessPool) async throws -> Result) async throws -> Result {
    try await withPool({ try ProcessPool(processes: processes, startMethod: startMethod, initializer: initializer, maxTasksPerChild: maxTasksPerChild, limits: limits, restartBudget: restartBudget, environment: environment, gracePeriod: gracePeriod, retries: retries, output: output, logger: logger, metrics: metrics, insights: insights) }, body)
}
