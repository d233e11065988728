#if MPI
import Glibc
import Multiprocessing

/// A worker rank: it runs the units rank 0 sends in a local ``ProcessPool``
/// of its own, so that a trap, a segfault, a timeout or a kill of a worker
/// process fails one unit with the usual ``ProcessError`` — a dead rank
/// would end the whole MPI job. Everything here runs on the MPI thread,
/// except the local pool's outcome callbacks, which only fill `outbox`.
final class WorkerRank: @unchecked Sendable {  // touched on the MPI thread only, but for `outbox`
    private struct Relayed {
        let call: Int
        let localCall: Int
        let reply: [UInt8]
        /// Whether the local call has no other unit (it can be forgotten).
        let last: Bool
    }

    private let thread: MPIThread
    private let communicator: MPI.Communicator
    private let spawned: Bool
    private let master: Int32 = 0
    private var pool: ProcessPool?
    private var session = 0
    /// The local calls running for each call of rank 0.
    private var calls: [Int: [Int: PoolCall]] = [:]
    private let outbox = Monitor([Relayed]())
    /// Units sent to a local worker ahead of its answers: deep, as a unit
    /// waits on the rank anyway (16 gave 25–30 k tasks/s at chunk 1, 4 gave 20 k).
    static let pipelineDepth = 16

    init(thread: MPIThread, communicator: MPI.Communicator, spawned: Bool) {
        self.thread = thread
        self.communicator = communicator
        self.spawned = spawned
    }

    /// Greets rank 0, serves it until told to leave, and ends the process.
    func serve() -> Never {
        let hello = Hello(wireVersion: RankMessage.wireVersion, build: MPIRuntime.build, host: MPI.processorName(), pid: getpid(), cpus: usableCPUCount())
        thread.communicators = [communicator]
        thread.onMessage = { [unowned self] arrival, bytes, _ in handle(arrival, bytes) }
        thread.pump = { [unowned self] in flushOutbox() }
        thread.send(hello, to: master, tag: RankMessage.hello, on: communicator)
        thread.run()
        endPool(terminate: true)
        if spawned { MPI.disconnect(communicator) }
        MPI.finalize()
        _exit(0)
    }

    private func handle(_ arrival: MPI.Arrival, _ bytes: [UInt8]) {
        guard arrival.source == master else { return }
        do {
            switch arrival.tag {
            case RankMessage.start: startPool(try WireCodec.decode(StartPool.self, from: bytes))
            case RankMessage.units: run(try UnitBatch(decoding: bytes))
            case RankMessage.cancel:
                let cancel = try WireCodec.decode(CancelCall.self, from: bytes)
                calls[cancel.call]?.values.forEach { $0.cancel() }
            case RankMessage.end:
                let end = try WireCodec.decode(EndPool.self, from: bytes)
                endPool(terminate: end.terminate)
                thread.send(Ready(session: end.session, processes: 0, failure: nil), to: master, tag: RankMessage.ended, on: communicator)
            case RankMessage.exit:
                if let reason = try WireCodec.decode(ExitRank.self, from: bytes).reason { MPIRuntime.report(reason) }
                thread.running = false
            default:
                MPIRuntime.report("a message with tag \(arrival.tag) from rank 0 was ignored")
            }
        } catch {
            MPIRuntime.report("a corrupt message (tag \(arrival.tag)) from rank 0 was ignored: \(error)")
        }
    }

    private func startPool(_ start: StartPool) {
        endPool(terminate: true)
        session = start.session
        var ready = Ready(session: start.session, processes: 0, failure: nil)
        do {
            let initializer = start.initializerType.map { PoolInitializer.named(typeName: $0, payload: start.initializerPayload) }
            let pool = try ProcessPool(processes: start.processesPerRank, startMethod: start.startMethod, initializer: initializer,
                                       maxTasksPerChild: start.maxTasksPerChild, pipelineDepth: Self.pipelineDepth,
                                       limits: start.limits, environment: start.environment,
                                       gracePeriod: start.gracePeriod, retries: start.retries)
            self.pool = pool
            ready.processes = pool.processes
        } catch {
            ready.failure = String(describing: error)
        }
        thread.send(ready, to: master, tag: RankMessage.ready, on: communicator)
    }

