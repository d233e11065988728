// The seed's pool programs, run across the ranks of an MPI job:
//
//     swift build --traits MPI
//     mpirun -n 3 .build/debug/multiprocessing-mpi-examples
//
// Rank 0 runs this program; ranks 1 and 2 become workers before `main`
// (the marker below) and each runs its units in a local process pool.
#if MPI
import Glibc
import Multiprocessing
import MultiprocessingMPI

/// The marker: ranks other than 0 serve the pool instead of running `main`.
@_cdecl("swift_multiprocessing_mpi_workers") func mpiWorkers() {}

func say(_ line: String) {
    print(line)
    fflush(nil)
}

/// Seed program 5: `applyAsync(doSomething, 3)`, close, join, print the result.
struct DoSomething: ProcessJob {
    var x: Int
    func run() -> Int { x * x }
}

/// Seed program 6: the longer a task sleeps, the later it ends (1 sleeps longest).
struct SlowIdentity: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int {
        usleep(UInt32(6 - x) * 100_000)
        return x
    }
}

/// Where a unit ran: the rank's host and the worker process.
struct WhereAmI: ProcessFunction {
    func callAsFunction(_ x: Int) -> String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count)
        return "\(x) ran on \(String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)), process \(getpid())"
    }
}

let pool = try MPIPool()
say("an MPI pool of \(pool.ranks) worker ranks, \(pool.processes) processes")

let result = try pool.applyAsync(DoSomething(x: 3))
say("\(try result.get())")

for result in try pool.imap(SlowIdentity(), over: [1, 3, 5]) { say("imap: \(try result.get())") }
for result in try pool.imapUnordered(SlowIdentity(), over: [1, 3, 5]) { say("imapUnordered: \(try result.get())") }

for line in try pool.map(WhereAmI(), over: 0..<4, chunkSize: 1) { say(line) }

pool.close()
try pool.join()
#else
print("multiprocessing-mpi-examples was built without the MPI trait: swift build --traits MPI, then mpirun -n 3 .build/debug/multiprocessing-mpi-examples")
#endif
