import Foundation
import Testing

@testable import Multiprocessing

/// Counts its attempts in `counter` (a file, a byte each) and aborts until
/// the `succeedOn`-th; then answers `value`.
struct CrashUntil: ProcessJob {
    var counter: String
    var succeedOn: Int
    var value: Int
    func run() throws -> Int {
        if attempt(counting: counter) < succeedOn { abort() }
        return value
    }
}

/// Counts its attempts in `counter`, then throws.
struct ThrowCounting: ProcessJob {
    struct Refused: Error {}
    var counter: String
    func run() throws -> Int {
        _ = attempt(counting: counter)
        throw Refused()
    }
}

/// Squares its input; the first time it meets 13 (counted in a file), its worker aborts.
struct SquareCrashingOnceAt13: ProcessFunction {
    var counter: String
    func callAsFunction(_ x: Int) -> Int {
        if x == 13 && attempt(counting: counter) == 1 { abort() }
        return x * x
    }
}

/// Adds a byte to `path`; returns how many there are now.
func attempt(counting path: String) -> Int {
    let fd = open(path, O_RDWR | O_CREAT | O_APPEND, 0o600)
    _ = write(fd, "x", 1)
    var info = stat()
    fstat(fd, &info)
    close(fd)
    return Int(info.st_size)
}

private func counterPath() -> String {
    temporaryPath("attempts")
}

private func attempts(in path: String) -> Int {
    var info = stat()
    return stat(path, &info) == 0 ? Int(info.st_size) : 0
}

@Suite("Retries of idempotent work")
struct RetryTests {
    @Test("a task whose worker dies runs again, in a new worker, and succeeds", arguments: jobStartMethods)
    func retriedUntilItSucceeds(startMethod: StartMethod) throws {
        let counter = counterPath()
        defer { unlink(counter) }
        try withProcessPool(processes: 2, startMethod: startMethod, retries: 3) { (pool: ProcessPool) throws in
            #expect(try pool.apply(CrashUntil(counter: counter, succeedOn: 3, value: 99)) == 99)
        }
        #expect(attempts(in: counter) == 3)
    }

    @Test("every attempt failing ends in retriesExhausted with each attempt's error")
    func exhausted() throws {
        let counter = counterPath()
        defer { unlink(counter) }
        try withProcessPool(processes: 1, retries: 2) { (pool: ProcessPool) throws in
            #expect(throws: ProcessError.retriesExhausted(attempts: Array(repeating: .crashed(signal: SIGABRT, report: CrashReport(work: "MultiprocessingTests.CrashUntil")), count: 3))) {
                try pool.apply(CrashUntil(counter: counter, succeedOn: .max, value: 0))
            }
            #expect(throws: ProcessError.retriesExhausted(attempts: Array(repeating: .timedOut(seconds: 0.1), count: 3))) {
                try pool.apply(SpinForever(), timeout: .milliseconds(100))
            }
            #expect(try pool.apply(Square(value: 4)) == 16)
        }
        #expect(attempts(in: counter) == 3)
    }

    @Test("an error the task throws is its answer: not retried")
    func thrownErrorsAreNotRetried() throws {
        let counter = counterPath()
        defer { unlink(counter) }
        try withProcessPool(processes: 1, retries: 5) { (pool: ProcessPool) throws in
            _ = #expect {
                try pool.apply(ThrowCounting(counter: counter))
            } throws: { error in
                guard case .jobFailed? = error as? ProcessError else { return false }
                return true
            }
        }
        #expect(attempts(in: counter) == 1)
    }

    @Test("a chunk whose worker died runs again whole; the map's results are all right, in order", arguments: [StartMethod.fork, .forkserver])
    func chunksRetried(startMethod: StartMethod) throws {
        let counter = counterPath()
        defer { unlink(counter) }
        try withProcessPool(processes: 2, startMethod: startMethod, retries: 1) { (pool: ProcessPool) throws in
            let outputs = try pool.map(SquareCrashingOnceAt13(counter: counter), over: 0..<100, chunkSize: 7)
            #expect(outputs == (0..<100).map { $0 * $0 })
        }
        #expect(attempts(in: counter) == 2)
    }

    @Test("a closure whose forked worker dies runs again")
    func closuresRetried() throws {
        let counter = counterPath()
        defer { unlink(counter) }
        try withProcessPool(processes: 2, startMethod: .fork, retries: 2) { (pool: ProcessPool) throws in
            let outputs = try pool.map(0..<20, chunkSize: 2) { (x: Int) -> Int in
                if x == 5 && attempt(counting: counter) < 3 { abort() }
                return x + 1
            }
            #expect(outputs == (1...20).map { $0 })
        }
        #expect(attempts(in: counter) == 3)
    }

    @Test("negative retries are refused")
    func negative() {
        #expect(throws: PoolError.self) { _ = try ProcessPool(processes: 1, retries: -1) }
    }
}
