import Foundation
import Testing

@testable import Multiprocessing

/// Leaves a mark in `started` (a file), waits until `release` exists, then answers `value`.
struct MarkAndWait: ProcessJob {
    var started: String
    var release: String
    var value: Int
    func run() throws -> Int {
        close(open(started, O_WRONLY | O_CREAT, 0o600))
        while access(release, F_OK) != 0 { usleep(1000) }
        return value
    }
}

private func touch(_ path: String) { close(open(path, O_WRONLY | O_CREAT, 0o600)) }

@Suite("Ending a pool: shutdown, join(timeout:), Ctrl-C")
struct ShutdownTests {
    @Test("shutdown cancels what has not started, lets the running task finish, and the pool takes no more", arguments: jobStartMethods)
    func shutdownCancelsPending(startMethod: StartMethod) throws {
        let started = temporaryPath("started"), release = temporaryPath("release")
        defer { unlink(started); unlink(release) }
        let pool = try ProcessPool(processes: 1, startMethod: startMethod)
        let running = try pool.applyAsync(MarkAndWait(started: started, release: release, value: 42))
        #expect(eventually(within: .seconds(60)) { access(started, F_OK) == 0 })
        let rest = try pool.mapAsync(SquareFunction(), over: 0..<100, chunkSize: 1)
        let lazy = try pool.imap(SquareFunction(), over: (0...).lazy.map { $0 }, chunkSize: 1)
        pool.shutdown()
        touch(release)
        #expect(try running.get() == 42)
        let outcomes = rest.results()
        // The input is read no further: the results hold the items read so
        // far. A unit sent ahead to the busy worker (at most one) still
        // runs; the rest are cancelled.
        let cancelled = outcomes.filter { if case .failure(.cancelled) = $0 { true } else { false } }.count
        #expect(outcomes.count >= 1 && outcomes.count < 100)
        #expect(cancelled >= outcomes.count - 1)
        for (index, outcome) in outcomes.enumerated() {
            if case let .success(value) = outcome { #expect(value == index * index) }
        }
        // An endless input is read no further: its iteration ends.
        var taken = 0
        for result in lazy {
            if case .failure(let error) = result { #expect(error == .cancelled) }
            taken += 1
            if taken > 1000 { break }
        }
        #expect(taken < 1000)
        #expect(throws: PoolError.notRunning) { try pool.apply(Square(value: 1)) }
        #expect(try pool.join(timeout: .seconds(60)))
        #expect(pool.workerProcessIDs.isEmpty)
    }

    @Test("join(timeout:) answers false while a task runs and true once the workers have left; before closing it throws")
    func joinWithTimeout() async throws {
        let started = temporaryPath("started"), release = temporaryPath("release")
        defer { unlink(started); unlink(release) }
        let pool = try ProcessPool(processes: 1, startMethod: .spawn)
        await #expect(throws: PoolError.stillRunning) { try await pool.join(timeout: .seconds(1)) }
        let running = try pool.applyAsync(MarkAndWait(started: started, release: release, value: 7))
        #expect(await eventually(within: .seconds(60)) { access(started, F_OK) == 0 })
        pool.close()
        #expect(try await pool.join(timeout: .milliseconds(50)) == false)
        touch(release)
        #expect(try await running.value == 7)
        #expect(try await pool.join(timeout: .seconds(60)))
    }

    @Test("a shutdown of a pool running closures forked per call lets them finish and cancels the rest")
    func shutdownClosures() throws {
        let started = temporaryPath("started"), release = temporaryPath("release")
        defer { unlink(started); unlink(release) }
        let pool = try ProcessPool(processes: 1, startMethod: .fork)
        let outcomes = try pool.mapAsync(0..<50, chunkSize: 1) { (item: Int) -> Int in
            if item == 0 { return try MarkAndWait(started: started, release: release, value: -1).run() }
            return item * 2
        }
        #expect(eventually(within: .seconds(60)) { access(started, F_OK) == 0 })
        pool.shutdown()
        touch(release)
        let results = outcomes.results()
        #expect(try results[0].get() == -1)
        // One unit may have been sent ahead to the busy worker; the rest are cancelled.
        let cancelled = results.filter { if case .failure(.cancelled) = $0 { true } else { false } }.count
        #expect(cancelled >= results.count - 2 && cancelled >= 1)
        for (index, result) in results.enumerated().dropFirst() {
            if case let .success(value) = result { #expect(value == index * 2) }
        }
        #expect(try pool.join(timeout: .seconds(60)))
    }

    @Test("Ctrl-C in the parent ends it at once, and its workers and forkserver with it: nothing is left", arguments: jobStartMethods)
    func controlC(startMethod: StartMethod) async throws {
        let result = await #expect(processExitsWith: .signal(SIGINT), observing: [\.standardOutputContent]) { [startMethod] in
            // In a copy of the runner: a pool at work, then SIGINT as a
            // terminal's Ctrl-C sends it. Its default action, as in a program
            // run from a terminal (a shell's background jobs ignore SIGINT).
            signal(SIGINT, SIG_DFL)
            let pool = try ProcessPool(processes: 2, startMethod: startMethod)
            _ = try await pool.applyAsync(Square(value: 2)).value
            let work = try pool.mapAsync(CountDown(), over: Array(repeating: 1 << 40, count: 64), chunkSize: 1)
            let pids = pool.workerProcessIDs + Array(childPIDs())
            let line = Array((pids.map(String.init).joined(separator: " ") + "\n").utf8)
            _ = line.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            withExtendedLifetime(work) {}
            kill(getpid(), SIGINT)
            sleep(60)  // a bound: SIGINT ends the process first
            exit(3)
        }
        guard let result else { return }
        let pids = String(decoding: result.standardOutputContent, as: UTF8.self).split(whereSeparator: \.isWhitespace).compactMap { Int32($0) }
        #expect(!pids.isEmpty)
        // Each was its child (or the forkserver's): gone, not left running as an orphan.
        #expect(await eventually(within: .seconds(30)) { pids.allSatisfy { !processIsRunning($0) } })
    }
}

/// Counts down from its input: as long as one likes.
struct CountDown: ProcessFunction {
    func callAsFunction(_ count: Int) -> Int {
        var left = count
        while left > 0 { left &-= 1; if left & 0xffff == 0 { sched_yield() } }
        return left
    }
}

/// Whether `pid` names a live process (not a zombie).
private func processIsRunning(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(close, offsetBy: 2)]
    return state != "Z" && state != "X"
}
