import Foundation
import Testing

@testable import Multiprocessing

struct Tagged: Codable, Equatable, Sendable {
    var producer: Int
    var sequence: Int
}

struct Produce: ProcessJob {
    var queue: Queue<Tagged>
    var producer: Int
    var count: Int
    func run() throws -> Bool {
        for sequence in 0..<count { try queue.put(Tagged(producer: producer, sequence: sequence)) }
        return true
    }
}

struct Consume: ProcessJob {
    var queue: Queue<Tagged>
    func run() throws -> [Tagged] {
        var received: [Tagged] = []
        while true {
            let item = try queue.get(timeout: .seconds(60))
            if item.producer < 0 { return received }
            received.append(item)
        }
    }
}

struct PutBlob: ProcessJob {
    var queue: Queue<[UInt8]>
    var sizes: [Int]
    func run() throws -> Bool {
        for (index, size) in sizes.enumerated() { try queue.put([UInt8](repeating: UInt8(truncatingIfNeeded: index), count: size)) }
        return true
    }
}

/// Puts `count` numbers 0, 1, 2 … and leaves.
struct PutNumbers: ProcessJob {
    var queue: Queue<Int>
    var count: Int
    var offset = 0
    func run() throws -> Bool {
        for x in 0..<count { try queue.put(offset + x) }
        return true
    }
}

/// The bytes of memory the queue's shared memory has now (its pages, not its size).
func allocatedBytes<Element>(_ queue: Queue<Element>) -> Int {
    var status = stat()
    guard fstat(queue.memory.descriptor.rawValue, &status) == 0 else { return -1 }
    return Int(status.st_blocks) * 512
}

struct GetBlob: ProcessJob {
    var queue: Queue<[UInt8]>
    func run() throws -> [UInt8] { try queue.get(timeout: .seconds(30)) }
}

struct GetForever: ProcessJob {
    var queue: Queue<Int>
    func run() throws -> Int { try queue.get() }
}

struct WorkThrough: ProcessJob {
    var queue: JoinableQueue<Int>
    var count: Int
    func run() throws -> Int {
        var sum = 0
        for _ in 0..<count {
            sum += try queue.get(timeout: .seconds(30))
            try queue.taskDone()
        }
        return sum
    }
}

@Suite("Queues")
struct QueueTests {
    @Test("put and get in order; count, isEmpty, isFull; Full and Empty without waiting")
    func basics() throws {
        let queue = try Queue<String>(maxSize: 3)
        #expect(queue.isEmpty)
        #expect(throws: QueueError.empty) { try queue.getNoWait() }
        for word in ["a", "bb", "ccc"] { try queue.put(word) }
        #expect(queue.count == 3)
        #expect(queue.isFull)
        #expect(throws: QueueError.full) { try queue.putNoWait("d") }
        #expect(try queue.get() == "a")
        #expect(try queue.get() == "bb")
        #expect(try queue.get() == "ccc")
        #expect(queue.isEmpty)
        queue.close()
        #expect(throws: QueueError.closed) { try queue.put("e") }
    }

    @Test("a blocking get and a blocking put time out, and wake when the other side acts")
    func timeouts() throws {
        let queue = try Queue<Int>(maxSize: 1)
        var start = ContinuousClock.now
        #expect(throws: QueueError.empty) { try queue.get(timeout: .milliseconds(100)) }
        #expect(ContinuousClock.now - start >= .milliseconds(100))
        try queue.put(1)
        start = ContinuousClock.now
        #expect(throws: QueueError.full) { try queue.put(2, timeout: .milliseconds(100)) }
        #expect(ContinuousClock.now - start >= .milliseconds(100))
        // A child waiting in get wakes when the parent puts.
        _ = try queue.get()
        let waiter = try ChildProcess(job: GetForever(queue: queue), startMethod: .forkserver)
        try waiter.start()
        try queue.put(42)
        #expect(try waiter.join() == 0)
        #expect(try waiter.output(as: Int.self) == 42)
        // A put blocked on a full queue wakes when a child takes an item.
        try queue.put(7)
        let taker = try ChildProcess(job: GetForever(queue: queue), startMethod: .fork)
        try taker.start()
        try queue.put(8, timeout: .seconds(30))
        try taker.join()
        #expect(try taker.output(as: Int.self) == 7)
        #expect(try queue.get() == 8)
    }

