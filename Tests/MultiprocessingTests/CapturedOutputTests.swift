import Foundation
import Testing

@testable import Multiprocessing

/// Writes `text` to descriptor `fd` as it is (no stdio buffer).
func writeRaw(_ fd: Int32, _ text: String) {
    var bytes = Array(text.utf8)
    _ = write(fd, &bytes, bytes.count)
}

/// Writes "out N" to standard output and "err N" to standard error, then
/// returns N, throws, or traps (a worker's captured standard output is
/// line-buffered: the line is written before the trap).
struct Chatty: ProcessJob {
    enum Fate: Int, Codable { case returns, throwsError, traps }
    var number: Int
    var fate: Fate = .returns

    func run() throws -> Int {
        print("out \(number)")
        writeRaw(STDERR_FILENO, "err \(number)\n")
        switch fate {
        case .returns: return number
        case .throwsError: throw LedgerError(account: "chatty", shortfall: number)
        case .traps:
            fatalError("chatty \(number) gives up")
        }
    }
}

/// Prints its item and, for item 5, traps.
struct ChattyItems: ProcessFunction {
    func callAsFunction(_ x: Int) -> Int {
        writeRaw(STDERR_FILENO, "item \(x)\n")
        if x == 5 { fatalError("item five") }
        return x
    }
}

/// Prints more than a captured stream keeps.
struct Flood: ProcessJob {
    var bytes: Int
    func run() -> Int {
        let line = String(repeating: "x", count: 1023) + "\n"
        for _ in 0..<(bytes / 1024) { print(line, terminator: "") }
        print("the end")
        return bytes
    }
}

@Suite("Captured output: what each task wrote comes back with it")
struct CapturedOutputTests {
    static let capturing = WorkerOutput(standardOutput: .captured, standardError: .captured)

    @Test("each task's output comes back with its result, its thrown error or its crash, by every start method", arguments: jobStartMethods)
    func perTask(startMethod: StartMethod) throws {
        try withProcessPool(processes: 2, startMethod: startMethod, output: Self.capturing) { (pool: ProcessPool) throws in
            // Sent ahead, several to a worker: each keeps its own output.
            let results = try (0..<20).map { try pool.applyAsync(Chatty(number: $0)) }
            for (number, result) in results.enumerated() {
                #expect(try result.get(timeout: .seconds(30)) == number)
                #expect(result.output?.standardOutputText == "out \(number)\n")
                #expect(result.output?.standardErrorText == "err \(number)\n")
                #expect(result.output?.truncated == false)
            }

            let thrown = try pool.applyAsync(Chatty(number: 7, fate: .throwsError))
            #expect(throws: LedgerError(account: "chatty", shortfall: 7)) { try thrown.get(timeout: .seconds(30)) }
            #expect(thrown.output?.standardOutputText == "out 7\n")

            let trapped = try pool.applyAsync(Chatty(number: 9, fate: .traps))
            let failure = Result { try trapped.get(timeout: .seconds(30)) }
            guard case let .failure(error as ProcessError) = failure, case let .crashed(_, report) = error else {
                Issue.record("not a crash: \(failure)")
                return
            }
            let output = try #require(report.output)
            #expect(output.standardOutputText == "out 9\n")
            #expect(output.standardErrorText.hasPrefix("err 9\n"))
            // The runtime's message is read from the captured stream.
            #expect(report.message?.hasSuffix("Fatal error: chatty 9 gives up") == true, "\(String(describing: report.message))")
            #expect(trapped.output == output)

            // The pool goes on, and the next task's output is its own.
            let after = try pool.applyAsync(Chatty(number: 11))
            #expect(try after.get(timeout: .seconds(30)) == 11)
            #expect(after.output?.standardOutputText == "out 11\n")
        }
    }

