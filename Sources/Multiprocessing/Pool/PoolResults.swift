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

    /// Waits for the output, at most `timeout` (nil: as long as it takes).
    ///
    /// - Throws: ``PoolError/resultNotReady`` if the time passed first, or
    ///   the ``ProcessError`` the task failed with (it threw, its worker
    ///   crashed or overran its limit, it was cancelled…).
    @available(*, noasync, message: "await value instead")
    public func get(timeout: Duration? = nil) throws -> Output {
        call.spinBriefly()
        guard let outcome = call.wait(until: timeout.map { .now + $0 }, { $0.outcomes[0] }) else {
            throw PoolError.resultNotReady
        }
        return try decoder.values(outcome, count: 1)[0]
    }

    /// The output, awaited without blocking a thread. Cancelling the
    /// awaiting task cancels the work (its worker is killed).
    ///
    /// - Throws: the ``ProcessError`` the task failed with.
    public var value: Output {
        get async throws(ProcessError) {
            let outcome = await call.wait { $0.outcomes[0] } ?? .failure(.cancelled)
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
        guard let outcome = call.state.withLock({ $0.outcomes[0] }) else { return nil }
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

    private func collect(_ outcomes: [Result<UnitOutcome, ProcessError>?]) throws(ProcessError) -> [Output] {
        var outputs: [Output] = []
        outputs.reserveCapacity(call.itemCount)
        for (unit, outcome) in outcomes.enumerated() {
            outputs += try decoder.values(outcome ?? .failure(.cancelled), count: call.ranges[unit].count)
        }
        return outputs
    }

    /// Waits for every output, at most `timeout`.
    ///
    /// - Throws: ``PoolError/resultNotReady`` if the time passed first, or
    ///   the first failed item's ``ProcessError`` (in input order).
    @available(*, noasync, message: "await value instead")
    public func get(timeout: Duration? = nil) throws -> [Output] {
        guard let outcomes = call.wait(until: timeout.map { .now + $0 }, { $0.isFinished ? $0.outcomes : nil }) else {
            throw PoolError.resultNotReady
        }
        return try collect(outcomes)
    }

    /// Every output, awaited without blocking a thread. Cancelling the
    /// awaiting task cancels the outstanding work.
    public var value: [Output] {
        get async throws(ProcessError) {
            guard let outcomes = await call.wait({ $0.isFinished ? $0.outcomes : nil }) else { throw .cancelled }
            return try collect(outcomes)
        }
    }

    /// Every item's output or error, in input order, once all have ended.
    @available(*, noasync, message: "await results() instead")
    public func results() -> [Result<Output, ProcessError>] {
        let outcomes = call.wait(until: nil) { $0.isFinished ? $0.outcomes : nil }!
        return itemResults(outcomes)
    }

    /// Every item's output or error, in input order, awaited.
    public func results() async -> [Result<Output, ProcessError>] {
        let outcomes = await call.wait { $0.isFinished ? $0.outcomes : nil } ?? call.state.withLock(\.outcomes)
        return itemResults(outcomes)
    }

    private func itemResults(_ outcomes: [Result<UnitOutcome, ProcessError>?]) -> [Result<Output, ProcessError>] {
        outcomes.enumerated().flatMap { unit, outcome in
            decoder.items(outcome ?? .failure(.cancelled), count: call.ranges[unit].count)
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
        guard let outcomes = call.state.withLock({ $0.isFinished ? $0.outcomes : nil }) else { return nil }
        return (try? collect(outcomes)) != nil
    }

    /// Items ended so far, of the total.
    public var progress: PoolProgress {
        PoolProgress(completed: call.state.withLock(\.completedItems), total: call.itemCount)
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
/// item's result still comes.
public final class PoolResults<Output: Decodable & Sendable>: Sequence, AsyncSequence, Sendable {
    public typealias Element = Result<Output, ProcessError>

    let call: PoolCall
    let decoder: OutcomeDecoder<Output>
    /// Whether results come in input order (`imap`) or as they complete.
    let ordered: Bool

    init(call: PoolCall, decoder: OutcomeDecoder<Output>, ordered: Bool) {
        self.call = call
        self.decoder = decoder
        self.ordered = ordered
    }

    /// Items ended so far, of the total.
    public var progress: PoolProgress {
        PoolProgress(completed: call.state.withLock(\.completedItems), total: call.itemCount)
    }

    /// Cancels the items not yet ended: they fail with ``ProcessError/cancelled``.
    public func cancel() { call.cancel() }

    /// The unit whose results come `position`-th, once it has ended.
    fileprivate func unit(at position: Int) -> @Sendable (PoolCall.State) -> (Int, Result<UnitOutcome, ProcessError>)? {
        { [ordered] state in
            let unit: Int
            if ordered {
                unit = position
            } else {
                guard position < state.completionOrder.count else { return nil }
                unit = state.completionOrder[position]
            }
            guard let outcome = state.outcomes[unit] else { return nil }
            return (unit, outcome)
        }
    }

    /// The blocking iterator.
    public struct Iterator: IteratorProtocol {
        let results: PoolResults
        var position = 0
        var buffered: [Result<Output, ProcessError>] = []
        var index = 0

        public mutating func next() -> Result<Output, ProcessError>? {
            while index == buffered.count {
                guard position < results.call.ranges.count else { return nil }
                let (unit, outcome) = results.call.wait(until: nil, results.unit(at: position))!
                buffered = results.decoder.items(outcome, count: results.call.ranges[unit].count)
                index = 0
                position += 1
            }
            defer { index += 1 }
            return buffered[index]
        }
    }

    public func makeIterator() -> Iterator { Iterator(results: self) }

    /// The awaiting iterator.
    public struct AsyncIterator: AsyncIteratorProtocol {
        let results: PoolResults
        var position = 0
        var buffered: [Result<Output, ProcessError>] = []
        var index = 0

        public mutating func next() async -> Result<Output, ProcessError>? {
            while index == buffered.count {
                guard position < results.call.ranges.count, !Task.isCancelled else { return nil }
                guard let (unit, outcome) = await results.call.wait(results.unit(at: position)), !Task.isCancelled else { return nil }
                buffered = results.decoder.items(outcome, count: results.call.ranges[unit].count)
                index = 0
                position += 1
            }
            defer { index += 1 }
            return buffered[index]
        }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(results: self) }
}
