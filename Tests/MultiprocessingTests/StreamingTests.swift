import Foundation
import Synchronization
import Testing

@testable import Multiprocessing

/// Counts the items a lazy input has given.
final class ReadCounter: Sendable {
    let count = Atomic<Int>(0)
    var value: Int { count.load(ordering: .relaxed) }

    /// `0..<limit` (or 0, 1, 2 … for ever), counting every item read.
    func items(upTo limit: Int? = nil) -> some Sequence<Int> {
        let counter = self
        return (0..<(limit ?? Int.max)).lazy.map { x in
            counter.count.add(1, ordering: .relaxed)
            return x
        }
    }
}

/// An asynchronous sequence of 0..<count that throws after `failAfter` elements.
struct NumbersThenFailure: AsyncSequence, Sendable {
    struct Broken: Error, CustomStringConvertible {
        var description: String { "the source broke" }
    }
    var count: Int
    var failAfter: Int?

    struct AsyncIterator: AsyncIteratorProtocol {
        var next = 0
        let count: Int
        let failAfter: Int?
        mutating func next() async throws -> Int? {
            if let failAfter, next == failAfter { throw Broken() }
            guard next < count else { return nil }
            defer { next += 1 }
            return next
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(count: count, failAfter: failAfter) }
}

/// Traps for every 50th item from 7 on, else gives the item back.
struct TrapOnSeven: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int {
        if x % 50 == 7 { fatalError("item \(x)") }
        return x
    }
}

/// The process's peak resident memory so far, in bytes (`VmHWM`).
func peakResidentBytes() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
    }
    return 0
}

