import CBenchmarkFloor
import FoundationEssentials
import Multiprocessing

/// A job that does nothing: what process start-up costs.
struct Nothing: ProcessJob {
    func run() throws -> Int { 0 }
}

/// What a scenario is measured against.
enum Baseline: Sendable {
    /// The same work with CPython's multiprocessing (a scenario of python_benchmarks.py).
    case python(String)
    /// Another Swift implementation: the floor (raw system calls, memcpy) or a rival (JSON).
    case swift(String, @Sendable (Int) throws -> Void)

    var label: String {
        switch self {
        case .python: "Python"
        case let .swift(name, _): name
        }
    }
}

/// One benchmark: the same work done with this library and with a baseline.
struct Scenario: Sendable {
    var name: String
    /// What one counted operation is.
    var unit: String
    /// Iterations per repetition, full and quick.
    var count: Int
    var quickCount: Int
    /// Operations one iteration counts for (bytes, for throughput scenarios).
    var operationsPerIteration: Int = 1
    var baseline: Baseline?
    /// Run both sides with every process on one CPU. Latency between two
    /// processes on this 2-core VM otherwise swings 5× with where the
    /// scheduler puts them.
    var pinned = false
    /// Also report how far each side's peak resident memory rose above
    /// where it stood when a repetition began (`VmHWM`, reset through
    /// `/proc/self/clear_refs`): for scenarios whose point is bounded memory.
    var measuresPeakMemory = false
    /// Does `count` iterations.
    var run: @Sendable (Int) throws -> Void
    /// For scenarios that time themselves (the Python side's function
    /// returns its seconds too): does `count` iterations, returns the seconds
    /// to count. `run` is then not used.
    var timed: (@Sendable (Int) throws -> Double)? = nil
}

struct BenchmarkFailure: Error, CustomStringConvertible {
    var description: String
}

func startJoin(_ method: StartMethod) -> @Sendable (Int) throws -> Void {
    { count in
        for _ in 0..<count {
            let process: ChildProcess = method == .fork ? ChildProcess {} : try ChildProcess(job: Nothing(), startMethod: method)
            try process.start()
            guard try process.join() == 0 else { throw BenchmarkFailure(description: "a child failed: \(String(describing: process.failure))") }
        }
    }
}

/// `process.fork` with the library's forks plain: what stopping the world costs.
@Sendable func plainForkStartJoin(_ count: Int) throws {
    ForkSafety.stopsTheWorld = false
    defer { ForkSafety.stopsTheWorld = true }
    try startJoin(.fork)(count)
}

/// The seconds from making a pool of two to its first result, each in a
/// fresh process (this executable started anew with `--first-result`, so that
/// no forkserver runs yet), as a program that makes one pool pays them.
func firstResult(_ method: StartMethod) -> @Sendable (Int) throws -> Double {
    { count in
        var total = 0.0
        for _ in 0..<count {
            let (status, output) = try ExternalProgram.run(["/proc/self/exe", "--first-result", "\(method)"])
            guard status == 0, let seconds = Double(String(decoding: output, as: UTF8.self).split(separator: "\n").last ?? "") else {
                throw BenchmarkFailure(description: "--first-result \(method) exited with \(status)")
            }
            total += seconds
        }
        return total
    }
}

/// In the fresh process of ``firstResult(_:)``: the seconds from making the
/// pool to holding its first result.
func measureFirstResult(_ method: StartMethod) throws -> Double {
    let start = ContinuousClock.now
    return try withProcessPool(processes: 2, startMethod: method) { pool in
        guard try pool.apply(SquareJob(x: 3)) == 9 else { throw BenchmarkFailure(description: "wrong result") }
        return secondsOf(ContinuousClock.now - start)
    }
}

func secondsOf(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

let allScenarios: [Scenario] = [
    Scenario(name: "os.fork", unit: "fork+exit+wait", count: 2000, quickCount: 50, baseline: .python("os.fork")) { count in
        guard cbf_fork_exit_wait(Int32(count)) == 0 else { throw BenchmarkFailure(description: "fork failed") }
    },
    Scenario(name: "process.fork", unit: "start+join", count: 1000, quickCount: 20, baseline: .python("process.fork"), run: startJoin(.fork)),
    Scenario(name: "fork.stop-the-world", unit: "start+join", count: 1000, quickCount: 20, baseline: .swift("plain fork", plainForkStartJoin), run: startJoin(.fork)),
    Scenario(name: "process.forkserver", unit: "start+join", count: 1000, quickCount: 20, baseline: .python("process.forkserver"), run: startJoin(.forkserver)),
    Scenario(name: "process.spawn", unit: "start+join", count: 100, quickCount: 5, baseline: .python("process.spawn"), run: startJoin(.spawn)),
    Scenario(name: "process.spawn.floor", unit: "start+join", count: 100, quickCount: 5, baseline: .swift("exec, exit before main") { count in
        guard cbf_spawn_self_exit(Int32(count)) == 0 else { throw BenchmarkFailure(description: "spawn failed") }
    }, run: startJoin(.spawn)),
    Scenario(name: "pool.first-result.forkserver", unit: "new pools (fresh process)", count: 20, quickCount: 2,
             baseline: .python("pool.first-result.forkserver"), run: { _ in }, timed: firstResult(.forkserver)),
    Scenario(name: "pool.first-result.fork", unit: "new pools (fresh process)", count: 20, quickCount: 2,
             baseline: .python("pool.first-result.fork"), run: { _ in }, timed: firstResult(.fork)),
] + wireScenarios + sharedStateScenarios + poolScenarios + observedScenarios + managerScenarios + largeMemoryScenarios
