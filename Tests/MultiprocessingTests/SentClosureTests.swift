import CMultiprocessing
import Crypto
import Foundation
import Testing

@testable import Multiprocessing

/// What sent closures are given and return: a struct with a string, so that
/// values cross indirectly (not in registers) both ways.
struct Order: Codable, Sendable, Equatable {
    var name: String
    var count: Int
}

/// Set in this process only: a sent closure, in a warm worker, sees its own copy.
nonisolated(unsafe) var parentOnlyMarker = 0  // written once by one test before any worker it asks exists

@Suite("Closures given their captures")
struct SentClosureTests {
    @Test("a closure that captures nothing runs in the pool's warm workers by every start method: no fork per call")
    func runsInWarmWorkers() throws {
        for method in jobStartMethods {
            try withProcessPool(processes: 2, startMethod: method) { (pool: ProcessPool) throws in
                let order = Order(name: "bolts", count: 6)
                let summary = try pool.apply(capturing: order) { order in "\(order.count) × \(order.name)" }
                #expect(summary == "6 × bolts")
                let results = try (1...20).map { n in
                    try pool.applyAsync(capturing: Order(name: "n\(n)", count: n)) { order -> Order in
                        Order(name: order.name.uppercased(), count: order.count * 2)
                    }
                }
                #expect(try results.map { try $0.get(timeout: .seconds(30)) } == (1...20).map { Order(name: "N\($0)", count: $0 * 2) })
                let pids = try (0..<8).map { _ in try pool.apply(capturing: 0) { _ in getpid() } }
                #expect(Set(pids).isSubset(of: Set(pool.workerProcessIDs)), "\(method): \(pids) not in \(pool.workerProcessIDs)")
            }
        }
    }

    @Test("map, imap and imapUnordered of a closure given its capture equal a serial map")
    func maps() throws {
        let items = Array(0..<5_000)
        try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
            for chunkSize in [nil, 1, 333] {
                #expect(try pool.map(items, capturing: 3, chunkSize: chunkSize) { k, x in x * k } == items.map { $0 * 3 })
            }
            let words = try pool.imap(["a", "bb", "ccc"], capturing: Order(name: "-", count: 2)) { order, word in
                String(repeating: word, count: order.count) + order.name
            }
            #expect(try words.map { try $0.get() } == ["aa-", "bbbb-", "cccccc-"])
            let unordered = try pool.imapUnordered(1...50, capturing: 1) { one, x in x + one }
            #expect(try unordered.map { try $0.get() }.sorted() == Array(2...51))
            #expect(try pool.map([Int](), capturing: 1) { _, x in x } == [])
            let pids = try pool.map(0..<40, capturing: 0, chunkSize: 5) { _, _ in getpid() }
            #expect(Set(pids).isSubset(of: Set(pool.workerProcessIDs)))
        }
    }

    @Test("the worker's globals are its own; a closure that captures runs forked, with what it captured")
    func capturesAndGlobals() throws {
        parentOnlyMarker = 41
        let local = Order(name: "local", count: 1)
        try withProcessPool(processes: 1, startMethod: .forkserver) { (pool: ProcessPool) throws in
            #expect(try pool.apply(capturing: 1) { one in parentOnlyMarker + one } == 1)
            let warm = try pool.apply(capturing: 0) { _ in getpid() }
            let forked = try pool.apply(capturing: 1) { one in (local.count + one, getpid()) == (2, getpid()) ? getpid() : -1 }
            #expect(forked > 0 && forked != warm)
            #expect(try pool.map([1, 2], capturing: 10) { k, x in x * k + local.count } == [11, 21])
        }
    }

    @Test("a throw, a trap and a timeout fail only their call; the pool goes on")
    func failures() throws {
        try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
            #expect(throws: ProcessError.jobFailed(JobFailure(errorType: String(reflecting: Refusal.self), description: "refused: thrown"))) {
                try pool.apply(capturing: "thrown") { reason -> Int in throw Refusal(reason: reason) }
            }
            let trap = Result { () throws(ProcessError) -> Int in
                do { return try pool.apply(capturing: [1, 2]) { numbers in numbers[5] } } catch let error as ProcessError { throw error } catch { throw .cancelled }
            }
            #expect([SIGILL, SIGTRAP].contains(trap.failure?.crashSignal ?? 0), "\(trap)")
            #expect(throws: ProcessError.timedOut(seconds: 0.2)) {
                try pool.apply(capturing: 30, timeout: .milliseconds(200)) { seconds -> Int in sleep(UInt32(seconds)); return 1 }
            }
            let mixed = try pool.mapAsync(0..<6, capturing: 2, chunkSize: 3) { m, x -> Int in
                if x % m == 1 { throw Refusal(reason: "odd \(x)") }
                return x
            }.results()
            #expect(mixed.map { try? $0.get() } == [0, nil, 2, nil, 4, nil])
            #expect(try pool.apply(capturing: 4) { $0 * $0 } == 16)
            #expect(throws: PoolError.invalidArgument("chunkSize must be at least 1, not 0")) {
                try pool.map([1], capturing: 1, chunkSize: 0) { _, x in x }
            }
        }
    }

    @Test("a code location resolves to the same code here, and names no code for another build")
    func codeLocations() throws {
        let parts = closureParts { (x: Int) in x + 1 }
        #expect(parts.context == nil)
        let location = try #require(CodeLocation(parts.code))
        #expect(location.resolve() == parts.code)
        var other = location
        other.image[0] ^= 0xFF
        #expect(other.resolve() == nil)
        var outside = location
        outside.offset = UInt64.max / 2
        #expect(outside.resolve() == nil)
        let data = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        defer { data.deallocate() }
        #expect(CodeLocation(UnsafeRawPointer(data)) == nil)
    }

    @Test("a worker runs no code it was sent without the pool's signature, or from another build")
    func forgedReferences() throws {
        let key: [UInt8] = Array(repeating: 7, count: 32)
        let typeName = try #require(_mangledTypeName(SentJob<Int, Int>.self))
        let code = closureParts { (x: Int) in x * 3 }.code
        func run(_ sent: SentCode?, workerKey: [UInt8] = key, typeName: String = typeName) throws -> UnitOutcome {
            var cache = NamedWorkCache(key: workerKey)
            let request = UnitRequest(kind: .sentJob, id: 1, typeName: typeName, payload: try ValueCodec.encode(5), code: sent)
            let (tag, reply) = ChunkRunner.runNamed(request, cache: &cache)
            return try UnitReply.decode(UnitReply.head(id: 1, tag: tag) + reply).outcome
        }
        let signed = try #require(SentCode(code, typeName: typeName, key: SymmetricKey(data: key)))
        guard case let .values(bytes, offset) = try run(signed) else { Issue.record("the signed closure did not run"); return }
        #expect(try ValueCodec.decode(Int.self, from: bytes, startingAt: offset) == 15)

        func failure(_ outcome: UnitOutcome) -> ProcessError? { if case let .failed(error) = outcome { error } else { nil } }
        #expect(failure(try run(signed, workerKey: Array(repeating: 8, count: 32))) == .corruptRequest("a closure reference not signed by this pool"))
        #expect(failure(try run(signed, workerKey: [])) == .corruptRequest("closure code sent to a worker that has no key"))
        var moved = signed
        moved.location.offset += 16
        #expect(failure(try run(moved)) == .corruptRequest("a closure reference not signed by this pool"))
        let otherJob = try #require(_mangledTypeName(SentJob<String, Int>.self))
        #expect(failure(try run(signed, typeName: otherJob)) == .corruptRequest("a closure reference not signed by this pool"))
        #expect(failure(try run(nil)) == .notAJob(typeName))
        #expect(failure(try run(signed, typeName: try #require(_mangledTypeName(Square.self)))) == .notAJob(_mangledTypeName(Square.self)!))
        var foreign = signed
        foreign.location.image = Array(repeating: 0xAB, count: 20)
        foreign = SentCode(resigning: foreign, typeName: typeName, key: key)
        guard case .unknownJobType = failure(try run(foreign)) else { Issue.record("a reference to another build ran"); return }
    }
}

