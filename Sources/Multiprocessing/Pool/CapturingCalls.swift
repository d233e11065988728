// MARK: - Closures given their captures

extension ProcessPool {
    /// Runs `body(capture)` in one of the pool's workers and returns its output.
    ///
    /// See ``applyAsync(capturing:timeout:onSuccess:onFailure:_:)``.
    ///
    /// - Throws: the ``ProcessError`` the task failed with.
    @available(*, noasync, message: "await applyAsync(capturing:_:).value instead")
    public func apply<Capture: Codable & Sendable, Output: Codable & Sendable>(capturing capture: Capture, timeout: Duration? = nil, _ body: @escaping (Capture) throws -> Output) throws -> Output {
        try applyAsync(capturing: capture, timeout: timeout, body).get()
    }

    /// Starts `body(capture)` in one of the pool's workers and returns at
    /// once: Python's `apply_async(f, args)`, written as a closure.
    ///
    /// ```swift
    /// let total = try pool.applyAsync(capturing: request) { request in
    ///     try render(request)
    /// }
    /// ```
    ///
    /// A closure that uses nothing from around it but its argument runs in
    /// the pool's long-lived workers, by the pool's start method, as a
    /// ``ProcessJob`` would: `capture` is encoded and sent, the closure's code
    /// is named by where it is in the executable (every worker runs the same
    /// one), and no process is forked for the call. Such a closure sees the
    /// worker's global state, not this process's: pass what it needs as
    /// `capture`. A closure that captures something else (a local variable,
    /// `self`), or a function passed by name, runs as
    /// ``applyAsync(timeout:onSuccess:onFailure:_:)`` does, in a worker
    /// forked for the call, with the same result.
    ///
    /// - Parameters:
    ///   - capture: the closure's argument, encoded and sent to the worker.
    ///   - timeout: the time the task may run; past it its worker is killed.
    ///   - onSuccess: called with the output, on a pool thread; keep it short.
    ///   - onFailure: called with the error instead, on a pool thread.
    public func applyAsync<Capture: Codable & Sendable, Output: Codable & Sendable>(capturing capture: Capture, timeout: Duration? = nil, onSuccess: (@Sendable (Output) -> Void)? = nil, onFailure: (@Sendable (ProcessError) -> Void)? = nil, _ body: @escaping (Capture) throws -> Output) throws -> AsyncResult<Output> {
        let typeName = _mangledTypeName(SentJob<Capture, Output>.self)
        guard let typeName, let code = sentCode(body, typeName: typeName) else {
            return try applyAsync(timeout: timeout, onSuccess: onSuccess, onFailure: onFailure) { try body(capture) }
        }
        ValueCodec.prepare(Capture.self)
        ValueCodec.prepare(Output.self)
        let decoder = OutcomeDecoder<Output>(single: true)
        let work = PoolCall.Work.named(kind: .sentJob, typeName: typeName, payload: try ValueCodec.encode(capture), code: code)
        let call = try submit(work, units: [.init(items: 1)], timeout: timeout, progress: nil, completion: Self.callbacks(decoder, onSuccess: onSuccess, onFailure: onFailure))
        return AsyncResult(call: call, decoder: decoder)
    }

