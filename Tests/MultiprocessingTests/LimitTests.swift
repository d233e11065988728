import Foundation
import Testing

@testable import Multiprocessing

// Jobs that run into a worker's limits.

/// Allocates and touches memory, 8 MiB at a time, without end.
struct AllocateForever: ProcessJob {
    func run() throws -> Int {
        var kept: [[UInt8]] = []
        while kept.count >= 0 { kept.append([UInt8](repeating: UInt8(kept.count & 0xff), count: 8 << 20)) }
        return kept.count
    }
}

/// Spins on the CPU without end.
struct SpinForever: ProcessJob {
    func run() throws -> Int {
        var spins = 0
        while spins >= 0 { spins &+= 1 }
        return spins
    }
}

/// Spins for `milliseconds` of CPU time, then answers.
struct Spin: ProcessJob {
    var milliseconds: Int
    func run() throws -> Int {
        let start = clock()
        while (clock() - start) * 1000 / CLOCKS_PER_SEC < milliseconds {}
        return milliseconds
    }
}

/// Opens /dev/null until it cannot; returns how many it opened.
struct OpenUntilRefused: ProcessJob {
    func run() throws -> Int {
        var opened: [Int32] = []
        while opened.count < 100_000 {
            let fd = open("/dev/null", O_RDONLY)
            if fd < 0 { break }
            opened.append(fd)
        }
        opened.forEach { close($0) }
        return opened.count
    }
}

/// The worker's soft core-dump limit (`RLIMIT_CORE`).
struct CoreLimit: ProcessJob {
    func run() throws -> UInt64 {
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &limit)
        return UInt64(limit.rlim_cur)
    }
}

/// An initializer that traps: every worker dies before it is ready.
struct TrappingInitializer: ProcessJob {
    func run() throws -> Bool { fatalError("cannot set up") }
}

/// What a worker keeps for ever: the leak recycling by memory is for.
nonisolated(unsafe) var leakedByWorker: [[UInt8]] = []

/// Leaks 32 MiB per call; answers the square and the worker's pid.
struct LeakingSquare: ProcessFunction {
    func callAsFunction(_ x: Int) -> [Int] {
        leakedByWorker.append([UInt8](repeating: 1, count: 32 << 20))
        return [x * x, Int(getpid())]
    }
}

/// What a worker sees around it: a variable, its directory, its CPUs and its nice value.
struct Surroundings: ProcessFunction {
    func callAsFunction(_ variable: String) -> [String] {
        let value = getenv(variable).map { String(cString: $0) } ?? "(unset)"
        let directory = FileManager.default.currentDirectoryPath
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let cpus = status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }.map { String($0.split(separator: "\t").last ?? "") } ?? ""
        let stat = (try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8)) ?? ""
        // Field 19 is the nice value; the fields after the command's closing parenthesis start at 3.
        let afterName = stat[stat.index(after: stat.lastIndex(of: ")") ?? stat.startIndex)...].split(separator: " ")
        let nice = afterName.count > 16 ? String(afterName[16]) : "?"
        return [value, directory, cpus, nice]
    }
}

/// The memory control groups this process's pools made and have not removed.
func leftMemoryGroups() -> [String] {
    guard let base = MemoryGroup.base else { return [] }
    let prefix = "swift-multiprocessing-\(getpid())-"
    return ((try? FileManager.default.contentsOfDirectory(atPath: base.path)) ?? []).filter { $0.hasPrefix(prefix) && !$0.hasSuffix("-probe") }
}

/// One test at a time: a test counts the memory control groups of this process.
/// Touches 8 MiB, frees it, and says by how much the worker's resident
/// memory fell when it was freed.
struct FreedMemoryProbe: ProcessJob {
    func run() throws -> Int {
        func resident() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
        }
        var before = 0
        do {
            let block = [UInt8](repeating: 1, count: 8 << 20)
            before = resident()
            guard block[block.count - 1] == 1 else { return -1 }
        }
        return before - resident()
    }
}

@Suite("Worker limits and the restart budget", .serialized)
struct LimitTests {
    static let mib = 1 << 20

    @Test("a worker that allocates without bound fails with memoryLimitExceeded, by every start method; the pool serves the next task", arguments: jobStartMethods)
    func memoryLimit(method: StartMethod) throws {
        if underSanitizer { return }  // the sanitizers reserve terabytes of address space
        try withProcessPool(processes: 1, startMethod: method, limits: WorkerLimits(memory: 96 * Self.mib)) { (pool: ProcessPool) throws in
            #expect(throws: ProcessError.memoryLimitExceeded(bytes: 96 * Self.mib)) { try pool.apply(AllocateForever()) }
            #expect(try pool.apply(Square(value: 12)) == 144)
        }
        #expect(leftMemoryGroups().isEmpty)
    }

