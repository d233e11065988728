import Foundation
import Testing

@testable import Multiprocessing

struct WriteMemory: ProcessJob {
    var memory: SharedMemory
    var byte: UInt8
    func run() throws -> Bool {
        memory.bytes.initializeMemory(as: UInt8.self, repeating: byte)
        return true
    }
}

struct ReadNamed: ProcessJob {
    var name: String
    func run() throws -> [UInt8] {
        let memory = try SharedMemory.attach(name: name)
        defer { memory.close() }
        return Array(memory.bytes.prefix(4))
    }
}

struct Increment: ProcessJob {
    var value: SharedValue<Int>
    var array: SharedArray<Int>
    var times: Int
    func run() throws -> Bool {
        for _ in 0..<times {
            try value.withLock { $0 += 1 }
            try array.withLock { $0[1] += 2 }
        }
        return true
    }
}

/// The shared-memory trackers running (executed anew, they carry the name).
func trackerProcesses() -> [(pid: Int32, parent: Int32)] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> (Int32, Int32)? in
        guard let pid = Int32(entry),
              let command = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"),
              String(decoding: command, as: UTF8.self).hasPrefix("swift-multiprocessing-shm-tracker"),
              let status = try? String(contentsOfFile: "/proc/\(entry)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("PPid:") }),
              let parent = Int32(line.dropFirst(5).trimmingCharacters(in: .whitespaces)) else { return nil }
        return (pid, parent)
    }
}

/// Whether the segment `name` exists and its creator wrote its first byte
/// (it writes once its `SharedMemory` is made, and so tracked).
func isWritten(_ name: String) -> Bool {
    guard let memory = try? SharedMemory.attach(name: name) else { return false }
    // Kept until read: its bytes are unmapped when it goes.
    return withExtendedLifetime(memory) { memory.bytes[0] == 7 }
}

/// Creates a named segment, then waits to be killed (or exits at once).
struct CreateNamed: ProcessJob {
    var name: String
    var track = true
    var waits = true
    func run() throws -> Bool {
        let memory = try SharedMemory(name: name, size: 4096, track: track)
        memory.bytes[0] = 7
        if waits { sleep(60) }
        if !track { _exit(0) }  // no deinit, no close: the name stays
        return true
    }
}

/// Writes its slice of a raw array and sets a raw value once done, no lock.
struct WriteSlice: ProcessJob {
    var array: RawSharedArray<Int>
    var done: RawSharedValue<Int32>
    var slice: Range<Int>
    func run() -> Bool {
        for i in slice { array[i] = i * i }
        done.value = 1
        return true
    }
}

struct HoldLockAndDie: ProcessJob {
    var lock: Lock
    var ready: Event
    func run() throws -> Bool {
        try lock.acquire()
        try ready.set()
        while true { sleep(60) }
    }
}

struct WaitForEvent: ProcessJob {
    var event: Event
    func run() throws -> Bool { event.wait(timeout: .seconds(30)) }
}

struct WaitAtBarrier: ProcessJob {
    var barrier: Barrier
    func run() throws -> Int { try barrier.wait(timeout: .seconds(30)) }
}

struct WaitForCondition: ProcessJob {
    var condition: Condition
    var value: SharedValue<Int>
    func run() throws -> Int {
        try condition.acquire()
        defer { try? condition.release() }
        _ = try condition.wait(timeout: .seconds(30)) { value.value >= 3 }
        return value.value
    }
}

/// Entries in /dev/shm whose name contains `marker`.
func sharedMemoryEntries(_ marker: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []).filter { $0.contains(marker) }
}

@Suite("Shared memory and synchronisation across processes")
struct SharedStateTests {
    @Test("anonymous shared memory written by a child is seen by the parent", arguments: jobStartMethods)
    func anonymous(method: StartMethod) throws {
        let memory = try SharedMemory(size: 4096)
        defer { memory.close() }
        let child = try ChildProcess(job: WriteMemory(memory: memory, byte: 0xAB), startMethod: method)
        try child.start()
        #expect(try child.join() == 0)
        #expect(memory.bytes.allSatisfy { $0 == 0xAB })
    }

