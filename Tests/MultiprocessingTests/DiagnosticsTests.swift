import Foundation
import Logging
import MetricsTestKit
import Synchronization
import Multiprocessing
import Testing

/// Reads past the end of an array at `at`: the runtime's "Index out of range" trap.
struct IndexPastEnd: ProcessFunction {
    var at: Int
    func callAsFunction(_ x: Int) -> Int {
        let values = [x]
        return x == at ? values[x + 1] : x
    }
}

/// Stops with `fatalError` and a message of its own.
struct FailFatally: ProcessJob {
    var code: Int
    func run() -> Int { fatalError("the ledger does not balance (\(code))") }
}

/// Prints `lines` numbered lines to standard output.
struct PrintLines: ProcessFunction {
    var lines: Int
    func callAsFunction(_ worker: Int) -> Int {
        for line in 0..<lines { print("lines of \(worker): \(line) of \(lines), and the rest of the line") }
        return worker
    }
}

/// A `Codable` error: it comes back from a worker as itself.
struct LedgerError: Error, Codable, Equatable {
    var account: String
    var shortfall: Int
}

/// Throws a ``LedgerError`` for `account`.
struct Overdraw: ProcessJob {
    var account: String
    func run() throws -> Int { throw LedgerError(account: account, shortfall: account.count) }
}

/// Throws a ``LedgerError`` for input 3.
struct OverdrawAtThree: ProcessFunction {
    func callAsFunction(_ x: Int) throws -> Int {
        if x == 3 { throw LedgerError(account: "item", shortfall: x) }
        return x
    }
}

