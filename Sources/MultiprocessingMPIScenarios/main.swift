// The programs the MPI tests run under `mpirun` (Tests/MultiprocessingMPITests):
// each scenario prints what it found, one fact a line, and exits 0 if it
// got as far as the end. The tests judge the lines.
#if MPI
import Glibc
import Multiprocessing
import MultiprocessingMPI

/// The ranks other than 0 become workers before `main`.
@_cdecl("swift_multiprocessing_mpi_workers") func mpiWorkers() {}

func say(_ line: String) {
    print(line)
    fflush(nil)
}

struct Square: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int { x * x }
}

/// Sleeps `x` × 100 ms, then gives `x`.
struct Sleepy: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int {
        usleep(UInt32(x) * 100_000)
        return x
    }
}

/// Traps on 13.
struct TrapOn13: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int {
        precondition(x != 13, "thirteen")
        return x
    }
}

struct Nap: ProcessJob {
    var seconds: Double
    func run() -> Int {
        usleep(UInt32(seconds * 1_000_000))
        return Int(getpid())
    }
}

/// Writes its process id to `path`, then waits to be killed.
struct KillMe: ProcessJob {
    var path: String
    func run() -> Int {
        let text = "\(getpid())"
        let fd = open(path + ".tmp", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        rename(path + ".tmp", path)
        sleep(60)
        return 0
    }
}

/// The process that started this worker: with the fork start method, its rank.
struct ParentPID: ProcessJob {
    func run() -> Int32 { getppid() }
}

struct Threw: Error, CustomStringConvertible {
    var description: String { "threw on purpose" }
}

struct ThrowOn5: ProcessFunction {
    func callAsFunction(_ x: Int) throws -> Int {
        if x == 5 { throw Threw() }
        return x
    }
}

func describe(_ result: Result<Int, ProcessError>) -> String {
    switch result {
    case let .success(value): "\(value)"
    case let .failure(error): "error \(error)"
    }
}

/// Every chunk size gives what a local pool gives, for 100,000 items.
func results() throws {
    let inputs = 0..<100_000
    let local = try withProcessPool(processes: 2) { pool in try pool.map(Square(), over: inputs) }
    let pool = try MPIPool()
    say("ranks \(pool.ranks) processes \(pool.processes)")
    for chunkSize in [1, 7, nil] as [Int?] {
        let remote = try pool.map(Square(), over: inputs, chunkSize: chunkSize)
        say("map chunk \(chunkSize.map(String.init) ?? "auto"): \(remote == local ? "equal" : "DIFFERENT") \(remote.count)")
    }
    let jobs = try pool.map((0..<1000).map { _ in ParentPID() }, chunkSize: 10)
    say("jobs \(jobs.count)")
    let streamed = try pool.imap(Square(), over: inputs.lazy.map { $0 }, chunkSize: 100).map { try $0.get() }
    say("imap streamed: \(streamed == local ? "equal" : "DIFFERENT")")
    let progress = Reports()
    _ = try pool.map(Square(), over: 0..<1000, chunkSize: 10) { report in progress.add(report) }
    say("progress last \(progress.last.map { "\($0.completed)/\($0.total)" } ?? "none")")
    pool.close()
    try pool.join()
}

/// Allocates without end, 8 MiB at a time.
struct AllocateForever: ProcessJob {
    func run() throws -> Int {
        var kept: [[UInt8]] = []
        while kept.count >= 0 { kept.append([UInt8](repeating: 1, count: 8 << 20)) }
        return kept.count
    }
}

/// Tries to start a process; returns 0 or the errno it failed with.
struct ForkItself: ProcessJob {
    func run() throws -> Int32 {
        let pid = fork()
        if pid == 0 { _exit(0) }
        guard pid > 0 else { return errno }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return 0
    }
}

/// A variable of the local process's environment, and its directory.
struct Surroundings: ProcessJob {
    var variable: String
    func run() throws -> String {
        var directory = [CChar](repeating: 0, count: 4096)
        let path = getcwd(&directory, directory.count).map { _ in String(decoding: directory.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) } ?? "?"
        return (getenv(variable).map { String(cString: $0) } ?? "(unset)") + " in " + path
    }
}

/// Aborts its process the first time it runs (counted by bytes in `counter`); then returns `value`.
struct CrashOnce: ProcessJob {
    var counter: String
    var value: Int
    func run() throws -> Int {
        let fd = open(counter, O_RDWR | O_CREAT | O_APPEND, 0o600)
        _ = write(fd, "x", 1)
        var info = stat()
        fstat(fd, &info)
        close(fd)
        if info.st_size == 1 { abort() }
        return value
    }
}

/// Spins until asked to stop, then writes `marker` and returns.
struct StopWhenAsked: ProcessJob {
    var marker: String
    func run() throws -> Int {
        while !isStopRequested() {}
        let fd = open(marker, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = write(fd, "stopped", 7)
        close(fd)
        return 1
    }
}

/// Retries and the grace period of a soft timeout, in every rank's local pool.
func retriesAndGrace() throws {
    let pool = try MPIPool(processesPerRank: 1, gracePeriod: .seconds(60), retries: 1)
    let counter = "/tmp/mpi-retries-\(getpid())"
    let marker = "/tmp/mpi-stopped-\(getpid())"
    defer { unlink(counter); unlink(marker) }
    unlink(counter)
    say("retried: \(try pool.apply(CrashOnce(counter: counter, value: 42)))")
    do {
        _ = try pool.apply(StopWhenAsked(marker: marker), timeout: .milliseconds(300))
        say("grace: none")
    } catch {
        say("grace: \(error); cleaned up: \(access(marker, F_OK) == 0)")
    }
    pool.close()
    try pool.join()
}

/// Limits, the sandbox and the environment, set in every rank's local processes.
func limits() throws {
    let pool = try MPIPool(processesPerRank: 1, limits: WorkerLimits(memory: 128 << 20, sandbox: WorkerSandbox([.noNewProcesses])),
                           environment: WorkerEnvironment(variables: ["MPI_SCENARIO": "set"], workingDirectory: "/tmp"))
    for (index, result) in try pool.imap(Square(), over: 0..<4).enumerated() { if try result.get() != index * index { say("square: wrong") } }
    do {
        _ = try pool.apply(AllocateForever())
        say("memory: none")
    } catch {
        say("memory: \(error)")
    }
    do {
        _ = try pool.apply(ForkItself())
        say("sandbox: none")
    } catch {
        say("sandbox: \(error)")
    }
    say("environment: \(try pool.apply(Surroundings(variable: "MPI_SCENARIO")))")
    pool.close()
    try pool.join()
}

/// imap keeps input order; imapUnordered gives completion order.
func order() throws {
    let pool = try MPIPool(processesPerRank: 2)
    let lengths = [4, 3, 2, 1]
    say("imap " + (try pool.imap(Sleepy(), over: lengths).map { String(try $0.get()) }.joined(separator: ",")))
    say("imapUnordered " + (try pool.imapUnordered(Sleepy(), over: lengths).map { String(try $0.get()) }.joined(separator: ",")))
    pool.close()
    try pool.join()
}

/// Traps, throws, time limits, cancellation and kills fail only their unit.
func faults() throws -> MPIPool {
    let pool = try MPIPool(processesPerRank: 2)
    let trapped = try pool.imap(TrapOn13(), over: 0..<30).map { $0 }
    let failed = trapped.enumerated().filter { (try? $0.element.get()) == nil }
    say("trap: \(failed.count) failed, at \(failed.map { String($0.offset) }.joined(separator: ",")): \(failed.first.map { describe($0.element) } ?? "-")")
    let thrown = try pool.imap(ThrowOn5(), over: 0..<10).map(describe)
    say("throw: \(thrown[5]); \(thrown.filter { !$0.hasPrefix("error") }.count) ok")
    do {
        _ = try pool.apply(Nap(seconds: 20), timeout: .milliseconds(300))
        say("timeout: none")
    } catch {
        say("timeout: \(error)")
    }
    let long = try pool.applyAsync(Nap(seconds: 20))
    let started = ContinuousClock.now
    long.cancel()
    do {
        _ = try long.get()
        say("cancel: none")
    } catch {
        say("cancel: \(error) after \(started.duration(to: .now) < .seconds(10) ? "less" : "MORE") than 10 s")
    }
    let path = "/tmp/mpi-killme-\(getpid())"
    unlink(path)
    let victim = try pool.applyAsync(KillMe(path: path))
    let others = try pool.mapAsync(Sleepy(), over: [1, 1, 1, 1])
    var pid: Int32 = 0
    for _ in 0..<600 where pid == 0 {
        if let file = fopen(path, "r") {
            var value: Int32 = 0
            if fscanf_int(file, &value) { pid = value }
            fclose(file)
        }
        if pid == 0 { usleep(50_000) }
    }
    unlink(path)
    kill(pid, SIGKILL)
    say("kill: \(describe(Result { try victim.get() }.mapError { $0 as! ProcessError }))")
    say("others: \(try others.get())")
    say("after: \(try pool.apply(Nap(seconds: 0)) > 0 ? "works" : "broken")")
    return pool
}

/// A Swift task awaiting a unit is cancelled: the unit fails with `.cancelled`.
func taskCancel(_ pool: MPIPool) async throws {
    let task = Task { try await pool.applyAsync(Nap(seconds: 20)).value }
    task.cancel()
    do {
        _ = try await task.value
        say("task cancel: none")
    } catch {
        say("task cancel: \(error)")
    }
    pool.close()
    try await pool.join()
}

func fscanf_int(_ file: UnsafeMutablePointer<FILE>, _ value: inout Int32) -> Bool {
    var buffer = [CChar](repeating: 0, count: 32)
    guard fgets(&buffer, 32, file) != nil else { return false }
    guard let parsed = Int32(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)) else { return false }
    value = parsed
    return true
}

/// A rank of another build is refused (run with a patched copy on ranks 1…).
func mismatch() throws {
    do {
        _ = try MPIPool()
        say("mismatch: accepted")
    } catch let error as MPIPoolError {
        say("mismatch: \(error)")
    }
}

/// A whole worker rank is SIGKILLed: the job must end, promptly.
func killRank() throws {
    let pool = try MPIPool(processesPerRank: 1, startMethod: .fork)
    let rank = try pool.apply(ParentPID())
    say("killing rank process \(rank)")
    let long = try pool.mapAsync(Sleepy(), over: Array(repeating: 50, count: 8), chunkSize: 1)
    kill(rank, SIGKILL)
    _ = try? long.get()
    say("unreachable: the job went on")
}

/// Rank 0 itself is SIGKILLed while its pool runs: the job must end, promptly.
func killMaster() throws {
    let pool = try MPIPool(processesPerRank: 1)
    let long = try pool.mapAsync(Sleepy(), over: Array(repeating: 50, count: 8), chunkSize: 1)
    say("killing rank 0")
    kill(getpid(), SIGKILL)
    _ = try? long.get()
}

/// Two pools in a row, and a second pool refused while one runs.
func sessions() throws {
    let first = try MPIPool(processesPerRank: 1)
    do {
        _ = try MPIPool()
        say("second: accepted")
    } catch {
        say("second: \(error)")
    }
    say("first: \(try first.map(Square(), over: 0..<10))")
    first.close()
    try first.join()
    let second = try MPIPool(processesPerRank: 2)
    say("then: \(try second.map(Square(), over: 0..<10)) processes \(second.processes)")
    second.terminate()
    do {
        _ = try second.apply(Nap(seconds: 0))
        say("terminated: accepted")
    } catch {
        say("terminated: \(error)")
    }
}

/// A program started alone spawns its worker ranks.
func spawned() throws {
    let pool = try MPIPool(spawning: 2, processesPerRank: 1)
    say("spawned ranks \(pool.ranks) processes \(pool.processes)")
    let squares = try pool.map(Square(), over: 0..<1000, chunkSize: 10)
    say("spawned map: \(squares == (0..<1000).map { $0 * $0 } ? "equal" : "DIFFERENT")")
    pool.close()
    try pool.join()
}

/// Tasks per second of `x*x` over `count` items at chunk 1 and 100, and a round trip.
func speed() throws {
    let count = Int(CommandLine.arguments.dropFirst(2).first ?? "") ?? 100_000
    let pool = try MPIPool()
    _ = try pool.map(Square(), over: 0..<1000, chunkSize: 1)
    let chunks = CommandLine.arguments.dropFirst(3).first.map { [Int($0) ?? 100] } ?? [1, 100]
    for chunk in chunks {
        let start = ContinuousClock.now
        let squares = try pool.map(Square(), over: 0..<count, chunkSize: chunk)
        let seconds = Double(start.duration(to: .now).components.attoseconds) / 1e18 + Double(start.duration(to: .now).components.seconds)
        say("chunk \(chunk): \(Int(Double(squares.count) / seconds)) tasks/s")
    }
    var trips: [Duration] = []
    for _ in 0..<200 {
        let start = ContinuousClock.now
        _ = try pool.apply(Nap(seconds: 0))
        trips.append(start.duration(to: .now))
    }
    say("round trip median \(trips.sorted()[100])")
    pool.close()
    try pool.join()
}

func localSpeed() throws {
    let pool = try ProcessPool(processes: Int(CommandLine.arguments[2]) ?? 2)
    for chunk in [1, 100] {
        let start = ContinuousClock.now
        let squares = try pool.map(Square(), over: 0..<100_000, chunkSize: chunk)
        let elapsed = start.duration(to: .now)
        say("local chunk \(chunk): \(Int(Double(squares.count) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18))) tasks/s")
    }
}

/// The host a unit ran on.
struct HostName: ProcessFunction {
    func callAsFunction(_ x: Int) -> String {
        var name = [CChar](repeating: 0, count: 256)
        gethostname(&name, name.count)
        return String(decoding: name.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Across hosts: where units ran, and that results are right.
func hosts() throws {
    let pool = try MPIPool(processesPerRank: 1)
    let names = Set(try pool.map(HostName(), over: 0..<40, chunkSize: 1))
    say("hosts \(names.sorted().joined(separator: ","))")
    let squares = try pool.map(Square(), over: 0..<20_000, chunkSize: 50)
    say("hosts map: \(squares == (0..<20_000).map { $0 * $0 } ? "equal" : "DIFFERENT")")
    pool.close()
    try pool.join()
}

final class Reports: @unchecked Sendable {  // `reports` is touched with `mutex` held
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private var reports: [PoolProgress] = []
    init() { pthread_mutex_init(mutex, nil) }
    func add(_ report: PoolProgress) {
        pthread_mutex_lock(mutex)
        reports.append(report)
        pthread_mutex_unlock(mutex)
    }
    var last: PoolProgress? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return reports.last
    }
}

let scenario = CommandLine.arguments.dropFirst().first ?? ""
switch scenario {
case "results": try results()
case "order": try order()
case "faults": try await taskCancel(try faults())
case "mismatch": try mismatch()
case "limits": try limits()
case "retries": try retriesAndGrace()
case "kill-rank": try killRank()
case "kill-master": try killMaster()
case "sessions": try sessions()
case "spawned": try spawned()
case "speed": try speed()
case "hosts": try hosts()
case "local-speed": try localSpeed()
default:
    say("unknown scenario '\(scenario)'")
    exit(2)
}
say("done")
#else
print("built without the MPI trait")
#endif
