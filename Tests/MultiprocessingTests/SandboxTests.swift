import Foundation
import Testing

@testable import Multiprocessing

/// Tries to start `/bin/true`; returns 0 or the errno it failed with.
struct SpawnTrue: ProcessJob {
    func run() throws -> Int32 {
        var pid: pid_t = 0
        let arguments: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { arguments.forEach { free($0) } }
        let status = posix_spawn(&pid, "/bin/true", nil, nil, arguments, environ)
        guard status == 0 else { return status }
        var exitStatus: Int32 = 0
        waitpid(pid, &exitStatus, 0)
        return 0
    }
}

/// Calls `fork()` itself; returns 0 or the errno it failed with.
struct ForkItself: ProcessJob {
    func run() throws -> Int32 {
        let pid = fork()
        if pid == 0 { _exit(0) }
        guard pid > 0 else { return errno }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return 0
    }
}

/// Opens a socket of `family` (AF_INET, AF_UNIX…); returns 0 or the errno it failed with.
struct OpenSocket: ProcessJob {
    var family: Int32
    func run() throws -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return errno }
        close(fd)
        return 0
    }
}

/// Starts a thread and joins it; returns what it computed.
struct UseAThread: ProcessJob {
    func run() throws -> Int {
        final class Box: @unchecked Sendable { var value = 0 }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            box.value = (1...100).reduce(0, +)
            done.signal()
        }
        thread.start()
        done.wait()
        return box.value
    }
}

@Suite("The worker sandbox: no new processes, no network")
struct SandboxTests {
    @Test("denied calls fail with EPERM, allowed ones and threads work, by every start method", arguments: jobStartMethods)
    func failsWithEPERM(startMethod: StartMethod) throws {
        let sandbox = WorkerSandbox([.noNewProcesses, .noNetwork], onViolation: .fail)
        try withProcessPool(processes: 1, startMethod: startMethod, limits: WorkerLimits(sandbox: sandbox)) { (pool: ProcessPool) throws in
            #expect(try pool.apply(SpawnTrue()) == EPERM)
            #expect(try pool.apply(ForkItself()) == EPERM)
            #expect(try pool.apply(OpenSocket(family: AF_INET)) == EPERM)
            #expect(try pool.apply(OpenSocket(family: AF_INET6)) == EPERM)
            #expect(try pool.apply(OpenSocket(family: AF_UNIX)) == 0)
            #expect(try pool.apply(UseAThread()) == 5050)
            #expect(try pool.map(SquareFunction(), over: 0..<50) == (0..<50).map { $0 * $0 })
        }
        // Outside the sandbox, all of it works.
        #expect(try SpawnTrue().run() == 0)
        #expect(try OpenSocket(family: AF_INET).run() == 0)
    }

    @Test("a worker that breaks a killing sandbox fails its task with sandboxViolation naming the profile; the pool goes on", arguments: jobStartMethods)
    func killsTheWorker(startMethod: StartMethod) throws {
        let sandbox = WorkerSandbox([.noNewProcesses, .noNetwork])
        try withProcessPool(processes: 1, startMethod: startMethod, limits: WorkerLimits(sandbox: sandbox)) { (pool: ProcessPool) throws in
            #expect(throws: ProcessError.sandboxViolation(profile: "noNewProcesses")) { try pool.apply(SpawnTrue()) }
            #expect(throws: ProcessError.sandboxViolation(profile: "noNewProcesses")) { try pool.apply(ForkItself()) }
            #expect(throws: ProcessError.sandboxViolation(profile: "noNetwork")) { try pool.apply(OpenSocket(family: AF_INET)) }
            #expect(try pool.apply(OpenSocket(family: AF_UNIX)) == 0)
            #expect(try pool.apply(UseAThread()) == 5050)
        }
    }

    @Test("only the profiles asked for are in force")
    func profilesApart() throws {
        try withProcessPool(processes: 1, limits: WorkerLimits(sandbox: WorkerSandbox([.noNetwork], onViolation: .fail))) { (pool: ProcessPool) throws in
            #expect(try pool.apply(ForkItself()) == 0)
            #expect(try pool.apply(OpenSocket(family: AF_INET)) == EPERM)
        }
        try withProcessPool(processes: 1, limits: WorkerLimits(sandbox: WorkerSandbox([.noNewProcesses], onViolation: .fail))) { (pool: ProcessPool) throws in
            #expect(try pool.apply(ForkItself()) == EPERM)
            #expect(try pool.apply(OpenSocket(family: AF_INET)) == 0)
        }
    }

    @Test("closures run forked are sandboxed too; the initializer runs before the sandbox")
    func closuresAndInitializer() throws {
        let initializer = PoolInitializer.closure {
            // Outside the sandbox still: a socket the tasks could not open.
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { abort() }
            close(fd)
        }
        try withProcessPool(processes: 2, startMethod: .fork, initializer: initializer,
                            limits: WorkerLimits(sandbox: WorkerSandbox([.noNewProcesses, .noNetwork]))) { (pool: ProcessPool) throws in
            let outputs = try pool.map(0..<8) { $0 * 2 }
            #expect(outputs == (0..<8).map { $0 * 2 })
            #expect(throws: ProcessError.sandboxViolation(profile: "noNewProcesses")) {
                try pool.apply { () -> Int32 in try ForkItself().run() }
            }
        }
    }

    @Test("a sandbox without a profile is refused")
    func noProfile() {
        #expect(throws: PoolError.self) { _ = try ProcessPool(processes: 1, limits: WorkerLimits(sandbox: WorkerSandbox([]))) }
    }
}
