import CMultiprocessing
import Foundation
import Synchronization
import Testing

@testable import Multiprocessing

// Types for the fork-safety stress. The parent's churning threads build
// `Left`/`Right` towers; children build `ChildLeft`/`ChildRight` ones, which
// the parent never makes: every child needs new metadata, type names,
// conformances and generic errors from the runtime, under its locks.

struct Left<T> {}
struct Right<T> {}
struct ChildLeft<T> {}
struct ChildRight<T> {}
struct TowerFailure<T>: Error {}

enum Tower {
    /// A type unique to `number` (its binary digits as a tower of two
    /// generic types), and the runtime work a first use of it costs.
    static func climb<T>(_ type: T.Type, number: Int, child: Bool) -> String {
        if number <= 1 { return touch(T.self) }
        if child {
            return number & 1 == 0
                ? climb(ChildLeft<T>.self, number: number >> 1, child: true)
                : climb(ChildRight<T>.self, number: number >> 1, child: true)
        }
        return number & 1 == 0
            ? climb(Left<T>.self, number: number >> 1, child: false)
            : climb(Right<T>.self, number: number >> 1, child: false)
    }

    /// A type name, two conformance look-ups and a thrown generic error.
    static func touch<T>(_ type: T.Type) -> String {
        var name = String(describing: type)
        if type is any Equatable.Type { name += "=" }
        if (type as Any.Type) is any Hashable.Type { name += "h" }
        do {
            throw TowerFailure<T>()
        } catch {
            name += "!"
        }
        return name
    }
}

/// Threads that keep the runtime busy making new metadata until stopped.
final class RuntimeChurn: Sendable {
    private let stopped = Atomic<Bool>(false)
    private let running = Atomic<Int>(0)
    let made = Atomic<Int>(0)

    init(threads: Int) {
        for index in 0..<threads {
            running.add(1, ordering: .relaxed)
            let thread = Thread { [self] in
                var number = 2 + index
                while !stopped.load(ordering: .relaxed) {
                    _ = Tower.climb(Int.self, number: number, child: false)
                    number += threads
                    made.add(1, ordering: .relaxed)
                }
                running.subtract(1, ordering: .releasing)
            }
            thread.start()
        }
    }

    func stop() {
        stopped.store(true, ordering: .relaxed)
        while running.load(ordering: .acquiring) > 0 { sched_yield() }
    }
}

/// Children started in 1_000_000 + 100 * run + index: a family the parent
/// never climbs, different in every child.
func childNumber(_ index: Int) -> Int { 1_000_000 + index * 7919 }

// Serialized: the tests read process-wide fork counts, and one blocks the
// park signal on purpose.
@Suite("Fork safety", .serialized)
struct ForkSafetyTests {
    @Test("closure children and closure pool maps never hang while other threads churn the runtime")
    func stress() throws {
        let before = ForkSafety.statistics
        let churn = RuntimeChurn(threads: 3)
        defer { churn.stop() }
        while churn.made.load(ordering: .relaxed) < 100 { sched_yield() }

        var hung = 0
        var finished = 0
        let children = 150
        for index in 0..<children {
            let number = childNumber(index)
            let process = ChildProcess {
                let name = Tower.climb(Int.self, number: number, child: true)
                if name.isEmpty { throw Refusal(reason: "no name") }
            }
            try process.start()
            if try process.join(timeout: .seconds(10)) == nil {
                hung += 1
                // Name the lock it waits on, for whoever reads the log (#12).
                if let pid = process.pid { print("fork safety stress: child \(pid) hung; its stacks:\n\(threadStacks(of: pid))") }
                try process.kill()
                _ = try process.join()
            } else {
                #expect(process.exitCode == 0)
                finished += 1
            }
        }

        var mapped = 0
        var timedOut = 0
        try withProcessPool(processes: 2) { pool in
            for round in 0..<15 {
                let items = Array(0..<8).map { childNumber(children + round * 8 + $0) }
                let results = try pool.mapAsync(items, chunkSize: 1, timeout: .seconds(10)) { number in
                    Tower.climb(Int.self, number: number, child: true).count
                }.results()
                for result in results {
                    switch result {
                    case .success(let count): #expect(count > 0); mapped += 1
                    case .failure(.timedOut): timedOut += 1
                    case .failure(let error): Issue.record("a mapped item failed: \(error)")
                    }
                }
            }
        }
        churn.stop()
        let after = ForkSafety.statistics
        let forks = after.forks - before.forks
        let quiesced = after.quiesced - before.quiesced
        print("fork safety stress: \(finished)/\(children) children finished, \(hung) hung; \(mapped) mapped items, \(timedOut) timed out; forks \(forks), quiesced \(quiesced), asked again \(after.retries - before.retries), parked at an unlock \(after.deferred - before.deferred), unstoppable \(after.unstoppable - before.unstoppable), busy \(after.busy - before.busy), released early \(after.releasedEarly - before.releasedEarly), runtime metadata made by the churn \(churn.made.load(ordering: .relaxed))")
        // Before the world was stopped, 20-30 % of such children hung; with
        // threads parked wherever the signal found them (no lock counts),
        // 39 of 150 children and 9 of 120 items (measured).
        #expect(hung == 0)
        #expect(timedOut == 0)
        #expect(finished == children)
        #expect(mapped == 15 * 8)
        #expect(after.deferred > before.deferred, "some churning thread was found holding a runtime lock and parked later")
        // Forks of other suites, made in the same moments, count here too: one
        // of theirs may find a thread of theirs holding a lock for the whole
        // budget.
        withKnownIssue("a fork of another suite's goes ahead without the world stopped", isIntermittent: true) {
            #expect(quiesced == forks, "every fork stopped the world: \(after)")
        }
    }