@Suite("Streaming pool calls")
struct StreamingTests {
    @Test("imap over 10,000,000 lazy items: the first result comes before the input is read, and memory stays bounded", .disabled(if: underSanitizer, "measures memory"))
    func lazyTenMillion() async {
        await #expect(processExitsWith: .success) {
            exit(StreamingScenarios.tenMillion())
        }
    }

    @Test("imap over an infinite sequence: a break after 1,000 results stops the reading and frees the workers")
    func infiniteWithBreak() throws {
        let counter = ReadCounter()
        let pool = try ProcessPool(processes: 2)
        var seen = 0
        for result in try pool.imap(SquareFunction(), over: counter.items(), bufferSize: 6) {
            #expect(try result.get() == seen * seen)
            seen += 1
            if seen == 1000 { break }
        }
        // Dropped at the break: the call read at most its buffer ahead.
        let readAtBreak = counter.value
        #expect(readAtBreak <= 1000 + 6)
        // The workers are free: new work runs at once, and nothing more is read.
        #expect(try pool.map(SquareFunction(), over: [3, 4]) == [9, 16])
        #expect(counter.value == readAtBreak)
        pool.close()
        try pool.join()
        #expect(pool.workerProcessIDs.isEmpty)
    }

    @Test("a consumer that pauses keeps the reading within bufferSize chunks of what it took")
    func backpressure() throws {
        let counter = ReadCounter()
        try withProcessPool(processes: 2) { pool in
            let results = try pool.imap(SquareFunction(), over: counter.items(upTo: 2_000), chunkSize: 10, bufferSize: 4)
            var taken = 0
            for result in results {
                _ = try result.get()
                taken += 1
                // At most 4 chunks held beyond the chunk being taken, and the next one read as it is taken.
                #expect(counter.value <= (taken / 10 + 1 + 4) * 10)
                if taken % 500 == 0 {
                    // Pause until everything read has ended: still nothing more is read.
                    let read = counter.value
                    #expect(eventually(within: .seconds(10)) { results.progress.completed == read })
                    #expect(counter.value == read)
                }
            }
            #expect(taken == 2_000)
            #expect(results.progress == PoolProgress(completed: 2_000, total: 2_000, isTotalKnown: true))
        }
    }

    @Test("imapUnordered and map over lazy sequences give every item once; map's chunks grow when the length is unknown")
    func lazyMaps() throws {
        try withProcessPool(processes: 2) { pool in
            let unordered = try pool.imapUnordered(SquareFunction(), over: ReadCounter().items(upTo: 5_000), chunkSize: 7, bufferSize: 3)
            #expect(Set(unordered.map { try! $0.get() }) == Set((0..<5_000).map { $0 * $0 }))
            // A sequence that is not a collection: its length is not known.
            let unknown = sequence(first: 0) { $0 < 9_999 ? $0 + 1 : nil }
            #expect(try pool.map(SquareFunction(), over: unknown) == (0..<10_000).map { $0 * $0 })
            let jobs = (0..<300).lazy.map { Square(value: $0) }
            #expect(try pool.map(jobs, chunkSize: 16, bufferSize: 2) == (0..<300).map { $0 * $0 })
            let sent = try pool.imap(ReadCounter().items(upTo: 1_000), capturing: 3, chunkSize: 5) { k, x in x * k }
            #expect(sent.map { try! $0.get() } == (0..<1_000).map { $0 * 3 })
            #expect(try pool.map(SquareFunction(), over: EmptyCollection<Int>()) == [])
            // starmap over any sequence of tuples (held by the forked workers).
            #expect(try pool.starmap((0..<10).lazy.map { ($0, "\($0)") }) { n, s in s.count + n } == (0..<10).map { $0 + 1 })
        }
    }

    @Test("closures forked per call over lazy Codable items: the workers are fed the items, an infinite input works")
    func forkedClosuresStream() throws {
        let counter = ReadCounter()
        let offset = 7  // captured: the closures have a context and are forked for the call
        try withProcessPool(processes: 2) { pool in
            var seen = 0
            for result in try pool.imap(counter.items(), bufferSize: 4, { x in x * 3 + offset }) {
                #expect(try result.get() == seen * 3 + offset)
                seen += 1
                if seen == 500 { break }
            }
            #expect(counter.value <= 500 + 4 + 1)
            #expect(try pool.map(ReadCounter().items(upTo: 3_000), chunkSize: 25) { x in x + offset } == (0..<3_000).map { $0 + offset })
            let unordered = try pool.imapUnordered(ReadCounter().items(upTo: 400), chunkSize: 3) { x in x - offset }
            #expect(Set(unordered.map { try! $0.get() }) == Set((0..<400).map { $0 - offset }))
            // Given its capture but with a context too: forked, and still fed lazily.
            let lazyCapture = ReadCounter()
            var taken = 0
            for result in try pool.imap(lazyCapture.items(), capturing: 2, bufferSize: 3, { k, x in x * k + offset }) {
                #expect(try result.get() == taken * 2 + offset)
                taken += 1
                if taken == 200 { break }
            }
            #expect(lazyCapture.value <= 200 + 3 + 1)
        }
    }

    @Test("a lazy map whose workers crash now and then: each crash fails only its item, typed; every other item is there once")
    func streamingWithCrashes() throws {
        try withProcessPool(processes: 2) { pool in
            var index = 0
            for result in try pool.imap(TrapOnSeven(), over: (0..<400).lazy.map { $0 }, chunkSize: 1, bufferSize: 3) {
                if index % 50 == 7 {
                    guard case .failure(.crashed) = result else {
                        Issue.record("item \(index): \(result)")
                        return
                    }
                } else {
                    #expect(try result.get() == index)
                }
                index += 1
            }
            #expect(index == 400)
        }
    }

    @Test("mapAsync reads a lazy input on a thread of its own while nobody waits")
    func mapAsyncReadsAlone() throws {
        let counter = ReadCounter()
        try withProcessPool(processes: 2) { pool in
            let result = try pool.mapAsync(SquareFunction(), over: counter.items(upTo: 3_000), chunkSize: 10, bufferSize: 2)
            #expect(eventually(within: .seconds(30)) { result.isReady })
            #expect(counter.value == 3_000)
            #expect(try result.get() == (0..<3_000).map { $0 * $0 })
        }
    }

    @Test("an asynchronous sequence as input: imap, imapUnordered and map")
    func asyncInput() async throws {
        try await withProcessPool(processes: 2) { pool in
            var outputs: [Int] = []
            for await result in try pool.imap(SquareFunction(), over: NumbersThenFailure(count: 500), chunkSize: 3) {
                outputs.append(try result.get())
            }
            #expect(outputs == (0..<500).map { $0 * $0 })
            var unordered: [Int] = []
            for await result in try pool.imapUnordered(SquareFunction(), over: NumbersThenFailure(count: 200)) {
                unordered.append(try result.get())
            }
            #expect(unordered.sorted() == (0..<200).map { $0 * $0 })
            #expect(try await pool.map(SquareFunction(), over: NumbersThenFailure(count: 1_000)) == (0..<1_000).map { $0 * $0 })
            // Closures forked for the call, fed the elements.
            let offset = 5
            var forked: [Int] = []
            for await result in try pool.imap(NumbersThenFailure(count: 300, failAfter: 120), chunkSize: 7, { x in x + offset }) {
                forked.append((try? result.get()) ?? -1)
            }
            #expect(forked == (0..<120).map { $0 + offset } + [-1])
            #expect(try await pool.map(NumbersThenFailure(count: 50), { x in x * offset }) == (0..<50).map { $0 * offset })
            var unordered2: [Int] = []
            for await result in try pool.imapUnordered(NumbersThenFailure(count: 60), { x in x - offset }) {
                unordered2.append(try result.get())
            }
            #expect(unordered2.sorted() == (0..<60).map { $0 - offset })
        }
    }

    @Test("an asynchronous input is read even while every thread of the cooperative pool is blocked")
    func asyncInputWithoutCooperativeThreads() throws {
        try withProcessPool(processes: 2) { pool in
            // Every cooperative thread blocked (this test's own among them, waiting below).
            let release = DispatchSemaphore(value: 0)
            let started = DispatchSemaphore(value: 0)
            let width = ProcessInfo.processInfo.activeProcessorCount
            for _ in 0..<width {
                Task.detached {
                    started.signal()
                    release.wait()
                }
            }
            for _ in 0..<width { _ = started.wait(timeout: .now() + .seconds(2)) }
            defer { for _ in 0..<width { release.signal() } }
            let mapped = try pool.mapAsync(SquareFunction(), over: NumbersThenFailure(count: 200), chunkSize: 5, bufferSize: 2)
            #expect(try mapped.get(timeout: .seconds(30)) == (0..<200).map { $0 * $0 })
        }
    }

    @Test("an asynchronous sequence that throws midway: the items read before it run, then its error comes, typed")
    func asyncInputThrows() async throws {
        try await withProcessPool(processes: 2) { pool in
            var outputs: [Int] = []
            var failure: ProcessError?
            for await result in try pool.imap(SquareFunction(), over: NumbersThenFailure(count: 1_000, failAfter: 250), chunkSize: 4) {
                switch result {
                case let .success(output): outputs.append(output)
                case let .failure(error):
                    #expect(failure == nil)
                    failure = error
                }
            }
            #expect(outputs == (0..<250).map { $0 * $0 })
            guard case let .inputFailed(errorType, description)? = failure else {
                Issue.record("expected inputFailed, got \(String(describing: failure))")
                return
            }
            #expect(errorType.hasSuffix("NumbersThenFailure.Broken"))
            #expect(description == "the source broke")
            await #expect(throws: ProcessError.inputFailed(errorType: errorType, description: description)) {
                try await pool.map(SquareFunction(), over: NumbersThenFailure(count: 1_000, failAfter: 10))
            }
            let results = try pool.mapAsync(SquareFunction(), over: NumbersThenFailure(count: 100, failAfter: 5), chunkSize: 1)
            let all = await results.results()
            #expect(all.count == 6)
            #expect(all.prefix(5).map { try? $0.get() } == [0, 1, 4, 9, 16])
            #expect(all.last.map { if case .failure(.inputFailed) = $0 { true } else { false } } == true)
        }
    }

    @Test("cancelling the task that iterates stops the reading and cancels what is in flight")
    func cancelledIteration() async throws {
        let counter = ReadCounter()
        let pool = try ProcessPool(processes: 2)
        let started = AsyncStream<Void>.makeStream()
        let iteration = Task {
            var count = 0
            for await result in try pool.imap(SquareFunction(), over: counter.items(), bufferSize: 4) {
                _ = try result.get()
                count += 1
                if count == 100 { started.continuation.yield() }
            }
            return count
        }
        for await _ in started.stream { break }
        iteration.cancel()
        let count = try await iteration.value
        #expect(count >= 100)
        let read = counter.value
        #expect(read <= count + 4 + 1)
        #expect(try await pool.mapAsync(SquareFunction(), over: [5]).value == [25])
        #expect(counter.value == read)
        pool.terminate()
        #expect(pool.workerProcessIDs.isEmpty)
    }

    @Test("results not yet taken when the pool closes: the rest is read and run, join returns, and they wait to be taken")
    func closeBeforeTaking() throws {
        let counter = ReadCounter()
        let pool = try ProcessPool(processes: 2)
        let results = try pool.imap(SquareFunction(), over: counter.items(upTo: 300), chunkSize: 2, bufferSize: 2)
        let mapped = try pool.mapAsync(SquareFunction(), over: AsyncStream<Int> { continuation in
            for x in 0..<100 { continuation.yield(x) }
            continuation.finish()
        }, chunkSize: 1, bufferSize: 1)
        pool.close()
        let finished = eventually(within: .seconds(30)) { results.progress.completed == 300 && mapped.isReady }
        #expect(finished)
        guard finished else {
            pool.terminate()
            return
        }
        try pool.join()
        #expect(results.map { try! $0.get() } == (0..<300).map { $0 * $0 })
        #expect(try mapped.get() == (0..<100).map { $0 * $0 })
    }

    @Test("bad arguments: a buffer below 1 is refused before anything is read")
    func badBuffer() throws {
        let counter = ReadCounter()
        try withProcessPool(processes: 1) { pool in
            #expect(throws: PoolError.invalidArgument("bufferSize must be at least 1, not 0")) {
                try pool.imap(SquareFunction(), over: counter.items(), bufferSize: 0)
            }
            #expect(throws: PoolError.invalidArgument("bufferSize must be at least 1, not -1")) {
                try pool.map(SquareFunction(), over: counter.items(upTo: 10), bufferSize: -1)
            }
            #expect(counter.value == 0)
        }
    }

    @Test("an input that traps in the parent: the parent dies, and its workers with it")
    func trappingInput() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("streaming-trap-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        await #expect(processExitsWith: .failure) { [path = path as String] in
            StreamingScenarios.trapInInput(writingWorkersTo: path)
        }
        let pids = ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: " ").compactMap { Int32($0) }
        #expect(pids.count == 2)
        #expect(allEnded(pids))
    }

    @Test("streaming calls and unbounded queues leave no process, descriptor or thread behind")
    func streamingLeaves() async {
        let result = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            exit(StreamingScenarios.leaves())
        }
        if let result, result.exitStatus != .exitCode(0) {
            Issue.record("the scenario said: \(String(decoding: result.standardOutputContent, as: UTF8.self))")
        }
    }
}

