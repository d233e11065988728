/// Turns the outcomes of units into typed outputs.
internal struct OutcomeDecoder<Output: Decodable>: Sendable {
    /// Whether a `.values` outcome holds one output (a `.job` unit) rather than an array.
    let single: Bool

    /// Every item of a unit of `count` items, each an output or its error.
    func items(_ outcome: Result<UnitOutcome, ProcessError>, count: Int) -> [Result<Output, ProcessError>] {
        switch outcome {
        case let .failure(error), let .success(.failed(error)):
            return Array(repeating: .failure(error), count: count)
        case .success(.values):
            do {
                return try values(outcome, count: count).map { .success($0) }
            } catch {
                return Array(repeating: .failure(error), count: count)
            }
        case let .success(.mixed(items)):
            guard items.count == count else {
                return Array(repeating: .failure(.corruptReply("\(items.count) outcomes for \(count) items")), count: count)
            }
            return items.map { item in
                switch item {
                case let .failed(error): return .failure(error)
                case let .value(bytes):
                    do { return .success(try ValueCodec.decode(Output.self, from: bytes)) } catch { return .failure(.corruptReply(String(describing: error))) }
                }
            }
        }
    }

    /// Every output of a unit of `count` items, or the first error.
    func values(_ outcome: Result<UnitOutcome, ProcessError>, count: Int) throws(ProcessError) -> [Output] {
        switch outcome {
        case let .failure(error), let .success(.failed(error)):
            throw error
        case let .success(.values(bytes, offset)):
            let outputs: [Output]
            do {
                outputs = single ? [try ValueCodec.decode(Output.self, from: bytes, startingAt: offset)] : try ValueCodec.decode([Output].self, from: bytes, startingAt: offset)
            } catch {
                throw .corruptReply(error.description)
            }
            guard outputs.count == count else { throw .corruptReply("\(outputs.count) outputs for \(count) items") }
            return outputs
        case .success(.mixed):
            return try items(outcome, count: count).map { result throws(ProcessError) in try result.get() }
        }
    }
}

/// The result of ``ProcessPool/applyAsync(_:timeout:onSuccess:onFailure:)``:
/// Python's `AsyncResult`. Wait for it blocking (``get(timeout:)``) or
/// awaiting (``value``).
public final class AsyncResult<Output: Decodable & Sendable>: Sendable {
    let call: PoolCall
    let decoder: OutcomeDecoder<Output>

    init(call: PoolCall, decoder: OutcomeDecoder<Output>) {
        self.call = call
        self.decoder = decoder
    }

    /// What the task wrote to its standard output and error, once it has
    /// ended — returned, thrown or crashed — if the pool captures its
    /// workers' output (``WorkerOutput/Mode/captured``); nil otherwise, and
    /// for a task that never ran.
    public var output: CapturedOutput? { call.output(of: 0) }

    /// Waits for the output, at most `timeout` (nil: as long as it takes).
    ///
    /// - Throws: ``PoolError/resultNotReady`` if the time passed first, or
    ///   the ``ProcessError`` the task failed with (it threw, its worker
    ///   crashed or overran its limit, it was cancelled…).
    @available(*, noasync, message: "await value instead")
    public func get(timeout: Duration? = nil) throws -> Output {
        call.spinBriefly()
        guard let outcome = call.wait(until: timeout.map { .now + $0 }, { $0.outcome(of: 0) }) else {
            throw PoolError.resultNotReady
        }
        do {
            return try decoder.values(outcome, count: 1)[0]
        } catch {
            throw error.rethrown
        }
    }

    /// The output, awaited without blocking a thread. Cancelling the
    /// awaiting task cancels the work (its worker is killed).
    ///
    /// - Throws: the ``ProcessError`` the task failed with.
    public var value: Output {
        get async throws(ProcessError) {
            let outcome = await call.wait { $0.outcome(of: 0) } ?? .failure(.cancelled)
            return try decoder.values(outcome, count: 1)[0]
        }
    }

    /// Waits until the result is ready, at most `timeout`; returns whether it is.
    @available(*, noasync, message: "await value instead")
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Bool {
        call.wait(until: timeout.map { .now + $0 }) { $0.isFinished ? true : nil } ?? false
    }

