#if MPI
import CMPI
import Glibc

/// Why an MPI pool cannot be made or used.
public enum MPIPoolError: Error, Sendable, Equatable, CustomStringConvertible {
    /// An MPI call failed: its name, Open MPI's error code and message.
    case mpiCall(String, code: Int32, message: String)
    /// This process is not part of an MPI job that gives it workers: it was
    /// not started by `mpirun` with the program's marker (see ``MPIPool``),
    /// or it is the only rank.
    case noWorkerRanks
    /// A rank runs another build of the program (or another wire version):
    /// the pool is refused and every worker rank leaves.
    case buildMismatch(rank: Int, expected: String, found: String)
    /// Worker ranks did not answer in time: the ranks that did not.
    case ranksDidNotAnswer([Int])
    /// Another ``MPIPool`` of this process is still running; the worker
    /// ranks serve one pool at a time.
    case anotherPoolRunning
    /// A worker rank could not set up its local pool.
    case rankFailed(rank: Int, reason: String)
    /// MPI has been finalized in this process (it is exiting).
    case finalized

    public var description: String {
        switch self {
        case let .mpiCall(name, code, message): "\(name) failed with MPI error \(code): \(message)"
        case .noWorkerRanks: "this process has no MPI worker ranks: start it with mpirun -n N (N ≥ 2), with the program's MPI marker, or spawn workers"
        case let .buildMismatch(rank, expected, found): "rank \(rank) runs another build (\(found)) than rank 0 (\(expected)): the pool was refused and the worker ranks left"
        case let .ranksDidNotAnswer(ranks): "ranks \(ranks.map(String.init).joined(separator: ", ")) did not answer in time"
        case .anotherPoolRunning: "another MPIPool of this process is running: the worker ranks serve one pool at a time"
        case let .rankFailed(rank, reason): "rank \(rank) could not start its local pool: \(reason)"
        case .finalized: "MPI was finalized in this process"
        }
    }
}

/// Every MPI call the library makes, each wrapped once; failures are
/// ``MPIPoolError/mpiCall(_:code:message:)``. Only the process's MPI thread
/// calls these (the library asks for `MPI_THREAD_FUNNELED`).
enum MPI {
    typealias Communicator = MPI_Comm

    static var world: Communicator { cmpi_comm_world() }
    static var selfCommunicator: Communicator { cmpi_comm_self() }
    static var anySource: Int32 { Int32(cmpi_any_source()) }
    static var anyTag: Int32 { Int32(cmpi_any_tag()) }

    private static func check(_ code: Int32, _ name: String) throws(MPIPoolError) {
        guard code != MPI_SUCCESS else { return }
        throw .mpiCall(name, code: code, message: errorString(code))
    }

    static func errorString(_ code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: Int(MPI_MAX_ERROR_STRING) + 1)
        var length: Int32 = 0
        guard MPI_Error_string(code, &buffer, &length) == MPI_SUCCESS else { return "error \(code)" }
        return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// `MPI_Init_thread` asking for `MPI_THREAD_FUNNELED`: every later call
    /// comes from this thread. Errors on the world return rather than abort.
    static func initialize() throws(MPIPoolError) {
        var provided: Int32 = 0
        try check(MPI_Init_thread(nil, nil, Int32(MPI_THREAD_FUNNELED), &provided), "MPI_Init_thread")
        try check(MPI_Comm_set_errhandler(world, cmpi_errors_return()), "MPI_Comm_set_errhandler")
    }

    static func finalize() { _ = MPI_Finalize() }

    static func rank(_ communicator: Communicator) throws(MPIPoolError) -> Int32 {
        var rank: Int32 = 0
        try check(MPI_Comm_rank(communicator, &rank), "MPI_Comm_rank")
        return rank
    }

    static func size(_ communicator: Communicator) throws(MPIPoolError) -> Int32 {
        var size: Int32 = 0
        try check(MPI_Comm_size(communicator, &size), "MPI_Comm_size")
        return size
    }

    /// The communicator to the processes that spawned this one, if any.
    static func parent() throws(MPIPoolError) -> Communicator? {
        var parent: MPI_Comm? = nil
        try check(MPI_Comm_get_parent(&parent), "MPI_Comm_get_parent")
        guard let parent, parent != cmpi_comm_null() else { return nil }
        try check(MPI_Comm_set_errhandler(parent, cmpi_errors_return()), "MPI_Comm_set_errhandler")
        return parent
    }

