import Foundation
import Testing

@testable import Multiprocessing

/// ``Surroundings`` as a job of its own.
struct SurroundingsJob: ProcessJob {
    var variable: String
    func run() throws -> [String] { Surroundings()(variable) }
}

// In the limits suite: one test at a time, as it counts control groups.
extension LimitTests {
    @Test("a lone child under a memory limit fails with memoryLimitExceeded, by every start method, and leaves no control group", arguments: jobStartMethods)
    func childMemoryLimit(method: StartMethod) throws {
        let enforcements: [WorkerLimits.MemoryEnforcement] = underSanitizer ? [.automatic] : [.automatic, .dataSegment]
        for enforcement in enforcements where !(underSanitizer && WorkerLimits.MemoryEnforcement.available == .dataSegment) {
            let limits = WorkerLimits(memory: 128 * Self.mib, memoryEnforcement: enforcement)
            #expect(throws: ProcessError.memoryLimitExceeded(bytes: 128 * Self.mib)) {
                try ChildProcess.execute(AllocateForever(), startMethod: method, limits: limits)
            }
            #expect(try ChildProcess.execute(Square(value: 9), startMethod: method, limits: limits) == 81)
        }
        #expect(leftMemoryGroups().isEmpty)
    }

    @Test("a lone child's CPU time, environment and sandbox", arguments: jobStartMethods)
    func childLimitsAndEnvironment(method: StartMethod) async throws {
        await #expect(throws: ProcessError.cpuTimeLimitExceeded(seconds: 1)) {
            try await ChildProcess.execute(SpinForever(), startMethod: method, limits: WorkerLimits(cpuSeconds: 1))
        }
        let environment = WorkerEnvironment(variables: ["MULTIPROCESSING_TEST_VARIABLE": "set for a child"], workingDirectory: "/tmp", niceness: 3)
        let seen = try await ChildProcess.execute(SurroundingsJob(variable: "MULTIPROCESSING_TEST_VARIABLE"), startMethod: method, environment: environment)
        #expect(seen[0] == "set for a child")
        #expect(seen[1] == "/tmp")
        #expect(Int(seen[3]) ?? 0 >= 3)
        await #expect(throws: ProcessError.sandboxViolation(profile: "noNewProcesses")) {
            try await ChildProcess.execute(ForkItself(), startMethod: method, limits: WorkerLimits(sandbox: WorkerSandbox([.noNewProcesses])))
        }
        await #expect(throws: ProcessError.systemCall("chdir /nonexistent/directory", errno: ENOENT)) {
            try await ChildProcess.execute(Square(value: 1), startMethod: method, environment: WorkerEnvironment(workingDirectory: "/nonexistent/directory"))
        }
        // With the defaults nothing is set: the inherited core limit stays.
        #expect(try await ChildProcess.execute(CoreLimit(), startMethod: method) == CoreLimit().run())
    }

    @Test("a closure child runs under its limits and environment: memory, CPU time, variables, sandbox")
    func closureChildLimits() throws {
        let memory = WorkerLimits(memory: 128 * Self.mib, memoryEnforcement: .automatic)
        if !underSanitizer || WorkerLimits.MemoryEnforcement.available == .controlGroup {
            let hog = try ChildProcess(limits: memory) { _ = try AllocateForever().run() }
            try hog.start()
            try hog.join()
            #expect(hog.failure == .memoryLimitExceeded(bytes: 128 * Self.mib))
        }
        let spinner = try ChildProcess(limits: WorkerLimits(cpuSeconds: 1)) { _ = try SpinForever().run() }
        try spinner.start()
        try spinner.join()
        #expect(spinner.failure == .cpuTimeLimitExceeded(seconds: 1))

        // What the child saw comes back through a pipe, as a closure child has no output.
        let (reader, writer) = try Connection.pipe(duplex: false)
        let environment = WorkerEnvironment(variables: ["MULTIPROCESSING_TEST_VARIABLE": "set for a closure"], workingDirectory: "/tmp")
        let seeing = try ChildProcess(limits: WorkerLimits(), environment: environment) {
            try writer.send(Surroundings()("MULTIPROCESSING_TEST_VARIABLE"))
        }
        try seeing.start()
        let seen = try reader.receive([String].self)
        try seeing.join()
        #expect(seeing.exitCode == 0)
        #expect(seen[0] == "set for a closure" && seen[1] == "/tmp")
        #expect(getenv("MULTIPROCESSING_TEST_VARIABLE") == nil)

        let forking = try ChildProcess(limits: WorkerLimits(sandbox: WorkerSandbox([.noNewProcesses]))) { _ = try ForkItself().run() }
        try forking.start()
        try forking.join()
        #expect(forking.failure == .sandboxViolation(profile: "noNewProcesses"))
        #expect(leftMemoryGroups().isEmpty)
    }

    @Test("limits out of range are refused by a lone child too")
    func childBadLimits() {
        #expect(throws: PoolError.self) { _ = try ChildProcess(job: Square(value: 1), limits: WorkerLimits(memory: 10)) }
        #expect(throws: PoolError.self) { _ = try ChildProcess(job: Square(value: 1), environment: WorkerEnvironment(cpuAffinity: [])) }
        #expect(throws: PoolError.self) { _ = try ChildProcess(limits: WorkerLimits(cpuSeconds: 0)) {} }
    }
}
