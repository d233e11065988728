/// A function a ``ProcessPool`` maps over inputs in its workers, by any
/// start method: Python's `pool.map(f, iterable)` with `f` named by type.
///
/// The value itself is sent once per chunk (it may carry parameters); the
/// inputs travel in chunks, and a `BitwiseCopyable` input or output array
/// crosses as raw bytes. As with ``ProcessJob``, the worker finds the type by
/// its mangled name and runs nothing that is not a `ProcessFunction`.
///
/// ```swift
/// struct Square: ProcessFunction {
///     func callAsFunction(_ x: Int) -> Int { x * x }
/// }
/// let squares = try pool.map(Square(), over: 1...1_000_000)
/// ```
public protocol ProcessFunction: Codable, Sendable {
    /// One input.
    associatedtype Input: Codable & Sendable
    /// What the function returns for one input.
    associatedtype Output: Codable & Sendable

    /// Computes the output for `input`, in a worker process.
    func callAsFunction(_ input: Input) throws -> Output

    /// Worker side, not for calling: runs the function encoded in `payload`
    /// over the inputs encoded in `inputs` from `offset` on, and returns the
    /// encoded outcome.
    /// Keep the default: being a requirement, it is compiled for each
    /// conforming type, so the loop over a chunk is specialized for it.
    static func _runChunk(payload: [UInt8], inputs: [UInt8], offset: Int) -> (tag: UInt8, body: [UInt8])
}

extension ProcessFunction {
    @inlinable
    public static func _runChunk(payload: [UInt8], inputs: [UInt8], offset: Int) -> (tag: UInt8, body: [UInt8]) {
        let function: Self
        let items: [Input]
        do {
            function = try WireCodec.decode(Self.self, from: payload)
            items = try WireCodec.decode([Input].self, from: inputs, startingAt: offset)
        } catch {
            return UnitOutcome.failed(.corruptRequest(error.description)).wire()
        }
        return ChunkRunner.run(items) { try function($0) }.wire()
    }
}

extension ProcessFunction {
    /// Parent side: decodes what a worker will decode, without running it.
    fileprivate static func decodeOnly(payload: [UInt8], inputs: [UInt8], offset: Int) {
        _ = try? ValueCodec.decode(Self.self, from: payload)
        _ = try? ValueCodec.decode([Input].self, from: inputs, startingAt: offset)
    }
}

extension ProcessJob {
    /// Parent side: decodes what a worker will decode, without running it.
    fileprivate static func decodeOnly(single payload: [UInt8]) {
        _ = try? ValueCodec.decode(Self.self, from: payload)
    }

    fileprivate static func decodeOnly(chunk inputs: [UInt8], offset: Int) {
        _ = try? ValueCodec.decode([Self].self, from: inputs, startingAt: offset)
    }

    /// Worker side: decodes a chunk of jobs and runs each.
    fileprivate static func runChunk(_ inputs: [UInt8], offset: Int) -> (tag: UInt8, body: [UInt8]) {
        let jobs: [Self]
        do {
            jobs = try ValueCodec.decode([Self].self, from: inputs, startingAt: offset)
        } catch {
            return UnitOutcome.failed(.corruptRequest(error.description)).wire()
        }
        return ChunkRunner.run(jobs) { try $0.run() }.wire()
    }
}

/// Runs work over a chunk in a worker and encodes the outcome.
@usableFromInline
internal enum ChunkRunner {
    /// Applies `body` to each item: all outputs as one array when every item
    /// succeeds, else each item's output or error. Inlinable, so that it is
    /// specialized where the item and output types are known.
    @inlinable
    static func run<Item, Output: Encodable>(_ items: some Collection<Item>, _ body: (Item) throws -> Output) -> UnitOutcome {
        var outputs: [Output] = []
        outputs.reserveCapacity(items.count)
        var mixed: [ItemOutcome]? = nil
        for item in items {
            do {
                let output = try body(item)
                if mixed == nil { outputs.append(output) } else { mixed!.append(encodeItem(output)) }
            } catch {
                if mixed == nil {
                    mixed = []
                    for output in outputs { mixed!.append(encodeItem(output)) }
                }
                mixed!.append(.failed(.thrown(error)))
            }
        }
        if let mixed { return .mixed(mixed) }
        do {
            return .values(try WireCodec.encode(outputs), offset: 0)
        } catch {
            return .failed(.thrown(error, while: "encoding the outputs"))
        }
    }

