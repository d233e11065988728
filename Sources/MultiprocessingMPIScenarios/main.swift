#if MPI
import Glibc
import Multiprocessing
import MultiprocessingMPI

/// The ranks other than 0 become workers before `main`.
@_cdecl("swift_multiprocessing_mpi_workers") func mpiWorkers() {}

struct Square: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int { x * x }
}

let pool = try MPIPool(processesPerRank: 2)
print("ranks \(pool.ranks) processes \(pool.processes)")
let squares = try pool.map(Square(), over: 0..<100_000, chunkSize: 7)
print("sum", squares.reduce(0, &+), squares == (0..<100_000).map { $0 * $0 })
pool.close()
try pool.join()
#else
print("built without the MPI trait")
#endif
