// MARK: - Closures

extension ProcessPool {
    /// Runs `body` in a worker forked for it and returns its output.
    ///
    /// - Throws: the ``ProcessError`` the task failed with.
    @available(*, noasync, message: "await applyAsync { … }.value instead")
    public func apply<Output: Codable & Sendable>(timeout: Duration? = nil, _ body: @escaping () throws -> Output) throws -> Output {
        try applyAsync(timeout: timeout, body).get()
    }

    /// Starts `body` in a worker forked for it and returns at once (Python's
    /// `apply_async(f, args)`: capture the arguments).
    public func applyAsync<Output: Codable & Sendable>(timeout: Duration? = nil, onSuccess: (@Sendable (Output) -> Void)? = nil, onFailure: (@Sendable (ProcessError) -> Void)? = nil, _ body: @escaping () throws -> Output) throws -> AsyncResult<Output> {
        let decoder = OutcomeDecoder<Output>(single: false)
        ValueCodec.prepare(Output.self)  // forked workers encode it (see prepare)
        let program = ClosureProgram { _ in ChunkRunner.run(CollectionOfOne(())) { try body() }.wire() }
        let call = try submit(.closure(program), units: [.init(items: 1)], timeout: timeout, progress: nil, completion: Self.callbacks(decoder, onSuccess: onSuccess, onFailure: onFailure))
        return AsyncResult(call: call, decoder: decoder)
    }

