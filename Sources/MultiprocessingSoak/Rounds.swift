import Foundation
import Multiprocessing
import Synchronization

/// One batch of pool tasks, given in one of four ways, each outcome checked
/// against its plan.
enum PoolRound {
    static func run(round: Int, size: Int, pool: ProcessPool, random: inout SplitMix, tally: inout Tally, watchdog: Watchdog) throws {
        let first = tally.submitted
        let plan = (0..<size).map { i -> Planned in
            let draw = random.next() % 1000
            let fate: Fate = draw < 10 ? .throwing : draw < 18 ? .trap : draw < 20 ? .overrun : draw < 22 ? .exhaust : .value
            return Planned(id: first + i, fate: fate)
        }
        tally.submitted += size
        let bufferSize = 1 + Int(random.next() % 8)
        let limit = Duration.milliseconds(200)
        switch round % 4 {
        case 0, 2:
            // imap over a lazy input; every other such round cancels midway.
            let cancelAt = round % 4 == 2 ? Int(random.next() % UInt64(size)) : nil
            let results = try pool.imap(SoakTask(), over: plan.lazy.map { $0 }, bufferSize: bufferSize, timeout: limit)
            var seen = 0
            for result in results {
                watchdog.tick()
                guard seen < size else {
                    tally.duplicated += 1
                    continue
                }
                check(plan[seen], result, cancelled: cancelAt != nil, &tally)
                seen += 1
                if seen == cancelAt { results.cancel() }
            }
            if cancelAt != nil {
                tally.cancelled += size - seen  // never read: the call was cancelled first
            } else {
                tally.lost += size - seen
            }
        case 1:
            let results = try pool.mapAsync(SoakTask(), over: plan.lazy.map { $0 }, chunkSize: 1, bufferSize: bufferSize, timeout: limit).results()
            watchdog.tick()
            for (index, result) in results.enumerated() where index < size { check(plan[index], result, cancelled: false, &tally) }
            tally.lost += max(0, size - results.count)
            tally.duplicated += max(0, results.count - size)
        default:
            // Completion order: successes name their task; failures are counted by cause.
            var seenIDs = Set<Int>()
            var count = 0
            for result in try pool.imapUnordered(SoakTask(), over: plan.lazy.map { $0 }, bufferSize: bufferSize, timeout: limit) {
                watchdog.tick()
                count += 1
                if case let .success(value) = result {
                    let id = value / 2
                    guard id >= first, id < first + size, plan[id - first].fate == .value, value == id * 2 else {
                        tally.unexpected.append("an unordered result \(value) that no task should give")
                        continue
                    }
                    if !seenIDs.insert(id).inserted { tally.duplicated += 1 }
                    tally.completed += 1
                } else {
                    // Which task failed is not said: check the cause is one some task of the batch could have.
                    let any = plan.first { fate(of: $0, allows: result, cancelled: false) }
                    if let any { check(any, result, cancelled: false, &tally, counting: true) } else {
                        tally.unexpected.append("an unordered failure no task explains: \(result)")
                    }
                }
            }
            tally.lost += max(0, size - count)
            tally.duplicated += max(0, count - size)
        }
    }

    /// Whether `result` is an outcome `task` may have.
    static func fate(of task: Planned, allows result: Result<Int, ProcessError>, cancelled: Bool) -> Bool {
        switch result {
        case let .success(value): return task.fate == .value && value == task.id * 2
        case .failure(.jobFailed): return task.fate == .throwing
        case .failure(.crashed(signal: SIGILL, _)), .failure(.crashed(signal: SIGTRAP, _)): return task.fate == .trap
        // Filling 128 MiB may take longer than the time limit on a busy machine.
        case .failure(.timedOut): return task.fate == .overrun || task.fate == .exhaust
        case .failure(.memoryLimitExceeded): return task.fate == .exhaust
        case .failure(.crashed(signal: SIGKILL, _)): return true  // the injector
        case .failure(.cancelled): return cancelled
        case .failure: return false
        }
    }

    static func check(_ task: Planned, _ result: Result<Int, ProcessError>, cancelled: Bool, _ tally: inout Tally, counting: Bool = false) {
        guard fate(of: task, allows: result, cancelled: cancelled) else {
            tally.unexpected.append("task \(task.id) (\(task.fate)) ended with \(result)")
            return
        }
        switch result {
        case .success: tally.completed += 1
        case .failure(.jobFailed): tally.threw += 1
        case .failure(.crashed(signal: SIGKILL, _)): tally.killed += 1
        case .failure(.crashed): tally.trapped += 1
        case .failure(.timedOut): tally.timedOut += 1
        case .failure(.memoryLimitExceeded): tally.overMemory += 1
        case .failure: tally.cancelled += 1
        }
    }
}