extension SentClosureTests {
    @Test("a runner compiled for the map's types runs the chunk; one signed for anything else is refused")
    func runners() throws {
        let key: [UInt8] = Array(repeating: 9, count: 32)
        let typeName = try #require(_mangledTypeName(SentFunction<Int, Int, Int>.self))
        let code = try #require(SentCode(mapParts { (k: Int, x: Int) in x * k }.code, typeName: typeName, key: SymmetricKey(data: key)))
        // Made where the types are known, a runner captures nothing (a caller's specialized module does this).
        let runner = SentRunnerBox { SentFunction<Int, Int, Int>.run($0, payload: $1, inputs: $2, offset: $3) }.parts
        #expect(runner.context == nil)
        func run(runner name: String) throws -> UnitOutcome {
            var cache = NamedWorkCache(key: key)
            let sentRunner = try #require(SentCode(runner.code, typeName: name, key: SymmetricKey(data: key)))
            let request = UnitRequest(kind: .sentChunk, id: 2, typeName: typeName, payload: try ValueCodec.encode(10), code: code, runner: sentRunner, inputs: try ValueCodec.encode([1, 2, 3]))
            let (tag, reply) = ChunkRunner.runNamed(request, cache: &cache)
            return try UnitReply.decode(UnitReply.head(id: 2, tag: tag) + reply).outcome
        }
        guard case let .values(bytes, offset) = try run(runner: SentRunnerBox.signedName(typeName)) else { Issue.record("the runner did not run"); return }
        #expect(try ValueCodec.decode([Int].self, from: bytes, startingAt: offset) == [10, 20, 30])
        guard case .failed(.corruptRequest) = try run(runner: typeName) else { Issue.record("a runner signed as a closure ran"); return }
    }
}

/// The parts of a map's `body` as the pool takes them.
func mapParts<Capture, Item, Output>(_ body: @escaping (Capture, Item) throws -> Output) -> ThickFunction {
    ThickFunction(body)
}

/// The parts of `body` as the pool takes them: at the abstraction of a generic parameter.
/// (A closure of concrete type given here would be a thunk with a context.)
func closureParts<Capture, Output>(_ body: @escaping (Capture) throws -> Output) -> ThickFunction {
    ThickFunction(body)
}

extension SentCode {
    /// `sent`, signed again for its (possibly changed) location.
    init(resigning sent: SentCode, typeName: String, key: [UInt8]) {
        self = sent
        let message = Array(typeName.utf8) + [0] + sent.location.image + withUnsafeBytes(of: sent.location.offset.littleEndian) { Array($0) }
        signature = Array(HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key)))
    }
}

extension Result {
    var failure: Failure? { if case let .failure(error) = self { error } else { nil } }
}