    @Test("a fork while another thread runs a lazy global's initializer waits for it; the child reads the global")
    func forkDuringLazyGlobal() throws {
        let entered = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        SlowGlobal.hooks = (entered, release)
        Thread { _ = SlowGlobal.value }.start()
        entered.wait()
        let before = ForkSafety.statistics
        let deferralsBefore = cmp_quiesce_deferrals()
        // A child that reads the global: forked while the initializer ran,
        // it would wait on the global's once-flag for ever.
        let process = ChildProcess {
            if SlowGlobal.value != 42 { throw Refusal(reason: "the global was not initialized") }
        }
        let started = Atomic<Bool>(false)
        Thread {
            try? process.start()
            started.store(true, ordering: .releasing)
        }.start()
        // The stop finds the initializer's thread inside swift_once and waits
        // for it: only then does the initializer finish.
        let deferred = eventually(within: .seconds(30)) { cmp_quiesce_deferrals() != deferralsBefore }
        let startedFirst = started.load(ordering: .acquiring)
        release.signal()
        while !started.load(ordering: .acquiring) { sched_yield() }
        #expect(deferred)
        #expect(!startedFirst, "the fork did not wait for the initializer")
        let code = try process.join(timeout: .seconds(10))
        if code == nil { try process.kill(); _ = try process.join() }
        #expect(code == 0)
        let after = ForkSafety.statistics
        // (The thread that lets the initializer finish is parked too while a
        // round of the stop lasts: the stop lets every thread go after 20 ms
        // and starts again, and so makes way for it.)
        #expect(after.forks > before.forks)
        #expect(after.busy == before.busy, "the fork waited for the initializer, not for the budget")
    }

    @Test("a fork while other threads print: every child finishes and prints whole lines")
    func forkDuringPrint() throws {
        let stop = Atomic<Bool>(false)
        let printers = Atomic<Int>(0)
        for _ in 0..<2 {
            printers.add(1, ordering: .relaxed)
            Thread {
                while !stop.load(ordering: .relaxed) {
                    // Takes and lets go stdout's lock, printing nothing.
                    print("", terminator: "")
                }
                printers.subtract(1, ordering: .releasing)
            }.start()
        }
        defer {
            stop.store(true, ordering: .relaxed)
            while printers.load(ordering: .acquiring) > 0 { sched_yield() }
        }
        for index in 0..<20 {
            let number = childNumber(20_000 + index)
            let process = ChildProcess {
                print("", terminator: Tower.climb(Int.self, number: number, child: true).isEmpty ? "!" : "")
            }
            try process.start()
            let code = try process.join(timeout: .seconds(10))
            if code == nil { try process.kill(); _ = try process.join() }
            #expect(code == 0)
        }
    }