    /// Starts `count` processes running `path` (`MPI_Comm_spawn`, from this
    /// process alone); returns the intercommunicator to them.
    static func spawn(_ path: String, arguments: [String], count: Int32) throws(MPIPoolError) -> Communicator {
        var intercommunicator: MPI_Comm? = nil
        var errors = [Int32](repeating: 0, count: Int(count))
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let code = path.withCString { path in
            MPI_Comm_spawn(path, &argv, count, cmpi_info_null(), 0, selfCommunicator, &intercommunicator, &errors)
        }
        try check(code, "MPI_Comm_spawn")
        if let failed = errors.first(where: { $0 != MPI_SUCCESS }) { try check(failed, "MPI_Comm_spawn (a process)") }
        guard let intercommunicator else { throw .mpiCall("MPI_Comm_spawn", code: -1, message: "no intercommunicator") }
        try check(MPI_Comm_set_errhandler(intercommunicator, cmpi_errors_return()), "MPI_Comm_set_errhandler")
        return intercommunicator
    }

    static func disconnect(_ communicator: Communicator) {
        var communicator: MPI_Comm? = communicator
        _ = MPI_Comm_disconnect(&communicator)
    }

    /// A message that has arrived: who sent it, its tag and length.
    struct Arrival {
        let source: Int32
        let tag: Int32
        let count: Int32
    }

    /// A message waiting to be received on `communicator`, if one is (`MPI_Iprobe`).
    static func probe(_ communicator: Communicator) throws(MPIPoolError) -> Arrival? {
        var flag: Int32 = 0
        var status = MPI_Status()
        try check(MPI_Iprobe(anySource, anyTag, communicator, &flag, &status), "MPI_Iprobe")
        guard flag != 0 else { return nil }
        var count: Int32 = 0
        try check(MPI_Get_count(&status, cmpi_byte(), &count), "MPI_Get_count")
        return Arrival(source: Int32(cmpi_status_source(&status)), tag: Int32(cmpi_status_tag(&status)), count: count)
    }

    /// Receives the message `arrival` announced.
    static func receive(_ arrival: Arrival, on communicator: Communicator) throws(MPIPoolError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Int(arrival.count))
        var status = MPI_Status()
        let code = bytes.withUnsafeMutableBytes { buffer in
            MPI_Recv(buffer.baseAddress, arrival.count, cmpi_byte(), arrival.source, arrival.tag, communicator, &status)
        }
        try check(code, "MPI_Recv")
        return bytes
    }

    /// A send in progress: it owns its bytes until MPI is done with them.
    final class Send {
        private let buffer: UnsafeMutableRawBufferPointer
        private var request: MPI_Request?

        /// Starts sending `bytes` (`MPI_Isend`): never blocks, whatever the
        /// receiver is doing, so two ranks sending to each other cannot deadlock.
        init(_ bytes: [UInt8], to rank: Int32, tag: Int32, on communicator: Communicator) throws(MPIPoolError) {
            guard bytes.count <= Int(Int32.max) else { throw .mpiCall("MPI_Isend", code: -1, message: "a message of \(bytes.count) bytes is over 2 GiB") }
            buffer = .allocate(byteCount: max(1, bytes.count), alignment: 16)
            bytes.withUnsafeBytes { buffer.copyMemory(from: $0) }
            let code = MPI_Isend(buffer.baseAddress, Int32(bytes.count), cmpi_byte(), rank, tag, communicator, &request)
            if code != MPI_SUCCESS {
                buffer.deallocate()
                throw .mpiCall("MPI_Isend", code: code, message: MPI.errorString(code))
            }
        }

        deinit { buffer.deallocate() }

        /// Whether MPI is done with the bytes (`MPI_Test`).
        func isComplete() throws(MPIPoolError) -> Bool {
            guard request != nil, request != cmpi_request_null() else { return true }
            var flag: Int32 = 0
            var status = MPI_Status()
            let code = MPI_Test(&request, &flag, &status)
            guard code == MPI_SUCCESS else { throw .mpiCall("MPI_Test", code: code, message: MPI.errorString(code)) }
            return flag != 0
        }
    }

    static func processorName() -> String {
        var buffer = [CChar](repeating: 0, count: Int(MPI_MAX_PROCESSOR_NAME) + 1)
        var length: Int32 = 0
        guard MPI_Get_processor_name(&buffer, &length) == MPI_SUCCESS else { return "?" }
        return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
#endif
