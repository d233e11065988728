/// A pool that runs work named by type — ``ProcessJob``s and
/// ``ProcessFunction``s — with the calls of Python's `Pool`: `apply`,
/// `applyAsync`, `map`, `mapAsync`, `imap`, `imapUnordered`, each with the
/// same options, result types and ``ProcessError``s whichever pool runs it.
///
/// ``ProcessPool`` runs the work in processes on this machine; the
/// `MultiprocessingMPI` product's `MPIPool` runs it in processes on the
/// ranks of an MPI job. Code written against `some WorkerPool` runs on
/// either:
///
/// ```swift
/// func squares(on pool: some WorkerPool) throws -> [Int] {
///     try pool.map(Square(), over: 1...1_000)
/// }
/// ```
///
/// Conform only the library's pools: ``_scheduler`` is the library's own.
public protocol WorkerPool: AnyObject, Sendable {
    /// How many worker processes run units at once.
    var processes: Int { get }

    /// Takes no more work; the workers leave once the submitted work is done.
    func close()

    /// Ends every worker at once; work not yet done fails with
    /// ``ProcessError/poolTerminated``.
    func terminate()

    /// Waits until every worker has left, after ``close()`` or ``terminate()``.
    @available(*, noasync, message: "use the async join()")
    func join() throws

    /// Waits, without blocking the cooperative pool, until every worker has left.
    func join() async throws

    /// What runs the pool's units: the library's own, not for use.
    var _scheduler: PoolScheduler { get }
}

/// What runs a ``WorkerPool``'s units; opaque outside the library.
public struct PoolScheduler: Sendable {
    package let base: any UnitScheduler

    package init(_ base: any UnitScheduler) { self.base = base }
}

/// The machinery behind a pool's calls: it takes each call, sends its
/// units to workers as they are read, and delivers their outcomes to the
/// call (see ``PoolCall``'s handlers).
package protocol UnitScheduler: AnyObject, Sendable {
    /// Adds a call; its units are sent to workers as they free up.
    func submit(_ call: PoolCall) throws(PoolError)

    /// A number for a new call, unique in this pool.
    func makeCallID() -> Int

    /// Whether the pool still takes calls (neither closed nor terminated).
    var isRunning: Bool { get }

    /// Waits until every worker has left (after the pool was closed or terminated).
    func waitUntilEnded()
}

extension WorkerPool {
    /// Waits until every worker has left, after ``close()`` or ``terminate()``.
    ///
    /// - Throws: ``PoolError/stillRunning`` if the pool was neither closed nor terminated.
    @available(*, noasync, message: "use the async join()")
    public func join() throws {
        guard !_scheduler.base.isRunning else { throw PoolError.stillRunning }
        _scheduler.base.waitUntilEnded()
    }

    /// Waits, without blocking the cooperative pool, until every worker has left.
    public func join() async throws {
        guard !_scheduler.base.isRunning else { throw PoolError.stillRunning }
        let scheduler = _scheduler.base
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            _ = SystemThread.start {
                scheduler.waitUntilEnded()
                continuation.resume()
            }
        }
    }
}

/// Runs `body` with the pool `make` makes, then closes and joins it; if
/// `body` throws, terminates it instead: the scoped forms of every pool.
package func withPool<Pool: WorkerPool, Result>(_ make: () throws -> Pool, _ body: (Pool) throws -> Result) throws -> Result {
    let pool = try make()
    do {
        let result = try body(pool)
        pool.close()
        try pool.join()
        return result
    } catch {
        pool.terminate()
        throw error
    }
}

/// The asynchronous form of ``withPool(_:_:)-(_,(Pool)->Result)``: a cancelled task terminates the pool.
package func withPool<Pool: WorkerPool, Result>(_ make: () throws -> Pool, _ body: (Pool) async throws -> Result) async throws -> Result {
    let pool = try make()
    do {
        let result = try await body(pool)
        pool.close()
        try await pool.join()
        return result
    } catch {
        pool.terminate()
        throw error
    }
}

extension WorkerPool {
    // MARK: Submitting

    @usableFromInline
    func checkChunkSize(_ chunkSize: Int?, bufferSize: Int? = nil) throws {
        if let chunkSize, chunkSize < 1 { throw PoolError.invalidArgument("chunkSize must be at least 1, not \(chunkSize)") }
        if let bufferSize, bufferSize < 1 { throw PoolError.invalidArgument("bufferSize must be at least 1, not \(bufferSize)") }
    }

