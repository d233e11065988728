#if MPI
import Multiprocessing

/// The machinery of an ``MPIPool`` on rank 0: it takes the pool's calls
/// (the same ``PoolCall``s a local pool runs), sends their units to the
/// worker ranks as those have room — each rank up to a few units per
/// process of its local pool, many units to one message — and delivers
/// the outcomes the ranks send back. Time limits, crashes and kills are
/// dealt with by each rank's local pool; what comes back is their outcome.
final class MPIPoolEngine: UnitScheduler, @unchecked Sendable {  // mutable state is in `state`
    enum Phase: Equatable {
        case starting, running, closing, terminating, finished
    }

    struct Assignment {
        let call: PoolCall
        let unit: Int
    }

    struct Rank {
        let index: Int
        let label: String
        var processes = 0
        var ready = false
        var failure: String?
        var ended = false
        var outstanding: [UInt64: Assignment] = [:]
    }

    struct State {
        var phase: Phase = .starting
        var calls: [Int: PoolCall] = [:]
        var pending: [Int: PendingUnits] = [:]
        /// Calls in submission order: served first come, first served.
        var order: [Int] = []
        var ranks: [Rank]
        var nextCallID = 1
        var nextUnitID: UInt64 = 1
        /// Calls to cancel on these ranks.
        var cancels: [(rank: Int, call: Int)] = []
        var endSent = false
    }

    /// Units sent to a rank ahead of its answers, per local process: enough
    /// that its processes never wait for the next unit to cross the network.
    static let unitsPerProcess = 16
    /// The most bytes of requests in one message.
    static let batchBytes = 4 << 20

    private unowned let master: Master
    let start: StartPool
    let state: Monitor<State>

    init(master: Master, start: StartPool, workers: [(index: Int, label: String)]) {
        self.master = master
        self.start = start
        state = Monitor(State(ranks: workers.map { Rank(index: $0.index, label: $0.label) }))
        master.thread.perform { [self] in
            for rank in state.withLock(\.ranks) {
                let worker = master.state.withLock { $0.workers[rank.index] }
                master.thread.send(start, to: worker.rank, tag: RankMessage.start, on: worker.communicator)
            }
        }
    }

    // MARK: - Starting

    func waitUntilReady(until deadline: ContinuousClock.Instant) throws(MPIPoolError) {
        let outcome: Result<Void, MPIPoolError>? = state.wait(until: deadline) { state in
            if let failed = state.ranks.first(where: { $0.failure != nil }) {
                return .failure(.rankFailed(rank: Int(master.state.withLock { $0.workers[failed.index].rank }), reason: failed.failure!))
            }
            return state.ranks.allSatisfy(\.ready) ? .success(()) : nil
        }
        guard let outcome else {
            let silent = state.withLock { $0.ranks.filter { !$0.ready }.map(\.index) }
            throw .ranksDidNotAnswer(master.state.withLock { state in silent.map { Int(state.workers[$0].rank) } })
        }
        try outcome.get()
        state.update { if $0.phase == .starting { $0.phase = .running } }
    }

    /// The worker processes of every rank.
    var processes: Int { state.withLock { $0.ranks.reduce(0) { $0 + $1.processes } } }

    var rankCount: Int { state.withLock(\.ranks.count) }

    // MARK: - Calls (any thread)

    func makeCallID() -> Int {
        state.withLock { state in
            defer { state.nextCallID += 1 }
            return state.nextCallID
        }
    }

    func submit(_ call: PoolCall) throws(PoolError) {
        call.cancelHandler = { [weak self] call in self?.cancel(call) }
        call.finishHandler = { [weak self] call in self?.finish(call) }
        call.unitsHandler = { [weak self] call, count, inputEnded in self?.unitsRead(call, count: count, inputEnded: inputEnded) }
        try state.withLock { state throws(PoolError) in
            guard state.phase == .running else { throw .notRunning }
            let (count, inputEnded) = call.unitsRead
            state.calls[call.id] = call
            state.pending[call.id] = PendingUnits(count: count, inputEnded: inputEnded)
            state.order.append(call.id)
        }
        if call.isFinished { finish(call) }
        master.thread.poke()
    }

