import ArgumentParser
import Foundation
import Multiprocessing

/// A chaos soak: a pool works through a stream of tasks while faults are
/// injected at random (workers SIGKILLed, tasks that trap, throw, overrun
/// their limit or exhaust their memory limit, calls cancelled), unbounded queues lose producers in the
/// middle of their puts and consumers in the middle of their gets, lock
/// holders die, and a manager's clients are killed in the middle of calls. Every outcome is checked
/// against what was planned, and one summary line says what happened.
/// The exit status is 0 only if nothing was lost, duplicated, unexplained,
/// hung or left behind.
@main
struct Soak: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "multiprocessing-soak",
        abstract: "swift-multiprocessing under injected faults."
    )

    @Option(help: "The random seed: the same seed plans the same tasks and faults.")
    var seed: UInt64 = 1

    @Option(help: "Stop after this many pool tasks.")
    var tasks: Int = 100_000

    @Option(help: "Stop after this many seconds, whatever the count.")
    var seconds: Int = 3600

    @Option(help: "Fail (exit 3) if no progress is made for this many seconds.")
    var hangAfter: Int = 120

    func run() throws {
        // Warm up: the library's launcher thread and the forkserver (a child
        // that lives as long as this process) exist from here on.
        _ = try ChildProcess.execute(SoakJob(), startMethod: .forkserver)
        let descriptors = openDescriptorCount()
        let children = childPIDs()
        let segments = sharedMemoryEntries()
        var tally = Tally()
        var random = SplitMix(seed: seed)
        let watchdog = Watchdog(limit: .seconds(hangAfter))
        let deadline = ContinuousClock.now + .seconds(seconds)
        do {
            // Each worker may use 128 MiB: the tasks planned to exhaust memory pass it.
            let pool = try ProcessPool(processes: 2, limits: WorkerLimits(memory: 128 << 20))
            let manager = try Manager()
            let injector = Injector(pool: pool, seed: random.next())
            var round = 0
            while tally.submitted < tasks && ContinuousClock.now < deadline {
                let size = min(tasks - tally.submitted, 200 + Int(random.next() % 400))
                try PoolRound.run(round: round, size: size, pool: pool, random: &random, tally: &tally, watchdog: watchdog)
                if round % 10 == 0 { try QueueRound.run(random: &random, tally: &tally, watchdog: watchdog) }
                if round % 10 == 5 { try LockRound.run(tally: &tally) }
                if round % 10 == 3 { try ConsumerRound.run(random: &random, tally: &tally, watchdog: watchdog) }
                if round % 10 == 7 { try ManagerRound.run(manager: manager, random: &random, tally: &tally) }
                round += 1
            }
            injector.stop()
            tally.injectorKills = injector.kills
            pool.close()
            try pool.join()
            manager.shutdown()
        } catch {
            tally.unexpected.append("the soak itself failed: \(error)")
        }
        watchdog.stop()
        // Nothing left: children reaped, descriptors closed, no segment in /dev/shm.
        let settled = eventually(within: .seconds(10)) {
            childPIDs() == children && openDescriptorCount() <= descriptors && sharedMemoryEntries() == segments
        }
        if !settled {
            tally.leftover = "children \(childPIDs().subtracting(children).count), descriptors \(descriptors) → \(openDescriptorCount()), /dev/shm \(segments.count) → \(sharedMemoryEntries().count)"
        }
        print(tally.summary(seed: seed))
        for problem in tally.unexpected.prefix(20) { print("  unexpected: \(problem)") }
        if !tally.clean { throw ExitCode(1) }
    }
}

// MARK: - What a task does

/// What a planned task is to do in its worker.
enum Fate: UInt8, Codable, Sendable {
    case value, throwing, trap, overrun, exhaust
}

struct Planned: Codable, Sendable {
    var id: Int
    var fate: Fate
}

/// Starts the forkserver before anything is counted.
struct SoakJob: ProcessJob {
    func run() throws -> Int { 0 }
}

struct Refused: Error, CustomStringConvertible {
    var id: Int
    var description: String { "task \(id) refused on purpose" }
}

/// The soak's task: twice its id, or the fault it was planned to have.
struct SoakTask: ProcessFunction {
    func callAsFunction(_ task: Planned) throws -> Int {
        switch task.fate {
        case .value: return task.id &* 2
        case .throwing: throw Refused(id: task.id)
        case .trap: fatalError("soak: task \(task.id) traps on purpose")
        case .overrun:
            // Runs past its limit until the pool kills its worker.
            while true { sleep(60) }
        case .exhaust:
            // Allocates and touches memory until the worker's limit ends it.
            var kept: [[UInt8]] = []
            while kept.count >= 0 { kept.append([UInt8](repeating: 1, count: 8 << 20)) }
            return kept.count
        }
    }
}

// MARK: - Counting

struct Tally {
    var submitted = 0
    var completed = 0
    var threw = 0
    var trapped = 0
    var timedOut = 0
    var overMemory = 0
    var killed = 0
    var cancelled = 0
    var injectorKills = 0
    var lost = 0
    var duplicated = 0
    var queueItemsDelivered = 0
    var queueProducersKilled = 0
    var torn = 0
    var queueConsumersKilled = 0
    var queueItemsInFlight = 0
    var managerClientsKilled = 0
    var managerLocksFreed = 0
    var managerCallsSeen = 0
    var lockHoldersKilled = 0
    var locksRecovered = 0
    var hung = 0
    var leftover: String?
    var unexpected: [String] = []

    var failed: Int { threw + trapped + timedOut + overMemory + killed + cancelled }
    var clean: Bool {
        unexpected.isEmpty && lost == 0 && duplicated == 0 && torn == 0 && hung == 0 && leftover == nil
            && submitted == completed + failed && locksRecovered == lockHoldersKilled
            && managerLocksFreed == managerClientsKilled && queueItemsInFlight <= queueConsumersKilled
    }

    func summary(seed: UInt64) -> String {
        "soak (seed \(seed)): \(submitted) tasks, \(completed) completed, \(failed) failed "
            + "(threw \(threw), trapped \(trapped), timed out \(timedOut), over the memory limit \(overMemory), killed \(killed) — \(injectorKills) by the injector, cancelled \(cancelled)), "
            + "\(unexpected.count) unexplained, \(lost) lost, \(duplicated) duplicated; "
            + "queues: \(queueItemsDelivered) items delivered, \(queueProducersKilled) producers killed mid-put, "
            + "\(queueConsumersKilled) consumers killed mid-get (\(queueItemsInFlight) items with them), \(torn) torn; "
            + "managers: \(managerClientsKilled) clients killed mid-call, \(managerLocksFreed) of their locks freed, \(managerCallsSeen) entries whole; "
            + "locks: \(lockHoldersKilled) holders killed, \(locksRecovered) recovered; "
            + "\(hung) hung; left behind: \(leftover ?? "nothing")"
    }
}

/// A small seeded generator (SplitMix64): the same seed, the same soak.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