    /// Makes and submits a call. A sequence input is read here until the
    /// call's buffer is full, then as it has room (see ``PoolCall/startReading()``).
    func submit(_ work: PoolCall.Work, units: [PoolCall.UnitInput] = [], input: CallInput? = nil, consumption: PoolCall.Consumption = .atEnd,
                bufferSize: Int? = nil, timeout: Duration?, progress: (@Sendable (PoolProgress) -> Void)?, completion: ((PoolCall) -> Void)? = nil) throws -> PoolCall {
        let call = PoolCall(id: _scheduler.base.makeCallID(), work: work, units: units, input: input, consumption: consumption,
                            bufferSize: bufferSize ?? 4 * processes, timeout: timeout, progress: progress, completion: completion)
        call.refill()
        try _scheduler.base.submit(call)
        call.startReading()
        return call
    }

    static func callbacks<Output>(_ decoder: OutcomeDecoder<Output>, onSuccess: (@Sendable (Output) -> Void)?, onFailure: (@Sendable (ProcessError) -> Void)?) -> ((PoolCall) -> Void)? {
        guard onSuccess != nil || onFailure != nil else { return nil }
        return { call in
            guard let outcome = call.state.withLock({ $0.outcome(of: 0) }) else { return }
            do throws(ProcessError) {
                let output = try decoder.values(outcome, count: 1)[0]
                onSuccess?(output)
            } catch {
                onFailure?(error)
            }
        }
    }

    // MARK: Named work
    /// Runs `job` in a worker and returns its output, in a worker (Python's `apply`).
    ///
    /// - Throws: the ``ProcessError`` the task failed with, or ``PoolError/notRunning``.
    @available(*, noasync, message: "await applyAsync(_:).value instead")
    public func apply<Job: ProcessJob>(_ job: Job, timeout: Duration? = nil) throws -> Job.Output {
        try applyAsync(job, timeout: timeout).get()
    }

    /// Sends `job` to a worker and returns at once (Python's `apply_async`).
    ///
    /// - Parameters:
    ///   - timeout: the time the task may run; past it its worker is killed.
    ///   - onSuccess: called with the output, on a pool thread; keep it short.
    ///   - onFailure: called with the error instead, on a pool thread.
    public func applyAsync<Job: ProcessJob>(_ job: Job, timeout: Duration? = nil, onSuccess: (@Sendable (Job.Output) -> Void)? = nil, onFailure: (@Sendable (ProcessError) -> Void)? = nil) throws -> AsyncResult<Job.Output> {
        let decoder = OutcomeDecoder<Job.Output>(single: true)
        ValueCodec.prepare(Job.self)
        ValueCodec.prepare(Job.Output.self)
        let work = PoolCall.Work.named(kind: .job, typeName: JobRunner.typeName(of: Job.self), payload: try ValueCodec.encode(job))
        let call = try submit(work, units: [.init(items: 1)], timeout: timeout, progress: nil, completion: Self.callbacks(decoder, onSuccess: onSuccess, onFailure: onFailure))
        return AsyncResult(call: call, decoder: decoder)
    }

    /// Applies `function` to every input in the workers; returns the outputs
    /// in input order (Python's `map`).
    ///
    /// The inputs are read as workers free up, at most `bufferSize` chunks
    /// ahead of those that have ended, so an input far larger than memory
    /// (a lazy sequence) works; only the outputs are kept.
    ///
    /// - Parameters:
    ///   - inputs: read once, lazily, on this thread and then on a thread of
    ///     the call's own.
    ///   - chunkSize: inputs sent to a worker at once; nil chooses about
    ///     four chunks per worker, as Python does, when the input's length is
    ///     known (an array, a range) and chunks of 1, 2, 4 … 1024 otherwise.
    ///   - bufferSize: the most chunks read and not yet ended; nil: four per worker.
    ///   - timeout: the time one item may take (a chunk gets as many times it).
    ///   - progress: called on a pool thread as chunks end.
    /// - Throws: the first failed item's ``ProcessError`` (in input order).
    @available(*, noasync, message: "await mapAsync(_:over:).value instead")
    @inlinable
    public func map<Function: ProcessFunction>(_ function: Function, over inputs: sending some Sequence<Function.Input>, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) throws -> [Function.Output] {
        try mapAsync(function, over: inputs, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress).get()
    }

