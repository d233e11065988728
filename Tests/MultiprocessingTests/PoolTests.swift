import Foundation
import Synchronization
import Testing

@testable import Multiprocessing

// Functions and jobs the pool tests send to workers.

struct SquareFunction: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int { x * x }
}

struct Offset: ProcessFunction {
    var by: Int
    func callAsFunction(_ x: Int) -> Int { x + by }
}

struct WorkerPID: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int32 { getpid() }
}

struct FailOnOdd: ProcessFunction {
    func callAsFunction(_ x: Int) throws -> Int {
        if x % 2 == 1 { throw Refusal(reason: "odd \(x)") }
        return x
    }
}

/// Per-worker state that the initializer sets and tasks read.
let workerSeed = Atomic<Int>(0)

struct SeedWorker: ProcessJob {
    var seed: Int
    func run() throws -> Bool {
        workerSeed.store(seed, ordering: .relaxed)
        return true
    }
}

struct FailingInitializer: ProcessJob {
    func run() throws -> Bool { throw Refusal(reason: "no setup") }
}

struct AddSeed: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int { x + workerSeed.load(ordering: .relaxed) }
}

/// Whether none of `pids` is still running (checks for a while: reaping is quick but not instant).
func allEnded(_ pids: some Sequence<Int32>) -> Bool {
    eventually(within: .seconds(5)) { pids.allSatisfy { !isRunning($0) } }
}