    private func unitsRead(_ call: PoolCall, count: Int, inputEnded: Bool) {
        state.withLock { state in
            guard var pending = state.pending[call.id] else { return }
            pending.count = max(pending.count, count)
            pending.inputEnded = pending.inputEnded || inputEnded
            state.pending[call.id] = pending
        }
        master.thread.poke()
    }

    private func finish(_ call: PoolCall) {
        state.withLock { state in
            state.calls[call.id] = nil
            state.pending[call.id] = nil
            state.order.removeAll { $0 == call.id }
        }
        master.thread.poke()
    }

    /// Drops a call's unsent units; the ranks running its units cancel them there.
    private func cancel(_ call: PoolCall) {
        state.withLock { state in
            state.pending[call.id] = nil
            state.order.removeAll { $0 == call.id }
            for rank in state.ranks where rank.outstanding.values.contains(where: { $0.call === call }) {
                state.cancels.append((rank.index, call.id))
            }
        }
        master.thread.poke()
    }

    func close() {
        let calls = state.update { state -> [PoolCall] in
            if state.phase == .running { state.phase = .closing }
            return Array(state.calls.values)
        }
        calls.forEach { $0.readWithoutBound() }
        master.thread.poke()
    }

    func terminate() {
        let calls = state.update { state -> [PoolCall] in
            guard state.phase != .terminating && state.phase != .finished else { return [] }
            state.phase = .terminating
            state.pending.removeAll()
            state.order.removeAll()
            return Array(state.calls.values)
        }
        calls.forEach { $0.failRemaining(.poolTerminated) }
        master.thread.poke()
    }

    var phase: Phase { state.withLock(\.phase) }

    var isRunning: Bool { phase == .running || phase == .starting }

    func waitUntilEnded() { _ = waitUntilFinished() }

    /// Waits until every rank's local pool has ended.
    func waitUntilFinished(until deadline: ContinuousClock.Instant? = nil) -> Bool {
        state.wait(until: deadline) { $0.phase == .finished ? true : nil } ?? false
    }

    // MARK: - On the MPI thread

    func ready(_ index: Int, _ ready: Ready) {
        state.update { state in
            guard ready.session == start.session, let slot = state.ranks.firstIndex(where: { $0.index == index }) else { return }
            state.ranks[slot].processes = ready.processes
            state.ranks[slot].failure = ready.failure
            state.ranks[slot].ready = ready.failure == nil
        }
    }

    func ended(_ index: Int) {
        let allEnded = state.withLock { state -> Bool in
            if let slot = state.ranks.firstIndex(where: { $0.index == index }) { state.ranks[slot].ended = true }
            return state.endSent && state.phase != .finished && state.ranks.allSatisfy(\.ended)
        }
        guard allEnded else { return }
        // The ranks are free before `join` returns: a pool made next finds them so.
        master.engineFinished(self)
        state.update { $0.phase = .finished }
    }

    func received(_ batch: ReplyBatch, from index: Int) {
        var delivered: [(Assignment, Result<UnitOutcome, ProcessError>)] = []
        state.withLock { state in
            guard let slot = state.ranks.firstIndex(where: { $0.index == index }) else { return }
            for bytes in batch.replies {
                let id: UInt64
                let outcome: Result<UnitOutcome, ProcessError>
                do {
                    let reply = try UnitReply.decode(bytes)
                    (id, outcome) = (reply.id, .success(reply.outcome))
                } catch {
                    // Its unit fails, as a local worker's corrupt reply fails its unit;
                    // a reply too short to name its unit cannot fail any.
                    guard bytes.count >= 8 else {
                        MPIRuntime.report("a corrupt reply from \(state.ranks[slot].label) was ignored: \(error)")
                        continue
                    }
                    id = bytes.prefix(8).reversed().reduce(0) { $0 << 8 | UInt64($1) }
                    outcome = .failure(.corruptReply("from \(state.ranks[slot].label): \(error)"))
                }
                guard let assignment = state.ranks[slot].outstanding.removeValue(forKey: id) else { continue }
                delivered.append((assignment, outcome))
            }
        }
        // One delivery per call: its waiters and readers wake once per batch, not per unit.
        var byCall: [ObjectIdentifier: (PoolCall, [(Int, Result<UnitOutcome, ProcessError>)])] = [:]
        for (assignment, outcome) in delivered {
            var outcome = outcome
            // A crash report names the items of the rank's own call: this call's, here.
            if case let .success(.failed(error)) = outcome { outcome = .success(.failed(assignment.call.rebased(error, unit: assignment.unit))) }
            byCall[ObjectIdentifier(assignment.call), default: (assignment.call, [])].1.append((assignment.unit, outcome))
        }
        for (call, outcomes) in byCall.values { call.deliver(outcomes) }
    }

