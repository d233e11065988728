import CMultiprocessing
import Foundation
import SystemPackage
import Testing

@testable import Multiprocessing

@Suite("Processes and start methods")
struct ProcessTests {
    @Test("executing an image: its descriptors become 3, 4, …; an image that cannot run fails with the child's errno")
    func forkExec() throws {
        let (readEnd, writeEnd) = try Syscall.pipe()
        defer { Syscall.close(readEnd) }
        let pid = try Syscall.forkExec(path: "/bin/sh", arguments: ["sh", "-c", "echo passed >&3; exit 7"], environment: [],
                                       descriptors: [writeEnd])
        Syscall.close(writeEnd)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        #expect(status >> 8 == 7)
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = try buffer.withUnsafeMutableBytes { try Syscall.read(readEnd, into: $0) }
        #expect(String(decoding: buffer[..<count], as: UTF8.self) == "passed\n")

        #expect(throws: Errno.noSuchFileOrDirectory) {
            try Syscall.forkExec(path: "/nonexistent/image", arguments: ["image"], environment: [], descriptors: [])
        }
        #expect(throws: Errno.permissionDenied) {
            try Syscall.forkExec(path: "/tmp", arguments: ["tmp"], environment: [], descriptors: [])
        }
        // A descriptor that is not open cannot be passed on.
        #expect(throws: Errno.badFileDescriptor) {
            try Syscall.forkExec(path: "/bin/true", arguments: ["true"], environment: [], descriptors: [FileDescriptor(rawValue: 987_654)])
        }
    }

    @Test("pid is nil before start and a live pid after; join gives exit code 0", arguments: jobStartMethods)
    func lifecycle(method: StartMethod) throws {
        let process = try ChildProcess(job: Square(value: 7), startMethod: method)
        #expect(process.pid == nil)
        #expect(process.exitCode == nil)
        #expect(!process.isAlive)
        try process.start()
        let pid = try #require(process.pid)
        #expect(pid > 0 && pid != getpid())
        #expect(try process.join() == 0)
        #expect(process.exitCode == 0)
        #expect(!process.isAlive)
        #expect(process.failure == nil)
        #expect(try process.output(as: Int.self) == 49)
        try process.close()
    }

    @Test("a closure runs in a forked child with what it captured")
    func closureByFork() throws {
        let captured = Array(repeating: 3, count: 1000)
        let process = ChildProcess {
            if captured.reduce(0, +) != 3000 { throw Refusal(reason: "lost the capture") }
        }
        try process.start()
        #expect(try process.join() == 0)
        #expect(process.failure == nil)
    }

    @Test("a subclass that overrides run() does its work in the child")
    func subclassRun() throws {
        final class ExitsWithFive: ChildProcess, @unchecked Sendable {
            override func run() throws { OSProcess.exit(5) }
        }
        let process = ExitsWithFive(name: "five")
        #expect(process.name == "five")
        try process.start()
        #expect(try process.join() == 5)
        #expect(process.failure == .exited(status: 5))
    }

    @Test("the job's output comes back", arguments: jobStartMethods)
    func execute(method: StartMethod) throws {
        #expect(try ChildProcess.execute(Square(value: 12), startMethod: method) == 144)
    }

    @Test("the async API awaits the child", arguments: jobStartMethods)
    func asyncExecute(method: StartMethod) async throws {
        let output = try await ChildProcess.execute(Square(value: -5), startMethod: method)
        #expect(output == 25)
    }

    @Test("the child knows its name and its parent", arguments: jobStartMethods)
    func identity(method: StartMethod) throws {
        let process = try ChildProcess(job: Identity(), startMethod: method, name: "worker-\(method)")
        try process.start()
        try process.join()
        let seen = try process.output(as: Identity.Output.self)
        #expect(seen.name == "worker-\(method)")
        #expect(seen.pid == process.pid)
        #expect(seen.parentPID == getpid())
        #expect(seen.parentName == "MainProcess")
        #expect(currentProcess().name == "MainProcess")
        #expect(parentProcess() == nil)
    }

    @Test("starting twice is a typed error")
    func startTwice() throws {
        let process = ChildProcess {}
        try process.start()
        #expect(throws: ProcessError.alreadyStarted) { try process.start() }
        try process.join()
        #expect(throws: ProcessError.alreadyStarted) { try process.start() }
    }

    @Test("joining, signalling or reading a process never started is a typed error")
    func neverStarted() async throws {
        let process = ChildProcess {}
        #expect(throws: ProcessError.notStarted) { try process.join(timeout: .seconds(1)) }
        await #expect(throws: ProcessError.notStarted) { try await process.join() }
        #expect(throws: ProcessError.notStarted) { try process.terminate() }
        #expect(throws: ProcessError.stillRunning) { try process.output(as: Int.self) }
    }

    @Test("close refuses a running process and releases a finished one")
    func close() throws {
        let process = try ChildProcess(job: Crash(kind: .sleep), startMethod: .fork)
        try process.start()
        #expect(throws: ProcessError.stillRunning) { try process.close() }
        try process.kill()
        #expect(try process.join() == -SIGKILL)
        try process.close()
        #expect(process.exitCode == -SIGKILL)
    }

    @Test("a job that throws reports the error's type and description", arguments: jobStartMethods)
    func jobThrows(method: StartMethod) throws {
        let process = try ChildProcess(job: Throwing(reason: "no"), startMethod: method)
        try process.start()
        #expect(try process.join() == 1)
        guard case let .jobFailed(failure) = process.failure else {
            Issue.record("expected jobFailed, got \(String(describing: process.failure))")
            return
        }
        #expect(failure.errorType.hasSuffix("Refusal"))
        #expect(failure.description == "refused: no")
        // Not Codable: it comes back as its type's name and description.
        #expect(failure.error == nil)
        #expect(throws: ProcessError.jobFailed(failure)) {
            try process.output(as: Int.self)
        }
    }

    @Test("a child that traps, segfaults or is killed gives the negative signal number", arguments: jobStartMethods)
    func crashes(method: StartMethod) throws {
        let cases: [(Crash.Kind, Int32)] = [(.trap, SIGILL), (.segfault, SIGSEGV)]
        for (kind, signal) in cases {
            let process = try ChildProcess(job: Crash(kind: kind), startMethod: method)
            try process.start()
            #expect(try process.join() == -signal, "\(kind)")
            #expect(process.failure == .crashed(signal: signal, report: CrashReport(work: "MultiprocessingTests.Crash")))
        }
        for signal in [SIGKILL, SIGTERM] {
            let process = try ChildProcess(job: Crash(kind: .sleep), startMethod: method)
            try process.start()
            #expect(try process.join(timeout: .milliseconds(50)) == nil)
            #expect(process.isAlive)
            if signal == SIGKILL { try process.kill() } else { try process.terminate() }
            #expect(try process.join() == -signal)
            #expect(process.failure == .crashed(signal: signal, report: CrashReport(work: "MultiprocessingTests.Crash")))
            #expect(process.failure?.description.contains("running MultiprocessingTests.Crash") == true)
            #expect(process.failure?.description.contains(Signal.name(signal)) == true)
        }
    }

    @Test("a child's exit status comes back", arguments: jobStartMethods)
    func exitStatus(method: StartMethod) throws {
        let process = try ChildProcess(job: Crash(kind: .exit3), startMethod: method)
        try process.start()
        #expect(try process.join() == 3)
        #expect(process.failure == .exited(status: 3))
    }

    @Test("join with a timeout returns nil while the child runs", arguments: jobStartMethods)
    func joinTimeout(method: StartMethod) throws {
        let process = try ChildProcess(job: Crash(kind: .sleep), startMethod: method)
        try process.start()
        let started = ContinuousClock.now
        #expect(try process.join(timeout: .milliseconds(200)) == nil)
        #expect(ContinuousClock.now - started >= .milliseconds(200))
        try process.terminate()
        #expect(try process.join(timeout: .seconds(30)) == -SIGTERM)
    }

    @Test("the async join waits for the child without blocking", arguments: jobStartMethods)
    func asyncJoin(method: StartMethod) async throws {
        let process = try ChildProcess(job: Crash(kind: .sleep), startMethod: method)
        try process.start()
        let waiter = Task { try await process.join() }
        try await Task.sleep(for: .milliseconds(50))
        try process.terminate()
        #expect(try await waiter.value == -SIGTERM)
    }

    @Test("cancelling an async join throws CancellationError and leaves the child running")
    func cancelJoin() async throws {
        let process = try ChildProcess(job: Crash(kind: .sleep), startMethod: .forkserver)
        try process.start()
        let waiter = Task { try await process.join() }
        waiter.cancel()
        await #expect(throws: CancellationError.self) { try await waiter.value }
        #expect(process.isAlive)
        try process.kill()
        #expect(try await process.join() == -SIGKILL)
    }

    @Test("an unknown job type, a type that is not a job and a corrupt payload are typed errors", arguments: [StartMethod.spawn, .forkserver])
    func badRequests(method: StartMethod) throws {
        let payload = try ValueCodec.encode(Square(value: 2))
        let unknown = ChildProcess(rawTypeName: "8NoSuch4TypeV", payload: payload, startMethod: method)
        try unknown.start()
        #expect(try unknown.join(timeout: .seconds(30)) == 1)
        #expect(unknown.failure == .unknownJobType("8NoSuch4TypeV"))

        let notJobName = try #require(_mangledTypeName(NotAJob.self))
        let notJob = ChildProcess(rawTypeName: notJobName, payload: try ValueCodec.encode(NotAJob()), startMethod: method)
        try notJob.start()
        #expect(try notJob.join(timeout: .seconds(30)) == 1)
        #expect(notJob.failure == .notAJob(notJobName))

        let squareName = try #require(_mangledTypeName(Square.self))
        let corrupt = ChildProcess(rawTypeName: squareName, payload: [0xFF, 0x00, 0x13], startMethod: method)
        try corrupt.start()
        #expect(try corrupt.join(timeout: .seconds(30)) == 1)
        guard case .corruptRequest = corrupt.failure else {
            Issue.record("expected corruptRequest, got \(String(describing: corrupt.failure))")
            return
        }
    }

    @Test("activeChildren lists running children and reaps ended ones")
    func activeChildrenList() throws {
        let process = try ChildProcess(job: Crash(kind: .sleep), startMethod: .fork)
        try process.start()
        #expect(activeChildren().contains { $0 === process })
        try process.kill()
        #expect(eventually(within: .seconds(5)) { !activeChildren().contains { $0 === process } })
        #expect(process.exitCode == -SIGKILL)
    }

    @Test("fork, getpid and getppid")
    func rawFork() throws {
        switch try OSProcess.fork() {
        case .child:
            OSProcess.exit(OSProcess.getppid() == 0 ? 1 : 42)
        case let .parent(child):
            #expect(child != OSProcess.getpid())
            #expect(try OSProcess.wait(child) == 42)
        }
    }

    @Test("CPU counts are sensible")
    func cpuCounts() {
        #expect(cpuCount() >= 1)
        #expect((1...cpuCount()).contains(usableCPUCount()))
    }
}