/// SIGKILLs one of the pool's workers now and then.
final class Injector: @unchecked Sendable {  // `random` is touched only by the injector's thread
    private let stopped = Atomic<Bool>(false)
    private let killCount = Atomic<Int>(0)
    private let done = DispatchSemaphore(value: 0)
    private var random: SplitMix

    init(pool: ProcessPool, seed: UInt64) {
        random = SplitMix(seed: seed)
        Thread.detachNewThread { [self] in
            while !stopped.load(ordering: .relaxed) {
                // When the next fault comes is the fault's own timing, not synchronisation.
                usleep(useconds_t(20_000 + random.next() % 200_000))
                let workers = pool.workerProcessIDs
                guard !workers.isEmpty else { continue }
                if kill(workers[Int(random.next() % UInt64(workers.count))], SIGKILL) == 0 {
                    killCount.add(1, ordering: .relaxed)
                }
            }
            done.signal()
        }
    }

    var kills: Int { killCount.load(ordering: .relaxed) }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        done.wait()
    }
}

/// An item of the queue rounds: its payload is a pattern of its own, so a
/// torn item shows.
struct QueueItem: Codable, Sendable {
    var producer: Int
    var sequence: Int
    var payload: [UInt8]

    static func make(producer: Int, sequence: Int) -> QueueItem {
        let size = (sequence &* 7919 &+ producer &* 104_729) % 65_536
        return QueueItem(producer: producer, sequence: sequence, payload: [UInt8](repeating: UInt8(truncatingIfNeeded: sequence &+ producer), count: size))
    }

    var isWhole: Bool { payload == QueueItem.make(producer: producer, sequence: sequence).payload }
}

/// Two producers put into an unbounded queue; one is SIGKILLed in the
/// middle of its puts. Every item delivered must be whole, each producer's
/// in order with none missing before its last, and the survivor's all there.
enum QueueRound {
    static let perProducer = 2_000

    static func run(random: inout SplitMix, tally: inout Tally, watchdog: Watchdog) throws {
        let queue = try Queue<QueueItem>()
        let producers = (0..<2).map { producer in
            ChildProcess {
                for sequence in 0..<perProducer { try queue.put(QueueItem.make(producer: producer, sequence: sequence)) }
            }
        }
        for producer in producers { try producer.start() }
        usleep(useconds_t(random.next() % 20_000))  // the fault's timing
        try producers[0].kill()
        for producer in producers { _ = try producer.join() }
        tally.queueProducersKilled += producers[0].exitCode.map { $0 < 0 ? 1 : 0 } ?? 0
        var next = [0, 0]
        while let item = try? queue.get(timeout: .zero) {
            watchdog.tick()
            guard item.producer == 0 || item.producer == 1 else {
                tally.torn += 1
                continue
            }
            if !item.isWhole { tally.torn += 1 }
            if item.sequence != next[item.producer] {
                if item.sequence < next[item.producer] { tally.duplicated += 1 } else { tally.lost += item.sequence - next[item.producer] }
            }
            next[item.producer] = item.sequence + 1
            tally.queueItemsDelivered += 1
        }
        tally.lost += perProducer - next[1]  // the survivor put all of its items
        queue.close()
    }
}

/// A process dies holding a lock: the next taker must get it, told so.
enum LockRound {
    static func run(tally: inout Tally) throws {
        let lock = try Lock()
        let holding = try Event()
        let holder = ChildProcess {
            try lock.acquire()
            try holding.set()
            while true { sleep(60) }  // until killed, holding it
        }
        try holder.start()
        guard holding.wait(timeout: .seconds(30)) else {
            tally.unexpected.append("a lock holder never took its lock")
            try holder.kill()
            _ = try holder.join()
            return
        }
        try holder.kill()
        _ = try holder.join()
        tally.lockHoldersKilled += 1
        do {
            guard try lock.acquire(timeout: .seconds(10)) else {
                tally.unexpected.append("a dead holder's lock could not be taken")
                return
            }
            tally.unexpected.append("a dead holder's lock was taken without being told")
        } catch .previousOwnerDied {
            tally.locksRecovered += 1
        }
        try lock.release()
    }
}

/// Ends the soak with status 3 if nothing moves for too long: a hang.
final class Watchdog: @unchecked Sendable {  // its state is atomics
    private let progress = Atomic<Int>(0)
    private let stopped = Atomic<Bool>(false)

    init(limit: Duration) {
        Thread.detachNewThread { [self] in
            var last = -1
            var since = ContinuousClock.now
            while !stopped.load(ordering: .relaxed) {
                sleep(1)
                let now = progress.load(ordering: .relaxed)
                if now != last {
                    last = now
                    since = .now
                } else if ContinuousClock.now - since > limit {
                    print("soak: no progress for \(limit): hung")
                    exit(3)
                }
            }
        }
    }

