/// What the pool sends a worker: one unit of work (a task, or a chunk of
/// tasks), or the request to leave.
package struct UnitRequest: Codable, Sendable {
    package enum Kind: UInt8, Codable, Sendable {
        case stop
        /// One ``ProcessJob``: `typeName`, `payload`.
        case job
        /// A chunk of ``ProcessJob``s of type `typeName`, encoded as an array in `inputs`.
        case jobChunk
        /// A ``ProcessFunction`` (`typeName`, `payload`) over the inputs encoded in `inputs`.
        case functionChunk
        /// The items `lower..<upper` of a closure call, which the forked worker holds.
        case closureChunk
        /// A sent closure (`code`) of ``SentJob`` type `typeName`, given the capture in `payload`.
        case sentJob
        /// A sent closure (`code`) of ``SentFunction`` type `typeName`, with the
        /// capture in `payload`, over the inputs encoded in `inputs`.
        case sentChunk
    }

    package var kind: Kind
    package var id: UInt64
    package var typeName: String = ""
    package var payload: [UInt8] = []
    var lower: Int = 0
    var upper: Int = 0
    /// The CPU seconds the unit may use (``WorkerLimits/cpuSeconds`` times its items).
    var cpuLimit: Int? = nil
    /// The closure of a sent-closure request.
    var code: SentCode? = nil
    /// The work's ``SentRunner`` compiled for its types, if the caller's module made one.
    var runner: SentCode? = nil
    /// The encoded inputs: in `inputs` from `inputsOffset` on. They travel
    /// after the rest, as they are, so a large chunk is never copied into a
    /// bigger message.
    package var inputs: [UInt8] = []
    package var inputsOffset = 0

    private enum CodingKeys: String, CodingKey {
        case kind, id, typeName, payload, lower, upper, cpuLimit, code, runner
    }

    /// The message: the length of the encoded fields (4 bytes,
    /// little-endian), the fields, then the inputs (sent as a second part).
    package func wire() throws -> (head: [UInt8], body: [UInt8]) {
        let fields = try ValueCodec.encode(self)
        guard fields.count < Int(UInt32.max) else { throw WireError.corrupt("request fields of \(fields.count) bytes") }
        return (withUnsafeBytes(of: UInt32(fields.count).littleEndian) { Array($0) } + fields, inputs)
    }

    /// Reads a request; its inputs keep pointing into `bytes`.
    package static func decode(_ bytes: [UInt8]) throws(WireError) -> UnitRequest {
        guard bytes.count >= 4 else { throw .corrupt("a request of \(bytes.count) bytes") }
        let length = Int(bytes[0]) | Int(bytes[1]) << 8 | Int(bytes[2]) << 16 | Int(bytes[3]) << 24
        guard length <= bytes.count - 4 else { throw .corrupt("request fields of \(length) bytes in \(bytes.count)") }
        var request = try ValueCodec.decode(UnitRequest.self, from: bytes, startingAt: 4, endingAt: 4 + length)
        request.inputs = bytes
        request.inputsOffset = 4 + length
        return request
    }
}

/// How one item of a chunk ended, when not every item succeeded.
@usableFromInline
package enum ItemOutcome: Codable, Sendable {
    case value([UInt8])
    case failed(ProcessError)
}

/// How a unit ended in the worker.
@usableFromInline
package enum UnitOutcome: Sendable {
    /// Every item succeeded: the encoded outputs (an array for chunks, the
    /// one output for a `.job` unit), from `offset` on in `bytes`.
    case values([UInt8], offset: Int)
    /// Some item failed: each item's encoded output or error.
    case mixed([ItemOutcome])
    /// The whole unit failed before running (unknown type, corrupt request).
    case failed(ProcessError)

    @usableFromInline static let valuesTag: UInt8 = 0
    @usableFromInline static let mixedTag: UInt8 = 1
    @usableFromInline static let failedTag: UInt8 = 2

    /// The outcome as it crosses: a tag and its body (the outputs as they
    /// are, so that a large chunk is never copied into a bigger message).
    @usableFromInline
    package func wire() -> (tag: UInt8, body: [UInt8]) {
        switch self {
        case let .values(bytes, offset):
            return (Self.valuesTag, offset == 0 ? bytes : Array(bytes[offset...]))
        case let .mixed(items):
            if let body = try? ValueCodec.encode(items) { return (Self.mixedTag, body) }
            return UnitOutcome.failed(.corruptReply("the outcomes did not encode")).wire()
        case let .failed(error):
            return (Self.failedTag, (try? ValueCodec.encode(error)) ?? [])
        }
    }
}

