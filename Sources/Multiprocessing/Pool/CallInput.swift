import DequeModule
import Synchronization

/// What reading a call's input gave.
internal enum InputRead {
    case unit(PoolCall.UnitInput)
    case end
    /// The input threw (an asynchronous sequence) or an item did not encode.
    case failed(ProcessError)
}

/// Where a call's units come from as it has room for them (see ``PoolCall/room(_:)``).
internal enum CallInput {
    /// A sequence, read on whichever thread makes room: the consumer of an
    /// `imap`, or a thread of the call's own for a map.
    case sequence(SequenceReader)
    /// An asynchronous sequence, read by a task of its own.
    case asynchronous(AsyncReader)
}

/// How many items go in each unit read.
@usableFromInline
internal enum ChunkSizing: Sendable {
    case fixed(Int)
    /// 1, 2, 4 … up to the given size: for a map whose length is not known,
    /// the first results come at once and the round trips soon pay off.
    case growing(upTo: Int)

    /// The sizing of a map over `inputs`: Python's about four chunks per
    /// worker when the length is known (an array, a range), growing otherwise.
    @usableFromInline
    static func forMap(_ chunkSize: Int?, knownCount: Int, processes: Int) -> ChunkSizing {
        if let chunkSize { return .fixed(chunkSize) }
        guard knownCount > 0 else { return .growing(upTo: 1024) }
        return .fixed(max(1, (knownCount + 4 * processes - 1) / (4 * processes)))
    }

    @usableFromInline
    func size(ofUnit unit: Int) -> Int {
        switch self {
        case let .fixed(size): size
        case let .growing(limit): unit >= 20 ? limit : min(limit, 1 << unit)
        }
    }
}

/// Reads a sequence a unit at a time. Only one thread reads at a time
/// (``PoolCall/refill()`` sees to it).
@usableFromInline
internal final class SequenceReader: @unchecked Sendable {  // `next` runs on one thread at a time (PoolCall.refill), over an iterator the caller sent away
    let next: () -> InputRead

    init(_ next: @escaping () -> InputRead) { self.next = next }

    /// Reads `inputs` in units of encoded items. Inlinable: the loop over
    /// the items is compiled for their types where it is called.
    @inlinable
    static func chunks<Inputs: Sequence>(of inputs: sending Inputs, sizing: ChunkSizing) -> SequenceReader where Inputs.Element: Encodable {
        var iterator = inputs.makeIterator()
        var unit = 0
        return SequenceReader(encoding: { () -> (items: [Inputs.Element], exhausted: Bool) in
            let size = sizing.size(ofUnit: unit)
            unit += 1
            var items: [Inputs.Element] = []
            items.reserveCapacity(size)
            while items.count < size, let item = iterator.next() { items.append(item) }
            return (items, items.count < size)
        })
    }

    /// A reader of the units `read` gives, each encoded here.
    @usableFromInline
    convenience init<Item: Encodable>(encoding read: @escaping () -> (items: [Item], exhausted: Bool)) {
        var ended = false
        self.init {
            guard !ended else { return .end }
            let (items, exhausted) = read()
            ended = exhausted
            return items.isEmpty ? .end : encodedUnit(items)
        }
    }
}

/// Encodes one unit's items.
internal func encodedUnit<Item: Encodable>(_ items: [Item]) -> InputRead {
    do {
        return .unit(.init(items: items.count, bytes: try ValueCodec.encode(ArrayChunk(slice: items[...]))))
    } catch {
        return .failed(.inputFailed(errorType: String(reflecting: type(of: error)), description: String(describing: error)))
    }
}

/// Reads an asynchronous sequence in a task of its own, as the call has room.
@usableFromInline
internal final class AsyncReader: Sendable {
    private struct State {
        var task: Task<Void, Never>?
        var stopped = false
    }
    private let state = Mutex(State())

    init() {}

    /// Hands over the task that reads; cancelled at once if the call ended first.
    func attach(_ task: Task<Void, Never>) {
        let stopped = state.withLock { state -> Bool in
            state.task = task
            return state.stopped
        }
        if stopped { task.cancel() }
    }

    /// Stops the reading: the call is over.
    func stop() {
        let task = state.withLock { state -> Task<Void, Never>? in
            state.stopped = true
            return state.task
        }
        task?.cancel()
    }

    /// Reads `inputs` into `call` in units of encoded items.
    static func read<Inputs: AsyncSequence>(_ inputs: Inputs, into call: PoolCall, sizing: ChunkSizing) async where Inputs.Element: Encodable {
        var iterator = inputs.makeAsyncIterator()
        var units = 0
        while await call.waitForRoom() {
            let chunkSize = sizing.size(ofUnit: units)
            units += 1
            var items: [Inputs.Element] = []
            items.reserveCapacity(chunkSize)
            do {
                while items.count < chunkSize, let item = try await iterator.next() { items.append(item) }
            } catch {
                if !items.isEmpty { call.add(encodedUnit(items)) }
                call.add(.failed(.inputFailed(errorType: String(reflecting: type(of: error)), description: String(describing: error))))
                return
            }
            if Task.isCancelled { return }  // the call is over
            if !items.isEmpty { guard call.add(encodedUnit(items)) else { return } }
            if items.count < chunkSize {
                call.add(.end)
                return
            }
        }
    }
}

extension PoolCall {
    /// Waits until the call has room for another unit; false once it reads no more.
    func waitForRoom() async -> Bool {
        await wait { state in state.inputEnded ? false : (self.room(state) > 0 ? true : nil) } ?? false
    }
}

/// Where the tasks that read asynchronous inputs run: a thread of the
/// library's own, not the cooperative pool. A caller that blocks a
/// cooperative thread waiting for a map's results (or a test framework
/// running blocking tests on them all, as CI showed) must not starve the
/// reading that those results wait for.
internal final class InputExecutor: TaskExecutor, @unchecked Sendable {  // `jobs` is behind a monitor
    static let shared = InputExecutor()

    private let jobs = Monitor(Deque<UnownedJob>())

    private init() {
        _ = SystemThread.start { [self] in
            while true {
                let job = jobs.wait(until: nil) { $0.popFirst() }!
                job.runSynchronously(on: asUnownedTaskExecutor())
            }
        }
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        jobs.update { $0.append(job) }
    }
}
