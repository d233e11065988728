import CMultiprocessing
import Foundation
import Testing

@testable import Multiprocessing

/// Whether the test binary runs under AddressSanitizer (scripts/sanitizers.sh)
/// or ThreadSanitizer (scripts/tsan.sh): a bound on memory then measures the
/// sanitizer's shadow (and ASan's quarantine), and a limit on data size
/// refuses the sanitizer's own reservations, so those tests stand aside.
let underSanitizer = dlsym(nil, "__asan_init") != nil || dlsym(nil, "__tsan_init") != nil

// Jobs the tests send to children. They live in the test executable, which
// is also what a spawned child runs.

struct Square: ProcessJob {
    var value: Int
    func run() throws -> Int { value * value }
}

struct Identity: ProcessJob {
    struct Output: Codable, Sendable {
        var name: String
        var pid: Int32
        var parentPID: Int32?
        var parentName: String?
    }

    func run() throws -> Output {
        let me = currentProcess()
        let parent = parentProcess()
        return Output(name: me.name, pid: me.pid, parentPID: parent?.pid, parentName: parent?.name)
    }
}

struct Refusal: Error, CustomStringConvertible {
    var reason: String
    var description: String { "refused: \(reason)" }
}

struct Throwing: ProcessJob {
    var reason: String
    func run() throws -> Int { throw Refusal(reason: reason) }
}

struct Crash: ProcessJob {
    enum Kind: String, Codable { case trap, segfault, sleep, exit3 }
    var kind: Kind
    func run() throws -> Int {
        switch kind {
        case .trap: fatalError("a trap on purpose")
        case .segfault: cmp_segfault()
        case .sleep:
            while true { sleep(60) }
        case .exit3: exit(3)
        }
    }
}

/// Not a job: a child asked to run it must refuse.
struct NotAJob: Codable {
    var value = 1
}

/// Start methods that run jobs.
let jobStartMethods: [StartMethod] = [.fork, .spawn, .forkserver]

/// Open descriptors of this process.
func openDescriptorCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// Direct children of this process (all threads), zombies included.
func childPIDs() -> Set<Int32> {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    var pids: Set<Int32> = []
    for task in tasks {
        let text = (try? String(contentsOfFile: "/proc/self/task/\(task)/children", encoding: .utf8)) ?? ""
        for field in text.split(separator: " ") { if let pid = Int32(field) { pids.insert(pid) } }
    }
    return pids
}

/// Whether `pid` names a process that has not ended (zombies count as ended).
func isRunning(_ pid: Int32) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8) else { return false }
    guard let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(close, offsetBy: 2)]
    return state != "Z" && state != "X"
}

extension ProcessError {
    /// The signal of a crash; nil for any other error.
    var crashSignal: Int32? {
        if case let .crashed(signal, _) = self { signal } else { nil }
    }
}

/// Waits until `condition` holds or `timeout` passes; returns whether it held.
func eventually(within timeout: Duration, _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// Waits until `condition` holds or `timeout` passes, without holding a
/// thread of the cooperative pool (2 threads on 2 cores: a blocked one can
/// starve the task a test waits for); returns whether it held.
func eventually(within timeout: Duration, _ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(5))
    }
    return condition()
}

/// Every thread's stack in process `pid`, from gdb (if the machine has it), for a log.
func threadStacks(of pid: Int32) -> String {
    guard FileManager.default.isExecutableFile(atPath: "/usr/bin/gdb") else { return "(no gdb)" }
    let gdb = Foundation.Process()
    gdb.executableURL = URL(fileURLWithPath: "/usr/bin/gdb")
    // The library parks threads with SIGSYS while it forks: let it pass.
    gdb.arguments = ["-p", String(pid), "-batch", "-ex", "handle SIGSYS nostop noprint pass", "-ex", "thread apply all bt 24"]
    let output = Foundation.Pipe()
    gdb.standardOutput = output
    gdb.standardError = output
    do { try gdb.run() } catch { return "(gdb did not start: \(error))" }
    let data = output.fileHandleForReading.readDataToEndOfFile()
    gdb.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

/// A path in the temporary directory no other test uses.
func temporaryPath(_ name: String) -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(getpid())-\(UInt64.random(in: 0...UInt64.max))").path
}