    /// Applies `body` to every item in forked workers; returns the outputs
    /// in item order (Python's `map`). The items need not be `Codable`:
    /// the workers hold them already.
    ///
    /// - Throws: the first failed item's ``ProcessError`` (in item order).
    @available(*, noasync, message: "await mapAsync(_:_:).value instead")
    @inlinable
    public func map<Item, Output: Codable & Sendable>(_ items: some Sequence<Item>, chunkSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Item) throws -> Output) throws -> [Output] {
        try mapAsync(items, chunkSize: chunkSize, timeout: timeout, progress: progress, body).get()
    }

    /// Starts applying `body` to every item and returns at once.
    @inlinable
    public func mapAsync<Item, Output: Codable & Sendable>(_ items: some Sequence<Item>, chunkSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Item) throws -> Output) throws -> MapResult<Output> {
        let items = Array(items)
        let program = ClosureProgram.overHeld(items, body)
        return try submitClosure(program, count: items.count, chunkSize: chunkSize, timeout: timeout, progress: progress)
    }

    /// Applies `body` to the elements of each tuple (Python's `starmap`).
    /// Tuples are not `Codable`: the forked workers hold them, so a lazy
    /// sequence of them is read whole first.
    @available(*, noasync, message: "await mapAsync(_:_:).value instead")
    @inlinable
    public func starmap<each Argument, Output: Codable & Sendable>(_ items: some Sequence<(repeat each Argument)>, chunkSize: Int? = nil, timeout: Duration? = nil, _ body: @escaping (repeat each Argument) throws -> Output) throws -> [Output] {
        try mapAsync(items, chunkSize: chunkSize, timeout: timeout) { (item: (repeat each Argument)) in try body(repeat each item) }.get()
    }

    /// Applies `body` to every item; results come in item order as they are
    /// ready (Python's `imap`).
    @inlinable
    public func imap<Item, Output: Codable & Sendable>(_ items: some Sequence<Item>, chunkSize: Int = 1, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Item) throws -> Output) throws -> PoolResults<Output> {
        let items = Array(items)
        let program = ClosureProgram.overHeld(items, body)
        return try submitClosure(program, count: items.count, chunkSize: chunkSize, timeout: timeout, progress: progress, ordered: true)
    }

    /// Applies `body` to every item; results come in the order they complete
    /// (Python's `imap_unordered`).
    @inlinable
    public func imapUnordered<Item, Output: Codable & Sendable>(_ items: some Sequence<Item>, chunkSize: Int = 1, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Item) throws -> Output) throws -> PoolResults<Output> {
        let items = Array(items)
        let program = ClosureProgram.overHeld(items, body)
        return try submitClosure(program, count: items.count, chunkSize: chunkSize, timeout: timeout, progress: progress, ordered: false)
    }

    // MARK: Closures over `Codable` items

    /// Applies `body` to every item in workers forked for the call; returns
    /// the outputs in item order. As ``mapAsync(_:chunkSize:bufferSize:timeout:progress:_:)``.
    @available(*, noasync, message: "await mapAsync(_:_:).value instead")
    @inlinable
    public func map<Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Item) throws -> Output) throws -> [Output] {
        try mapAsync(items, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress, body).get()
    }

    /// Starts applying `body` to every item in workers forked for the call,
    /// and returns at once.
    ///
    /// An array's items are held by the forked workers, as any closure
    /// call's are: nothing but the outputs travels. Any other sequence of
    /// `Codable` items (a range, a lazy or infinite sequence) is read as
    /// ``map(_:over:chunkSize:bufferSize:timeout:progress:)`` reads its
    /// inputs — lazily, at most `bufferSize` chunks ahead — and its items
    /// are sent to the forked workers, encoded, a chunk at a time.
    @inlinable
    public func mapAsync<Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Item) throws -> Output) throws -> MapResult<Output> {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        if let held = items as? [Item] {
            let program = ClosureProgram.overHeld(held, body)
            return try submitClosure(program, count: held.count, chunkSize: chunkSize, timeout: timeout, progress: progress)
        }
        let sizing = ChunkSizing.forMap(chunkSize, knownCount: items.underestimatedCount, processes: processes)
        return try submitMap(.closure(.overSentItems(body)), .chunks(of: items, sizing: sizing), bufferSize: bufferSize, timeout: timeout, progress: progress)
    }

    /// Applies `body` to every item in workers forked for the call; results
    /// come in item order as they are ready (Python's `imap`).
    ///
    /// An array's items are held by the forked workers. Any other sequence
    /// of `Codable` items is read as ``imap(_:over:chunkSize:bufferSize:timeout:progress:)``
    /// reads its inputs — as results are taken, at most `bufferSize` chunks
    /// ahead, so an infinite sequence works — and sent to the workers encoded.
    @inlinable
    public func imap<Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Item) throws -> Output) throws -> PoolResults<Output> {
        try closureResults(items, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: true, body)
    }

    /// Applies `body` to every item in workers forked for the call; results
    /// come in the order they complete. Reads `items` as ``imap(_:chunkSize:bufferSize:timeout:progress:_:)`` does.
    @inlinable
    public func imapUnordered<Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Item) throws -> Output) throws -> PoolResults<Output> {
        try closureResults(items, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: false, body)
    }

    /// Applies `body` to every element of an asynchronous sequence in
    /// workers forked for the call; returns the outputs in order. The
    /// elements are read by a task of the call's own and sent to the
    /// workers encoded, at most `bufferSize` chunks ahead of those ended.
    ///
    /// - Throws: the first failed item's ``ProcessError``, or
    ///   ``ProcessError/inputFailed(errorType:description:)`` if `items` threw.
    public func map<Items: AsyncSequence & SendableMetatype, Output: Codable & Sendable>(_ items: sending Items, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Items.Element) throws -> Output) async throws -> [Output] where Items.Element: Codable & Sendable {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        let call = try submitAsync(.closure(.overSentItems(body)), items, sizing: chunkSize.map { .fixed($0) } ?? .growing(upTo: 1024), bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: nil)
        return try await MapResult<Output>(call: call, decoder: OutcomeDecoder(single: false)).value
    }

    /// Applies `body` to every element of an asynchronous sequence in
    /// workers forked for the call; results come in order as they are
    /// ready, the elements read at most `bufferSize` chunks ahead of the consumer.
    public func imap<Items: AsyncSequence & SendableMetatype, Output: Codable & Sendable>(_ items: sending Items, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Items.Element) throws -> Output) throws -> PoolResults<Output> where Items.Element: Codable & Sendable {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        return PoolResults(call: try submitAsync(.closure(.overSentItems(body)), items, sizing: .fixed(chunkSize), bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: true), decoder: OutcomeDecoder(single: false))
    }

    /// As the `imap` over an asynchronous sequence above, results in the order they complete.
    public func imapUnordered<Items: AsyncSequence & SendableMetatype, Output: Codable & Sendable>(_ items: sending Items, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Items.Element) throws -> Output) throws -> PoolResults<Output> where Items.Element: Codable & Sendable {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        return PoolResults(call: try submitAsync(.closure(.overSentItems(body)), items, sizing: .fixed(chunkSize), bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: false), decoder: OutcomeDecoder(single: false))
    }

    @inlinable
    func closureResults<Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, chunkSize: Int, bufferSize: Int?, timeout: Duration?, progress: (@Sendable (PoolProgress) -> Void)?, ordered: Bool, _ body: @escaping (Item) throws -> Output) throws -> PoolResults<Output> {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        if let held = items as? [Item] {
            let program = ClosureProgram.overHeld(held, body)
            return try submitClosure(program, count: held.count, chunkSize: chunkSize, timeout: timeout, progress: progress, ordered: ordered)
        }
        return try submitResults(.closure(.overSentItems(body)), .chunks(of: items, sizing: .fixed(chunkSize)), ordered: ordered, bufferSize: bufferSize, timeout: timeout, progress: progress)
    }

    @usableFromInline
    func submitClosure<Output: Decodable & Sendable>(_ program: ClosureProgram, count: Int, chunkSize: Int?, timeout: Duration?, progress: (@Sendable (PoolProgress) -> Void)?) throws -> MapResult<Output> {
        try checkChunkSize(chunkSize)
        let call = try submit(.closure(program), units: Self.units(count: count, chunkSize: chunkSize ?? defaultChunkSize(count)), timeout: timeout, progress: progress)
        return MapResult(call: call, decoder: OutcomeDecoder(single: false))
    }

    @usableFromInline
    func submitClosure<Output: Decodable & Sendable>(_ program: ClosureProgram, count: Int, chunkSize: Int, timeout: Duration?, progress: (@Sendable (PoolProgress) -> Void)?, ordered: Bool) throws -> PoolResults<Output> {
        try checkChunkSize(chunkSize)
        let call = try submit(.closure(program), units: Self.units(count: count, chunkSize: chunkSize), consumption: ordered ? .inOrder : .asCompleted, timeout: timeout, progress: progress)
        return PoolResults(call: call, decoder: OutcomeDecoder(single: false))
    }
}