@Suite("Process pools")
struct PoolTests {
    @Test("map equals a serial map for 100,000 items, with several chunk sizes")
    func mapMatchesSerial() throws {
        let items = Array(0..<100_000)
        let expected = items.map { $0 * $0 }
        try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
            for chunkSize in [nil, 7, 1000] {
                #expect(try pool.map(SquareFunction(), over: items, chunkSize: chunkSize) == expected)
                #expect(try pool.map(items, chunkSize: chunkSize) { $0 * $0 } == expected)
            }
            #expect(try pool.map(Offset(by: 3), over: [1, 2, 3]) == [4, 5, 6])
            #expect(try pool.map([Square(value: 4), Square(value: 5)]) == [16, 25])
            #expect(try pool.starmap([(2, 3), (4, 5)]) { (a: Int, b: Int) in a * b } == [6, 20])
            #expect(try pool.map([Int](), chunkSize: nil) { $0 } == [])
        }
    }

    @Test("apply and applyAsync run jobs by every start method")
    func applyByEveryStartMethod() throws {
        for method in jobStartMethods {
            try withProcessPool(processes: 2, startMethod: method) { (pool: ProcessPool) throws in
                #expect(try pool.apply(Square(value: 7)) == 49)
                let results = try (1...5).map { try pool.applyAsync(Square(value: $0)) }
                #expect(try results.map { try $0.get(timeout: .seconds(30)) } == [1, 4, 9, 16, 25])
                #expect(results.allSatisfy { $0.isReady && $0.isSuccessful == true })
            }
        }
    }

    @Test("a closure runs with what it captured, and callbacks fire")
    func closuresAndCallbacks() throws {
        let big = Array(repeating: 3, count: 1_000_000)
        let seen = Mutex<[Int]>([])
        try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
            let result = try pool.applyAsync(onSuccess: { value in seen.withLock { $0.append(value) } }) { big.reduce(0, +) }
            #expect(try result.get() == 3_000_000)
            let failing = try pool.applyAsync(onFailure: { _ in seen.withLock { $0.append(-1) } }) { () throws -> Int in throw Refusal(reason: "no") }
            #expect(throws: ProcessError.jobFailed(JobFailure(errorType: String(reflecting: Refusal.self), description: "refused: no"))) { try failing.get() }
            #expect(failing.isSuccessful == false)
        }
        #expect(seen.withLock { $0.sorted() } == [-1, 3_000_000])
    }

    @Test("imap yields in submission order, imapUnordered in completion order")
    func imapOrders() throws {
        let delays = [3, 1, 2]
        try withProcessPool(processes: 3) { (pool: ProcessPool) throws in
            let ordered = try pool.imap(delays) { delay -> Int in
                usleep(UInt32(delay) * 150_000)
                return delay
            }
            #expect(try ordered.map { try $0.get() } == [3, 1, 2])
            let unordered = try pool.imapUnordered(delays) { delay -> Int in
                usleep(UInt32(delay) * 150_000)
                return delay
            }
            #expect(try unordered.map { try $0.get() } == [1, 2, 3])
        }
    }

    @Test("a failing item fails alone: the other results still come")
    func failuresStayPerItem() throws {
        try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
            let results = try pool.mapAsync(FailOnOdd(), over: 0..<10, chunkSize: 4).results()
            for (x, result) in results.enumerated() {
                if x % 2 == 0 {
                    #expect(try result.get() == x)
                } else {
                    #expect(throws: ProcessError.jobFailed(JobFailure(errorType: String(reflecting: Refusal.self), description: "refused: odd \(x)"))) { try result.get() }
                }
            }
            #expect(throws: ProcessError.jobFailed(JobFailure(errorType: String(reflecting: Refusal.self), description: "refused: odd 1"))) {
                try pool.map(FailOnOdd(), over: 0..<10)
            }
        }
    }

    @Test("1,000 tasks with traps and SIGKILLed workers: every other result arrives, no process is left")
    func faultsFailOnlyTheirTask() throws {
        let pool = try ProcessPool(processes: 2)
        let items = Array(0..<1000)
        let results = try pool.imap(items) { x -> Int in
            if x % 97 == 13 { fatalError("trap on \(x)") }
            usleep(300)
            return x * x
        }
        var seenPIDs: Set<Int32> = []
        var kills = 0
        var collected: [Result<Int, ProcessError>] = []
        for result in results {
            collected.append(result)
            if collected.count % 150 == 75, let victim = pool.workerProcessIDs.first {
                seenPIDs.insert(victim)
                kill(victim, SIGKILL)
                kills += 1
            }
            seenPIDs.formUnion(pool.workerProcessIDs)
        }
        #expect(collected.count == 1000)
        var killedTasks = 0
        for (x, result) in collected.enumerated() {
            switch result {
            case let .success(value): #expect(value == x * x)
            case .failure(.crashed(signal: SIGKILL, _)): killedTasks += 1
            case let .failure(error):
                #expect(x % 97 == 13, "item \(x) failed: \(error)")
                #expect([SIGILL, SIGTRAP].contains(error.crashSignal ?? 0))
            }
            if x % 97 == 13 { #expect((try? result.get()) == nil) }
        }
        #expect(killedTasks <= kills)
        // Still usable.
        #expect(try pool.apply { 42 } == 42)
        #expect(try pool.apply(Square(value: 3)) == 9)
        seenPIDs.formUnion(pool.workerProcessIDs)
        pool.close()
        try pool.join()
        #expect(pool.workerProcessIDs.isEmpty)
        #expect(allEnded(seenPIDs))
    }

    @Test("a task past its time limit fails, its worker is killed, the pool goes on")
    func timeouts() throws {
        try withProcessPool(processes: 1) { (pool: ProcessPool) throws in
            let started = ContinuousClock.now
            #expect(throws: ProcessError.timedOut(seconds: 0.2)) {
                try pool.apply(timeout: .milliseconds(200)) { () -> Int in
                    sleep(30)
                    return 1
                }
            }
            #expect(ContinuousClock.now - started < .seconds(10))
            #expect(try pool.apply(timeout: .seconds(30)) { 5 } == 5)
            let results = try pool.mapAsync(SquareFunction(), over: [1, 2], timeout: .seconds(30)).get()
            #expect(results == [1, 4])
        }
    }

    @Test("cancelling the awaiting task cancels the work and kills its worker")
    func cancellation() async throws {
        let pool = try ProcessPool(processes: 1)
        // Far longer than the test takes: the work must still run when it is
        // cancelled, however late this task runs again (in the full suite on
        // 2 cores, blocking tests held both cooperative threads for over 30 s,
        // so work of 30 s had ended and rightly given its value).
        let result = try pool.applyAsync { () -> Int32 in
            sleep(120)
            return getpid()
        }
        // On a thread of the library's, not the cooperative pool (as above).
        let waiter = Task(executorPreference: InputExecutor.shared) { try await result.value }
        #expect(await eventually(within: .seconds(60)) { pool.workerProcessIDs.count == 1 })
        let pids = pool.workerProcessIDs
        waiter.cancel()
        await #expect(throws: ProcessError.cancelled) { try await waiter.value }
        #expect(allEnded(pids))
        // A map iterated in a task that is cancelled.
        let iterating = Task { () -> Int in
            var count = 0
            for await _ in try pool.imap(0..<100, { (x: Int) -> Int in usleep(200_000); return x }) { count += 1 }
            return count
        }
        try await Task.sleep(for: .milliseconds(300))
        iterating.cancel()
        #expect(try await iterating.value < 100)
        #expect(try await pool.applyAsync { 7 }.value == 7)
        pool.close()
        try await pool.join()
    }

    @Test("maxTasksPerChild replaces workers: their pids change")
    func maxTasksPerChild() throws {
        try withProcessPool(processes: 1, maxTasksPerChild: 2) { (pool: ProcessPool) throws in
            let pids = try pool.map(WorkerPID(), over: 0..<6, chunkSize: 1)
            #expect(Set(pids).count == 3)
            #expect(allEnded(Set(pids).subtracting(pool.workerProcessIDs)))
        }
    }

    @Test("the initializer's state is seen by tasks; a failing initializer fails the work")
    func initializers() throws {
        for method in jobStartMethods {
            try withProcessPool(processes: 2, startMethod: method, initializer: .job(SeedWorker(seed: 1000))) { (pool: ProcessPool) throws in
                #expect(try pool.map(AddSeed(), over: [1, 2, 3]) == [1001, 1002, 1003])
                #expect(try pool.apply { workerSeed.load(ordering: .relaxed) } == 1000)
            }
        }
        try withProcessPool(processes: 1, initializer: .closure { workerSeed.store(7, ordering: .relaxed) }) { (pool: ProcessPool) throws in
            #expect(try pool.map([1, 2]) { $0 + workerSeed.load(ordering: .relaxed) } == [8, 9])
        }
        try withProcessPool(processes: 2, initializer: .job(FailingInitializer())) { (pool: ProcessPool) throws in
            #expect(throws: ProcessError.self) { try pool.apply(Square(value: 2)) }
            #expect(throws: ProcessError.self) { try pool.map([1]) { $0 } }
        }
    }

    @Test("terminate during a running map returns promptly and fails the rest")
    func terminateWhileRunning() throws {
        let pool = try ProcessPool(processes: 2)
        let running = try pool.mapAsync(0..<20, chunkSize: 1) { (x: Int) -> Int in
            sleep(30)
            return x
        }
        #expect(eventually(within: .seconds(10)) { pool.workerProcessIDs.count == 2 })
        let pids = pool.workerProcessIDs
        let started = ContinuousClock.now
        pool.terminate()
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(throws: ProcessError.poolTerminated) { try running.get(timeout: .seconds(5)) }
        #expect(allEnded(pids))
        try pool.join()
    }

    @Test("progress counts completed items up to the total")
    func progress() throws {
        let last = Mutex(PoolProgress(completed: 0, total: 0))
        try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
            let result = try pool.mapAsync(SquareFunction(), over: 0..<100, chunkSize: 10, progress: { progress in
                last.withLock { $0 = progress }
            })
            _ = try result.get()
            #expect(result.progress == PoolProgress(completed: 100, total: 100))
        }
        #expect(last.withLock { $0 } == PoolProgress(completed: 100, total: 100))
    }

    @Test("async: awaiting results and iterating with for await")
    func asyncUse() async throws {
        try await withProcessPool(processes: 2) { pool in
            #expect(try await pool.applyAsync(Square(value: 9)).value == 81)
            #expect(try await pool.mapAsync(SquareFunction(), over: 1...4).value == [1, 4, 9, 16])
            var seen: [Int] = []
            for await result in try pool.imap(SquareFunction(), over: 1...4) { seen.append(try result.get()) }
            #expect(seen == [1, 4, 9, 16])
        }
    }

    @Test("bad input gets a clear error")
    func badInput() throws {
        #expect(throws: PoolError.invalidArgument("processes must be at least 1, not 0")) { try ProcessPool(processes: 0) }
        #expect(throws: PoolError.self) { try ProcessPool(processes: 1, maxTasksPerChild: 0) }
        let pool = try ProcessPool(processes: 1)
        #expect(throws: PoolError.self) { try pool.map([1], chunkSize: 0) { $0 } }
        #expect(throws: PoolError.stillRunning) { try pool.join() }
        let slow = try pool.applyAsync { () -> Int in usleep(300_000); return 1 }
        #expect(throws: PoolError.resultNotReady) { try slow.get(timeout: .milliseconds(10)) }
        pool.close()
        #expect(throws: PoolError.notRunning) { try pool.apply(Square(value: 1)) }
        try pool.join()
        #expect(try slow.get() == 1)
    }
}