    @Test("both ways of enforcing memory end in memoryLimitExceeded, for named work and closures", arguments: [WorkerLimits.MemoryEnforcement.dataSegment, .controlGroup])
    func memoryEnforcement(enforcement: WorkerLimits.MemoryEnforcement) throws {
        if underSanitizer { return }
        if enforcement == .controlGroup && WorkerLimits.MemoryEnforcement.available != .controlGroup {
            // Where no control group can be made, asking for one is refused.
            #expect(throws: PoolError.self) { try ProcessPool(limits: WorkerLimits(memory: 96 * Self.mib, memoryEnforcement: .controlGroup)) }
            return
        }
        let limits = WorkerLimits(memory: 160 * Self.mib, memoryEnforcement: enforcement)
        try withProcessPool(processes: 2, limits: limits) { (pool: ProcessPool) throws in
            #expect(throws: ProcessError.memoryLimitExceeded(bytes: 160 * Self.mib)) { try pool.apply(AllocateForever()) }
            // A closure call's forked workers have the same limits.
            let results = try pool.imap(0..<4) { x -> Int in
                if x == 2 { _ = try AllocateForever().run() }
                return x * 10
            }
            let collected = Array(results)
            #expect(try collected[0].get() == 0 && collected[1].get() == 10 && collected[3].get() == 30)
            #expect(throws: ProcessError.memoryLimitExceeded(bytes: 160 * Self.mib)) { try collected[2].get() }
            #expect(try pool.map(SquareFunction(), over: 0..<100) == (0..<100).map { $0 * $0 })
        }
        #expect(leftMemoryGroups().isEmpty)
    }

    @Test("a task past its CPU time fails with cpuTimeLimitExceeded; a chunk gets the limit times its items")
    func cpuTimeLimit() throws {
        try withProcessPool(processes: 1, limits: WorkerLimits(cpuSeconds: 1)) { (pool: ProcessPool) throws in
            #expect(throws: ProcessError.cpuTimeLimitExceeded(seconds: 1)) { try pool.apply(SpinForever()) }
            // The limit is per task: tasks that each use less never reach it,
            // however much the worker has used before (1.2 s in all here).
            let outputs = try pool.map((0..<4).map { _ in Spin(milliseconds: 300) }, chunkSize: 1)
            #expect(outputs == Array(repeating: 300, count: 4))
            let chunked = try pool.mapAsync((0..<2).map { _ in SpinForever() }, chunkSize: 2)
            #expect(throws: ProcessError.cpuTimeLimitExceeded(seconds: 2)) { try chunked.get() }
        }
    }