    /// Starts mapping `function` over `inputs` and returns at once (Python's
    /// `map_async`). Reads `inputs` as ``map(_:over:chunkSize:bufferSize:timeout:progress:)`` does.
    @inlinable
    public func mapAsync<Function: ProcessFunction>(_ function: Function, over inputs: sending some Sequence<Function.Input>, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) throws -> MapResult<Function.Output> {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        let sizing = ChunkSizing.forMap(chunkSize, knownCount: inputs.underestimatedCount, processes: processes)
        return try submitMap(functionWork(function), .chunks(of: inputs, sizing: sizing), bufferSize: bufferSize, timeout: timeout, progress: progress)
    }

    /// Applies `function` to every input; results come in input order as
    /// they are ready (Python's `imap`).
    ///
    /// The inputs are read as results are taken, at most `bufferSize`
    /// chunks ahead of the consumer (Python 3.14's `buffersize`): an
    /// infinite sequence works, and a consumer that stops taking stops the
    /// reading. See ``PoolResults``.
    ///
    /// - Parameters:
    ///   - inputs: read once, lazily, on this thread and then on the threads
    ///     that take the results.
    ///   - chunkSize: inputs sent to a worker at once.
    ///   - bufferSize: the most chunks read and not yet taken; nil: four per worker.
    ///   - timeout: the time one item may take (a chunk gets as many times it).
    ///   - progress: called on a pool thread as chunks end.
    @inlinable
    public func imap<Function: ProcessFunction>(_ function: Function, over inputs: sending some Sequence<Function.Input>, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) throws -> PoolResults<Function.Output> {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        return try submitResults(functionWork(function), .chunks(of: inputs, sizing: .fixed(chunkSize)), ordered: true, bufferSize: bufferSize, timeout: timeout, progress: progress)
    }

    /// Applies `function` to every input; results come in the order they
    /// complete (Python's `imap_unordered`). Reads `inputs` as
    /// ``imap(_:over:chunkSize:bufferSize:timeout:progress:)`` does.
    @inlinable
    public func imapUnordered<Function: ProcessFunction>(_ function: Function, over inputs: sending some Sequence<Function.Input>, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) throws -> PoolResults<Function.Output> {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        return try submitResults(functionWork(function), .chunks(of: inputs, sizing: .fixed(chunkSize)), ordered: false, bufferSize: bufferSize, timeout: timeout, progress: progress)
    }

    /// Runs every job in the workers; returns their outputs in order. Reads
    /// `jobs` as ``map(_:over:chunkSize:bufferSize:timeout:progress:)`` reads its inputs.
    ///
    /// - Throws: the first failed job's ``ProcessError`` (in input order).
    @available(*, noasync, message: "await mapAsync(_:).value instead")
    @inlinable
    public func map<Job: ProcessJob>(_ jobs: sending some Sequence<Job>, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) throws -> [Job.Output] {
        try mapAsync(jobs, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress).get()
    }

    /// Starts running every job in the workers and returns at once.
    @inlinable
    public func mapAsync<Job: ProcessJob>(_ jobs: sending some Sequence<Job>, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) throws -> MapResult<Job.Output> {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        let sizing = ChunkSizing.forMap(chunkSize, knownCount: jobs.underestimatedCount, processes: processes)
        return try submitMap(jobsWork(Job.self), .chunks(of: jobs, sizing: sizing), bufferSize: bufferSize, timeout: timeout, progress: progress)
    }

    // MARK: Over an asynchronous sequence

    /// Applies `function` to every element of `inputs` in the workers;
    /// returns the outputs in input order. The elements are read by a task
    /// of the call's own as workers free up, at most `bufferSize` chunks
    /// ahead of those that have ended.
    ///
    /// - Throws: the first failed item's ``ProcessError`` (in input order),
    ///   or ``ProcessError/inputFailed(errorType:description:)`` if `inputs`
    ///   threw (after every item read before it ran).
    public func map<Function: ProcessFunction, Inputs: AsyncSequence & SendableMetatype>(_ function: Function, over inputs: sending Inputs, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) async throws -> [Function.Output] where Inputs.Element == Function.Input {
        try await mapAsync(function, over: inputs, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress).value
    }

    /// Starts mapping `function` over an asynchronous sequence and returns at once.
    public func mapAsync<Function: ProcessFunction, Inputs: AsyncSequence & SendableMetatype>(_ function: Function, over inputs: sending Inputs, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) throws -> MapResult<Function.Output> where Inputs.Element == Function.Input {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        let call = try submitAsync(functionWork(function), inputs, sizing: chunkSize.map { .fixed($0) } ?? .growing(upTo: 1024), bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: nil)
        return MapResult(call: call, decoder: OutcomeDecoder(single: false))
    }