@Suite("Pool messages")
struct PoolMessageTests {
    @Test("a chunk of an array encodes exactly as the array it would make")
    func chunksEncodeAsArrays() throws {
        let numbers = Array(0..<100)
        let words = numbers.map { "w\($0)" }
        #expect(try ValueCodec.encode(ArrayChunk(slice: numbers[10..<40])) == ValueCodec.encode(Array(numbers[10..<40])))
        #expect(try ValueCodec.encode(ArrayChunk(slice: words[3..<9])) == ValueCodec.encode(Array(words[3..<9])))
        #expect(try ValueCodec.decode([Int].self, from: ValueCodec.encode(ArrayChunk(slice: numbers[5..<7]))) == [5, 6])
    }

    @Test("corrupt replies and requests are typed errors")
    func corruptMessages() throws {
        #expect(throws: WireError.self) { try UnitReply.decode([1, 2, 3]) }
        #expect(throws: WireError.self) { try UnitReply.decode([1, 0, 0, 0, 0, 0, 0, 0, 9]) }
        #expect(throws: WireError.self) { try UnitReply.decode([1, 0, 0, 0, 0, 0, 0, 0, UnitOutcome.mixedTag, 0xFF]) }
        #expect(throws: WireError.self) { try UnitRequest.decode([200, 0, 0, 0, 1]) }
        let (head, body) = try UnitRequest(kind: .functionChunk, id: 7, typeName: "T", inputs: [1, 2]).wire()
        let request = try UnitRequest.decode(head + body)
        #expect(request.id == 7 && request.typeName == "T" && Array(request.inputs[request.inputsOffset...]) == [1, 2])
    }
}