    /// Closes (or terminates) the local pool and waits for its workers.
    private func endPool(terminate: Bool) {
        guard let pool else { return }
        self.pool = nil
        if terminate { pool.terminate() } else { pool.close() }
        try? pool.join()
        calls.removeAll()
        outbox.withLock { $0.removeAll() }
    }

    /// Runs a batch: the units of each call in it go to the local pool as
    /// one local call (one submission, one wake-up), each unit on its own:
    /// one that crashes or runs out of time fails alone.
    private func run(_ batch: UnitBatch) {
        for group in batch.groups {
            let ids = group.units.map(\.id)
            guard [.job, .jobChunk, .functionChunk].contains(group.kind) else {
                for id in ids { relay(call: group.call, localCall: 0, id: id, .failure(.corruptRequest("a worker rank was sent a \(group.kind) unit"))) }
                continue
            }
            guard let pool else {
                for id in ids { relay(call: group.call, localCall: 0, id: id, .failure(.poolTerminated)) }
                continue
            }
            let scheduler = pool._scheduler.base
            let local = PoolCall.named(id: scheduler.makeCallID(), kind: group.kind, typeName: group.typeName, payload: group.payload,
                                       units: group.units.map { .init(items: $0.items, bytes: $0.inputs) },
                                       timeout: group.timeout.map { .nanoseconds($0) })
            let (call, localCall) = (group.call, local.id)
            local.outcomeHandler = { [weak self] unit, outcome in
                guard unit >= 0, unit < ids.count else { return }
                self?.relay(call: call, localCall: localCall, id: ids[unit], outcome, last: unit == ids.count - 1)
            }
            calls[call, default: [:]][localCall] = local
            do {
                try scheduler.submit(local)
            } catch {
                local.failRemaining(.poolTerminated)
            }
        }
    }

    /// Queues a unit's outcome for rank 0 (from any thread).
    private func relay(call: Int, localCall: Int, id: UInt64, _ outcome: Result<UnitOutcome, ProcessError>, last: Bool = true) {
        let ended: UnitOutcome
        switch outcome {
        case let .success(value): ended = value
        case let .failure(error): ended = .failed(error)
        }
        let (tag, body) = ended.wire()
        let reply = UnitReply.head(id: id, tag: tag) + body
        outbox.withLock { $0.append(Relayed(call: call, localCall: localCall, reply: reply, last: last)) }
        thread.poke()
    }

    /// Sends rank 0 every outcome relayed since the last time.
    private func flushOutbox() -> Bool {
        let relayed = outbox.withLock { outbox -> [Relayed] in
            defer { outbox.removeAll(keepingCapacity: true) }
            return outbox
        }
        guard !relayed.isEmpty else { return false }
        for entry in relayed {
            if let local = calls[entry.call]?[entry.localCall], entry.last || local.isFinished {
                calls[entry.call]?[entry.localCall] = nil
                if calls[entry.call]?.isEmpty == true { calls[entry.call] = nil }
            }
        }
        // Messages of at most a few MiB, so that one large output does not hold back the rest.
        var batch: [[UInt8]] = []
        var bytes = 0
        for entry in relayed {
            batch.append(entry.reply)
            bytes += entry.reply.count
            if bytes >= 4 << 20 {
                thread.send(ReplyBatch(replies: batch).encoded(), to: master, tag: RankMessage.replies, on: communicator)
                batch = []
                bytes = 0
            }
        }
        if !batch.isEmpty { thread.send(ReplyBatch(replies: batch).encoded(), to: master, tag: RankMessage.replies, on: communicator) }
        return true
    }
}
#endif
