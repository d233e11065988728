import Logging
import MetricsTestKit
import Multiprocessing
import Synchronization

/// A handler that takes every record from `.debug` up and counts it: a
/// pool's logging at work, without the cost of writing a terminal's lines.
struct CountingLogHandler: LogHandler {
    static let records = Atomic<Int>(0)
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .debug

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        // The message and metadata are made, as any real handler would.
        _ = "\(event.message)".count + (event.metadata?.count ?? 0)
        Self.records.add(1, ordering: .relaxed)
    }
}

/// A pool with every observer on: a logger at `.debug`, metrics into an
/// in-memory factory, insights, and a subscriber to its events.
func observedPool<R>(_ body: (ProcessPool) throws -> R) throws -> R {
    let logger = Logger(label: "benchmark") { _ in CountingLogHandler() }
    return try withProcessPool(processes: 2, logger: logger, metrics: PoolMetrics(label: "benchmark", factory: TestMetrics()), insights: true) { pool in
        let events = pool.events()
        let reader = Task { for await _ in events {} }
        defer { reader.cancel() }
        return try body(pool)
    }
}

/// `poolMap` with every observer on.
@Sendable func observedPoolMap(_ count: Int) throws {
    let squares = try observedPool { pool in try pool.map(SquareTask(), over: 0..<count) }
    guard squares.last == (count - 1) * (count - 1) else { throw BenchmarkFailure(description: "wrong result") }
}

/// `poolApply` with every observer on.
@Sendable func observedPoolApply(_ count: Int) throws {
    try observedPool { pool in
        for i in 0..<count {
            guard try pool.applyAsync(SquareJob(x: i)).get() == i * i else { throw BenchmarkFailure(description: "wrong result") }
        }
    }
}

let observedScenarios: [Scenario] = [
    Scenario(name: "pool.map.observed", unit: "items", count: 1_000_000, quickCount: 20_000, baseline: .swift("unobserved", poolMap), run: observedPoolMap),
    Scenario(name: "pool.apply.observed", unit: "round trips", count: 3000, quickCount: 100, baseline: .swift("unobserved", poolApply), run: observedPoolApply),
]
