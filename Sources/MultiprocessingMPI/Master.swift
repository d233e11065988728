#if MPI
import Glibc
import Multiprocessing

/// Rank 0's side of the job: the worker ranks it knows (from the world, or
/// spawned), their greetings, and the pool they serve now. Touched by the
/// program's threads and the MPI thread, behind `state`.
final class Master: @unchecked Sendable {  // mutable state is in `state`
    struct Worker {
        let communicator: MPI.Communicator
        let rank: Int32
        let spawned: Bool
        var hello: Hello?
        /// Told to leave.
        var gone = false

        var label: String { spawned ? "spawned rank \(rank)" : "rank \(rank)" }
    }

    struct State {
        var workers: [Worker] = []
        var engine: MPIPoolEngine?
        var sessions = 0
    }

    let thread: MPIThread
    let state = Monitor(State())

    /// On the MPI thread, once MPI runs.
    init(thread: MPIThread, worldSize: Int32) {
        self.thread = thread
        state.withLock { state in
            state.workers = (1..<max(1, worldSize)).map { Worker(communicator: MPI.world, rank: $0, spawned: false) }
        }
        thread.communicators = [MPI.world]
        thread.onMessage = { [unowned self] arrival, bytes, communicator in handle(arrival, bytes, communicator) }
        thread.pump = { [unowned self] in state.withLock(\.engine)?.pump() ?? false }
    }

    private func handle(_ arrival: MPI.Arrival, _ bytes: [UInt8], _ communicator: MPI.Communicator) {
        let (index, engine) = state.withLock { state in
            (state.workers.firstIndex { $0.communicator == communicator && $0.rank == arrival.source }, state.engine)
        }
        guard let index else {
            MPIRuntime.report("a message from an unknown rank \(arrival.source) was ignored")
            return
        }
        do {
            switch arrival.tag {
            case RankMessage.hello:
                let hello = try WireCodec.decode(Hello.self, from: bytes)
                state.update { $0.workers[index].hello = hello }
            case RankMessage.ready:
                engine?.ready(index, try WireCodec.decode(Ready.self, from: bytes))
            case RankMessage.replies:
                engine?.received(try ReplyBatch(decoding: bytes), from: index)
            case RankMessage.ended:
                engine?.ended(index)
            default:
                MPIRuntime.report("a message with tag \(arrival.tag) from rank \(arrival.source) was ignored")
            }
        } catch {
            MPIRuntime.report("a corrupt message (tag \(arrival.tag)) from rank \(arrival.source) was ignored: \(error)")
        }
    }

    /// Opens a pool on the worker ranks not told to leave (the world's, or
    /// those `spawn` started): waits for their greetings, checks their
    /// build, asks each for a local pool and waits until they have one.
    func open(_ start: StartPool, spawning: Int?, timeout: Duration) throws -> MPIPoolEngine {
        let deadline = ContinuousClock.now + timeout
        if let spawning { try spawn(spawning) }
        let missing: [Int32]? = state.wait(until: deadline) { state in
            state.workers.allSatisfy { $0.gone || $0.hello != nil } ? [] : nil
        }
        if missing == nil {
            let silent = state.withLock { $0.workers.filter { !$0.gone && $0.hello == nil }.map { Int($0.rank) } }
            throw MPIPoolError.ranksDidNotAnswer(silent)
        }
        let workers = state.withLock { state in state.workers.indices.filter { !state.workers[$0].gone } }
        // Every rank must run this very build.
        for index in workers {
            let worker = state.withLock { $0.workers[index] }
            guard let hello = worker.hello else { continue }
            let found = hello.wireVersion == RankMessage.wireVersion ? hello.build : "wire version \(hello.wireVersion)"
            if found != MPIRuntime.build {
                let reason = "rank 0 refused this rank: it runs build \(found), rank 0 runs \(MPIRuntime.build)"
                thread.perform { [self] in exitAll(reason: reason) }
                throw MPIPoolError.buildMismatch(rank: Int(worker.rank), expected: MPIRuntime.build, found: found)
            }
        }
        guard !workers.isEmpty else { throw MPIPoolError.noWorkerRanks }
        let engine = try state.withLock { state throws(MPIPoolError) -> MPIPoolEngine in
            guard state.engine == nil else { throw .anotherPoolRunning }
            state.sessions += 1
            var start = start
            start.session = state.sessions
            let engine = MPIPoolEngine(master: self, start: start, workers: workers.map { (index: $0, label: state.workers[$0].label) })
            state.engine = engine
            return engine
        }
        do {
            try engine.waitUntilReady(until: deadline)
        } catch {
            engine.terminate()
            throw error
        }
        return engine
    }

    /// Starts `count` worker ranks with `MPI_Comm_spawn` (on the MPI thread).
    private func spawn(_ count: Int) throws {
        let result = Monitor<Result<MPI.Communicator, MPIPoolError>?>(nil)
        thread.perform { [self] in
            let spawned = Result { () throws(MPIPoolError) -> MPI.Communicator in
                try MPI.spawn(Self.executablePath(), arguments: [], count: Int32(count))
            }
            if case let .success(communicator) = spawned {
                thread.communicators.append(communicator)
                state.update { state in
                    state.workers += (0..<Int32(count)).map { Worker(communicator: communicator, rank: $0, spawned: true) }
                }
            }
            result.update { $0 = spawned }
        }
        _ = try result.wait(until: nil) { $0 }!.get()
    }

    static func executablePath() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return CommandLine.arguments[0] }
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// On the MPI thread: the pool has ended on every rank. Spawned ranks
    /// served only it: they are told to leave.
    func engineFinished(_ engine: MPIPoolEngine) {
        let spawned = state.update { state -> [MPI.Communicator] in
            if state.engine === engine { state.engine = nil }
            return Array(Set(state.workers.filter { $0.spawned && !$0.gone }.map(\.communicator)))
        }
        guard !spawned.isEmpty else { return }
        exit(spawned: true, reason: nil)
        thread.finishSends(within: .seconds(10))
        for communicator in spawned {
            MPI.disconnect(communicator)
            thread.communicators.removeAll { $0 == communicator }
        }
        state.update { $0.workers.removeAll { $0.spawned } }
    }

    /// On the MPI thread: tells every worker rank (or every spawned one) to leave.
    private func exit(spawned only: Bool, reason: String?) {
        let leaving = state.update { state -> [Worker] in
            var leaving: [Worker] = []
            for index in state.workers.indices where !state.workers[index].gone && (!only || state.workers[index].spawned) {
                state.workers[index].gone = true
                leaving.append(state.workers[index])
            }
            return leaving
        }
        for worker in leaving {
            thread.send(ExitRank(reason: reason), to: worker.rank, tag: RankMessage.exit, on: worker.communicator)
        }
    }

    /// On the MPI thread: ends the pool that runs, and tells every worker rank to leave.
    func exitAll(reason: String?) {
        if let engine = state.withLock(\.engine) {
            engine.terminate()
            _ = engine.pump()
        }
        exit(spawned: false, reason: reason)
    }
}
#endif