/// A worker's answer to a request: the unit's id (8 bytes, little-endian;
/// 0 reports how the worker's setup and initializer went: `.values` when it
/// is ready, `.failed` when not), the outcome's tag (1 byte; with
/// ``capturedFlag`` set, the output the unit wrote follows, as
/// ``CapturedOutput/wire()`` lays it out), the outcome's body.
package enum UnitReply {
    static let capturedFlag: UInt8 = 0x80

    package static func head(id: UInt64, tag: UInt8, captured: CapturedOutput? = nil) -> [UInt8] {
        var head = withUnsafeBytes(of: id.littleEndian) { Array($0) }
        guard let captured else { return head + [tag] }
        head.append(tag | capturedFlag)
        return head + captured.wire()
    }

    /// Reads a reply; a `.values` outcome keeps pointing into `bytes`.
    package static func decode(_ bytes: [UInt8]) throws(WireError) -> (id: UInt64, outcome: UnitOutcome) {
        let reply = try decodeCapturing(bytes)
        return (reply.id, reply.outcome)
    }

    /// Reads a reply and the output its unit wrote, if it carries it.
    package static func decodeCapturing(_ bytes: [UInt8]) throws(WireError) -> (id: UInt64, outcome: UnitOutcome, captured: CapturedOutput?) {
        guard bytes.count >= 9 else { throw .corrupt("a reply of \(bytes.count) bytes") }
        var id: UInt64 = 0
        for index in (0..<8).reversed() { id = id << 8 | UInt64(bytes[index]) }
        var tag = bytes[8]
        var offset = 9
        var captured: CapturedOutput?
        if tag & capturedFlag != 0 {
            tag &= ~capturedFlag
            (captured, offset) = try CapturedOutput.decode(bytes, at: 9)
        }
        switch tag {
        case UnitOutcome.valuesTag: return (id, .values(bytes, offset: offset), captured)
        case UnitOutcome.mixedTag: return (id, .mixed(try ValueCodec.decode([ItemOutcome].self, from: bytes, startingAt: offset)), captured)
        case UnitOutcome.failedTag: return (id, .failed(try ValueCodec.decode(ProcessError.self, from: bytes, startingAt: offset)), captured)
        case let tag: throw .corrupt("a reply with tag \(tag)")
        }
    }
}

/// The loop every pool worker runs: set up its limits, initialize, say it
/// is ready, then answer requests one by one until asked to stop or the
/// pool's end of the connection closes.
internal enum WorkerLoop {
    static func serve(_ connection: Connection, setup: WorkerSetup, initialize: () -> ProcessError?, execute: (UnitRequest) -> (tag: UInt8, body: [UInt8])) {
        // A fault fails its task by its signal, in milliseconds; the runtime
        // still prints the fatal error's message before it traps.
        Syscall.defaultFaultSignals()
        // A worker allocates and frees a chunk's buffers (its inputs, outputs
        // and their encodings) over and over: kept, they are not faulted in
        // anew (pool.map 1.25x).
        if setup.keepsFreedMemory { Syscall.keepFreedMemory(upTo: 32 << 20) }
        // A setup that fails says why as it is; an initializer's error is wrapped.
        if let error = setup.apply() ?? initialize().map({ ProcessError.initializerFailed($0.description) }) ?? setup.sandbox?.enter() {
            let (tag, body) = UnitOutcome.failed(error).wire()
            try? connection.sendBytes(head: UnitReply.head(id: 0, tag: tag), body: body)
            return
        }
        let (readyTag, readyBody) = UnitOutcome.values([], offset: 0).wire()
        guard (try? connection.sendBytes(head: UnitReply.head(id: 0, tag: readyTag), body: readyBody)) != nil else { return }
        while true {
            // The next request of a caller that applies one task after
            // another comes within microseconds: a worker still awake takes
            // it without the wake-up across CPUs that costs more than the task.
            connection.spinUntilReadable(for: .microseconds(50))
            guard let bytes = try? connection.receiveBytes(),
                  let request = try? UnitRequest.decode(bytes),
                  request.kind != .stop
            else { return }
            if let seconds = request.cpuLimit { WorkerSetup.limitCPU(seconds: seconds) }
            CapturedOutput.begin(setup.capturedStreams)
            let (tag, body) = execute(request)
            // Asked to stop, the task's time is over: the pool fails it, and the worker leaves.
            if setup.handlesStopRequests && Syscall.stopRequested { return }
            let captured = setup.capturedStreams == 0 ? nil : CapturedOutput.collect(setup.capturedStreams)
            guard (try? connection.sendBytes(head: UnitReply.head(id: request.id, tag: tag, captured: captured), body: body)) != nil else { return }
        }
    }
}

/// A job-pool worker: the job that runs ``WorkerLoop`` in a child started by
/// the pool's start method, answering on `connection`.
internal struct PoolWorkerJob: ProcessJob {
    var connection: Connection
    /// The pool's initializer job, if any: its type name and encoding.
    var initializerType: String?
    var initializerPayload: [UInt8]
    /// The pool's key, which signs the closures sent to its workers.
    var codeKey: [UInt8]
    /// The limits the worker sets on itself first.
    var setup = WorkerSetup()
    /// A closure initializer: present only when the worker is forked (it
    /// runs this very value), never encoded.
    nonisolated(unsafe) var forkedInitializer: (() -> Void)? = nil  // runs only in the forked worker

    private enum CodingKeys: String, CodingKey {
        case connection, initializerType, initializerPayload, codeKey, setup
    }

    func run() throws -> Bool {
        var cache = NamedWorkCache(key: codeKey)
        WorkerLoop.serve(connection, setup: setup, initialize: {
            forkedInitializer?()
            guard let initializerType else { return nil }
            if case let .failure(error) = JobRunner.run(typeName: initializerType, payload: initializerPayload) { return error }
            return nil
        }, execute: { request in ChunkRunner.runNamed(request, cache: &cache) })
        return true
    }
}