    @Test("named shared memory: attach by name, unlinked by its owner, typed errors")
    func named() throws {
        let name = "swift-mp-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let memory = try SharedMemory(name: name, size: 64)
        #expect(sharedMemoryEntries(name).count == 1)
        // Its tracker runs as an image of its own (not a copy of this
        // process's memory), and is not this process's child. (Just started,
        // it may not have executed its image yet.)
        #expect(eventually(within: .seconds(20)) { trackerProcesses().contains { $0.parent != getpid() } })
        memory.bytes.copyBytes(from: [1, 2, 3, 4])
        #expect(throws: SharedMemoryError.alreadyExists(name)) { try SharedMemory(name: name, size: 64) }
        let child = try ChildProcess(job: ReadNamed(name: name), startMethod: .spawn)
        try child.start()
        try child.join()
        #expect(try child.output(as: [UInt8].self) == [1, 2, 3, 4])
        memory.close()
        #expect(sharedMemoryEntries(name).isEmpty)
        #expect(throws: SharedMemoryError.notFound(name)) { try SharedMemory.attach(name: name) }
        #expect(throws: SharedMemoryError.invalidName("a/b")) { try SharedMemory(name: "a/b", size: 1) }
        #expect(throws: SharedMemoryError.invalidSize(0)) { try SharedMemory(size: 0) }
    }