    @Test("forks while other threads put and get on a queue (its shared lock is not counted): every child uses that queue and finishes, nothing lost")
    func forkDuringQueueTraffic() throws {
        let traffic = try Queue<Int>(maxSize: 64)
        let results = try Queue<Int>()
        let stop = Atomic<Bool>(false)
        let running = Atomic<Int>(2)
        let moved = Atomic<Int>(0)
        Thread {
            var next = 0
            while !stop.load(ordering: .relaxed) {
                if (try? traffic.put(next, timeout: .milliseconds(10))) != nil { next += 1 }
            }
            running.subtract(1, ordering: .releasing)
        }.start()
        Thread {
            while !stop.load(ordering: .relaxed) {
                if (try? traffic.get(timeout: .milliseconds(10))) != nil { moved.add(1, ordering: .relaxed) }
            }
            running.subtract(1, ordering: .releasing)
        }.start()
        defer {
            stop.store(true, ordering: .relaxed)
            while running.load(ordering: .acquiring) > 0 { sched_yield() }
        }
        for index in 0..<20 {
            // The parent's threads may hold the traffic queue's lock at the fork:
            // the child's put waits for them to let it go, in the parent.
            let process = ChildProcess {
                try traffic.put(-1, timeout: .seconds(5))
                try results.put(index)
            }
            try process.start()
            let code = try process.join(timeout: .seconds(10))
            if code == nil { try process.kill(); _ = try process.join() }
            #expect(code == 0)
        }
        #expect(Set((0..<20).map { _ in try? results.get(timeout: .seconds(1)) }) == Set(0..<20))
        #expect(moved.load(ordering: .relaxed) > 0)
    }

    @Test("a fork while another thread holds a library lock: the fork waits for it, and the child finishes")
    func forkDuringLibraryLock() throws {
        let held = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        Thread {
            ChildRegistry.shared.forkLock.withLock { _ in
                held.signal()
                release.wait()
            }
        }.start()
        held.wait()
        let process = ChildProcess { _ = Tower.climb(Int.self, number: childNumber(30_000), child: true) }
        let started = Atomic<Bool>(false)
        Thread {
            try? process.start()
            started.store(true, ordering: .releasing)
        }.start()
        release.signal()
        while !started.load(ordering: .acquiring) { sched_yield() }
        let code = try process.join(timeout: .seconds(10))
        if code == nil { try process.kill(); _ = try process.join() }
        #expect(code == 0)
    }

    @Test("a fork while another thread is blocked in fread, holding its stream's lock: the fork goes ahead, and the child finishes")
    func forkDuringBlockedRead() throws {
        // A stream of our own whose lock a reader holds for as long as its read
        // waits (swift-testing's exit tests read their back channel so; a fork
        // that flushed every stream waited on it for ever).
        let pipe = try #require(Optional(try Syscall.pipe()))
        let stream = try #require(fdopen(pipe.readEnd.rawValue, "r"))
        nonisolated(unsafe) let shared = stream
        let reader = Thread {
            var byte: UInt8 = 0
            _ = fread(&byte, 1, 1, shared)
        }
        reader.start()
        // The reader is inside fread once the stream's lock is taken.
        #expect(eventually(within: .seconds(30)) {
            if ftrylockfile(shared) == 0 { funlockfile(shared); return false }
            return true
        })
        let process = ChildProcess { print("child of a process with a blocked reader") }
        let started = Atomic<Bool>(false)
        Thread {
            try? process.start()
            started.store(true, ordering: .releasing)
        }.start()
        let startedDuringRead = eventually(within: .seconds(30)) { started.load(ordering: .acquiring) }
        // Ends the read (and so a fork that waited behind it), then the stream.
        Syscall.close(pipe.writeEnd)
        while !reader.isFinished || !started.load(ordering: .acquiring) { sched_yield() }
        fclose(stream)
        #expect(startedDuringRead, "the fork waited for the read")
        let code = try process.join(timeout: .seconds(30))
        if code == nil { try process.kill(); _ = try process.join() }
        #expect(code == 0)
    }

    @Test("a thread that blocks the park signal: the fork goes ahead within the bound and says so")
    func unstoppableThread() throws {
        let blocked = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        Thread {
            var set = sigset_t()
            sigfillset(&set)
            pthread_sigmask(SIG_BLOCK, &set, nil)
            blocked.signal()
            release.wait()
        }.start()
        blocked.wait()
        defer { release.signal() }
        let before = ForkSafety.statistics
        let process = ChildProcess {}
        try process.start()
        #expect(try process.join(timeout: .seconds(10)) == 0)
        let after = ForkSafety.statistics
        #expect(after.unstoppable - before.unstoppable >= 1)
    }

    @Test("with stopping the world turned off, forks are plain; turned on again, they stop it")
    func plainForks() async {
        // In a fresh process: the setting is global, and other suites fork meanwhile.
        await #expect(processExitsWith: .success) { exit(ForkSafetyScenarios.plainForks()) }
    }

    @Test("a thread blocked in a library wait is not signalled; woken during forks, it waits for each to end and misses nothing")
    func libraryWaits() async {
        await #expect(processExitsWith: .success) { exit(ForkSafetyScenarios.libraryWaits()) }
    }

    @Test("a SIGSYS that is not the library's still reaches the handler that was there before")
    func foreignSIGSYS() throws {
        // In a child, whose handler (inherited, or installed by its own fork) is the library's.
        let raiser = ChildProcess {
            let child = try OSProcess.fork()
            if case .parent(let pid) = child { _ = try OSProcess.wait(pid) } else { OSProcess.exit(0) }
            raise(SIGSYS)  // default action: the process dies of SIGSYS
            OSProcess.exit(0)
        }
        try raiser.start()
        #expect(try raiser.join(timeout: .seconds(10)) == -SIGSYS)
    }
}