    @inlinable
    static func encodeItem<Output: Encodable>(_ output: Output) -> ItemOutcome {
        do {
            return .value(try WireCodec.encode(output))
        } catch {
            return .failed(.thrown(error, while: "encoding the output"))
        }
    }

    /// In the parent, before workers are forked: resolves and decodes what a
    /// worker will for `request`, so that the runtime's metadata and
    /// conformance records exist before the fork (a forked child that must
    /// make them can wait for ever on a runtime lock another thread held at
    /// the fork).
    static func prepareInParent(_ request: UnitRequest) {
        guard let type = _typeByName(request.typeName) else { return }
        // The values decoded here are dropped: a manager's proxy among them
        // leaves its hold in transit to the worker that decodes it.
        ManagedReference.$warmingUp.withValue(true) { prepareInParent(request, type: type) }
    }

    private static func prepareInParent(_ request: UnitRequest, type: Any.Type) {
        switch request.kind {
        case .job: (type as? any ProcessJob.Type)?.decodeOnly(single: request.payload)
        case .jobChunk: (type as? any ProcessJob.Type)?.decodeOnly(chunk: request.inputs, offset: request.inputsOffset)
        case .functionChunk: (type as? any ProcessFunction.Type)?.decodeOnly(payload: request.payload, inputs: request.inputs, offset: request.inputsOffset)
        case .sentJob, .sentChunk: (type as? any SentClosureWork.Type)?.decodeOnly(payload: request.payload, inputs: request.inputs, offset: request.inputsOffset)
        case .closureChunk, .stop: break
        }
    }

    /// Runs a request for work named by type (jobs and functions); returns
    /// the encoded outcome. `cache` keeps the names and code already resolved.
    static func runNamed(_ request: UnitRequest, cache: inout NamedWorkCache) -> (tag: UInt8, body: [UInt8]) {
        guard let type = cache.type(named: request.typeName) else {
            return UnitOutcome.failed(.unknownJobType(request.typeName)).wire()
        }
        switch request.kind {
        case .job:
            guard let jobType = type as? any ProcessJob.Type else { return UnitOutcome.failed(.notAJob(request.typeName)).wire() }
            switch JobRunner.run(jobType, payload: request.payload) {
            case let .success(bytes): return UnitOutcome.values(bytes, offset: 0).wire()
            case let .failure(error): return UnitOutcome.failed(error).wire()
            }
        case .jobChunk:
            guard let jobType = type as? any ProcessJob.Type else { return UnitOutcome.failed(.notAJob(request.typeName)).wire() }
            return jobType.runChunk(request.inputs, offset: request.inputsOffset)
        case .functionChunk:
            guard let functionType = type as? any ProcessFunction.Type else { return UnitOutcome.failed(.notAJob(request.typeName)).wire() }
            return functionType._runChunk(payload: request.payload, inputs: request.inputs, offset: request.inputsOffset)
        case .sentJob, .sentChunk:
            guard let workType = type as? any SentClosureWork.Type, let sent = request.code else {
                return UnitOutcome.failed(.notAJob(request.typeName)).wire()
            }
            do throws(ProcessError) {
                let code = try cache.code(sent, typeName: request.typeName)
                if let runner = request.runner {
                    let run = SentRunnerBox(ThickFunction(code: try cache.code(runner, typeName: SentRunnerBox.signedName(request.typeName)))).run
                    return run(code, request.payload, request.inputs, request.inputsOffset)
                }
                return workType.run(code, payload: request.payload, inputs: request.inputs, offset: request.inputsOffset)
            } catch {
                return UnitOutcome.failed(error).wire()
            }
        case .closureChunk, .stop:
            return UnitOutcome.failed(.corruptRequest("a worker for named work was sent a \(request.kind) request")).wire()
        }
    }
}