@Suite("Diagnostics: crash reports, errors that come back as themselves, readable type names, forwarded output")
struct DiagnosticsTests {
    @Test("an error whose type is Codable is caught by its type across processes, by every start method", arguments: jobStartMethods)
    func codableErrors(startMethod: StartMethod) throws {
        let expected = LedgerError(account: "savings", shortfall: 7)
        try withProcessPool(processes: 2, startMethod: startMethod) { (pool: ProcessPool) throws -> Void in
            do {
                _ = try pool.apply(Overdraw(account: "savings"))
                Issue.record("no error")
            } catch let error as LedgerError {
                #expect(error == expected)
            }
            #expect(throws: LedgerError(account: "item", shortfall: 3)) { try pool.map(OverdrawAtThree(), over: 0..<8, chunkSize: 2) }
            #expect(throws: LedgerError(account: "closure", shortfall: 1)) {
                try pool.apply { () throws -> Int in throw LedgerError(account: "closure", shortfall: 1) }
            }
            // Where errors are typed, the value rides in the ProcessError.
            for result in try pool.imap(OverdrawAtThree(), over: 2..<5) {
                if case let .failure(.jobFailed(failure)) = result {
                    #expect(failure.error as? LedgerError == LedgerError(account: "item", shortfall: 3))
                    #expect(failure.errorType == "MultiprocessingTests.LedgerError")
                } else {
                    #expect((try? result.get()) != nil)
                }
            }
        }
        #expect(throws: expected) { try ChildProcess.execute(Overdraw(account: "savings"), startMethod: startMethod) }
    }

    @Test("the async value of a task carries the Codable error in jobFailed")
    func codableErrorAsync() async throws {
        try await withProcessPool(processes: 1) { (pool: ProcessPool) async throws -> Void in
            do {
                _ = try await pool.applyAsync(Overdraw(account: "cheque")).value
                Issue.record("no error")
            } catch ProcessError.jobFailed(let failure) {
                #expect(failure.error as? LedgerError == LedgerError(account: "cheque", shortfall: 6))
                #expect(failure.description.contains("cheque"))
            }
        }
    }

    @Test("a trap in a map says which item, the runtime's message and that it was a Swift trap, by every start method", arguments: jobStartMethods)
    func trapReport(startMethod: StartMethod) throws {
        try withProcessPool(processes: 2, startMethod: startMethod) { (pool: ProcessPool) throws in
            let failure = Result { try pool.map(IndexPastEnd(at: 13), over: 0..<40, chunkSize: 1) }
            guard case let .failure(error as ProcessError) = failure, case let .crashed(signal, report) = error else {
                Issue.record("not a crash: \(failure)")
                return
            }
            #expect([SIGILL, SIGTRAP].contains(signal))
            #expect(report.items == 13..<14)
            #expect(report.work == "MultiprocessingTests.IndexPastEnd")
            let message = try #require(report.message)
            #expect(message.hasSuffix("Fatal error: Index out of range"), "\(message)")
            // The stack the runtime printed after it, its own reporting frames
            // first. It prints one only with its backtracer off (the
            // sanitizer run sets SWIFT_BACKTRACE=enable=no); the relay's own
            // test reads one whatever the environment.
            if ProcessInfo.processInfo.environment["SWIFT_BACKTRACE"]?.contains("enable=no") == true {
                let backtrace = try #require(report.backtrace)
                #expect(backtrace.count > 3 && backtrace.count <= 64)
                #expect(backtrace.first?.contains("libswiftCore.so") == true, "\(backtrace)")
            }
            #expect(error.description.contains("a Swift runtime trap"))
            #expect(error.description.contains("running item 13 of MultiprocessingTests.IndexPastEnd: "))
            // The pool goes on.
            #expect(try pool.map(IndexPastEnd(at: -1), over: 0..<4) == [0, 1, 2, 3])
        }
    }

    @Test("a chunk's crash names the chunk's items; fatalError's own message comes back for a single task")
    func chunkAndFatalError() throws {
        try withProcessPool(processes: 2) { (pool: ProcessPool) throws -> Void in
            #expect {
                try pool.map(IndexPastEnd(at: 25), over: 0..<40, chunkSize: 10)
            } throws: { error in
                guard case let .crashed(_, report) = error as? ProcessError else { return false }
                return report.items == 20..<30 && report.message?.hasSuffix("Fatal error: Index out of range") == true
            }
            #expect {
                try pool.apply(FailFatally(code: 7))
            } throws: { error in
                guard case let .crashed(_, report) = error as? ProcessError else { return false }
                return report.items == nil && report.work == "MultiprocessingTests.FailFatally"
                    && report.message?.hasSuffix("Fatal error: the ledger does not balance (7)") == true
                    && report.message?.contains("DiagnosticsTests.swift:") == true
            }
        }
    }

    @Test("a closure's crash names its item; with standard error inherited no message is read")
    func closureAndInherited() throws {
        try withProcessPool(processes: 2, output: WorkerOutput(standardError: .inherited)) { (pool: ProcessPool) throws -> Void in
            #expect {
                try pool.map(Array(0..<10), chunkSize: 1) { (x: Int) -> Int in
                    if x == 6 { _ = [x][x] }
                    return x
                }
            } throws: { error in
                guard case let .crashed(_, report) = error as? ProcessError else { return false }
                return report.items == 6..<7 && report.work == nil && report.message == nil
            }
        }
    }

    @Test("a kill carries no runtime message, even after a task printed one")
    func killHasNoMessage() throws {
        try withProcessPool(processes: 1) { (pool: ProcessPool) throws -> Void in
            #expect(try pool.apply { () -> Int in
                FileHandle.standardError.write(Data("Fatal error: only printed\n".utf8))
                return 1
            } == 1)
            #expect {
                try pool.apply { () -> Int in
                    kill(getpid(), SIGKILL)
                    return 0
                }
            } throws: { error in
                guard case .crashed(SIGKILL, let report) = error as? ProcessError else { return false }
                return report.message == nil && (error as! ProcessError).description.contains("killed")
            }
        }
    }

    @Test("an unknown job type is named demangled, with what to check")
    func unknownTypeName() {
        let error = ProcessError.unknownJobType("4main13RenamedJobXYZV")
        #expect(error.description.contains("main.RenamedJobXYZ ('4main13RenamedJobXYZV')"))
        #expect(error.description.contains("not linked into the child's executable, or the child runs another build"))
        // A name that is not mangled is shown as it is.
        #expect(ProcessError.unknownJobType("a closure at offset 12").description.contains("'a closure at offset 12'"))
    }

    @Test("4 workers printing 10,000 lines each: every line arrives whole, prefixed with its worker's name")
    func forwardedLines() async {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            try DiagnosticsScenarios.printLines()
        }
        guard let result else { return }
        let lines = String(decoding: result.standardOutputContent, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        var counts: [Int: Int] = [:]
        var bad: [Substring] = []
        for line in lines where !line.isEmpty {
            // "[PoolWorker-N] lines of W: L of 10000, and the rest of the line"
            guard line.hasPrefix("[PoolWorker-"), line.hasSuffix(" of 10000, and the rest of the line"),
                  let open = line.range(of: "] lines of "), let colon = line.range(of: ": ", range: open.upperBound..<line.endIndex),
                  let worker = Int(line[open.upperBound..<colon.lowerBound])
            else {
                bad.append(line)
                continue
            }
            counts[worker, default: 0] += 1
        }
        #expect(bad.isEmpty, "\(bad.prefix(3))")
        #expect(counts == [0: 10_000, 1: 10_000, 2: 10_000, 3: 10_000])
    }
}