    @Test("a map's crash carries the output of the chunk it ended in")
    func mapCrash() throws {
        try withProcessPool(processes: 2, output: Self.capturing) { (pool: ProcessPool) throws in
            #expect {
                try pool.map(ChattyItems(), over: 0..<12, chunkSize: 3)
            } throws: { error in
                guard case let .crashed(_, report) = error as? ProcessError, let output = report.output else { return false }
                return report.items == 3..<6 && output.standardErrorText.hasPrefix("item 3\nitem 4\nitem 5\n")
                    && report.message?.hasSuffix("Fatal error: item five") == true
            }
            #expect(try pool.map(ChattyItems(), over: 6..<9) == [6, 7, 8])
        }
    }

    @Test("a map's chunks each keep what their worker wrote, in input order, beside a crashed chunk's")
    func mapChunks() throws {
        try withProcessPool(processes: 2, output: Self.capturing) { (pool: ProcessPool) throws in
            let result = try pool.mapAsync(ChattyItems(), over: 0..<12, chunkSize: 3)
            #expect(result.wait(timeout: .seconds(60)))
            let outputs = result.outputs
            #expect(outputs.map(\.items) == [0..<3, 3..<6, 6..<9, 9..<12])
            for chunk in outputs where chunk.items != 3..<6 {
                #expect(chunk.output.standardErrorText == chunk.items.map { "item \($0)\n" }.joined())
            }
            #expect(outputs.first { $0.items == 3..<6 }?.output.standardErrorText.hasPrefix("item 3\nitem 4\nitem 5\n") == true)
            #expect(result.results().filter { (try? $0.get()) == nil }.count == 3)
        }
        try withProcessPool(processes: 1) { (pool: ProcessPool) throws in
            let result = try pool.mapAsync(ChattyItems(), over: 6..<9)
            #expect(try result.get(timeout: .seconds(30)) == [6, 7, 8])
            #expect(result.outputs.isEmpty)
        }
    }

    @Test("a stream longer than the limit keeps its end and says it was cut; without capture there is no output")
    func limitAndNone() throws {
        try withProcessPool(processes: 1, output: Self.capturing) { (pool: ProcessPool) throws in
            let result = try pool.applyAsync(Flood(bytes: CapturedOutput.limit + 64 * 1024))
            #expect(try result.get(timeout: .seconds(30)) == CapturedOutput.limit + 64 * 1024)
            let output = try #require(result.output)
            #expect(output.truncated)
            #expect(output.standardOutput.count == CapturedOutput.limit)
            #expect(output.standardOutputText.hasSuffix("x\nthe end\n"))
        }
        try withProcessPool(processes: 1, output: WorkerOutput(standardOutput: .forwarded)) { (pool: ProcessPool) throws in
            let result = try pool.applyAsync(Chatty(number: 1))
            #expect(try result.get(timeout: .seconds(30)) == 1)
            #expect(result.output == nil)
        }
    }

    @Test("a reply's captured section that is cut short or too long is a typed error")
    func corruptSection() throws {
        let whole = UnitReply.head(id: 3, tag: UnitOutcome.valuesTag, captured: CapturedOutput(standardOutput: Array("hi".utf8)))
        let reply = try UnitReply.decodeCapturing(whole)
        #expect(reply.id == 3 && reply.captured?.standardOutputText == "hi")
        for cut in 9..<whole.count {
            #expect(throws: WireError.self) { try UnitReply.decodeCapturing(Array(whole[..<cut])) }
        }
        var lying = whole
        lying[9] = 0xFF
        #expect(throws: WireError.self) { try UnitReply.decodeCapturing(lying) }
    }
}

@Suite("Captured output of a lone child")
struct ChildCapturedOutputTests {
    /// This process's descriptors open on a memory file whose name has `name` in it.
    func memoryFiles(named name: String) -> Int {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return entries.filter { entry in
            let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)")) ?? ""
            return target.hasPrefix("/memfd:") && target.contains(name)
        }.count
    }

    /// Starts `process` capturing, waits for it and checks its memory files are closed here.
    func run(_ process: ChildProcess) throws -> Int32 {
        process.capturesOutput = true
        try process.start()
        #expect(memoryFiles(named: process.name + "-std") == 2)
        let code = try process.join()
        #expect(memoryFiles(named: process.name + "-std") == 0, "the memory files were closed")
        return code
    }

    @Test("a job child that traps fails with the runtime's message and what it wrote, by every start method", arguments: jobStartMethods)
    func jobTraps(startMethod: StartMethod) throws {
        let process = try ChildProcess(job: Chatty(number: 4, fate: .traps), startMethod: startMethod)
        #expect(try run(process) < 0)
        guard case let .crashed(_, report) = process.failure else {
            Issue.record("not a crash: \(String(describing: process.failure))")
            return
        }
        #expect(report.message?.hasSuffix("Fatal error: chatty 4 gives up") == true, "\(String(describing: report.message))")
        #expect(report.work?.hasSuffix("Chatty") == true)
        #expect(report.output?.standardOutputText == "out 4\n")
        #expect(report.output?.standardErrorText.hasPrefix("err 4\n") == true)
        #expect(process.capturedOutput == report.output)
    }

    @Test("a job child that returns keeps its output beside its result", arguments: jobStartMethods)
    func jobReturns(startMethod: StartMethod) throws {
        let process = try ChildProcess(job: Chatty(number: 8), startMethod: startMethod)
        #expect(try run(process) == 0)
        #expect(try process.output(as: Int.self) == 8)
        #expect(process.capturedOutput?.standardOutputText == "out 8\n")
        #expect(process.capturedOutput?.standardErrorText == "err 8\n")
    }

    @Test("a closure child's trap carries the runtime's message; without capture there is neither output nor message")
    func closureChild() throws {
        let process = ChildProcess {
            print("about to fail")
            let numbers = [1, 2, 3]
            let index = numbers.count + Int(getpid() % 1)
            _ = numbers[index]
        }
        #expect(try run(process) == -SIGILL || process.exitCode == -SIGTRAP)
        guard case let .crashed(_, report) = process.failure else {
            Issue.record("not a crash: \(String(describing: process.failure))")
            return
        }
        #expect(report.message?.contains("Index out of range") == true, "\(String(describing: report.message))")
        #expect(report.output?.standardOutputText == "about to fail\n")
        #expect("\(ProcessError.crashed(signal: SIGILL, report: report))".contains("Index out of range"))

        let plain = ChildProcess { _exit(3) }
        try plain.start()
        #expect(try plain.join() == 3)
        #expect(plain.capturedOutput == nil)
    }

    @Test("a child that writes more than the limit keeps the end of its output")
    func flood() throws {
        let process = try ChildProcess(job: Flood(bytes: CapturedOutput.limit + 4096), startMethod: .fork)
        #expect(try run(process) == 0)
        let output = try #require(process.capturedOutput)
        #expect(output.truncated)
        #expect(output.standardOutputText.hasSuffix("x\nthe end\n"))
    }
}