/// The bodies of the exit tests.
enum StreamingScenarios {
    static func tenMillion() -> Int32 {
        do {
            let counter = ReadCounter()
            let pool = try ProcessPool(processes: 2)
            _ = try pool.map(SquareFunction(), over: [1, 2])  // workers up: their start is not measured
            let before = peakResidentBytes()
            var count = 0
            var sum = 0
            var readAtFirst = 0
            for result in try pool.imap(SquareFunction(), over: counter.items(upTo: 10_000_000), chunkSize: 1_000) {
                if count == 0 { readAtFirst = counter.value }
                sum &+= try result.get()
                count += 1
            }
            let growth = peakResidentBytes() - before
            pool.close()
            try pool.join()
            print("imap over 10,000,000 lazy items: \(readAtFirst) read at the first result; peak memory grew \(growth / 1_000_000) MB")
            var expected = 0
            for x in 0..<10_000_000 { expected &+= x &* x }
            guard count == 10_000_000, sum == expected else { return 2 }
            // The default buffer is four chunks per worker: 8 chunks, and the next one.
            guard readAtFirst <= 9 * 1_000 else { return 3 }
            // Read whole, the input alone would be 80 MB, its encoding 80 MB more.
            guard growth < 48_000_000 else { return 4 }
            return 0
        } catch {
            print("failed: \(error)")
            return 5
        }
    }

