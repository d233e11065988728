import Synchronization

/// What a pool's workers did (mpire's insights): for each worker, its
/// start-up, busy and idle time and the tasks it ran; and the slowest
/// units. Read ``ProcessPool/insights`` while the pool runs or after it ended.
public struct PoolInsights: Sendable {
    /// One worker process, alive or ended.
    public struct Worker: Sendable {
        /// Its name (`"PoolWorker-3"`).
        public var name: String
        public var pid: Int32?
        /// From its start to its first task's readiness (its setup and
        /// initializer); nil while it starts, or if it never got ready.
        public var startUp: Duration?
        /// Running units.
        public var busy: Duration
        /// Ready and without a unit.
        public var idle: Duration
        /// Tasks (items) it ran, whatever their outcome.
        public var tasks: Int
        /// Units (tasks, or chunks of them) it answered.
        public var units: Int
        public var isAlive: Bool
    }

    /// A unit among the slowest.
    public struct SlowUnit: Sendable {
        /// The work's readable type name; nil for a closure.
        public var work: String?
        /// Its items' indices in its call's input; nil for a single task.
        public var items: Range<Int>?
        public var duration: Duration
        /// The worker that ran it.
        public var worker: String
    }

    /// Every worker the pool started, in order.
    public var workers: [Worker]
    /// The slowest units answered, slowest first (at most ``slowestKept``).
    public var slowest: [SlowUnit]
    /// How many slowest units are kept.
    public static let slowestKept = 5

    /// Tasks run by all workers.
    public var tasks: Int { workers.reduce(0) { $0 + $1.tasks } }
}

/// What happens to a pool's workers, as it happens: ``ProcessPool/events()``.
public enum PoolEvent: Sendable, Equatable {
    /// A worker process started.
    case workerStarted(worker: String, pid: Int32)
    /// A worker finished its setup and initializer: it takes tasks now.
    case workerReady(worker: String, startUp: Duration)
    /// A worker answered a unit of `items` tasks, some of which failed or not.
    case unitEnded(worker: String, items: Int, duration: Duration, failed: Bool)
    /// A worker ended: `error` is nil when it left because it was asked to
    /// (its work was done, it was recycled), else how it ended.
    case workerEnded(worker: String, pid: Int32, error: ProcessError?)
}

/// The engine's record of insights and its event subscribers.
internal final class PoolObservations: Sendable {
    private struct WorkerRecord {
        var insight: PoolInsights.Worker
        let launched: ContinuousClock.Instant
        var ready: ContinuousClock.Instant?
        var ended: ContinuousClock.Instant?
    }

    private struct State {
        var workers: [ObjectIdentifier: Int] = [:]
        var records: [WorkerRecord] = []
        var slowest: [PoolInsights.SlowUnit] = []
        var subscribers: [Int: AsyncStream<PoolEvent>.Continuation] = [:]
        var nextSubscriber = 0
        var finished = false
    }

    /// Whether insights are kept (events are sent either way, to whoever listens).
    let keepsInsights: Bool
    private let state = Mutex(State())
    /// Whether anyone subscribed to the events: no lock per event otherwise.
    private let hasSubscribers = Atomic<Bool>(false)

    init(keepsInsights: Bool) { self.keepsInsights = keepsInsights }

    /// A new subscriber's stream of events; it ends when the pool does.
    func subscribe() -> AsyncStream<PoolEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: PoolEvent.self, bufferingPolicy: .bufferingNewest(10_000))
        let id = state.withLock { state -> Int? in
            guard !state.finished else { return nil }
            defer { state.nextSubscriber += 1 }
            state.subscribers[state.nextSubscriber] = continuation
            hasSubscribers.store(true, ordering: .releasing)
            return state.nextSubscriber
        }
        guard let id else {
            continuation.finish()  // the pool has ended: nothing more will happen
            return stream
        }
        continuation.onTermination = { [weak self] _ in self?.state.withLock { _ = $0.subscribers.removeValue(forKey: id) } }
        return stream
    }

    /// Ends every subscriber's stream (the pool has ended).
    func finish() {
        let subscribers = state.withLock { state in
            state.finished = true
            defer { state.subscribers.removeAll() }
            return Array(state.subscribers.values)
        }
        subscribers.forEach { $0.finish() }
    }

    /// Whether anything watches the units' ends: insights or a subscriber.
    var isObserving: Bool { keepsInsights || hasSubscribers.load(ordering: .relaxed) }

    private func send(_ event: @autoclosure () -> PoolEvent) {
        guard hasSubscribers.load(ordering: .acquiring) else { return }
        let subscribers = state.withLock { Array($0.subscribers.values) }
        guard !subscribers.isEmpty else { return }
        let event = event()
        for subscriber in subscribers { subscriber.yield(event) }
    }

    func started(_ worker: PoolWorker) {
        let name = worker.process.name, pid = worker.process.pid ?? 0
        if keepsInsights {
            state.withLock { state in
                state.workers[ObjectIdentifier(worker)] = state.records.count
                state.records.append(WorkerRecord(insight: .init(name: name, pid: pid, startUp: nil, busy: .zero, idle: .zero, tasks: 0, units: 0, isAlive: true),
                                                  launched: worker.launchedAt))
            }
        }
        send(.workerStarted(worker: name, pid: pid))
    }

    func ready(_ worker: PoolWorker) {
        let now = ContinuousClock.now
        if keepsInsights {
            state.withLock { state in
                guard let index = state.workers[ObjectIdentifier(worker)] else { return }
                state.records[index].ready = now
                state.records[index].insight.startUp = now - state.records[index].launched
            }
        }
        send(.workerReady(worker: worker.process.name, startUp: now - worker.launchedAt))
    }

    func unitEnded(_ worker: PoolWorker, items: Int, duration: Duration, failed: Bool, report: @autoclosure () -> CrashReport) {
        if keepsInsights {
            state.withLock { state in
                guard let index = state.workers[ObjectIdentifier(worker)] else { return }
                state.records[index].insight.busy += duration
                state.records[index].insight.tasks += items
                state.records[index].insight.units += 1
                if state.slowest.count < PoolInsights.slowestKept || duration > state.slowest[state.slowest.count - 1].duration {
                    let described = report()
                    state.slowest.append(.init(work: described.work, items: described.items, duration: duration, worker: worker.process.name))
                    state.slowest.sort { $0.duration > $1.duration }
                    if state.slowest.count > PoolInsights.slowestKept { state.slowest.removeLast() }
                }
            }
        }
        send(.unitEnded(worker: worker.process.name, items: items, duration: duration, failed: failed))
    }

    func ended(_ worker: PoolWorker, error: ProcessError?) {
        if keepsInsights {
            let now = ContinuousClock.now
            state.withLock { state in
                guard let index = state.workers.removeValue(forKey: ObjectIdentifier(worker)) else { return }
                state.records[index].ended = now
                state.records[index].insight.isAlive = false
            }
        }
        send(.workerEnded(worker: worker.process.name, pid: worker.process.pid ?? 0, error: error))
    }

    /// The insights so far; nil unless they are kept.
    func insights() -> PoolInsights? {
        guard keepsInsights else { return nil }
        let now = ContinuousClock.now
        return state.withLock { state in
            let workers = state.records.map { record -> PoolInsights.Worker in
                var insight = record.insight
                if let ready = record.ready {
                    let idle = (record.ended ?? now) - ready - insight.busy
                    insight.idle = max(.zero, idle)
                }
                return insight
            }
            return PoolInsights(workers: workers, slowest: state.slowest)
        }
    }
}
