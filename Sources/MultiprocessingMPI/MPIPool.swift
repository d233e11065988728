#if MPI
import Glibc
import Multiprocessing

/// A pool whose workers are the ranks of an MPI job (Open MPI): the same
/// calls, options, result types and ``ProcessError``s as ``ProcessPool``
/// for work named by type — `mpi4py.futures`' `MPIPoolExecutor`, for Swift.
/// Switching is one line:
///
/// ```swift
/// let pool = try MPIPool()                  // was: try ProcessPool()
/// let squares = try pool.map(Square(), over: 1...100_000)
/// ```
///
/// **Launching.** Start the program with `mpirun -n N ./app`. Every rank
/// runs the same executable; rank 0 runs the program and makes the pool;
/// ranks 1…N−1 serve it. A program opts in to having them become workers
/// *before* `main` (so they never run the program's own code) with a marker
/// in its main module:
///
/// ```swift
/// @_cdecl("swift_multiprocessing_mpi_workers") func mpiWorkers() {}
/// ```
///
/// Without the marker, each rank other than 0 becomes a worker when it
/// reaches `MPIPool()` and never returns from it. A program started alone
/// can start its workers with ``init(spawning:processesPerRank:startMethod:initializer:maxTasksPerChild:timeout:limits:environment:gracePeriod:retries:)``
/// (`MPI_Comm_spawn`).
///
/// **Isolation.** Each worker rank runs its units in a local ``ProcessPool``
/// of its own (`processesPerRank` processes, by `startMethod`), so a trap,
/// a segfault, a time limit or a kill of a worker process fails only its
/// unit with ``ProcessError/crashed(signal:report:)``, ``ProcessError/timedOut(seconds:)``
/// …, and never the MPI job. A rank that dies itself ends the job, as Open
/// MPI ends it: `mpirun` kills every rank, says which one died and why, and
/// exits with a non-zero status; the local pools' processes go with their ranks.
///
/// **Where it differs from ``ProcessPool``.** Only work named by type runs
/// (``ProcessJob``, ``ProcessFunction``); closures cannot cross machines.
/// An initializer must be a job (``PoolInitializer/job(_:)``). The worker
/// ranks serve one pool at a time. ``processes`` counts the worker
/// processes of every rank. Rank 0 checks at start that every rank runs
/// the same build (the executable's GNU build ID and the wire version).
/// When rank 0's program exits, every worker rank leaves and MPI is
/// finalized. Only rank 0 makes MPI calls on a thread of the library's own;
/// idle ranks sleep rather than spin.
public final class MPIPool: WorkerPool {
    let engine: MPIPoolEngine

    public var _scheduler: PoolScheduler { PoolScheduler(engine) }

    /// How many worker processes run units at once, on every rank together.
    public var processes: Int { engine.processes }

    /// How many worker ranks serve the pool.
    public var ranks: Int { engine.rankCount }

    /// Opens a pool on the worker ranks of this MPI job (`mpirun -n N`).
    ///
    /// - Parameters:
    ///   - processesPerRank: worker processes in each rank's local pool;
    ///     nil: each rank's ``usableCPUCount()``.
    ///   - startMethod: how each rank starts its local processes.
    ///   - initializer: a job each local process runs first.
    ///   - maxTasksPerChild: as for ``ProcessPool``, per local process.
    ///   - timeout: how long the ranks may take to greet rank 0 and start.
    ///   - limits: what each local process may use (``WorkerLimits``: memory,
    ///     CPU per task, files, core dumps, recycling, the sandbox), enforced
    ///     by each rank as that machine allows (a memory limit by a control
    ///     group where the rank can make one, `RLIMIT_DATA` elsewhere).
    ///   - environment: each local process's variables, working directory,
    ///     CPU affinity and niceness (``WorkerEnvironment``).
    ///   - gracePeriod: as for ``ProcessPool``: a unit past its timeout is
    ///     asked to stop (``isStopRequested()``), and killed after this long.
    ///   - retries: as for ``ProcessPool``: a unit whose local process ended
    ///     under it runs again, on the same rank, up to this many more times;
    ///     then it fails with ``ProcessError/retriesExhausted(attempts:)``.
    /// - Throws: ``MPIPoolError``: ``MPIPoolError/noWorkerRanks`` when not
    ///   started by `mpirun` with more than one rank,
    ///   ``MPIPoolError/buildMismatch(rank:expected:found:)`` (every worker
    ///   rank then leaves), ``MPIPoolError/anotherPoolRunning``; or
    ///   ``PoolError/invalidArgument(_:)``.
    public convenience init(processesPerRank: Int? = nil, startMethod: StartMethod = .forkserver, initializer: PoolInitializer? = nil, maxTasksPerChild: Int? = nil, timeout: Duration = .seconds(60),
                            limits: WorkerLimits = WorkerLimits(), environment: WorkerEnvironment = WorkerEnvironment(),
                            gracePeriod: Duration? = nil, retries: Int = 0) throws {
        guard getenv("OMPI_COMM_WORLD_SIZE") != nil else { throw MPIPoolError.noWorkerRanks }
        try self.init(spawning: nil, processesPerRank: processesPerRank, startMethod: startMethod, initializer: initializer, maxTasksPerChild: maxTasksPerChild, timeout: timeout,
                      limits: limits, environment: environment, gracePeriod: gracePeriod, retries: retries)
    }