    func tick() { progress.add(1, ordering: .relaxed) }
    func stop() { stopped.store(true, ordering: .relaxed) }
}

// MARK: - What is left behind

func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

func childPIDs() -> Set<Int32> {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    var pids: Set<Int32> = []
    for task in tasks {
        let text = (try? String(contentsOfFile: "/proc/self/task/\(task)/children", encoding: .utf8)) ?? ""
        for field in text.split(separator: " ") { if let pid = Int32(field) { pids.insert(pid) } }
    }
    return pids
}

func sharedMemoryEntries() -> Set<String> {
    Set((try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? [])
}

func eventually(within timeout: Duration, _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// A consumer is SIGKILLed in the middle of its gets from an unbounded queue
/// (items up to 64 KiB: the large ones are copied outside the queue's lock).
/// It reports each item it took, whole and in order, over a pipe; the parent
/// then takes the rest. Nothing may be torn or duplicated, the queue must
/// still work, and at most one item — the one the consumer had taken when it
/// died — may be missing.
enum ConsumerRound {
    static let items = 2_000

    static func run(random: inout SplitMix, tally: inout Tally, watchdog: Watchdog) throws {
        let queue = try Queue<QueueItem>()
        for sequence in 0..<items { try queue.put(QueueItem.make(producer: 2, sequence: sequence)) }
        let (reports, reporter) = try Connection.pipe(duplex: false)
        let consumer = ChildProcess {
            var next = 0
            while true {
                let item = try queue.get()
                // A torn or out-of-order item ends the consumer with status 2.
                guard item.isWhole, item.sequence == next else { exit(2) }
                try reporter.send(item.sequence)
                next += 1
            }
        }
        try consumer.start()
        reporter.close()
        usleep(useconds_t(random.next() % 20_000))  // the fault's timing
        try consumer.kill()
        _ = try consumer.join()
        if consumer.exitCode == 2 { tally.torn += 1 }
        tally.queueConsumersKilled += 1
        var next = 0
        while let sequence = try? reports.receive(Int.self) {
            if sequence != next { tally.unexpected.append("the consumer reported item \(sequence) after \(next - 1)") }
            next = sequence + 1
        }
        reports.close()
        tally.queueItemsDelivered += next
        var inFlight = 0
        while let item = try? queue.get(timeout: .zero) {
            watchdog.tick()
            if !item.isWhole || item.producer != 2 { tally.torn += 1 }
            if item.sequence == next + 1 && inFlight == 0 {
                inFlight = 1  // taken by the consumer, which died before it said so
                next += 1
            }
            if item.sequence != next {
                if item.sequence < next { tally.duplicated += 1 } else { tally.lost += item.sequence - next }
            }
            next = item.sequence + 1
            tally.queueItemsDelivered += 1
        }
        tally.queueItemsInFlight += inFlight
        tally.lost += items - next
        queue.close()
    }
}

/// A manager's client is SIGKILLed in the middle of its calls (each takes a
/// managed lock, writes an entry, lets the lock go). The server must go on:
/// the dead client's lock free for the next taker, every entry written whole,
/// the entries a prefix of what the client meant to write.
enum ManagerRound {
    static func run(manager: Manager, random: inout SplitMix, tally: inout Tally) throws {
        let table = try manager.dictionary([Int: Int]())
        let lock = try manager.lock()
        let started = try Event()
        let client = ChildProcess {
            for index in 0..<1_000_000 {
                guard try lock.acquire(timeout: .seconds(30)) else { exit(2) }
                try table.set(index &* 3, for: index)
                try lock.release()
                if index == 0 { try started.set() }
            }
        }
        try client.start()
        guard started.wait(timeout: .seconds(30)) else {
            tally.unexpected.append("a manager client never made its first call")
            try client.kill()
            _ = try client.join()
            return
        }
        usleep(useconds_t(random.next() % 20_000))  // the fault's timing
        try client.kill()
        _ = try client.join()
        tally.managerClientsKilled += 1
        guard try lock.acquire(timeout: .seconds(10)) else {
            tally.unexpected.append("a dead manager client's lock was never freed")
            return
        }
        try lock.release()
        let entries = try table.snapshot()
        for index in 0..<entries.count where entries[index] != index &* 3 {
            tally.unexpected.append("a dead manager client's entry \(index) is \(entries[index].map(String.init) ?? "missing")")
        }
        tally.managerCallsSeen += entries.count
        tally.managerLocksFreed += 1
        try table.removeAll()
    }
}