enum DiagnosticsScenarios {
    /// The body of the forwarding exit test: 4 workers print 10,000 lines each.
    static func printLines() throws {
        try withProcessPool(processes: 4, output: WorkerOutput(standardOutput: .prefixed)) { (pool: ProcessPool) throws -> Void in
            _ = try pool.map(PrintLines(lines: 10_000), over: 0..<4, chunkSize: 1)
        }
    }
}

/// Keeps every record logged through it, for a test to read.
struct RecordingLogHandler: LogHandler {
    struct Record: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: Logger.Metadata
    }

    final class Store: Sendable {
        let records = Mutex<[Record]>([])
        var all: [Record] { records.withLock { $0 } }
    }

    let store: Store
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let record = Record(level: event.level, message: "\(event.message)", metadata: metadata.merging(event.metadata ?? [:]) { $1 })
        store.records.withLock { $0.append(record) }
    }
}

@Suite("Logging: a pool's workers' lives through swift-log")
struct LoggingTests {
    @Test("a manager logs its start, each client process served, gone and refused, and its shutdown; a client its failed connection")
    func managerLifecycle() throws {
        let store = RecordingLogHandler.Store()
        let logger = Logger(label: "test.manager") { _ in RecordingLogHandler(store: store) }
        let key = Array("the key".utf8)
        let manager = try Manager(address: .tcp(host: "127.0.0.1", port: 0), authenticationKey: key, logger: logger)
        let shared = try manager.dictionary([String: String]())
        let other = try ChildProcess(job: RemoteUser(address: manager.address, key: key, shared: shared), startMethod: .forkserver)
        try other.start()
        #expect(try other.join() == 0)
        let otherPID = try #require(other.pid)

        let clientStore = RecordingLogHandler.Store()
        let clientLogger = Logger(label: "test.client") { _ in RecordingLogHandler(store: clientStore) }
        #expect(throws: ManagerError.authenticationFailed) {
            try Manager.connect(to: manager.address, authenticationKey: Array("wrong".utf8), logger: clientLogger)
        }
        #expect(clientStore.all.map(\.message) == ["could not connect to a manager"])
        #expect(clientStore.all.first?.level == .warning)

