import CMultiprocessing
import Foundation
import Testing

@testable import Multiprocessing

/// Each test here runs in an exit test: a fresh copy of the test runner, so
/// that descriptor and child counts are exact and nothing else interferes.
@Suite("No leaks, no orphans")
struct LeakTests {
    @Test("200 start/join cycles leave descriptors and children where they were")
    func startJoinCycles() async {
        await #expect(processExitsWith: .success) {
            exit(LeakScenarios.startJoinCycles())
        }
    }

    @Test("a child whose parent is SIGKILLed dies within a second, by every start method")
    func parentDeath() async {
        await #expect(processExitsWith: .success) {
            exit(LeakScenarios.parentDeath())
        }
    }

    @Test("30 pools with crashes, timeouts, cancellations and terminations, half of them capturing output, leave descriptors and children where they were")
    func poolCycles() async {
        await #expect(processExitsWith: .success) {
            exit(LeakScenarios.poolCycles())
        }
    }

    @Test("20 managers used from children over rings, one client killed mid-call, leave descriptors and children where they were")
    func managerCycles() async {
        await #expect(processExitsWith: .success) {
            exit(LeakScenarios.managerCycles())
        }
    }

    @Test("at exit, daemonic children are terminated and the others joined")
    func exitHandling() async {
        await #expect(processExitsWith: .success) {
            exit(LeakScenarios.exitHandling())
        }
    }
}

/// The bodies of the exit tests: synchronous code, returning the exit status.
enum LeakScenarios {
    static func poolCycles() -> Int32 {
        do {
            // Warm up: the launcher thread and the forkserver exist from here on.
            _ = try ChildProcess.execute(Square(value: 1), startMethod: .forkserver)
            let descriptors = openDescriptorCount()
            let children = childPIDs()
            for round in 0..<30 {
                // Every other round captures the workers' output: each worker's memory files are closed with it.
                let output = round % 2 == 1 ? WorkerOutput(standardOutput: .captured, standardError: .captured) : WorkerOutput()
                let pool = try ProcessPool(processes: 2, startMethod: jobStartMethods[round % 3], maxTasksPerChild: round % 2 == 0 ? 3 : nil, output: output)
                guard try pool.map(SquareFunction(), over: 0..<20, chunkSize: 2) == (0..<20).map({ $0 * $0 }) else { return 2 }
                let crash = try pool.applyAsync { () -> Int in if round >= 0 { cmp_segfault() }; return 0 }
                guard case .failure(.crashed(signal: SIGSEGV, _)) = Result(catching: { () throws(ProcessError) in
                    do { return try crash.get() } catch let error as ProcessError { throw error } catch { throw .cancelled }
                }) else { return 3 }
                let slow = try pool.applyAsync(timeout: .milliseconds(50)) { () -> Int in sleep(10); return 0 }
                guard (try? slow.get()) == nil else { return 4 }
                let cancelled = try pool.mapAsync(0..<4, chunkSize: 1) { (x: Int) -> Int in sleep(10); return x }
                cancelled.cancel()
                if round % 3 == 0 {
                    pool.terminate()
                } else {
                    pool.close()
                }
                try pool.join()
            }
            return settled(descriptors: descriptors, children: children)
        } catch {
            print("failed: \(error)")
            return 5
        }
    }

    static func managerCycles() -> Int32 {
        do {
            _ = try ChildProcess.execute(Square(value: 1), startMethod: .forkserver)
            let descriptors = openDescriptorCount()
            let children = childPIDs()
            for round in 0..<20 {
                try withManager { manager in
                    let dictionary = try manager.dictionary([Int: [UInt8]]())
                    let queue = try manager.queue(of: Int.self)
                    let writer = ChildProcess {
                        for i in 0..<50 { try dictionary.set([UInt8](repeating: UInt8(i), count: 16), for: i) }
                    }
                    // A client killed while its call waits on the server.
                    let doomed = ChildProcess { _ = try queue.get() }
                    try writer.start()
                    try doomed.start()
                    guard try writer.join() == 0, try dictionary.count() == 50 else { throw ManagerError.badRequest("round \(round): lost entries") }
                    try doomed.kill()
                    _ = try doomed.join()
                    try queue.put(round)  // the server is still serving
                    guard try queue.get(timeout: .seconds(5)) == round else { throw ManagerError.badRequest("round \(round): queue") }
                }
            }
            return settled(descriptors: descriptors, children: children)
        } catch {
            print("failed: \(error)")
            return 5
        }
    }

    /// 0 once descriptors and children are back to what they were (within
    /// 10 s), else 1, having said what is left.
    static func settled(descriptors: Int, children: Set<Int32>) -> Int32 {
        let back = eventually(within: .seconds(10)) {
            openDescriptorCount() == descriptors && childPIDs() == children
        }
        guard back else {
            print("descriptors \(descriptors) → \(openDescriptorCount()), children \(children) → \(childPIDs())")
            return 1
        }
        return 0
    }