    @Test("a named segment its owner never closed is unlinked when the owner exits")
    func namedUnlinkedAtExit() async {
        await #expect(processExitsWith: .success) {
            exit(SharedStateScenarios.namedLeftOpen())
        }
        #expect(sharedMemoryEntries("swift-mp-exit-test-").isEmpty)
    }

    @Test("Value and Array updates from two processes under the lock lose none", arguments: jobStartMethods)
    func lockedIncrements(method: StartMethod) throws {
        let value = try SharedValue(0)
        let array = try SharedArray([5, 0, 7])
        let children = try (0..<2).map { _ in try ChildProcess(job: Increment(value: value, array: array, times: 2000), startMethod: method) }
        for child in children { try child.start() }
        for child in children { #expect(try child.join() == 0) }
        #expect(value.value == 4000)
        #expect(try array.toArray() == [5, 8000, 7])
        array[2] = 9
        #expect(array[2] == 9)
    }

    @Test("a named segment whose creator is SIGKILLed is unlinked once its program is gone, by every start method", arguments: jobStartMethods)
    func creatorKilled(method: StartMethod) throws {
        let name = "swift-mp-killed-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        // A fork child shares this process's tracker (its program lives on):
        // it is forked by a closure child that ends, so its program is gone.
        let creator: ChildProcess
        if method == .fork {
            creator = ChildProcess {
                let inner = try ChildProcess(job: CreateNamed(name: name), startMethod: .fork)
                try inner.start()
                while !isWritten(name) { usleep(1000) }
                try inner.kill()
                _ = try inner.join()
                _exit(0)  // the tracker this child started is the program's
            }
        } else {
            creator = try ChildProcess(job: CreateNamed(name: name), startMethod: method)
        }
        try creator.start()
        #expect(eventually(within: .seconds(20)) { isWritten(name) || creator.exitCode != nil })
        if method != .fork { try creator.kill() }
        _ = try creator.join()
        #expect(eventually(within: .seconds(10)) { sharedMemoryEntries(name).isEmpty }, "\(sharedMemoryEntries(name))")
    }

    @Test("a segment made with track: false outlives its program until unlinked; nothing is unlinked twice")
    func untracked() throws {
        let name = "swift-mp-untracked-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let creator = try ChildProcess(job: CreateNamed(name: name, track: false, waits: false), startMethod: .spawn)
        try creator.start()
        #expect(try creator.join() == 0)
        let kept = try SharedMemory.attach(name: name)
        #expect(kept.bytes[0] == 7)
        try kept.unlink()
        #expect(sharedMemoryEntries(name).isEmpty)
        // Made again under the same name by this process and closed: the
        // tracker was told it is gone, and a third program can take the name.
        let again = try SharedMemory(name: name, size: 64)
        again.close()
        #expect(sharedMemoryEntries(name).isEmpty)
        let third = try SharedMemory(name: name, size: 64, track: false)
        defer { try? third.unlink() }
        #expect(sharedMemoryEntries(name).count == 1)

        // A create that fails because the name is taken leaves the owner's
        // tracking alone: the owner still unlinks it at close.
        let owned = "swift-mp-owned-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let owner = try SharedMemory(name: owned, size: 64)
        #expect(throws: SharedMemoryError.alreadyExists(owned)) { try SharedMemory(name: owned, size: 64) }
        owner.close()
        #expect(sharedMemoryEntries(owned).isEmpty)
    }

    @Test("raw arrays and values, without a lock: each child writes its own slice, by every start method", arguments: jobStartMethods)
    func rawSlices(method: StartMethod) throws {
        let array = try RawSharedArray(repeating: -1, count: 10_000)
        let flags = try (0..<2).map { _ in try RawSharedValue<Int32>(0) }
        let children = try (0..<2).map { index in
            try ChildProcess(job: WriteSlice(array: array, done: flags[index], slice: (index * 5000)..<((index + 1) * 5000)), startMethod: method)
        }
        for child in children { try child.start() }
        for child in children { #expect(try child.join() == 0) }
        #expect(array.toArray() == (0..<10_000).map { $0 * $0 })
        #expect(flags.map(\.value) == [1, 1])
        array.withUnsafeMutableBufferPointer { $0[0] = 42 }
        #expect(array[0] == 42)
        let value = try RawSharedValue(3.5)
        value.withUnsafeMutablePointer { $0.pointee *= 2 }
        #expect(value.value == 7)
    }

    @Test("a raw array of a negative count, or decoded at the wrong size, is a typed error; one of none works")
    func rawBadInput() throws {
        #expect(throws: SharedMemoryError.invalidSize(-1)) { try RawSharedArray(repeating: 0, count: -1) }
        #expect(throws: SharedMemoryError.invalidSize(Int.max / 4)) { try RawSharedArray(repeating: 0, count: Int.max / 4) }
        let empty = try RawSharedArray<Int>([])
        #expect(empty.count == 0 && empty.toArray().isEmpty)
        // The memory of 4 Ints read as 5, or a value's as a wider type.
        let four = try RawSharedArray([1, 2, 3, 4])
        let attachments = DescriptorAttachments()
        var bytes = try ValueCodec.encode(four, attachments: attachments)
        defer { attachments.closeUntaken() }
        let (old, new) = (try ValueCodec.encode(4), try ValueCodec.encode(5))
        if let at = bytes.indices.last(where: { Array(bytes[$0...].prefix(old.count)) == old }) {
            bytes.replaceSubrange(at..<(at + old.count), with: new)
        }
        let copy = DescriptorAttachments(try attachments.descriptors.map { try Syscall.duplicate($0) })
        defer { copy.closeUntaken() }
        #expect { try ValueCodec.decode(RawSharedArray<Int>.self, from: bytes, attachments: copy) } throws: { error in
            "\(error)".contains("invalid shared memory size 32")
        }
    }

    @Test("a process killed holding a lock does not stall the others")
    func robustLock() throws {
        let lock = try Lock()
        let ready = try Event()
        let holder = try ChildProcess(job: HoldLockAndDie(lock: lock, ready: ready), startMethod: .forkserver)
        try holder.start()
        #expect(ready.wait(timeout: .seconds(30)))
        #expect(try lock.acquire(timeout: .milliseconds(50)) == false)
        try holder.kill()
        try holder.join()
        #expect(throws: SynchronizationError.previousOwnerDied) { try lock.acquire(timeout: .seconds(5)) }
        // The caller holds it now, and can carry on.
        try lock.release()
        #expect(try lock.acquire(timeout: .seconds(1)))
        try lock.release()
        #expect(throws: SynchronizationError.notOwner) { try lock.release() }
    }

    @Test("a lock taken twice by its holder is a deadlock error; an RLock is not")
    func recursion() throws {
        let lock = try Lock()
        try lock.acquire()
        #expect(throws: SynchronizationError.deadlock) { try lock.acquire() }
        try lock.release()
        let rlock = try RLock()
        try rlock.acquire()
        try rlock.acquire()
        try rlock.release()
        try rlock.release()
        #expect(throws: SynchronizationError.notOwner) { try rlock.release() }
    }

    @Test("semaphores count, time out, and a bounded one refuses extra releases")
    func semaphores() throws {
        let semaphore = try Semaphore(value: 2)
        #expect(try semaphore.acquire())
        #expect(try semaphore.acquire())
        #expect(semaphore.value == 0)
        #expect(try semaphore.acquire(timeout: .milliseconds(30)) == false)
        try semaphore.release()
        #expect(semaphore.value == 1)
        let bounded = try BoundedSemaphore(value: 1)
        #expect(throws: SynchronizationError.boundExceeded) { try bounded.release() }
        #expect(try bounded.acquire())
        try bounded.release()
    }

    @Test("an event set by the parent wakes a waiting child", arguments: jobStartMethods)
    func event(method: StartMethod) throws {
        let event = try Event()
        #expect(!event.isSet)
        #expect(event.wait(timeout: .milliseconds(20)) == false)
        let child = try ChildProcess(job: WaitForEvent(event: event), startMethod: method)
        try child.start()
        try event.set()
        #expect(event.isSet)
        try child.join()
        #expect(try child.output(as: Bool.self))
        try event.clear()
        #expect(!event.isSet)
    }

    @Test("a condition wakes a child waiting for a predicate on shared state")
    func condition() throws {
        let condition = try Condition()
        let value = try SharedValue(0)
        let child = try ChildProcess(job: WaitForCondition(condition: condition, value: value), startMethod: .forkserver)
        try child.start()
        for _ in 0..<3 {
            try condition.withLock {
                try value.withLock { $0 += 1 }
                try condition.notifyAll()
            }
        }
        #expect(try child.join() == 0)
        #expect(try child.output(as: Int.self) == 3)
        try condition.acquire()
        #expect(try condition.wait(timeout: .milliseconds(20)) == false)
        try condition.release()
    }

    @Test("a barrier releases all parties together; a timeout breaks it")
    func barrier() throws {
        let barrier = try Barrier(parties: 3)
        let children = try (0..<2).map { _ in try ChildProcess(job: WaitAtBarrier(barrier: barrier), startMethod: .fork) }
        for child in children { try child.start() }
        let mine = try barrier.wait(timeout: .seconds(30))
        var indices = [mine]
        for child in children {
            try child.join()
            indices.append(try child.output(as: Int.self))
        }
        #expect(indices.sorted() == [0, 1, 2])
        // The next round has one party: it times out and breaks the barrier.
        #expect(throws: SynchronizationError.brokenBarrier) { try barrier.wait(timeout: .milliseconds(30)) }
    }

    @Test("a barrier wait that times out breaks it for everyone; reset mends it")
    func brokenBarrier() throws {
        let barrier = try Barrier(parties: 2)
        #expect(throws: SynchronizationError.brokenBarrier) { try barrier.wait(timeout: .milliseconds(30)) }
        #expect(barrier.isBroken)
        #expect(throws: SynchronizationError.brokenBarrier) { try barrier.wait(timeout: .seconds(1)) }
        try barrier.reset()
        #expect(!barrier.isBroken)
        try barrier.abort()
        #expect(barrier.isBroken)
    }
}

enum SharedStateScenarios {
    static func namedLeftOpen() -> Int32 {
        guard let memory = try? SharedMemory(name: "swift-mp-exit-test-\(getpid())", size: 16) else { return 1 }
        memory.bytes[0] = 1
        // Never closed (nor released, so no deinit closes it): the exit handler must unlink it.
        _ = Unmanaged.passRetained(memory)
        return 0
    }
}