    /// Whether the task has ended, successfully or not.
    public var isReady: Bool { call.isFinished }

    /// Whether the task succeeded; nil while it has not ended.
    public var isSuccessful: Bool? {
        guard let outcome = call.state.withLock({ $0.outcome(of: 0) }) else { return nil }
        return (try? decoder.values(outcome, count: 1)) != nil
    }

    /// Cancels the task: it fails with ``ProcessError/cancelled`` and the
    /// worker running it is killed (and replaced).
    public func cancel() { call.cancel() }
}

/// The result of a `mapAsync` call: every output in input order, once all are in.
public final class MapResult<Output: Decodable & Sendable>: Sendable {
    let call: PoolCall
    let decoder: OutcomeDecoder<Output>

    init(call: PoolCall, decoder: OutcomeDecoder<Output>) {
        self.call = call
        self.decoder = decoder
    }

    /// Every unit with its outcome, and the input's failure, once the call
    /// has finished (a map keeps every unit until the end).
    typealias Ended = (units: [(items: Int, outcome: Result<UnitOutcome, ProcessError>)], inputError: ProcessError?)

    static func ended(_ state: inout PoolCall.State) -> Ended? {
        guard state.isFinished else { return nil }
        return (state.units.map { ($0.items, $0.outcome ?? .failure(.cancelled)) }, state.inputError)
    }

    private func collect(_ ended: Ended) throws(ProcessError) -> [Output] {
        var outputs: [Output] = []
        outputs.reserveCapacity(ended.units.reduce(0) { $0 + $1.items })
        for (items, outcome) in ended.units {
            outputs += try decoder.values(outcome, count: items)
        }
        if let error = ended.inputError { throw error }
        return outputs
    }

    /// Waits for every output, at most `timeout`.
    ///
    /// - Throws: ``PoolError/resultNotReady`` if the time passed first, or
    ///   the first failed item's ``ProcessError`` (in input order).
    @available(*, noasync, message: "await value instead")
    public func get(timeout: Duration? = nil) throws -> [Output] {
        guard let ended = call.wait(until: timeout.map { .now + $0 }, Self.ended) else {
            throw PoolError.resultNotReady
        }
        do {
            return try collect(ended)
        } catch {
            throw error.rethrown
        }
    }

    /// Every output, awaited without blocking a thread. Cancelling the
    /// awaiting task cancels the outstanding work.
    public var value: [Output] {
        get async throws(ProcessError) {
            guard let ended = await call.wait(Self.ended) else { throw .cancelled }
            return try collect(ended)
        }
    }

    /// Every item's output or error, in input order, once all have ended;
    /// if the input failed, its error comes last.
    @available(*, noasync, message: "await results() instead")
    public func results() -> [Result<Output, ProcessError>] {
        itemResults(call.wait(until: nil, Self.ended)!)
    }

    /// Every item's output or error, in input order, awaited; if the input
    /// failed, its error comes last.
    public func results() async -> [Result<Output, ProcessError>] {
        if let ended = await call.wait(Self.ended) { return itemResults(ended) }
        // Cancelled: what has ended, and the rest as cancelled.
        call.cancel()
        return itemResults(call.wait(until: nil, Self.ended)!)
    }

    private func itemResults(_ ended: Ended) -> [Result<Output, ProcessError>] {
        ended.units.flatMap { decoder.items($0.outcome, count: $0.items) } + (ended.inputError.map { [.failure($0)] } ?? [])
    }

    /// What the workers wrote while they ran each chunk of the call, in
    /// input order, when the pool captures its workers' output
    /// (``WorkerOutput/Mode/captured``): one entry per chunk that has ended
    /// (all of them once the call has finished), whether its items returned,
    /// threw or crashed. Empty when output is not captured.
    public var outputs: [ChunkOutput] {
        call.state.withLock { state in
            state.units.compactMap { unit in
                unit.output.map { ChunkOutput(items: unit.lower..<(unit.lower + unit.items), output: $0) }
            }
        }
    }

    /// Waits until every item has ended, at most `timeout`; returns whether they have.
    @available(*, noasync, message: "await value instead")
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Bool {
        call.wait(until: timeout.map { .now + $0 }) { $0.isFinished ? true : nil } ?? false
    }