    static func startJoinCycles() -> Int32 {
        do {
            // Warm up: the launcher thread, the watcher and the forkserver exist from here on.
            _ = try ChildProcess.execute(Square(value: 1), startMethod: .forkserver)
            try ChildProcess(target: {}).startAndJoin()
            let descriptors = openDescriptorCount()
            let children = childPIDs()
            for round in 0..<200 {
                switch round % 4 {
                case 0: try ChildProcess(target: {}).startAndJoin()
                case 1: _ = try ChildProcess.execute(Square(value: round), startMethod: .forkserver)
                case 2: _ = try ChildProcess.execute(Square(value: round), startMethod: .fork)
                default:
                    // Spawning is slower; a quarter of the rounds is plenty.
                    if round % 8 == 3 {
                        _ = try ChildProcess.execute(Square(value: round), startMethod: .spawn)
                    } else {
                        let crashing = try ChildProcess(job: Crash(kind: .segfault), startMethod: .forkserver)
                        try crashing.startAndJoin()
                    }
                }
            }
            // Connections passed to children, by every start method.
            for round in 0..<30 {
                let (here, there) = try Connection.pipe()
                let producer = try ChildProcess(job: Producer(connection: there, name: "n\(round)"), startMethod: jobStartMethods[round % 3])
                try producer.startAndJoin()
                there.close()
                guard try here.receive(String.self) == "n\(round)" else { return 7 }
                here.close()
            }
            // Shared values and locks passed to children, by every start method.
            for round in 0..<30 {
                let value = try SharedValue(0)
                let array = try SharedArray(repeating: 0, count: 2)
                let child = try ChildProcess(job: Increment(value: value, array: array, times: 3), startMethod: jobStartMethods[round % 3])
                try child.startAndJoin()
                guard value.value == 3 else { return 8 }
            }
            guard openDescriptorCount() == descriptors else {
                print("descriptors: \(descriptors) before, \(openDescriptorCount()) after")
                return 1
            }
            guard childPIDs() == children else {
                print("children: \(children) before, \(childPIDs()) after")
                return 2
            }
            return 0
        } catch {
            print("error: \(error)")
            return 99
        }
    }

    static func parentDeath() -> Int32 {
        do {
            // Orphans come back to this process, which reaps them.
            guard cmp_set_child_subreaper() == 0 else { return 3 }
            for method in jobStartMethods {
                var channel: [Int32] = [0, 0]
                guard pipe(&channel) == 0 else { return 4 }
                let middle = ChildProcess {
                    let grandchild = try ChildProcess(job: Crash(kind: .sleep), startMethod: method)
                    try grandchild.start()
                    var pid = grandchild.pid!
                    _ = write(channel[1], &pid, MemoryLayout<Int32>.size)
                    while true { sleep(60) }
                }
                try middle.start()
                var grandchild: Int32 = 0
                guard read(channel[0], &grandchild, MemoryLayout<Int32>.size) == 4, grandchild > 0 else { return 5 }
                close(channel[0])
                close(channel[1])
                try middle.kill()
                try middle.join()
                let died = eventually(within: .seconds(1)) { !isRunning(grandchild) }
                guard died else {
                    print("\(method): the grandchild \(grandchild) outlived its parent")
                    return 6
                }
            }
            // Reap the orphans (the grandchildren, and the middle's forkserver).
            var status: Int32 = 0
            while waitpid(-1, &status, 0) > 0 {}
            return 0
        } catch {
            print("error: \(error)")
            return 99
        }
    }

    static func exitHandling() -> Int32 {
        do {
            var channel: [Int32] = [0, 0]
            guard pipe(&channel) == 0 else { return 3 }
            let middle = ChildProcess {
                let daemon = try ChildProcess(job: Crash(kind: .sleep), startMethod: .fork, daemon: true)
                try daemon.start()
                let worker = ChildProcess {
                    usleep(300_000)
                    var done: UInt8 = 1
                    _ = write(channel[1], &done, 1)
                }
                try worker.start()
                // A normal exit: the exit handler joins `worker` and ends `daemon`.
                exit(0)
            }
            try middle.start()
            close(channel[1])
            guard try middle.join() == 0 else { return 4 }
            var done: UInt8 = 0
            // The worker finished before its parent exited.
            var ready = pollfd(fd: channel[0], events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 0) == 1, read(channel[0], &done, 1) == 1, done == 1 else { return 5 }
            return 0
        } catch {
            print("error: \(error)")
            return 99
        }
    }
}

extension ChildProcess {
    @available(*, noasync)
    func startAndJoin() throws {
        try start()
        try join()
    }
}
