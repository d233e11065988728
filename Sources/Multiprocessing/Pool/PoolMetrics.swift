import CoreMetrics

/// What a pool reports through swift-metrics, when given one
/// (``ProcessPool/init(processes:startMethod:initializer:maxTasksPerChild:limits:restartBudget:environment:gracePeriod:retries:output:logger:metrics:insights:)``);
/// a pool without records nothing and pays nothing.
///
/// Every metric has the dimension `pool` (``label``):
///
/// | name | kind | what |
/// | --- | --- | --- |
/// | `multiprocessing_pool_tasks_submitted` | counter | tasks (items) the pool took |
/// | `multiprocessing_pool_tasks_completed` | counter | tasks that gave an output |
/// | `multiprocessing_pool_tasks_failed` | counter | tasks that ran and failed: threw, crashed, ran out of time or past a limit |
/// | `multiprocessing_pool_unit_duration` | timer | each unit (a task, or a chunk) from its start in a worker to its answer |
/// | `multiprocessing_pool_queue_depth` | gauge | units read and not yet sent to a worker |
/// | `multiprocessing_pool_workers` | gauge | worker processes alive |
/// | `multiprocessing_pool_worker_restarts` | counter | workers that ended without being asked to (a crash, a kill, a time limit) |
///
/// Tasks that fail before they run — a cancelled call's, a terminated
/// pool's, those of a pool whose initializer fails — count as submitted only.
public struct PoolMetrics: Sendable {
    /// The value of the `pool` dimension.
    public var label: String
    /// Where the metrics go: the process's bootstrapped `MetricsSystem` by default.
    public var factory: any MetricsFactory

    public init(label: String = "pool", factory: any MetricsFactory = MetricsSystem.factory) {
        self.label = label
        self.factory = factory
    }

    /// The metrics themselves, made once per pool.
    func make() -> PoolMeters { PoolMeters(self) }
}

/// The metric objects of one pool.
internal final class PoolMeters: Sendable {
    let submitted: Counter
    let completed: Counter
    let failed: Counter
    let unitDuration: Timer
    let queueDepth: Gauge
    let workers: Gauge
    let restarts: Counter

    init(_ metrics: PoolMetrics) {
        let dimensions = [("pool", metrics.label)]
        let factory = metrics.factory
        submitted = Counter(label: "multiprocessing_pool_tasks_submitted", dimensions: dimensions, factory: factory)
        completed = Counter(label: "multiprocessing_pool_tasks_completed", dimensions: dimensions, factory: factory)
        failed = Counter(label: "multiprocessing_pool_tasks_failed", dimensions: dimensions, factory: factory)
        unitDuration = Timer(label: "multiprocessing_pool_unit_duration", dimensions: dimensions, factory: factory)
        queueDepth = Gauge(label: "multiprocessing_pool_queue_depth", dimensions: dimensions, factory: factory)
        workers = Gauge(label: "multiprocessing_pool_workers", dimensions: dimensions, factory: factory)
        restarts = Counter(label: "multiprocessing_pool_worker_restarts", dimensions: dimensions, factory: factory)
    }
}