    /// Whether every item has ended.
    public var isReady: Bool { call.isFinished }

    /// Whether every item succeeded; nil while some have not ended.
    public var isSuccessful: Bool? {
        guard let ended = call.state.withLock({ Self.ended(&$0) }) else { return nil }
        return (try? collect(ended)) != nil
    }

    /// Items ended so far, of the total.
    public var progress: PoolProgress {
        call.state.withLock { PoolProgress(completed: $0.completedItems, total: $0.itemsRead, isTotalKnown: $0.inputEnded) }
    }

    /// Cancels the items not yet ended: they fail with ``ProcessError/cancelled``.
    public func cancel() { call.cancel() }
}

/// The results of `imap` (input order) or `imapUnordered` (completion
/// order), each item's output or error as it becomes available.
///
/// Iterate it with `for result in results` (blocking) or
/// `for await result in results` (awaiting; cancelling the task cancels the
/// outstanding work). A failed item does not end the iteration: every other
/// item's result still comes. If the input failed (an asynchronous sequence
/// threw), its ``ProcessError/inputFailed(errorType:description:)`` comes
/// after the results of the items read before it.
///
/// The results are consumed as they are taken, once: two iterators share
/// them, each taking the next. The call reads its input as results are
/// taken, keeping at most its `bufferSize` chunks ahead of the consumer; a
/// consumer that stops taking stops the reading. Dropping the results
/// before the end cancels the rest: what is running is stopped, and no more
/// input is read.
public final class PoolResults<Output: Decodable & Sendable>: Sequence, AsyncSequence, Sendable {
    public typealias Element = Result<Output, ProcessError>

    let call: PoolCall
    let decoder: OutcomeDecoder<Output>

    init(call: PoolCall, decoder: OutcomeDecoder<Output>) {
        self.call = call
        self.decoder = decoder
    }

    deinit {
        if !call.isFinished { call.cancel() }
    }

    /// Items ended so far, of those read.
    public var progress: PoolProgress {
        call.state.withLock { PoolProgress(completed: $0.completedItems, total: $0.itemsRead, isTotalKnown: $0.inputEnded) }
    }

    /// Cancels the items not yet ended: they fail with ``ProcessError/cancelled``,
    /// and no more input is read.
    public func cancel() { call.cancel() }

    /// The items of what was taken; nil at the end.
    fileprivate func items(_ taken: PoolCall.Taken) -> [Result<Output, ProcessError>]? {
        call.tookOutcome()
        switch taken {
        case let .unit(items, outcome): return decoder.items(outcome, count: items)
        case let .inputFailed(error): return [.failure(error)]
        case .end: return nil
        }
    }

    /// The blocking iterator.
    public struct Iterator: IteratorProtocol {
        let results: PoolResults
        var buffered: [Result<Output, ProcessError>] = []
        var index = 0
        var ended = false

        public mutating func next() -> Result<Output, ProcessError>? {
            while index == buffered.count {
                guard !ended else { return nil }
                let call = results.call
                guard let items = results.items(call.wait(until: nil, call.take)!) else {
                    ended = true
                    return nil
                }
                buffered = items
                index = 0
            }
            defer { index += 1 }
            return buffered[index]
        }
    }

    public func makeIterator() -> Iterator { Iterator(results: self) }

    /// The awaiting iterator.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let results: PoolResults
        var buffered: [Result<Output, ProcessError>] = []
        var index = 0
        var ended = false

        public mutating func next() async -> Result<Output, ProcessError>? {
            while index == buffered.count {
                guard !ended, !Task.isCancelled else { return nil }
                let call = results.call
                guard let taken = await call.wait(call.take), !Task.isCancelled, let items = results.items(taken) else {
                    ended = true
                    return nil
                }
                buffered = items
                index = 0
            }
            defer { index += 1 }
            return buffered[index]
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(results: self) }
}

/// What a worker wrote while it ran one chunk of a map
/// (``MapResult/outputs``).
public struct ChunkOutput: Sendable, Equatable {
    /// The indices, in the call's input, of the chunk's items.
    public let items: Range<Int>
    /// What the worker wrote while it ran them.
    public let output: CapturedOutput
}