/// A lazy global whose initializer waits until the test lets it finish.
enum SlowGlobal {
    nonisolated(unsafe) static var hooks: (entered: DispatchSemaphore, release: DispatchSemaphore)?  // set before the one thread that reads it starts
    static let value: Int = {
        hooks?.entered.signal()
        hooks?.release.wait()
        return 42
    }()
}

/// Bodies of the fork-safety exit tests: synchronous code in a fresh
/// process (the settings and counts they read are process-wide), returning
/// the exit status.
enum ForkSafetyScenarios {
    static func plainForks() -> Int32 {
        func forkOnce() -> Bool {
            let child = ChildProcess {}
            return (try? child.start()) != nil && (try? child.join(timeout: .seconds(10))) == 0
        }
        func stopped(_ s: ForkSafety.Statistics) -> Int { s.quiesced + s.busy + s.unstoppable + s.releasedEarly }
        let before = ForkSafety.statistics
        ForkSafety.stopsTheWorld = false
        guard forkOnce() else { return 2 }
        let plain = ForkSafety.statistics
        guard plain.forks == before.forks + 1, stopped(plain) == stopped(before), plain.stopping == before.stopping else { return 3 }
        ForkSafety.stopsTheWorld = true
        guard forkOnce() else { return 4 }
        let after = ForkSafety.statistics
        guard after.forks == plain.forks + 1, stopped(after) == stopped(plain) + 1 else { return 5 }
        return 0
    }

    static func libraryWaits() -> Int32 {
        let counter = Monitor(0)
        let seen = Atomic<Int>(0)
        let rounds = 150
        let waiter = Thread {
            var last = 0
            while last < rounds {
                // Blocks in cmp_safe_cond_wait until the main thread moves the counter.
                last = counter.wait(until: nil) { value in value > last ? value : nil }!
                seen.store(last, ordering: .releasing)
            }
        }
        waiter.start()
        let before = ForkSafety.statistics
        for round in 1...rounds {
            // Wakes the waiter, so that it leaves its wait while the next fork stops the world.
            counter.update { $0 = round }
            let child = ChildProcess { _ = String(describing: [round: "\(round)"]) }
            guard (try? child.start()) != nil, (try? child.join(timeout: .seconds(10))) == 0 else { return 2 }
        }
        guard eventually(within: .seconds(10), { seen.load(ordering: .acquiring) == rounds }) else { return 3 }
        let after = ForkSafety.statistics
        // The waiter was blocked at many of the forks, and so never signalled then.
        guard after.forks - before.forks == rounds, after.waiting - before.waiting >= rounds / 4 else { return 4 }
        return 0
    }
}
