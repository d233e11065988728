#if MPI
import CMultiprocessing
import Glibc
import Multiprocessing

/// MPI in this process: initialized once, on a thread of its own, which
/// then serves as rank 0's master (the program runs on) or as a worker
/// rank (the process does nothing else, and leaves when rank 0 says so).
final class MPIRuntime: @unchecked Sendable {  // `master` is written once, before `startup` publishes the role
    static let shared = MPIRuntime()

    enum Role: Equatable, Sendable {
        case master
        case worker
    }

    private struct Startup {
        var started = false
        var role: Result<Role, MPIPoolError>?
        var finalized = false
    }

    private let startup = Monitor(Startup())
    let thread = MPIThread()
    private(set) var master: Master?

    private init() {}

    /// Starts MPI (once) and returns this process's role. A worker rank's
    /// caller never gets past the worker loop: the process leaves from it.
    func start() -> Result<Role, MPIPoolError> {
        let first = startup.withLock { startup -> Bool in
            defer { startup.started = true }
            return !startup.started
        }
        if first { _ = SystemThread.start { [self] in main() } }
        return startup.wait(until: nil) { $0.role }!
    }

    private func publish(_ role: Result<Role, MPIPoolError>) {
        startup.update { $0.role = role }
    }

    private func main() {
        do throws(MPIPoolError) {
            try MPI.initialize()
            if let parent = try MPI.parent() {
                publish(.success(.worker))
                WorkerRank(thread: thread, communicator: parent, spawned: true).serve()
            }
            let rank = try MPI.rank(MPI.world)
            let size = try MPI.size(MPI.world)
            if rank != 0 {
                publish(.success(.worker))
                WorkerRank(thread: thread, communicator: MPI.world, spawned: false).serve()
            }
            master = Master(thread: thread, worldSize: size)
            atexit { MPIRuntime.shared.shutdown() }
            publish(.success(.master))
            thread.run()
            MPI.finalize()
            startup.update { $0.finalized = true }
        } catch {
            publish(.failure(error))
        }
    }

    /// At the exit of rank 0's program: ends any pool, tells every worker
    /// rank to leave, and finalizes MPI — bounded, so an exit never hangs.
    private func shutdown() {
        guard let master else { return }
        thread.perform { [thread] in
            master.exitAll(reason: nil)
            thread.running = false
        }
        _ = startup.wait(until: .now + .seconds(20)) { $0.finalized ? true : nil }
    }

    /// The master's state, once MPI runs here as rank 0.
    func masterRole() throws(MPIPoolError) -> Master {
        switch start() {
        case .success(.master): return master!
        case .success(.worker):
            // A rank other than 0 that reached `MPIPool()` serves as a worker;
            // its MPI thread ends the process.
            while true { pause() }
        case let .failure(error): throw error
        }
    }

    /// Says `message` on standard error, once, whole, naming this process.
    static func report(_ message: String) {
        let line = "swift-multiprocessing MPI (pid \(getpid())): \(message)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }

    /// The GNU build ID of this executable, in hexadecimal: what every rank
    /// must share.
    static let build: String = {
        let locate: @convention(c) (UnsafeRawPointer?, UnsafeMutablePointer<cmp_code_location_t>?) -> Int32 = cmp_code_locate
        var location = cmp_code_location_t()
        guard cmp_code_locate(unsafeBitCast(locate, to: UnsafeRawPointer.self), &location) == 1 else { return "unknown" }
        let bytes = withUnsafeBytes(of: location.build_id) { Array($0.prefix(Int(location.build_id_length))) }
        let digits = Array("0123456789abcdef")
        return String(bytes.flatMap { [digits[Int($0 >> 4)], digits[Int($0 & 0xF)]] })
    }()
}

/// Called by the library's C constructor before `main`, in a program that
/// carries the MPI marker and was started by Open MPI: rank 0 returns to
/// run the program; every other rank serves as a worker and never returns.
@_cdecl("swift_multiprocessing_mpi_entry")
public func _multiprocessingMPIEntry() {
    switch MPIRuntime.shared.start() {
    case .success(.master):
        return
    case .success(.worker):
        while true { pause() }  // the MPI thread ends the process
    case let .failure(error):
        MPIRuntime.report("MPI did not start: \(error)")
        if let rank = getenv("OMPI_COMM_WORLD_RANK"), String(cString: rank) != "0" { _exit(1) }
    }
}
#endif