        // The server's reports arrive on a thread of their own.
        func messages(_ text: String) -> [RecordingLogHandler.Record] { store.all.filter { $0.message == text } }
        #expect(eventually(within: .seconds(30)) {
            !messages("manager refused a connection").isEmpty
                && messages("manager client left").contains { $0.metadata["manager.client"]?.description.contains("\(otherPID)") == true }
        }, "\(store.all.map { "\($0.message) \($0.metadata)" })")
        manager.shutdown()

        let started = messages("manager started")
        #expect(started.count == 1 && started.first?.level == .debug)
        #expect(started.first?.metadata["manager.pid"] == "\(manager.serverPID ?? -1)")
        #expect(started.first?.metadata["manager.address"] != nil)
        // This process and the other one.
        let connected = messages("manager client connected")
        #expect(connected.count >= 2 && connected.allSatisfy { $0.level == .debug })
        #expect(connected.contains { $0.metadata["manager.client"]?.description.contains("\(otherPID)") == true })
        #expect(messages("manager refused a connection").allSatisfy { $0.level == .warning && $0.metadata["manager.reason"] != nil })
        #expect(messages("manager shut down").count == 1)
    }

    @Test("a child process logs its start, and how it ended: at debug when it exited 0, at info otherwise")
    func childLifecycle() throws {
        let store = RecordingLogHandler.Store()
        let logger = Logger(label: "test.child") { _ in RecordingLogHandler(store: store) }
        let fine = ChildProcess {}
        let failing = ChildProcess { exit(3) }
        let crashing = try ChildProcess(job: FailFatally(code: 5), startMethod: .forkserver)
        for child in [fine, failing, crashing] {
            child.logger = logger
            try child.start()
            _ = try child.join()
        }
        let records = store.all
        let started = records.filter { $0.message == "child process started" }
        #expect(started.count == 3 && started.allSatisfy { $0.level == .debug && $0.metadata["process.pid"] != nil })
        #expect(Set(started.compactMap { $0.metadata["process.start_method"]?.description }) == ["fork", "forkserver"])
        let exited = records.filter { $0.message == "child process exited" }
        #expect(exited.count == 1 && exited.first?.level == .debug && exited.first?.metadata["process.status"] == "0")
        let failed = records.filter { $0.message == "child process exited with a failure" }
        #expect(failed.count == 1 && failed.first?.level == .info && failed.first?.metadata["process.status"] == "3")
        let killed = records.filter { $0.message == "child process killed by a signal" }
        #expect(killed.count == 1 && killed.first?.level == .info)
        #expect(killed.first?.metadata["error"]?.description.contains("MultiprocessingTests.FailFatally") == true, "\(killed)")
    }

    @Test("started, crashed, killed past their time, recycled and left: each logged once, with its worker's name and pid")
    func lifecycle() throws {
        let store = RecordingLogHandler.Store()
        let logger = Logger(label: "test.pool") { _ in RecordingLogHandler(store: store) }
        try withProcessPool(processes: 1, maxTasksPerChild: 3, logger: logger) { (pool: ProcessPool) throws -> Void in
            #expect(try pool.apply(Square(value: 2)) == 4)
            #expect(throws: ProcessError.self) { try pool.apply(FailFatally(code: 1)) }
            #expect(throws: ProcessError.timedOut(seconds: 0.2)) { try pool.apply(PauseForever(), timeout: .milliseconds(200)) }
            // Three tasks in one worker: it is recycled.
            #expect(try pool.map(SquareFunction(), over: 0..<3, chunkSize: 1) == [0, 1, 4])
        }
        let records = store.all
        let started = records.filter { $0.message == "pool worker started" }
        let crashed = records.filter { $0.message == "pool worker crashed" }
        let timedOut = records.filter { $0.message == "pool worker killed: its task ran past its time" }
        let left = records.filter { $0.message == "pool worker left" }
        // One for the first two tasks (the second crashes it), one for the timeout, one for the map.
        #expect(started.count == 3, "\(records.map(\.message))")
        #expect(started.allSatisfy { $0.level == .debug && $0.metadata["pool.worker"] != nil && $0.metadata["pool.worker.pid"] != nil })
        #expect(crashed.count == 1)
        #expect(crashed.first?.level == .info)
        #expect(crashed.first?.metadata["error"].map { "\($0)".contains("the ledger does not balance (1)") } == true)
        #expect(timedOut.count == 1)
        #expect(left.contains { $0.metadata["pool.worker.reason"] == "recycled: maxTasksPerChild" })
        // Every worker that started ended, and was logged ending.
        #expect(started.count == crashed.count + timedOut.count + left.count + records.filter { $0.message == "pool worker ended" }.count)
    }
}

@Suite("Metrics: a pool's tasks and workers through swift-metrics")
struct MetricsTests {
    @Test("submitted, completed and failed tasks, unit durations, workers, queue depth and restarts add up to what ran")
    func counts() throws {
        let metrics = TestMetrics()
        let dimensions = [("pool", "sums")]
        try withProcessPool(processes: 2, metrics: PoolMetrics(label: "sums", factory: metrics)) { (pool: ProcessPool) throws -> Void in
            #expect(try pool.map(SquareFunction(), over: 0..<100, chunkSize: 10).count == 100)
            // 4 of 10 items throw (the odd ones): a chunk of 10 with mixed outcomes.
            #expect(throws: (any Error).self) { try pool.map(FailOnOdd(), over: 0..<8, chunkSize: 8) }
            #expect(throws: ProcessError.self) { try pool.apply(FailFatally(code: 2)) }
            #expect(try pool.apply(Square(value: 5)) == 25)
        }
        #expect(metrics.counterTotal(label: "multiprocessing_pool_tasks_submitted", dimensions: dimensions) == 110)
        #expect(metrics.counterTotal(label: "multiprocessing_pool_tasks_completed", dimensions: dimensions) == 105)
        #expect(metrics.counterTotal(label: "multiprocessing_pool_tasks_failed", dimensions: dimensions) == 5)
        #expect(metrics.counterTotal(label: "multiprocessing_pool_worker_restarts", dimensions: dimensions) == 1)
        let durations = try metrics.expectTimer("multiprocessing_pool_unit_duration", dimensions).values
        // 10 chunks, one chunk of 8, one task that answered (the crash has no answer).
        #expect(durations.count == 12)
        #expect(durations.allSatisfy { $0 > 0 })
        let workers = try metrics.expectGauge("multiprocessing_pool_workers", dimensions).values
        #expect(workers.max() == 2 && workers.last == 0)
        let depth = try metrics.expectGauge("multiprocessing_pool_queue_depth", dimensions).values
        #expect(depth.contains { $0 > 0 } && depth.last == 0)
    }
}