    /// Starts `ranks` worker ranks with `MPI_Comm_spawn` and opens a pool on
    /// them; they leave when the pool ends. Works in a program started
    /// alone (Open MPI starts its run-time for it) and under `mpirun`.
    ///
    /// In Open MPI 4.1 spawned ranks reach this process over TCP only, not
    /// shared memory: a unit's round trip costs several times more than
    /// with ranks started by `mpirun`, so prefer larger chunks.
    public convenience init(spawning ranks: Int, processesPerRank: Int? = nil, startMethod: StartMethod = .forkserver, initializer: PoolInitializer? = nil, maxTasksPerChild: Int? = nil, timeout: Duration = .seconds(60),
                            limits: WorkerLimits = WorkerLimits(), environment: WorkerEnvironment = WorkerEnvironment(),
                            gracePeriod: Duration? = nil, retries: Int = 0) throws {
        guard ranks >= 1 else { throw PoolError.invalidArgument("ranks must be at least 1, not \(ranks)") }
        try self.init(spawning: Optional(ranks), processesPerRank: processesPerRank, startMethod: startMethod, initializer: initializer, maxTasksPerChild: maxTasksPerChild, timeout: timeout,
                      limits: limits, environment: environment, gracePeriod: gracePeriod, retries: retries)
    }

    private init(spawning: Int?, processesPerRank: Int?, startMethod: StartMethod, initializer: PoolInitializer?, maxTasksPerChild: Int?, timeout: Duration,
                 limits: WorkerLimits, environment: WorkerEnvironment, gracePeriod: Duration?, retries: Int) throws {
        // Checked here too, so that a bad value fails before any rank starts.
        _ = try limits.resolved()
        try environment.validate()
        try ProcessPool.validate(gracePeriod: gracePeriod, retries: retries)
        if let processesPerRank, processesPerRank < 1 { throw PoolError.invalidArgument("processesPerRank must be at least 1, not \(processesPerRank)") }
        if let maxTasksPerChild, maxTasksPerChild < 1 { throw PoolError.invalidArgument("maxTasksPerChild must be at least 1, not \(maxTasksPerChild)") }
        var named: (typeName: String, payload: [UInt8])? = nil
        if let initializer {
            guard let job = initializer.named else { throw PoolError.invalidArgument("an MPIPool's initializer must be a job: a closure cannot run on other ranks") }
            named = job
        }
        let start = StartPool(session: 0, processesPerRank: processesPerRank, startMethod: startMethod, maxTasksPerChild: maxTasksPerChild,
                              initializerType: named?.typeName, initializerPayload: named?.payload ?? [],
                              limits: limits, environment: environment, gracePeriod: gracePeriod, retries: retries)
        let master = try MPIRuntime.shared.masterRole()
        engine = try master.open(start, spawning: spawning, timeout: timeout)
    }

    deinit {
        engine.terminate()
        _ = engine.waitUntilFinished(until: .now + .seconds(30))
    }

    /// Takes no more work; the ranks' local pools end once the submitted work is done.
    public func close() { engine.close() }

    /// Ends every call at once (its open work fails with
    /// ``ProcessError/poolTerminated``) and every rank's local pool.
    public func terminate() {
        engine.terminate()
        _ = engine.waitUntilFinished()
    }

}

/// Runs `body` with a new ``MPIPool``, then closes and joins it; if `body`
/// throws, the pool is terminated instead.
@available(*, noasync, message: "use the async withMPIPool")
public func withMPIPool<Result>(processesPerRank: Int? = nil, startMethod: StartMethod = .forkserver, initializer: PoolInitializer? = nil, _ body: (MPIPool) throws -> Result) throws -> Result {
    try withPool({ try MPIPool(processesPerRank: processesPerRank, startMethod: startMethod, initializer: initializer) }, body)
}

/// Runs `body` with a new ``MPIPool``, then closes and joins it; if `body`
/// throws (or its task is cancelled), the pool is terminated instead.
public func withMPIPool<Result>(processesPerRank: Int? = nil, startMethod: StartMethod = .forkserver, initializer: PoolInitializer? = nil, _ body: (MPIPool) async throws -> Result) async throws -> Result {
    try await withPool({ try MPIPool(processesPerRank: processesPerRank, startMethod: startMethod, initializer: initializer) }, body)
}
#endif