    /// Applies `function` to every element of an asynchronous sequence;
    /// results come in input order. The elements are read by a task of the
    /// call's own, at most `bufferSize` chunks ahead of the consumer. If
    /// `inputs` throws, the results of the items read before it come, then
    /// ``ProcessError/inputFailed(errorType:description:)``.
    public func imap<Function: ProcessFunction, Inputs: AsyncSequence & SendableMetatype>(_ function: Function, over inputs: sending Inputs, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) throws -> PoolResults<Function.Output> where Inputs.Element == Function.Input {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        let call = try submitAsync(functionWork(function), inputs, sizing: .fixed(chunkSize), bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: true)
        return PoolResults(call: call, decoder: OutcomeDecoder(single: false))
    }

    /// Applies `function` to every element of an asynchronous sequence;
    /// results come in the order they complete.
    public func imapUnordered<Function: ProcessFunction, Inputs: AsyncSequence & SendableMetatype>(_ function: Function, over inputs: sending Inputs, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil) throws -> PoolResults<Function.Output> where Inputs.Element == Function.Input {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        let call = try submitAsync(functionWork(function), inputs, sizing: .fixed(chunkSize), bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: false)
        return PoolResults(call: call, decoder: OutcomeDecoder(single: false))
    }

    // The parts that need not be specialized.

    @usableFromInline
    func functionWork<Function: ProcessFunction>(_ function: Function) throws -> PreparedWork {
        // Forked workers decode these and encode the outputs (see ValueCodec.prepare).
        ValueCodec.prepare(Function.self)
        ValueCodec.prepare(Function.Input.self)
        ValueCodec.prepare(Function.Output.self)
        return PreparedWork(.named(kind: .functionChunk, typeName: _mangledTypeName(Function.self) ?? String(reflecting: Function.self), payload: try ValueCodec.encode(function)))
    }

    @usableFromInline
    func jobsWork<Job: ProcessJob>(_: Job.Type) -> PreparedWork {
        ValueCodec.prepare(Job.self)
        ValueCodec.prepare(Job.Output.self)
        return PreparedWork(.named(kind: .jobChunk, typeName: JobRunner.typeName(of: Job.self), payload: []))
    }

    /// Submits a map whose units `reader` reads.
    @usableFromInline
    func submitMap<Output: Decodable & Sendable>(_ work: PreparedWork, _ reader: SequenceReader, bufferSize: Int?, timeout: Duration?, progress: (@Sendable (PoolProgress) -> Void)?) throws -> MapResult<Output> {
        let call = try submit(work.work, input: .sequence(reader), bufferSize: bufferSize, timeout: timeout, progress: progress)
        return MapResult(call: call, decoder: OutcomeDecoder(single: false))
    }

    /// Submits an `imap` (`ordered`) or `imapUnordered` whose units `reader` reads.
    @usableFromInline
    func submitResults<Output: Decodable & Sendable>(_ work: PreparedWork, _ reader: SequenceReader, ordered: Bool, bufferSize: Int?, timeout: Duration?, progress: (@Sendable (PoolProgress) -> Void)?) throws -> PoolResults<Output> {
        let call = try submit(work.work, input: .sequence(reader), consumption: ordered ? .inOrder : .asCompleted, bufferSize: bufferSize, timeout: timeout, progress: progress)
        return PoolResults(call: call, decoder: OutcomeDecoder(single: false))
    }

    /// Submits work over an asynchronous sequence, read by a task of its
    /// own: a map (`ordered` nil) or an `imap` in input order or not.
    func submitAsync<Inputs: AsyncSequence & SendableMetatype>(_ work: PreparedWork, _ inputs: sending Inputs, sizing: ChunkSizing, bufferSize: Int?, timeout: Duration?, progress: (@Sendable (PoolProgress) -> Void)?, ordered: Bool?) throws -> PoolCall where Inputs.Element: Encodable {
        let reader = AsyncReader()
        let consumption: PoolCall.Consumption = ordered.map { $0 ? .inOrder : .asCompleted } ?? .atEnd
        let call = try submit(work.work, input: .asynchronous(reader), consumption: consumption, bufferSize: bufferSize, timeout: timeout, progress: progress)
        reader.attach(Task.detached(executorPreference: InputExecutor.shared) { await AsyncReader.read(inputs, into: call, sizing: sizing) })
        return call
    }
}