    @Test("open files are limited in the worker; core dumps are off unless asked for")
    func filesAndCores() throws {
        try withProcessPool(processes: 1, limits: WorkerLimits(openFiles: 40)) { (pool: ProcessPool) throws in
            let opened = try pool.apply(OpenUntilRefused())
            #expect(opened > 0 && opened < 40)
            #expect(try pool.apply(CoreLimit()) == 0)
        }
        var inherited = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &inherited)
        try withProcessPool(processes: 1, limits: WorkerLimits(coreDumps: true)) { (pool: ProcessPool) throws in
            #expect(try pool.apply(CoreLimit()) == UInt64(inherited.rlim_cur))
            #expect(try pool.apply(OpenUntilRefused()) > 40)
        }
    }

    @Test("a worker keeps memory it freed for its next units, unless memory is limited or recycled (where it would count)",
          .disabled(if: underSanitizer, "the sanitizer's allocator keeps what is freed in its quarantine, and ignores mallopt"))
    func freedMemoryKept() throws {
        try withProcessPool(processes: 1) { (pool: ProcessPool) throws in
            #expect(try pool.apply(FreedMemoryProbe()) < 2 << 20)
        }
        try withProcessPool(processes: 1, limits: WorkerLimits(recycleAbove: 1 << 30)) { (pool: ProcessPool) throws in
            #expect(try pool.apply(FreedMemoryProbe()) > 6 << 20)
        }
    }

    @Test("recycling by memory replaces a leaking worker before its next units; the results stay right")
    func recyclingByMemory() throws {
        try withProcessPool(processes: 1, limits: WorkerLimits(recycleAbove: 96 << 20)) { (pool: ProcessPool) throws in
            let outputs = try pool.map(LeakingSquare(), over: 0..<8, chunkSize: 1)
            #expect(outputs.map { $0[0] } == (0..<8).map { $0 * $0 })
            // Each worker leaks 32 MiB a unit: none runs more than a few units.
            let pids = outputs.map { $0[1] }
            #expect(Set(pids).count >= 2)
            var longestRun = 0, run = 0
            for (index, pid) in pids.enumerated() {
                run = index > 0 && pids[index - 1] == pid ? run + 1 : 1
                longestRun = max(longestRun, run)
            }
            #expect(longestRun <= 4)
        }
    }

    @Test("environment variables, working directory, CPU affinity and niceness are seen by the task, by every start method", arguments: jobStartMethods)
    func environment(method: StartMethod) throws {
        let environment = WorkerEnvironment(variables: ["MULTIPROCESSING_TEST_VARIABLE": "set for workers"], workingDirectory: "/tmp",
                                            cpuAffinity: [usableCPUCount() - 1], niceness: 7)
        try withProcessPool(processes: 2, startMethod: method, environment: environment) { (pool: ProcessPool) throws in
            let seen = try pool.map(Surroundings(), over: ["MULTIPROCESSING_TEST_VARIABLE", "MULTIPROCESSING_TEST_VARIABLE"])
            for worker in seen {
                #expect(worker == ["set for workers", "/tmp", "\(usableCPUCount() - 1)", "7"])
            }
            // Closures forked for a call get them too.
            let fromClosure = try pool.apply { Surroundings()("MULTIPROCESSING_TEST_VARIABLE") }
            #expect(fromClosure == ["set for workers", "/tmp", "\(usableCPUCount() - 1)", "7"])
        }
        #expect(getenv("MULTIPROCESSING_TEST_VARIABLE") == nil)
    }

    @Test("a working directory that does not exist fails the work with the system call that failed")
    func badEnvironment() throws {
        try withProcessPool(processes: 1, environment: WorkerEnvironment(workingDirectory: "/nonexistent/directory")) { (pool: ProcessPool) throws -> Void in
            #expect(throws: ProcessError.systemCall("chdir /nonexistent/directory", errno: ENOENT)) { try pool.apply(Square(value: 3)) }
        }
        #expect(throws: PoolError.self) { try ProcessPool(environment: WorkerEnvironment(variables: ["A=B": "x"])) }
        #expect(throws: PoolError.self) { try ProcessPool(environment: WorkerEnvironment(cpuAffinity: [])) }
    }

    @Test("limits out of range are refused with invalidArgument")
    func badLimits() {
        for limits in [WorkerLimits(memory: 1000), WorkerLimits(cpuSeconds: 0), WorkerLimits(openFiles: 2), WorkerLimits(recycleAbove: 10)] {
            #expect(throws: PoolError.self) { try ProcessPool(limits: limits) }
        }
        #expect(throws: PoolError.self) { try ProcessPool(restartBudget: RestartBudget(deaths: 0, within: .seconds(1))) }
        #expect(throws: PoolError.self) { try ProcessPool(restartBudget: RestartBudget(deaths: 3, within: .zero)) }
    }

    @Test("an initializer that traps ends in restartBudgetExceeded after the budget, for every call, by every start method", arguments: jobStartMethods)
    func crashLoop(method: StartMethod) throws {
        let pool = try ProcessPool(processes: 2, startMethod: method, initializer: .job(TrappingInitializer()),
                                   restartBudget: RestartBudget(deaths: 4, within: .seconds(600)))
        let result = try pool.mapAsync(SquareFunction(), over: 0..<20)
        #expect {
            try result.get()
        } throws: { error in
            guard case let .restartBudgetExceeded(deaths, _, last)? = error as? ProcessError else { return false }
            return deaths == 4 && [SIGILL, SIGTRAP].contains(last.crashSignal ?? 0)
        }
        // The pool starts no more workers: later work fails at once, with the same error.
        #expect(throws: ProcessError.self) { try pool.apply(Square(value: 2)) }
        #expect(eventually(within: .seconds(5)) { pool.workerProcessIDs.isEmpty })
        pool.close()
        try pool.join()
    }

    @Test("a closure call whose forked workers die before they are ready ends in restartBudgetExceeded")
    func closureCrashLoop() throws {
        let pool = try ProcessPool(processes: 2, initializer: .closure { abort() }, restartBudget: RestartBudget(deaths: 3, within: .seconds(600)))
        #expect {
            try pool.map(0..<10) { $0 + 1 }
        } throws: { error in
            guard case let .restartBudgetExceeded(deaths, _, last)? = error as? ProcessError else { return false }
            return deaths == 3 && last.crashSignal == SIGABRT
        }
        pool.terminate()
    }

    @Test("workers killed before they are ready lose no task, and one that gets ready resets the count")
    func deathsBeforeReadyLoseNothing() throws {
        // Every other worker start traps (the file counts starts): never
        // twice in a row, so a budget of 2 in a row is never spent.
        let counter = FileManager.default.temporaryDirectory.appendingPathComponent("starts-\(getpid())-\(UInt64.random(in: 0...UInt64.max))")
        defer { try? FileManager.default.removeItem(at: counter) }
        let path = counter.path
        let initializer = PoolInitializer.closure {
            let fd = open(path, O_RDWR | O_CREAT | O_APPEND, 0o600)
            _ = write(fd, "x", 1)
            var info = stat()
            fstat(fd, &info)
            close(fd)
            if info.st_size % 2 == 1 { abort() }
        }
        let pool = try ProcessPool(processes: 1, startMethod: .fork, initializer: initializer, maxTasksPerChild: 1,
                                   restartBudget: RestartBudget(deaths: 2, within: .seconds(600)))
        let outputs = try pool.map(SquareFunction(), over: 0..<8, chunkSize: 1)
        #expect(outputs == (0..<8).map { $0 * $0 })
        pool.close()
        try pool.join()
    }

    @Test("pools ended by memory and CPU limits, the sandbox and crash loops leave descriptors, children and control groups where they were")
    func nothingLeft() async {
        await #expect(processExitsWith: .success) {
            exit(LimitScenarios.cycles())
        }
    }
}