    /// Sends what is due: units to ranks with room, cancellations, the end.
    func pump() -> Bool {
        var messages: [(rank: Int, tag: Int32, bytes: [UInt8])] = []
        var failures: [(PoolCall, Int, ProcessError)] = []
        state.withLock { state in
            for (rank, call) in state.cancels {
                if let bytes = try? WireCodec.encode(CancelCall(call: call)) { messages.append((rank, RankMessage.cancel, bytes)) }
            }
            state.cancels.removeAll()
            if state.phase == .running || state.phase == .closing {
                // One unit at a time to the least loaded rank with room, so
                // that a few long units spread over the ranks.
                var batches: [Int: (batch: UnitBatch, bytes: Int)] = [:]
                while true {
                    let open = state.ranks.indices.filter { slot in
                        let rank = state.ranks[slot]
                        return rank.ready && rank.outstanding.count < rank.processes * Self.unitsPerProcess && (batches[slot]?.bytes ?? 0) < Self.batchBytes
                    }
                    guard let slot = open.min(by: { Self.load(state.ranks[$0]) < Self.load(state.ranks[$1]) }),
                          let (call, unit) = takeUnit(&state) else { break }
                    guard let work = call.namedWork, let (items, inputs) = call.input(of: unit) else {
                        failures.append((call, unit, .corruptRequest("this work cannot run on another rank")))
                        continue
                    }
                    let id = state.nextUnitID
                    state.nextUnitID += 1
                    state.ranks[slot].outstanding[id] = Assignment(call: call, unit: unit)
                    var entry = batches[slot] ?? (UnitBatch(), 0)
                    if entry.batch.groups.last?.call != call.id {
                        let timeout = call.timeout.map { Int64(clamping: $0.components.seconds &* 1_000_000_000 &+ $0.components.attoseconds / 1_000_000_000) }
                        entry.batch.groups.append(.init(call: call.id, kind: work.kind, typeName: work.typeName, payload: work.payload, timeout: timeout))
                        entry.bytes += work.typeName.utf8.count + work.payload.count
                    }
                    entry.batch.groups[entry.batch.groups.count - 1].units.append(.init(id: id, items: items, inputs: inputs))
                    entry.bytes += inputs.count + 24
                    batches[slot] = entry
                }
                for (slot, entry) in batches.sorted(by: { $0.key < $1.key }) {
                    messages.append((state.ranks[slot].index, RankMessage.units, entry.batch.encoded()))
                }
            }
            let over = state.phase == .terminating || (state.phase == .closing && state.calls.isEmpty)
            if over && !state.endSent {
                state.endSent = true
                for rank in state.ranks {
                    if let bytes = try? WireCodec.encode(EndPool(session: start.session, terminate: state.phase == .terminating)) {
                        messages.append((rank.index, RankMessage.end, bytes))
                    }
                }
                if state.phase == .terminating {
                    // Outcomes that come back now are for calls already failed.
                    for slot in state.ranks.indices { state.ranks[slot].outstanding.removeAll() }
                }
            }
        }
        for (call, unit, error) in failures { call.deliver(unit, .failure(error)) }
        for (index, tag, bytes) in messages {
            let worker = master.state.withLock { $0.workers[index] }
            master.thread.send(bytes, to: worker.rank, tag: tag, on: worker.communicator)
        }
        return !messages.isEmpty || !failures.isEmpty
    }

    /// Units outstanding per process of the rank.
    private static func load(_ rank: Rank) -> Double {
        Double(rank.outstanding.count) / Double(max(1, rank.processes))
    }

    private func takeUnit(_ state: inout State) -> (PoolCall, Int)? {
        for callID in state.order {
            if let unit = state.pending[callID]?.take(), let call = state.calls[callID] { return (call, unit) }
        }
        return nil
    }
}
#endif