    static func trapInInput(writingWorkersTo path: String) {
        do {
            let pool = try ProcessPool(processes: 2)
            let trapping = (0..<Int.max).lazy.map { x -> Int in
                precondition(x < 500, "the input broke")
                return x
            }
            var count = 0
            for result in try pool.imap(SquareFunction(), over: trapping) {
                _ = try result.get()
                count += 1
                if count == 100 {
                    let pids = pool.workerProcessIDs
                    try pids.map(String.init).joined(separator: " ").write(toFile: path, atomically: true, encoding: .utf8)
                }
            }
        } catch {
            print("failed: \(error)")
        }
        exit(0)  // not reached: the input traps first
    }

    static func leaves() -> Int32 {
        do {
            _ = try ChildProcess.execute(Square(value: 1), startMethod: .forkserver)
            let descriptors = openDescriptorCount()
            let children = childPIDs()
            // The cooperative pool's threads, and the one that reads asynchronous inputs, exist from here on.
            // (Descriptors are counted before: a pool's last ones close a moment after its join returns.)
            awaitTask {
                _ = try? await withProcessPool(processes: 1) { pool in try await pool.map(SquareFunction(), over: NumbersThenFailure(count: 1)) }
            }
            let threads = threadCount()
            for round in 0..<6 {
                let pool = try ProcessPool(processes: 2, startMethod: jobStartMethods[round % 3])
                let counter = ReadCounter()
                for result in try pool.imap(SquareFunction(), over: counter.items(), bufferSize: 3) {
                    if try result.get() >= 400 { break }
                }
                guard try pool.map(SquareFunction(), over: counter.items(upTo: 100)) == (0..<100).map({ $0 * $0 }) else { return 2 }
                let lazy = try pool.mapAsync(SquareFunction(), over: ReadCounter().items(upTo: 1_000), chunkSize: 3, bufferSize: 2)
                if round % 2 == 0 { lazy.cancel() } else { _ = try lazy.get() }
                awaitTask { _ = try? await pool.map(SquareFunction(), over: NumbersThenFailure(count: 50, failAfter: 20)) }
                if round % 3 == 0 { pool.terminate() } else { pool.close() }
                try pool.join()
            }
            // Unbounded queues whose producers exited before anyone read.
            for _ in 0..<3 {
                let queue = try Queue<Int>()
                let producer = try ChildProcess(job: PutNumbers(queue: queue, count: 10_000), startMethod: .forkserver)
                try producer.start()
                guard try producer.join() == 0 else { return 7 }
                for x in 0..<10_000 { guard try queue.get(timeout: .seconds(10)) == x else { return 8 } }
            }
            let settled = LeakScenarios.settled(descriptors: descriptors, children: children)
            guard settled == 0 else { return settled }
            guard eventually(within: .seconds(10), { threadCount() <= threads }) else {
                print("threads \(threads) → \(threadCount())")
                return 6
            }
            return 0
        } catch {
            print("failed: \(error)")
            return 5
        }
    }

    /// Runs `body` in a task and waits for it, from synchronous code.
    static func awaitTask(_ body: @escaping @Sendable () async -> Void) {
        let semaphore = DispatchSemaphore(value: 0)
        Task {
            await body()
            semaphore.signal()
        }
        semaphore.wait()
    }

    static func threadCount() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? -1
    }
}