/// The body of the exit test: a fresh copy of the test runner, so that the counts are exact.
enum LimitScenarios {
    static func cycles() -> Int32 {
        do {
            _ = try ChildProcess.execute(Square(value: 1), startMethod: .forkserver)
            let descriptors = openDescriptorCount()
            let children = childPIDs()
            for round in 0..<6 {
                let method = jobStartMethods[round % 3]
                // Memory and CPU in pools of their own: filling 128 MiB can
                // take a second of CPU on a slow machine (reclaim under a cgroup).
                // Under a sanitizer, RLIMIT_DATA cannot be used (its shadow
                // memory is reserved address space): control groups only.
                let enforcement: WorkerLimits.MemoryEnforcement = underSanitizer ? .controlGroup : round % 2 == 0 ? .automatic : .dataSegment
                let memory = WorkerLimits(memory: 128 << 20, memoryEnforcement: enforcement)
                if !underSanitizer || WorkerLimits.MemoryEnforcement.available == .controlGroup {
                    try withProcessPool(processes: 2, startMethod: method, limits: memory) { (pool: ProcessPool) throws in
                        let result = Result(catching: { () throws(ProcessError) in
                            do { return try pool.apply(AllocateForever()) } catch let error as ProcessError { throw error } catch { throw .cancelled }
                        })
                        guard case .failure(.memoryLimitExceeded) = result else {
                            print("round \(round), \(method): allocating forever under \(memory) gave \(result)")
                            throw ProcessError.exited(status: 2)
                        }
                    }
                }
                try withProcessPool(processes: 1, startMethod: method, limits: WorkerLimits(sandbox: WorkerSandbox([.noNewProcesses, .noNetwork]))) { (pool: ProcessPool) throws in
                    let result = Result(catching: { () throws(ProcessError) in
                        do { return try round % 2 == 0 ? pool.apply(ForkItself()) : pool.apply(OpenSocket(family: AF_INET6)) } catch let error as ProcessError { throw error } catch { throw .cancelled }
                    })
                    guard case .failure(.sandboxViolation) = result else {
                        print("round \(round), \(method): breaking the sandbox gave \(result)")
                        throw ProcessError.exited(status: 8)
                    }
                }
                if round < 2 {
                    try withProcessPool(processes: 1, startMethod: method, limits: WorkerLimits(cpuSeconds: 1)) { (pool: ProcessPool) throws in
                        let result = Result(catching: { () throws(ProcessError) in
                            do { return try pool.apply(SpinForever()) } catch let error as ProcessError { throw error } catch { throw .cancelled }
                        })
                        guard case .failure(.cpuTimeLimitExceeded) = result else {
                            print("round \(round), \(method): spinning under 1 CPU second gave \(result)")
                            throw ProcessError.exited(status: 3)
                        }
                    }
                }
                let looping = try ProcessPool(processes: 2, startMethod: method, initializer: .job(TrappingInitializer()),
                                              restartBudget: RestartBudget(deaths: 2, within: .seconds(600)))
                let looped = Result(catching: { () throws(ProcessError) in
                    do { return try looping.apply(Square(value: 3)) } catch let error as ProcessError { throw error } catch { throw .cancelled }
                })
                guard case .failure(.restartBudgetExceeded) = looped else {
                    print("round \(round), \(method): a crash loop gave \(looped)")
                    return 4
                }
                looping.close()
                try looping.join()
            }
            guard leftMemoryGroups().isEmpty else {
                print("memory control groups left: \(leftMemoryGroups())")
                return 5
            }
            guard eventually(within: .seconds(5), { openDescriptorCount() == descriptors && childPIDs() == children }) else {
                print("descriptors \(descriptors) → \(openDescriptorCount()), children \(children) → \(childPIDs())")
                return 6
            }
            return 0
        } catch {
            print("failed: \(error)")
            return 1
        }
    }
}
