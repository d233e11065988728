#if MPI
import Multiprocessing
@testable import MultiprocessingMPI
import Testing

/// What crosses between ranks for every unit, and the pool's bad arguments,
/// in this process (no MPI job needed).
@Suite("MPI framing and arguments")
struct FramingTests {
    static let batch: UnitBatch = {
        var batch = UnitBatch()
        batch.groups = [
            .init(call: 7, kind: .functionChunk, typeName: "4main6SquareV", payload: [1, 2, 3], timeout: 250_000_000,
                  units: [.init(id: 1, items: 3, inputs: [9, 8, 7]), .init(id: 2, items: 1, inputs: [])]),
            .init(call: 8, kind: .job, typeName: "job", payload: [], timeout: nil, units: [.init(id: 3, items: 1, inputs: Array(repeating: 0xAB, count: 1000))]),
        ]
        return batch
    }()

    @Test("a batch of units and a batch of replies come back as they were sent")
    func roundTrip() throws {
        #expect(try UnitBatch(decoding: Self.batch.encoded()) == Self.batch)
        let replies = ReplyBatch(replies: [[1, 2, 3], [], Array(repeating: 5, count: 300)])
        #expect(try ReplyBatch(decoding: replies.encoded()) == replies)
    }

    @Test("every truncation, and bytes added at the end, is a WireError, never a crash")
    func truncated() {
        let bytes = Self.batch.encoded()
        for length in 0..<bytes.count {
            #expect(throws: WireError.self) { try UnitBatch(decoding: Array(bytes.prefix(length))) }
        }
        #expect(throws: WireError.self) { try UnitBatch(decoding: bytes + [0]) }
        let replies = ReplyBatch(replies: [[1, 2, 3], [4]]).encoded()
        for length in 0..<replies.count {
            #expect(throws: WireError.self) { try ReplyBatch(decoding: Array(replies.prefix(length))) }
        }
    }

    @Test("random bytes and huge announced counts are refused without crashing or allocating them")
    func hostile() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0..<64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = try? UnitBatch(decoding: bytes)
            _ = try? ReplyBatch(decoding: bytes)
        }
        // One group announcing 2^32 − 1 units in a few bytes; a reply batch announcing as many replies.
        var writer = ByteWriter()
        writer.integer(UInt32(1))
        writer.integer(Int64(1))
        writer.integer(UInt8(1))
        writer.bytes([])
        writer.bytes([])
        writer.integer(Int64(-1))
        writer.integer(UInt32.max)
        #expect(throws: WireError.self) { try UnitBatch(decoding: writer.buffer) }
        var replies = ByteWriter()
        replies.integer(UInt32.max)
        #expect(throws: WireError.self) { try ReplyBatch(decoding: replies.buffer) }
        // A unit kind that does not exist.
        var kind = ByteWriter()
        kind.integer(UInt32(1))
        kind.integer(Int64(1))
        kind.integer(UInt8(200))
        #expect(throws: WireError.self) { try UnitBatch(decoding: kind.buffer) }
    }

    @Test("a reply that does not decode fails its unit with corruptReply, and one too short to name a unit is dropped")
    func corruptReply() throws {
        let master = Master(thread: MPIThread(), worldSize: 2)
        let start = StartPool(session: 1, processesPerRank: 1, startMethod: .forkserver, maxTasksPerChild: nil, initializerType: nil, initializerPayload: [])
        let engine = MPIPoolEngine(master: master, start: start, workers: [(index: 0, label: "rank 1")])
        let call = PoolCall.named(id: 1, kind: .job, typeName: "job", payload: [], units: [.init(items: 1), .init(items: 1)], timeout: nil)
        let ended = Ended()
        call.outcomeHandler = { unit, outcome in ended.add(unit, outcome) }
        engine.state.withLock { state in
            state.ranks[0].outstanding[5] = .init(call: call, unit: 0)
            state.ranks[0].outstanding[6] = .init(call: call, unit: 1)
        }
        // Unit 5: an outcome tag that does not exist. Then three bytes that name nothing.
        engine.received(ReplyBatch(replies: [[5, 0, 0, 0, 0, 0, 0, 0, 9], [6, 0, 0]]), from: 0)
        let outcomes = ended.all
        #expect(outcomes.count == 1)
        guard case let .failure(.corruptReply(reason))? = outcomes.first?.1 else {
            Issue.record("unit 0 ended with \(String(describing: outcomes.first))")
            return
        }
        #expect(outcomes.first?.0 == 0 && reason.contains("rank 1"))
        #expect(engine.state.withLock { $0.ranks[0].outstanding.keys.sorted() } == [6])
    }

    @Test("bad arguments and a process outside any MPI job are typed errors, before MPI starts")
    func badArguments() {
        #expect(throws: MPIPoolError.noWorkerRanks) { _ = try MPIPool() }
        #expect(throws: PoolError.self) { _ = try MPIPool(spawning: 0) }
        #expect(throws: PoolError.self) { _ = try MPIPool(spawning: 1, processesPerRank: 0) }
        #expect(throws: PoolError.self) { _ = try MPIPool(spawning: 1, maxTasksPerChild: 0) }
        #expect(throws: PoolError.self) { _ = try MPIPool(spawning: 1, initializer: .closure {}) }
    }
}
/// Outcomes seen by a handler, for the test to read.
final class Ended: @unchecked Sendable {  // `outcomes` is guarded by `lock`
    private let lock = Monitor([(Int, Result<UnitOutcome, ProcessError>)]())

    func add(_ unit: Int, _ outcome: Result<UnitOutcome, ProcessError>) { lock.withLock { $0.append((unit, outcome)) } }

    var all: [(Int, Result<UnitOutcome, ProcessError>)] { lock.withLock { $0 } }
}
#endif