    @Test("4 producers × 4 consumers: every item once, each producer's order kept")
    func manyToMany() throws {
        let perProducer = 10_000
        let queue = try Queue<Tagged>(maxSize: 1000, bufferSize: 64 * 1024)
        let consumers = try (0..<4).map { _ in try ChildProcess(job: Consume(queue: queue), startMethod: .forkserver) }
        let producers = try (0..<4).map { id in try ChildProcess(job: Produce(queue: queue, producer: id, count: perProducer), startMethod: .forkserver) }
        for process in consumers + producers { try process.start() }
        for producer in producers { #expect(try producer.join() == 0) }
        for _ in consumers { try queue.put(Tagged(producer: -1, sequence: 0)) }
        var seen: [Int: [Int]] = [:]
        for consumer in consumers {
            #expect(try consumer.join() == 0)
            let items = try consumer.output(as: [Tagged].self)
            var last: [Int: Int] = [:]
            for item in items {
                // Per producer, each consumer sees increasing sequence numbers.
                #expect(item.sequence > last[item.producer, default: -1])
                last[item.producer] = item.sequence
                seen[item.producer, default: []].append(item.sequence)
            }
        }
        for producer in 0..<4 {
            #expect(seen[producer]?.sorted() == Array(0..<perProducer))
        }
        #expect(queue.isEmpty)
    }

    @Test("an unbounded queue: a producer puts 100,000 items and exits before any consumer starts; all arrive, in order", arguments: jobStartMethods)
    func unboundedProducerExits(method: StartMethod) throws {
        let queue = try Queue<Int>()
        let producer = try ChildProcess(job: PutNumbers(queue: queue, count: 100_000), startMethod: method)
        try producer.start()
        #expect(try producer.join() == 0)  // never blocked: nobody was reading
        #expect(queue.count == 100_000)
        for x in 0..<100_000 {
            guard try queue.get(timeout: .seconds(10)) == x else {
                Issue.record("item \(x) out of order")
                return
            }
        }
        #expect(queue.isEmpty)
    }

    @Test("an unbounded queue: 4 producers put 100,000 items each at once and exit; every item arrives once, each producer's in order")
    func unboundedFourProducers() throws {
        let queue = try Queue<Int>()
        let producers = try (0..<4).map { id in try ChildProcess(job: PutNumbers(queue: queue, count: 100_000, offset: id * 1_000_000), startMethod: .forkserver) }
        for producer in producers { try producer.start() }
        for producer in producers { #expect(try producer.join() == 0) }
        var next = [0, 0, 0, 0]
        for _ in 0..<400_000 {
            let item = try queue.get(timeout: .seconds(10))
            let (producer, sequence) = item.quotientAndRemainder(dividingBy: 1_000_000)
            guard sequence == next[producer] else {
                Issue.record("producer \(producer): \(sequence) came where \(next[producer]) was due")
                return
            }
            next[producer] += 1
        }
        #expect(next == [100_000, 100_000, 100_000, 100_000])
        #expect(queue.isEmpty)
    }

    @Test("an unbounded queue: 1,000 items of 1 MiB put by a producer that exits; all arrive, and the memory is given back as they are taken")
    func unboundedLargeItems() throws {
        let queue = try Queue<[UInt8]>()
        let producer = try ChildProcess(job: PutBlob(queue: queue, sizes: Array(repeating: 1 << 20, count: 1_000)), startMethod: .forkserver)
        try producer.start()
        #expect(try producer.join() == 0)
        // Memory for what is pending (1,000 MiB), not for the whole ceiling.
        let pending = allocatedBytes(queue)
        #expect(pending >= 1_000 << 20 && pending < 1_010 << 20)
        for index in 0..<1_000 {
            let item = try queue.get(timeout: .seconds(10))
            guard item.count == 1 << 20, item.first == UInt8(truncatingIfNeeded: index), item.last == UInt8(truncatingIfNeeded: index) else {
                Issue.record("item \(index) is wrong")
                return
            }
        }
        #expect(allocatedBytes(queue) < 4 << 20)
        #expect(queue.isEmpty)
    }

    @Test("an unbounded queue: a producer SIGKILLed while it puts large items leaves the queue usable; every item that arrives is whole")
    func unboundedProducerKilled() throws {
        let queue = try Queue<[UInt8]>()
        // 4 MiB items: the producer spends most of its time inside a put.
        let producer = try ChildProcess(job: PutBlob(queue: queue, sizes: Array(repeating: 4 << 20, count: 100)), startMethod: .forkserver)
        try producer.start()
        #expect(eventually(within: .seconds(30)) { queue.count >= 2 })
        try producer.kill()
        _ = try producer.join()
        // What it put whole arrives whole, in order; a half-written item never appears.
        var received = 0
        while let item = try? queue.get(timeout: .zero) {
            let pattern = [UInt8](repeating: UInt8(truncatingIfNeeded: received), count: 4 << 20)
            let whole = item.count == pattern.count && item.withUnsafeBytes { a in pattern.withUnsafeBytes { b in memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0 } }
            guard whole else {
                Issue.record("item \(received) is torn or out of order")
                return
            }
            received += 1
        }
        #expect(received >= 2 && received <= 100)
        // The next writer takes over the writer lock its death may have left.
        let next = try ChildProcess(job: PutBlob(queue: queue, sizes: [100_000, 10]), startMethod: .forkserver)
        try next.start()
        #expect(try next.join() == 0)
        #expect(try queue.get(timeout: .seconds(10)) == [UInt8](repeating: 0, count: 100_000))
        #expect(try queue.get(timeout: .seconds(10)) == [UInt8](repeating: 1, count: 10))
        #expect(queue.isEmpty)
    }

    @Test("an unbounded queue at its ceiling: put refuses at once with a typed error, loses nothing, and works again once items are taken")
    func unboundedCeiling() throws {
        let queue = try Queue<[UInt8]>(bufferSize: 64 * 1024)
        let item = [UInt8](repeating: 7, count: 1000)
        var put = 0
        while true {
            do {
                try queue.put(item)
                put += 1
            } catch let error as QueueError {
                #expect(error == .outOfMemory(ceiling: 64 * 1024))
                break
            }
        }
        #expect(put == 64 * 1024 / (1000 + 9 + 5))  // 5: the array's length in the encoding
        #expect(throws: QueueError.outOfMemory(ceiling: 64 * 1024)) { try queue.put([UInt8](repeating: 1, count: 100_000)) }
        #expect(try queue.get() == item)
        try queue.put(item)
        for _ in 0..<put { #expect(try queue.get(timeout: .zero) == item) }
        #expect(queue.isEmpty)
        // Round the ring 30 times: every item intact, and no more memory than the ceiling.
        for lap in 0..<2_000 {
            let item = [UInt8](repeating: UInt8(truncatingIfNeeded: lap), count: 1000 + lap % 7)
            try queue.put(item)
            if lap % 3 == 0 { try queue.put(item) }
            let first = try queue.get(timeout: .zero)
            let second = lap % 3 == 0 ? try queue.get(timeout: .zero) : item
            guard first == item, second == item else {
                Issue.record("lap \(lap): an item changed")
                return
            }
        }
        #expect(allocatedBytes(queue) <= 64 * 1024 + 3 * 4096)
    }

    @Test("items larger than a bounded queue's ring cross whole and in order", arguments: jobStartMethods)
    func largeItems(method: StartMethod) throws {
        let queue = try Queue<[UInt8]>(maxSize: 100, bufferSize: 4096)
        let sizes = [10, 100_000, 0, 5000, 4096, 1]
        let producer = try ChildProcess(job: PutBlob(queue: queue, sizes: sizes), startMethod: method)
        try producer.start()
        for (index, size) in sizes.enumerated() {
            let item = try queue.get(timeout: .seconds(30))
            #expect(item.count == size)
            #expect(item.allSatisfy { $0 == UInt8(index) })
        }
        #expect(try producer.join() == 0)
    }

    @Test("a producer killed mid-put does not stall the others; its item is dropped")
    func killedMidPut() throws {
        let queue = try Queue<[UInt8]>(maxSize: 100, bufferSize: 4096)
        // No consumer yet: the child blocks halfway through a 100 kB item.
        let producer = try ChildProcess(job: PutBlob(queue: queue, sizes: [100_000]), startMethod: .forkserver)
        try producer.start()
        #expect(try producer.join(timeout: .milliseconds(300)) == nil)
        try producer.kill()
        try producer.join()
        // The ring is full of the abandoned item: with no reader, a put is Full.
        #expect(throws: QueueError.full) { try queue.put([9, 9, 9], timeout: .milliseconds(100)) }
        // With a reader, the next put finishes the abandoned item (which the
        // reader skips) and its own item arrives.
        let consumer = try ChildProcess(job: GetBlob(queue: queue), startMethod: .forkserver)
        try consumer.start()
        try queue.put([9, 9, 9], timeout: .seconds(10))
        #expect(try consumer.join() == 0)
        #expect(try consumer.output(as: [UInt8].self) == [9, 9, 9])
    }

    @Test("a consumer killed while waiting in get does not stall the others")
    func killedInGet() throws {
        let queue = try Queue<Int>()
        let consumer = try ChildProcess(job: GetForever(queue: queue), startMethod: .forkserver)
        try consumer.start()
        #expect(try consumer.join(timeout: .milliseconds(200)) == nil)
        try consumer.kill()
        try consumer.join()
        try queue.put(5)
        #expect(try queue.get(timeout: .seconds(10)) == 5)
    }

    @Test("an item read as the wrong type is a typed error and the next item still arrives")
    func wrongType() throws {
        let writer = try Queue<String>()
        try writer.put("not a number")
        try writer.put("42")
        let reader = try Queue<Int>(memoryOf: writer)
        #expect(throws: WireError.self) { try reader.get() }
        #expect(try writer.get() == "42")
    }

    @Test("numbers of every size cross, and a short item that is not one is a typed error")
    func numbers() throws {
        let queue = try Queue<Int>()
        let values = [0, -1, 1, Int.max, Int.min, 1 << 40, -(1 << 40)]
        for value in values { try queue.put(value) }
        for value in values { #expect(try queue.get() == value) }
        let strings = try Queue<String>(memoryOf: queue)
        try strings.put("x")  // three bytes: small enough for the numbers' short cut
        try queue.put(7)
        #expect(throws: WireError.self) { try queue.get() }
        #expect(try queue.get() == 7)
        #expect(throws: QueueError.empty) { try queue.get(timeout: .milliseconds(10)) }
    }

    @Test("a joinable queue's join waits until every item is done")
    func joinable() throws {
        let queue = try JoinableQueue<Int>()
        #expect(try queue.join(timeout: .zero))
        for value in 1...10 { try queue.put(value) }
        #expect(try queue.join(timeout: .milliseconds(20)) == false)
        let worker = try ChildProcess(job: WorkThrough(queue: queue, count: 10), startMethod: .forkserver)
        try worker.start()
        #expect(try queue.join(timeout: .seconds(30)))
        try worker.join()
        #expect(try worker.output(as: Int.self) == 55)
        #expect(throws: QueueError.taskDoneTooOften) { try queue.taskDone() }
    }

    @Test("a simple queue puts and gets")
    func simple() throws {
        let queue = try SimpleQueue<Double>()
        #expect(queue.isEmpty)
        try queue.put(1.5)
        #expect(!queue.isEmpty)
        #expect(try queue.get() == 1.5)
    }

    @Test("async get and put wait without blocking the pool, and cancel")
    func async() async throws {
        let queue = try Queue<Int>(maxSize: 1)
        let getter = Task { try await queue.get() }
        try await Task.sleep(for: .milliseconds(20))
        try await queue.put(3)
        #expect(try await getter.value == 3)
        await #expect(throws: QueueError.empty) { try await queue.get(timeout: .milliseconds(60)) }
        let cancelled = Task { try await queue.get() }
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
    }
}

extension Queue {
    /// For tests: another view of the same shared queue, with another element type.
    convenience init<Other>(memoryOf other: Queue<Other>) throws {
        try self.init(sharing: other.memory)
    }
}
