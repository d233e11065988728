import CBenchmarkFloor
import FoundationEssentials
import Multiprocessing

/// `count` Ints from a forked producer to this process through a `Queue`.
@Sendable func queueInts(_ count: Int) throws {
    let queue = try Queue<Int>()
    let producer = ChildProcess {
        for i in 0..<count { try queue.put(i) }
    }
    try producer.start()
    for i in 0..<count {
        guard try queue.get() == i else { throw BenchmarkFailure(description: "out of order") }
    }
    try producer.join()
}

/// `count` 1 MiB messages from a forked producer through a `Queue`.
@Sendable func queueBytes(_ count: Int) throws {
    let queue = try Queue<[UInt8]>()
    let producer = ChildProcess {
        for _ in 0..<count { try queue.put(mebibyte) }
    }
    try producer.start()
    for _ in 0..<count {
        guard try queue.get().count == mebibyte.count else { throw BenchmarkFailure(description: "short message") }
    }
    try producer.join()
}

/// Two forked processes, released together, increment a `SharedValue` under
/// its lock, `count` times in all.
@Sendable func lockedIncrements(_ count: Int) throws {
    let value = try SharedValue(0)
    let go = try Event()
    let children = (0..<2).map { _ in
        ChildProcess {
            go.wait()  // both children start together, so the lock is contended
            for _ in 0..<(count / 2) { try value.withLock { $0 += 1 } }
        }
    }
    for child in children { try child.start() }
    try go.set()
    for child in children { try child.join() }
    guard value.value == count / 2 * 2 else { throw BenchmarkFailure(description: "lost increments") }
}

/// A forked child writes `count` Ints into a `RawSharedArray` (no lock), and
/// this process reads them all back.
@Sendable func rawArrayWrites(_ count: Int) throws {
    let array = try RawSharedArray(repeating: 0, count: count)
    let writer = ChildProcess {
        for i in 0..<count { array[i] = i }
    }
    try writer.start()
    try writer.join()
    var sum = 0
    for i in 0..<count { sum &+= array[i] }
    guard sum == count * (count - 1) / 2 else { throw BenchmarkFailure(description: "lost writes") }
}

let hundredMiB = 100 << 20
let hundredMiBSource = [UInt8](repeating: 0x5A, count: 100 << 20)

/// Writes 100 MiB into shared memory and reads it back out.
@Sendable func sharedMemoryCopy(_ count: Int) throws {
    let memory = try SharedMemory(size: hundredMiB)
    var back = [UInt8](repeating: 0, count: hundredMiB)
    for _ in 0..<count {
        hundredMiBSource.withUnsafeBytes { memory.bytes.copyMemory(from: $0) }
        back.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(memory.bytes)) }
    }
    guard back[12345] == 0x5A else { throw BenchmarkFailure(description: "copy failed") }
}

/// The floor: the same two copies in private memory.
@Sendable func privateMemoryCopy(_ count: Int) throws {
    var middle = [UInt8](repeating: 0, count: hundredMiB)
    var back = [UInt8](repeating: 0, count: hundredMiB)
    for _ in 0..<count {
        hundredMiBSource.withUnsafeBytes { source in middle.withUnsafeMutableBytes { $0.copyMemory(from: source) } }
        middle.withUnsafeBytes { source in back.withUnsafeMutableBytes { $0.copyMemory(from: source) } }
    }
    guard back[12345] == 0x5A else { throw BenchmarkFailure(description: "copy failed") }
}

let sharedStateScenarios: [Scenario] = [
    Scenario(name: "queue.int", unit: "messages", count: 200_000, quickCount: 2000, baseline: .python("queue.int"), run: queueInts),
    Scenario(name: "queue.int.floor", unit: "messages", count: 200_000, quickCount: 2000, baseline: .swift("shm ring (C, one producer)") { count in
        guard cbf_shm_ring_ints(Int32(count)) == 0 else { throw BenchmarkFailure(description: "ring failed") }
    }, run: queueInts),
    Scenario(name: "queue.bytes.1MiB", unit: "bytes", count: 300, quickCount: 10, operationsPerIteration: 1 << 20, baseline: .python("queue.bytes"), run: queueBytes),
    Scenario(name: "value.locked", unit: "increments", count: 1_000_000, quickCount: 2000, baseline: .python("value.locked"), run: lockedIncrements),
    Scenario(name: "array.raw", unit: "elements (written in a child, read here)", count: 4_000_000, quickCount: 20_000, baseline: .python("array.raw"), run: rawArrayWrites),
]

/// Run last: it keeps 100 MiB alive in this process, which would make every
/// later scenario's fork copy that many more page tables.
let largeMemoryScenarios: [Scenario] = [
    Scenario(name: "shm.copy.100MiB", unit: "bytes (write+read)", count: 5, quickCount: 1, operationsPerIteration: 100 << 20, baseline: .swift("memcpy ×2", privateMemoryCopy), run: sharedMemoryCopy),
]
