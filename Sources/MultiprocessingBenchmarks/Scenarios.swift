import CBenchmarkFloor
import Glibc
import Multiprocessing

/// A job that does nothing: what process start-up costs.
struct Nothing: ProcessJob {
    func run() throws -> Int { 0 }
}

/// One benchmark: the same work done with this library and with Python's.
struct Scenario: Sendable {
    var name: String
    /// What one operation is, for the table's unit column.
    var unit: String
    /// Operations per repetition, full and quick.
    var count: Int
    var quickCount: Int
    /// The Python scenario doing the same work, if there is one.
    var python: String?
    /// Does `count` operations.
    var run: @Sendable (Int) throws -> Void
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

let allScenarios: [Scenario] = [
    Scenario(name: "os.fork", unit: "fork+exit+wait", count: 2000, quickCount: 50, python: "os.fork") { count in
        guard cbf_fork_exit_wait(Int32(count)) == 0 else { throw BenchmarkFailure(description: "fork failed") }
    },
    Scenario(name: "process.fork", unit: "start+join", count: 1000, quickCount: 20, python: "process.fork", run: startJoin(.fork)),
    Scenario(name: "process.forkserver", unit: "start+join", count: 1000, quickCount: 20, python: "process.forkserver", run: startJoin(.forkserver)),
    Scenario(name: "process.spawn", unit: "start+join", count: 100, quickCount: 5, python: "process.spawn", run: startJoin(.spawn)),
]
