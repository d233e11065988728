#if MPI
import Multiprocessing

/// The messages between rank 0 and its worker ranks, by MPI tag. Each is a
/// `Codable` value in the library's wire format, so a corrupt message is a
/// decoding error, never a crash.
enum RankMessage {
    /// Worker → 0, once, after `MPI_Init`: who it is and what build it runs.
    static let hello: Int32 = 1
    /// 0 → worker: set up a local pool for a new ``MPIPool``.
    static let start: Int32 = 2
    /// Worker → 0: the local pool is there (or could not be made).
    static let ready: Int32 = 3
    /// 0 → worker: units to run (``UnitBatch``).
    static let units: Int32 = 4
    /// Worker → 0: how units ended (``ReplyBatch``).
    static let replies: Int32 = 5
    /// 0 → worker: cancel what runs of a call.
    static let cancel: Int32 = 6
    /// 0 → worker: the pool ends (closed, or terminated).
    static let end: Int32 = 7
    /// Worker → 0: its local pool has ended.
    static let ended: Int32 = 8
    /// 0 → worker: leave (the program on rank 0 is exiting, or refused the build).
    static let exit: Int32 = 9

    /// Bumped whenever a message changes shape.
    static let wireVersion = 1
}

struct Hello: Codable, Sendable {
    var wireVersion: Int
    /// The GNU build ID of the executable, in hexadecimal.
    var build: String
    var host: String
    var pid: Int32
    /// CPUs this rank may use.
    var cpus: Int
}

struct StartPool: Codable, Sendable {
    var session: Int
    /// Local worker processes on each rank; nil: each rank's usable CPUs.
    var processesPerRank: Int?
    var startMethod: StartMethod
    var maxTasksPerChild: Int?
    /// A job initializer: its type name and encoding.
    var initializerType: String?
    var initializerPayload: [UInt8]
    /// What each local process may use, and where it runs.
    var limits = WorkerLimits()
    var environment = WorkerEnvironment()
    /// How long a unit past its timeout may take to stop; how often a unit runs again.
    var gracePeriod: Duration? = nil
    var retries = 0
}

struct Ready: Codable, Sendable {
    var session: Int
    var processes: Int
    var failure: String?
}

// UnitBatch and ReplyBatch, which cross for every unit, are framed by hand (UnitBatch.swift).

struct CancelCall: Codable, Sendable {
    var call: Int
}

struct EndPool: Codable, Sendable {
    var session: Int
    var terminate: Bool
}

struct ExitRank: Codable, Sendable {
    var reason: String?
}
#endif
