/// A call on a ``ProcessPool`` that cannot be made. How a task failed is a
/// ``ProcessError``.
public enum PoolError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The pool was closed or terminated: it takes no more work.
    case notRunning
    /// `join()` was called before `close()` or `terminate()`.
    case stillRunning
    /// A result was not ready within the time given to `get(timeout:)`.
    case resultNotReady
    /// An argument is out of range (no processes, a chunk size below 1…).
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .notRunning: "the pool is closed or terminated"
        case .stillRunning: "the pool still runs: close or terminate it before joining"
        case .resultNotReady: "the result was not ready in time"
        case let .invalidArgument(reason): "invalid argument: \(reason)"
        }
    }
}

/// What each pool worker runs once before its first task (Python's
/// `initializer` and `initargs`): typically it sets up per-worker state
/// that tasks then read, such as a connection or a loaded model.
public struct PoolInitializer: Sendable {
    package enum Storage: @unchecked Sendable {  // a closure initializer runs only in forked workers
        case job(typeName: String, payload: [UInt8], run: @Sendable () -> ProcessError?)
        case closure(() -> Void)
    }

    package let storage: Storage

    /// Runs `job` in every worker, by every start method. Its output is
    /// ignored; if it throws, the pool fails the work those workers would
    /// have run with ``ProcessError/initializerFailed(_:)``.
    public static func job<Job: ProcessJob>(_ job: Job) throws -> PoolInitializer {
        ValueCodec.prepare(Job.Output.self)  // forked workers encode it
        let payload = try ValueCodec.encode(job)
        return PoolInitializer(storage: .job(typeName: JobRunner.typeName(of: Job.self), payload: payload, run: {
            if case let .failure(error) = job.runAndEncode() { return error }
            return nil
        }))
    }

    /// Runs `body` in every forked worker: the workers of closure calls,
    /// and the job workers of a pool whose start method is `.fork`. It may
    /// capture anything; it cannot run in spawned or forkserver workers.
    public static func closure(_ body: @escaping () -> Void) -> PoolInitializer {
        PoolInitializer(storage: .closure(body))
    }

    /// A job initializer given by its type name and encoding, as another
    /// process sent it: it runs in spawned and forkserver workers.
    package static func named(typeName: String, payload: [UInt8]) -> PoolInitializer {
        PoolInitializer(storage: .job(typeName: typeName, payload: payload, run: {
            if case let .failure(error) = JobRunner.run(typeName: typeName, payload: payload) { return error }
            return nil
        }))
    }

    /// The type name and encoding of a job initializer; nil for a closure.
    package var named: (typeName: String, payload: [UInt8])? {
        if case let .job(typeName, payload, _) = storage { return (typeName, payload) }
        return nil
    }

    /// In a forked worker: runs the initializer.
    func runHere() -> ProcessError? {
        switch storage {
        case let .job(_, _, run): return run()
        case let .closure(body):
            body()
            return nil
        }
    }
}