/// Takes `milliseconds` of wall time: the slow unit of the insights test.
struct Nap: ProcessJob {
    var milliseconds: UInt32
    func run() -> Int {
        usleep(milliseconds * 1000)
        return Int(milliseconds)
    }
}

@Suite("Insights and events: what a pool's workers did, while it runs and at its end")
struct InsightsTests {
    @Test("each worker's start-up, busy time and tasks, and the slowest units, add up to what ran")
    func insights() throws {
        let pool = try ProcessPool(processes: 2, insights: true)
        #expect(try pool.map(SquareFunction(), over: 0..<40, chunkSize: 4).count == 40)
        #expect(try pool.apply(Nap(milliseconds: 300)) == 300)
        let running = try #require(pool.insights)
        #expect(running.tasks == 41)
        #expect(running.workers.allSatisfy { $0.isAlive && $0.startUp != nil })
        pool.close()
        try pool.join()
        let ended = try #require(pool.insights)
        #expect(ended.workers.count == 2 && ended.workers.allSatisfy { !$0.isAlive })
        #expect(ended.workers.reduce(0) { $0 + $1.units } == 11)
        let slowest = try #require(ended.slowest.first)
        #expect(slowest.work == "MultiprocessingTests.Nap" && slowest.items == nil && slowest.duration >= .milliseconds(300))
        #expect(ended.slowest.count == PoolInsights.slowestKept)
        #expect(zip(ended.slowest, ended.slowest.dropFirst()).allSatisfy { $0.duration >= $1.duration })
        #expect(ended.slowest.dropFirst().allSatisfy { $0.work == "MultiprocessingTests.SquareFunction" && $0.items?.count == 4 })
        let napper = try #require(ended.workers.first { $0.name == slowest.worker })
        #expect(napper.busy >= .milliseconds(300))
        // A pool without insights keeps none.
        try withProcessPool(processes: 1) { (pool: ProcessPool) throws -> Void in
            _ = try pool.apply(Square(value: 1))
            #expect(pool.insights == nil)
        }
    }

    @Test("events: every worker started, got ready, answered its units and ended — a crash with its error; the stream ends with the pool")
    func events() async throws {
        let pool = try ProcessPool(processes: 2)
        let events = pool.events()
        let collected = Task { var all: [PoolEvent] = []; for await event in events { all.append(event) }; return all }
        _ = try await pool.mapAsync(SquareFunction(), over: 0..<20, chunkSize: 5).value
        await #expect(throws: ProcessError.self) { try await pool.applyAsync(FailFatally(code: 3)).value }
        pool.close()
        try await pool.join()
        let all = await collected.value
        var started: [String] = [], ready: [String] = [], ended: [String: ProcessError?] = [:], units = 0
        for event in all {
            switch event {
            case let .workerStarted(worker, pid):
                #expect(pid > 0)
                started.append(worker)
            case let .workerReady(worker, startUp):
                #expect(started.contains(worker) && startUp > .zero)
                ready.append(worker)
            case let .unitEnded(worker, items, _, failed):
                #expect(ready.contains(worker) && items == 5 && !failed)
                units += 1
            case let .workerEnded(worker, _, error):
                #expect(started.contains(worker))
                ended[worker] = error
            }
        }
        #expect(units == 4)
        #expect(Set(started) == Set(ended.keys))
        #expect(ended.values.filter { $0 != nil }.count == 1)
        #expect(ended.values.contains { if case .crashed? = $0 { true } else { false } })
        // Subscribing to an ended pool: the stream ends at once.
        for await _ in pool.events() { Issue.record("an event from an ended pool") }
    }
}