    /// Applies `body(capture, item)` to every item in the pool's workers;
    /// returns the outputs in item order.
    ///
    /// See ``mapAsync(_:capturing:chunkSize:bufferSize:timeout:progress:_:)``.
    ///
    /// - Throws: the first failed item's ``ProcessError`` (in item order).
    @available(*, noasync, message: "await mapAsync(_:capturing:_:).value instead")
    @inlinable
    public func map<Capture: Codable & Sendable, Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, capturing capture: Capture, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Capture, Item) throws -> Output) throws -> [Output] {
        try mapAsync(items, capturing: capture, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress, body).get()
    }

    /// Starts applying `body(capture, item)` to every item in the pool's
    /// workers and returns at once.
    ///
    /// ```swift
    /// let scaled = try await pool.mapAsync(samples, capturing: gain) { gain, sample in
    ///     sample * gain
    /// }.value
    /// ```
    ///
    /// As with ``applyAsync(capturing:timeout:onSuccess:onFailure:_:)``, a
    /// closure that uses nothing from around it runs in the pool's
    /// long-lived workers: `capture` is sent once per chunk and the items in
    /// chunks, like a ``ProcessFunction``'s, and the items are read as
    /// ``map(_:over:chunkSize:bufferSize:timeout:progress:)`` reads its
    /// inputs: lazily, at most `bufferSize` chunks ahead. Any other closure
    /// runs in workers forked for the call, as
    /// ``mapAsync(_:chunkSize:timeout:progress:_:)`` does, and the items are
    /// read whole first (the forked workers hold them).
    @inlinable
    public func mapAsync<Capture: Codable & Sendable, Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, capturing capture: Capture, chunkSize: Int? = nil, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Capture, Item) throws -> Output) throws -> MapResult<Output> {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        // Compiled here, for these types: sent only where that made it code without a context.
        let runner: SentRunner = { SentFunction<Capture, Item, Output>.run($0, payload: $1, inputs: $2, offset: $3) }
        guard let work = try sentWork(capture: capture, body, runner: runner) else {
            // Forked for the call; fed the items if they are not an array.
            return try mapAsync(items, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress) { try body(capture, $0) }
        }
        let sizing = ChunkSizing.forMap(chunkSize, knownCount: items.underestimatedCount, processes: processes)
        return try submitMap(work, .chunks(of: items, sizing: sizing), bufferSize: bufferSize, timeout: timeout, progress: progress)
    }

    /// Applies `body(capture, item)` to every item; results come in item
    /// order as they are ready (Python's `imap`). Runs as
    /// ``mapAsync(_:capturing:chunkSize:bufferSize:timeout:progress:_:)`` does; a
    /// sent closure's items are read as ``imap(_:over:chunkSize:bufferSize:timeout:progress:)`` reads its inputs.
    @inlinable
    public func imap<Capture: Codable & Sendable, Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, capturing capture: Capture, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Capture, Item) throws -> Output) throws -> PoolResults<Output> {
        try sentResults(items, capture: capture, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: true, body)
    }

    /// Applies `body(capture, item)` to every item; results come in the order
    /// they complete (Python's `imap_unordered`). Runs as
    /// ``imap(_:capturing:chunkSize:bufferSize:timeout:progress:_:)`` does.
    @inlinable
    public func imapUnordered<Capture: Codable & Sendable, Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, capturing capture: Capture, chunkSize: Int = 1, bufferSize: Int? = nil, timeout: Duration? = nil, progress: (@Sendable (PoolProgress) -> Void)? = nil, _ body: @escaping (Capture, Item) throws -> Output) throws -> PoolResults<Output> {
        try sentResults(items, capture: capture, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: false, body)
    }

    /// `imap` or `imapUnordered` of a sent closure over lazily read items,
    /// or of a forked one over the items read whole when it cannot be sent.
    @inlinable
    func sentResults<Capture: Codable & Sendable, Item: Codable & Sendable, Output: Codable & Sendable>(_ items: sending some Sequence<Item>, capture: Capture, chunkSize: Int, bufferSize: Int?, timeout: Duration?, progress: (@Sendable (PoolProgress) -> Void)?, ordered: Bool, _ body: @escaping (Capture, Item) throws -> Output) throws -> PoolResults<Output> {
        try checkChunkSize(chunkSize, bufferSize: bufferSize)
        let runner: SentRunner = { SentFunction<Capture, Item, Output>.run($0, payload: $1, inputs: $2, offset: $3) }
        guard let work = try sentWork(capture: capture, body, runner: runner) else {
            let forked: (Item) throws -> Output = { try body(capture, $0) }
            return try closureResults(items, chunkSize: chunkSize, bufferSize: bufferSize, timeout: timeout, progress: progress, ordered: ordered, forked)
        }
        return try submitResults(work, .chunks(of: items, sizing: .fixed(chunkSize)), ordered: ordered, bufferSize: bufferSize, timeout: timeout, progress: progress)
    }

    /// The work of a sent closure mapped over items; nil if `body` cannot be
    /// sent (the caller forks for it instead).
    @usableFromInline
    func sentWork<Capture: Codable & Sendable, Item: Codable & Sendable, Output: Codable & Sendable>(capture: Capture, _ body: @escaping (Capture, Item) throws -> Output, runner: @escaping SentRunner) throws -> PreparedWork? {
        guard let typeName = _mangledTypeName(SentFunction<Capture, Item, Output>.self), let code = sentCode(body, typeName: typeName) else { return nil }
        let runnerParts = SentRunnerBox(runner).parts
        let sentRunner = runnerParts.context == nil ? sentCode(at: runnerParts.code, typeName: SentRunnerBox.signedName(typeName)) : nil
        ValueCodec.prepare(Capture.self)
        ValueCodec.prepare(Item.self)
        ValueCodec.prepare(Output.self)
        return PreparedWork(.named(kind: .sentChunk, typeName: typeName, payload: try ValueCodec.encode(capture), code: code, runner: sentRunner))
    }

    /// The signed reference to `body`'s code, or nil when `body` has a
    /// context (it captures something) or its code is in no image with a
    /// build ID. Never specialized or inlined: `body` must be the function
    /// value at the abstraction of the generic parameter, as the worker
    /// rebuilds it (see ``SentCode``).
    @inline(never)
    @_semantics("optimize.sil.specialize.generic.never")
    private func sentCode<Function>(_ body: Function, typeName: String) -> SentCode? {
        let parts = ThickFunction(body)
        guard parts.context == nil else { return nil }
        return sentCode(at: parts.code, typeName: typeName)
    }

    /// The signed reference to the code at `code`, made once per pool.
    private func sentCode(at code: UnsafeRawPointer, typeName: String) -> SentCode? {
        let key = SentCode.Key(address: UInt(bitPattern: code), typeName: typeName)
        if let known = engine.sentCodes.withLock({ $0[key] }) { return known }
        guard let sent = SentCode(code, typeName: typeName, key: engine.signingKey) else { return nil }
        engine.sentCodes.withLock { $0[key] = sent }
        return sent
    }
}
