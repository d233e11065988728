import FoundationEssentials
import Multiprocessing

/// x ↦ x², the trivial task.
struct SquareTask: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int { x &* x }
}

/// The same as a job, for apply round trips.
struct SquareJob: ProcessJob {
    var x: Int
    func run() throws -> Int { x &* x }
}

/// About a millisecond of arithmetic per item.
struct Spin: ProcessFunction {
    func callAsFunction(_ seed: Int) -> Double { spin(seed) }
}

@inline(never) func spin(_ seed: Int) -> Double {
    var total = 0.0
    for i in 0..<400_000 { total += (Double(i ^ seed) + 1).squareRoot() }
    return total
}

/// One map of x² over `count` Ints on a new pool of two workers (the default
/// start method, forkserver: workers are forked from a small clean server),
/// default chunks (as Python's `with Pool(2) as p: p.map(square, range(n))`).
@Sendable func poolMap(_ count: Int) throws {
    try poolMap(count, limits: WorkerLimits())
}

/// The isolation controls on: a memory limit (a control group per worker
/// where the machine allows) and the sandbox, for the `.limited` rows.
let isolatingLimits = WorkerLimits(memory: 512 << 20, sandbox: WorkerSandbox([.noNewProcesses, .noNetwork]))

func poolMap(_ count: Int, limits: WorkerLimits) throws {
    try withProcessPool(processes: 2, limits: limits) { (pool: ProcessPool) throws in
        let squares = try pool.map(SquareTask(), over: 0..<count)
        guard squares.last == (count - 1) * (count - 1) else { throw BenchmarkFailure(description: "wrong result") }
    }
}

/// `count` applyAsync+get round trips, one at a time.
@Sendable func poolApply(_ count: Int) throws {
    try poolApply(count, limits: WorkerLimits())
}

func poolApply(_ count: Int, limits: WorkerLimits) throws {
    try withProcessPool(processes: 2, limits: limits) { (pool: ProcessPool) throws in
        for i in 0..<count {
            guard try pool.applyAsync(SquareJob(x: i)).get() == i * i else { throw BenchmarkFailure(description: "wrong result") }
        }
    }
}

/// One closure map of x² over `count` Ints on a new pool of two: workers
/// forked for the call, each holding the items already (Python's
/// `p.map(square, range(n))` sends them).
@Sendable func poolClosureMap(_ count: Int) throws {
    let items = Array(0..<count)
    try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
        let squares = try pool.map(items) { x in x &* x }
        guard squares.last == (count - 1) * (count - 1) else { throw BenchmarkFailure(description: "wrong result") }
    }
}

/// `count` closure applyAsync+get round trips, one at a time: a forked
/// worker per call (Python's `apply_async(square, (i,))` runs in a warm pool).
@Sendable func poolClosureApply(_ count: Int) throws {
    try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
        for i in 0..<count {
            guard try pool.applyAsync({ i &* i }).get() == i * i else { throw BenchmarkFailure(description: "wrong result") }
        }
    }
}

/// `poolClosureApply` with the library's forks plain: what stopping the world costs there.
@Sendable func poolClosureApplyPlainForks(_ count: Int) throws {
    ForkSafety.stopsTheWorld = false
    defer { ForkSafety.stopsTheWorld = true }
    try poolClosureApply(count)
}

/// `count` applyAsync+get round trips of a closure given its argument
/// (`capturing:`), one at a time: it runs in the pool's warm workers, as
/// Python's `apply_async(square, (i,))` does.
@Sendable func poolCapturingApply(_ count: Int) throws {
    try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
        for i in 0..<count {
            guard try pool.applyAsync(capturing: i, { x in x &* x }).get() == i * i else { throw BenchmarkFailure(description: "wrong result") }
        }
    }
}

/// One map of x² over `count` Ints of a closure given its capture: sent to
/// the warm workers in chunks, as `pool.map` sends a ``ProcessFunction``'s.
@Sendable func poolCapturingMap(_ count: Int) throws {
    try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
        let squares = try pool.map(0..<count, capturing: 0) { zero, x in x &* x &+ zero }
        guard squares.last == (count - 1) * (count - 1) else { throw BenchmarkFailure(description: "wrong result") }
    }
}

/// `imap` of x² over a lazy sequence of `count` Ints, in chunks of 1000,
/// every result taken as it comes: the input is read as the results are
/// taken (four chunks per worker ahead), so memory stays flat. Python's
/// `imap` over `range(count)` reads the whole input into its task queue.
@Sendable func poolImapLazy(_ count: Int) throws {
    try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
        var total = 0
        for result in try pool.imap(SquareTask(), over: (0..<count).lazy.map { $0 }, chunkSize: 1000) {
            total &+= try result.get()
        }
        var expected = 0
        for x in 0..<count { expected &+= x &* x }
        guard total == expected else { throw BenchmarkFailure(description: "wrong result") }
    }
}

/// A CPU-bound map on two workers (small chunks: the last chunk to end sets
/// the time, and a 50-item chunk is 37 ms)…
@Sendable func poolSpin(_ count: Int) throws {
    try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
        _ = try pool.map(Spin(), over: 0..<count, chunkSize: 4)
    }
}

/// …against the same work serially, in this process.
@Sendable func serialSpin(_ count: Int) throws {
    var total = 0.0
    for i in 0..<count { total += spin(i) }
    guard total > 0 else { throw BenchmarkFailure(description: "no work") }
}

let poolScenarios: [Scenario] = [
    Scenario(name: "pool.map", unit: "items", count: 1_000_000, quickCount: 20_000, baseline: .python("pool.map"), run: poolMap),
    Scenario(name: "pool.apply", unit: "round trips", count: 3000, quickCount: 100, baseline: .python("pool.apply"), run: poolApply),
    Scenario(name: "pool.map.limited", unit: "items", count: 1_000_000, quickCount: 20_000, baseline: .swift("no limits", poolMap),
             run: { try poolMap($0, limits: isolatingLimits) }),
    Scenario(name: "pool.apply.limited", unit: "round trips", count: 3000, quickCount: 100, baseline: .swift("no limits", poolApply),
             run: { try poolApply($0, limits: isolatingLimits) }),
    Scenario(name: "pool.closure.map", unit: "items", count: 1_000_000, quickCount: 20_000, baseline: .python("pool.map"), run: poolClosureMap),
    Scenario(name: "pool.closure.apply", unit: "round trips", count: 1000, quickCount: 50, baseline: .python("pool.apply"), run: poolClosureApply),
    Scenario(name: "pool.closure.stop-the-world", unit: "round trips", count: 1000, quickCount: 50, baseline: .swift("plain forks", poolClosureApplyPlainForks), run: poolClosureApply),
    Scenario(name: "pool.capturing.apply", unit: "round trips", count: 3000, quickCount: 100, baseline: .python("pool.apply"), run: poolCapturingApply),
    Scenario(name: "pool.capturing.map", unit: "items", count: 1_000_000, quickCount: 20_000, baseline: .python("pool.map"), run: poolCapturingMap),
    Scenario(name: "pool.imap.lazy", unit: "items", count: 10_000_000, quickCount: 100_000, baseline: .python("pool.imap.lazy"), measuresPeakMemory: true, run: poolImapLazy),
    Scenario(name: "pool.cpu", unit: "items", count: 400, quickCount: 10, baseline: .swift("serial", serialSpin), run: poolSpin),
]
