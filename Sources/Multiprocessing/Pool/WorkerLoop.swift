/// What the pool sends a worker: one unit of work (a task, or a chunk of
/// tasks), or the request to leave.
internal struct UnitRequest: Codable, Sendable {
    enum Kind: UInt8, Codable, Sendable {
        case stop
        /// One ``ProcessJob``: `typeName`, `payload`.
        case job
        /// A chunk of ``ProcessJob``s of type `typeName`, encoded as an array in `inputs`.
        case jobChunk
        /// A ``ProcessFunction`` (`typeName`, `payload`) over the inputs encoded in `inputs`.
        case functionChunk
        /// The items `lower..<upper` of a closure call, which the forked worker holds.
        case closureChunk
    }

    var kind: Kind
    var id: UInt64
    var typeName: String = ""
    var payload: [UInt8] = []
    var inputs: [UInt8] = []
    var lower: Int = 0
    var upper: Int = 0
}

/// How one item of a chunk ended, when not every item succeeded.
@usableFromInline
internal enum ItemOutcome: Codable, Sendable {
    case value([UInt8])
    case failed(ProcessError)
}

/// How a unit ended in the worker.
@usableFromInline
internal enum UnitOutcome: Codable, Sendable {
    /// Every item succeeded: the encoded outputs (an array for chunks, the
    /// one output for a `.job` unit).
    case values([UInt8])
    /// Some item failed: each item's encoded output or error.
    case mixed([ItemOutcome])
    /// The whole unit failed before running (unknown type, corrupt request).
    case failed(ProcessError)

    /// The outcome's encoding (a failure to encode is itself encoded).
    @usableFromInline
    func encoded() -> [UInt8] {
        if let bytes = try? ValueCodec.encode(self) { return bytes }
        return (try? ValueCodec.encode(UnitOutcome.failed(.corruptReply("the outcome did not encode")))) ?? []
    }
}

/// A worker's answer to a request: the unit's id (8 bytes, little-endian;
/// 0 reports a failed initializer), then its encoded ``UnitOutcome``.
internal enum UnitReply {
    static func encode(id: UInt64, outcome: [UInt8]) -> [UInt8] {
        var bytes = [UInt8]()
        bytes.reserveCapacity(8 + outcome.count)
        withUnsafeBytes(of: id.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: outcome)
        return bytes
    }

    static func decode(_ bytes: [UInt8]) throws(WireError) -> (id: UInt64, outcome: UnitOutcome) {
        guard bytes.count >= 8 else { throw .corrupt("a reply of \(bytes.count) bytes") }
        var id: UInt64 = 0
        for index in (0..<8).reversed() { id = id << 8 | UInt64(bytes[index]) }
        return (id, try ValueCodec.decode(UnitOutcome.self, from: Array(bytes[8...])))
    }
}

/// The loop every pool worker runs: initialize, then answer requests one by
/// one until asked to stop or the pool's end of the connection closes.
internal enum WorkerLoop {
    static func serve(_ connection: Connection, initialize: () -> ProcessError?, execute: (UnitRequest) -> [UInt8]) {
        // A fault fails its task by its signal, in milliseconds; the runtime
        // still prints the fatal error's message before it traps.
        Syscall.defaultFaultSignals()
        if let error = initialize() {
            let reply = UnitReply.encode(id: 0, outcome: UnitOutcome.failed(.initializerFailed(error.description)).encoded())
            try? connection.sendBytes(reply)
            return
        }
        while true {
            guard let bytes = try? connection.receiveBytes(),
                  let request = try? ValueCodec.decode(UnitRequest.self, from: bytes),
                  request.kind != .stop
            else { return }
            let reply = UnitReply.encode(id: request.id, outcome: execute(request))
            guard (try? connection.sendBytes(reply)) != nil else { return }
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
    /// A closure initializer: present only when the worker is forked (it
    /// runs this very value), never encoded.
    nonisolated(unsafe) var forkedInitializer: (() -> Void)? = nil  // runs only in the forked worker

    private enum CodingKeys: String, CodingKey {
        case connection, initializerType, initializerPayload
    }

    func run() throws -> Bool {
        WorkerLoop.serve(connection, initialize: {
            forkedInitializer?()
            guard let initializerType else { return nil }
            if case let .failure(error) = JobRunner.run(typeName: initializerType, payload: initializerPayload) { return error }
            return nil
        }, execute: ChunkRunner.runNamed)
        return true
    }
}
