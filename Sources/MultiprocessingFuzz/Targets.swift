#if Fuzzing
import Glibc
@testable import Multiprocessing
import SystemPackage

/// One decoder under fuzzing: real messages to start from, and what to do
/// with any bytes. A crash, a trap, a leak or a hang is a finding; a typed
/// error is the expected answer to bytes that make no sense.
struct FuzzTarget: Sendable {
    let name: String
    let seeds: @Sendable () -> [[UInt8]]
    let fuzz: @Sendable ([UInt8]) -> Void

    static let all: [FuzzTarget] = [wire, frames, unitRequest, unitReply, manager, handshake, bootstrap]
}

// MARK: - Pieces

/// Several messages in one input: each a 2-byte little-endian length, then
/// its bytes (the last one cut short by the input's end).
func pieces(_ bytes: [UInt8]) -> [[UInt8]] {
    var result: [[UInt8]] = []
    var index = 0
    while index + 2 <= bytes.count {
        let length = Int(bytes[index]) | Int(bytes[index + 1]) << 8
        index += 2
        let end = min(bytes.count, index + length)
        result.append(Array(bytes[index..<end]))
        index = end
    }
    return result
}

func joined(_ messages: [[UInt8]]) -> [UInt8] {
    messages.flatMap { message in [UInt8(message.count & 0xff), UInt8(message.count >> 8)] + message }
}

/// Checks a decoded value the codec's way: its encoding decodes again, to a
/// value of the same encoding (or, where dictionaries may order their
/// entries differently, the same length).
func checkRoundTrip<T: Codable>(_ value: T, exactly: Bool = true) {
    guard let encoded = try? ValueCodec.encode(value) else { return }
    let again: T
    do {
        again = try ValueCodec.decode(T.self, from: encoded)
    } catch {
        fatalError("a decoded \(T.self) encodes to bytes that do not decode: \(error)")
    }
    let reencoded = try? ValueCodec.encode(again)
    if exactly {
        precondition(reencoded == encoded, "a decoded \(T.self) changed in a round trip")
    } else {
        precondition(reencoded?.count == encoded.count, "a decoded \(T.self) changed size in a round trip")
    }
}

// MARK: - Values on the wire

struct WireNested: Codable, Equatable {
    var name: String
    var values: [Double]
    var child: [WireNested]?
}

enum WireChoice: Codable, Equatable {
    case none
    case one(Int)
    case two(String, [Float])
    case named(label: String?, bytes: [UInt8])
}

struct WireSample: Codable {
    var int: Int
    var small: Int8
    var medium: UInt16
    var word: UInt32
    var wide: Int64
    var flag: Bool
    var real: Double
    var single: Float
    var text: String
    var raw: [UInt8]
    var numbers: [Int]
    var words: [String]
    var maybe: Int?
    var nested: [WireNested]
    var table: [String: Int]
    var byKey: [Int: [String]]
    var choices: [WireChoice]
}

let sample = WireSample(
    int: -5, small: -3, medium: 700, word: 1 << 30, wide: .min, flag: true, real: 2.5, single: -1.25,
    text: "héllo", raw: [0, 1, 255], numbers: [1, -2, 3_000_000_000], words: ["a", "", "ccc"], maybe: nil,
    nested: [WireNested(name: "n", values: [1, .infinity], child: [WireNested(name: "m", values: [], child: nil)])],
    table: ["k": 1, "l": 2], byKey: [3: ["x"], -4: []],
    choices: [.none, .one(9), .two("t", [0.5]), .named(label: nil, bytes: [7])])

/// The codec over the shapes that cross between processes: the first byte
/// picks the type.
let wire = FuzzTarget(name: "wire", seeds: {
    [
        [0] + (try! ValueCodec.encode(sample)),
        [1] + (try! ValueCodec.encode(ProcessError.crashed(signal: 4, report: CrashReport()))),
        [1] + (try! ValueCodec.encode(ProcessError.jobFailed(JobFailure(errorType: "E", description: "d")))),
        [2] + (try! ValueCodec.encode([ItemOutcome.value([1, 2]), .failed(.timedOut(seconds: 1))])),
        [3] + (try! ValueCodec.encode(ManagerError.unknownObject(3))),
        [4] + (try! ValueCodec.encode(["a": [1, nil, 3]] as [String: [Int?]])),
        [5] + (try! ValueCodec.encode(ServerStart.listening(.unix("/tmp/x")))),
        [6] + (try! ValueCodec.encode(BootRequest(kind: .job, typeName: "T", name: "n", parent: ProcessContext.current))),
    ]
}, fuzz: { bytes in
    guard let selector = bytes.first else { return }
    let rest = Array(bytes.dropFirst())
    func attempt<T: Codable>(_ type: T.Type, exactly: Bool = true) {
        if let value = try? ValueCodec.decode(T.self, from: rest) { checkRoundTrip(value, exactly: exactly) }
    }
    switch selector % 8 {
    case 0: attempt(WireSample.self, exactly: false)
    case 1: attempt(ProcessError.self)
    case 2: attempt([ItemOutcome].self)
    case 3: attempt(ManagerError.self)
    case 4: attempt([String: [Int?]].self, exactly: false)
    case 5: attempt(ServerStart.self)
    case 6: attempt(BootRequest.self)
    default: attempt([WireChoice].self)
    }
})

// MARK: - Frames

/// The three readers of framed bytes: the buffer the pool's dispatcher cuts
/// frames from, a blocking read of one frame, and a connection's receive.
let frames = FuzzTarget(name: "frames", seeds: {
    let framed = Frame.encode([1, 2, 3]) + Frame.encode([]) + Frame.encode(Array(repeating: 9, count: 300))
    return [[0] + joined([Array(framed.prefix(5)), Array(framed.dropFirst(5))]), [1] + framed, [2] + framed, [3] + framed]
}, fuzz: { bytes in
    guard let selector = bytes.first else { return }
    let rest = Array(bytes.dropFirst())
    switch selector % 4 {
    case 0:
        var buffer = FrameBuffer()
        var appended = 0, taken = 0
        for piece in pieces(rest) {
            buffer.append(piece)
            appended += piece.count
            do {
                while let frame = try buffer.nextFrame() { taken += Frame.headerSize + frame.count }
            } catch {
                return
            }
            precondition(taken + buffer.partialCount == appended, "the frame buffer lost or made bytes")
        }
    case 1:
        // A blocking read from a socket whose peer sent these bytes and left.
        guard let (here, there) = try? Syscall.socketPair() else { return }
        defer { try? here.close() }
        try? Frame.writeAll(rest, to: there)
        try? there.close()
        var total = 0
        while let frame = try? Frame.read(from: here) {
            total += Frame.headerSize + frame.count
            precondition(total <= rest.count, "frames longer than the bytes sent")
        }
    default:
        // A connection's receive, by bytes, into a buffer, or as a number.
        guard let (ours, peer) = try? Connection.pipe(duplex: true) else { return }
        defer { ours.close() }
        try? peer.sendRaw(rest)
        peer.close()
        var buffer = [UInt8](repeating: 0, count: 64)
        for round in 0..<64 {
            do {
                switch (Int(selector) + round) % 3 {
                case 0: _ = try ours.receiveBytes()
                case 1: _ = try buffer.withUnsafeMutableBytes { try ours.receiveBytes(into: $0) }
                default: _ = try ours.receive(Int.self)
                }
            } catch ConnectionError.bufferTooSmall {
                _ = try? ours.receiveBytes()
            } catch {
                return
            }
        }
    }
})

// MARK: - The pool's requests and replies

/// A job and a function the fuzzed worker may run (nothing else in the
/// binary is run: other types are resolved and decoded only).
struct FuzzSquare: ProcessJob {
    var x: Int
    func run() -> Int { x &* x }
}

struct FuzzScale: ProcessFunction {
    var factor: Int
    func callAsFunction(_ input: Int) throws -> Int {
        guard input != 13 else { throw FuzzRefusal() }
        return input &* factor
    }
}

struct FuzzRefusal: Error {}

let fuzzKey = [UInt8](repeating: 0x5a, count: 32)

func request(_ request: UnitRequest) -> [UInt8] {
    let (head, body) = try! request.wire()
    return head + body
}

/// A worker's side: what `WorkerLoop` does with a request from its pool.
let unitRequest = FuzzTarget(name: "unit-request", seeds: {
    let square = JobRunner.typeName(of: FuzzSquare.self)
    let scale = _mangledTypeName(FuzzScale.self)!
    return [
        request(UnitRequest(kind: .job, id: 1, typeName: square, payload: try! ValueCodec.encode(FuzzSquare(x: 7)))),
        request(UnitRequest(kind: .jobChunk, id: 2, typeName: square, inputs: try! ValueCodec.encode([FuzzSquare(x: 1), FuzzSquare(x: 2)]))),
        request(UnitRequest(kind: .functionChunk, id: 3, typeName: scale, payload: try! ValueCodec.encode(FuzzScale(factor: 3)), inputs: try! ValueCodec.encode([1, 13, 4]))),
        request(UnitRequest(kind: .closureChunk, id: 4, lower: 0, upper: 3)),
        request(UnitRequest(kind: .stop, id: 0)),
    ]
}, fuzz: { bytes in
    guard let decoded = try? UnitRequest.decode(bytes) else { return }
    ChunkRunner.prepareInParent(decoded)
    if let type = _typeByName(decoded.typeName) {
        let ours = type == FuzzSquare.self || type == FuzzScale.self || type is any SentClosureWork.Type
        guard ours || !(type is any ProcessJob.Type || type is any ProcessFunction.Type) else { return }
    }
    var cache = NamedWorkCache(key: fuzzKey)
    let (tag, body) = ChunkRunner.runNamed(decoded, cache: &cache)
    // The reply the worker would send must read back in the pool.
    guard let reply = try? UnitReply.decode(UnitReply.head(id: decoded.id, tag: tag) + body), reply.id == decoded.id else {
        fatalError("a worker's reply to a request does not decode")
    }
})

/// The pool's side: a worker's reply, and a child's report.
let unitReply = FuzzTarget(name: "unit-reply", seeds: {
    func reply(_ outcome: UnitOutcome, id: UInt64) -> [UInt8] {
        let (tag, body) = outcome.wire()
        return UnitReply.head(id: id, tag: tag) + body
    }
    return [
        reply(.values(try! ValueCodec.encode([1, 4, 9]), offset: 0), id: 1),
        reply(.mixed([.value(try! ValueCodec.encode(5)), .failed(.crashed(signal: 11, report: CrashReport(message: "Fatal error", items: 3..<5, work: "Fuzz.Job")))]), id: 2),
        reply(.failed(.unknownJobType("X")), id: 0),
        ChildReport.encode(.success(try! ValueCodec.encode("out"))),
        ChildReport.encode(.failure(.timedOut(seconds: 2))),
    ]
}, fuzz: { bytes in
    if let (_, outcome) = try? UnitReply.decode(bytes) {
        switch outcome {
        case let .values(values, offset):
            // As a chunk's outputs, and as one job's output.
            if let outputs = try? ValueCodec.decode([Int].self, from: values, startingAt: offset) { checkRoundTrip(outputs) }
            if let output = try? ValueCodec.decode(String.self, from: values, startingAt: offset) { checkRoundTrip(output) }
        case let .mixed(items):
            for case let .value(value) in items { _ = try? ValueCodec.decode(Int.self, from: value) }
        case let .failed(error):
            checkRoundTrip(error)
        }
    }
    if case let .success(payload)? = try? ChildReport.decode(bytes) {
        _ = try? ValueCodec.decode([String].self, from: payload)
    }
})

// MARK: - The manager

/// A manager's server given a client's requests one after the other (every
/// wait cut to none, so a call that would block answers at once), then the
/// client gone; and the client reading replies.
let manager = FuzzTarget(name: "manager", seeds: {
    func call(_ object: UInt64, _ method: String, _ arguments: [[UInt8]] = []) -> [UInt8] {
        ManagerRequest(object: object, method: method, arguments: arguments, process: 42, thread: 1).encoded()
    }
    func argument<T: Encodable>(_ value: T) -> [UInt8] { try! Served.encode(value) }
    return [
        joined([
            call(0, "create", [argument("dict")]), call(1, "set", [argument("k"), argument(5)]),
            call(1, "get", [argument("k")]), call(1, "items"), call(1, "remove", [argument("k")]),
        ]),
        joined([
            call(0, "create", [argument("list"), argument(1), argument(2)]), call(1, "append", [argument(3)]),
            call(1, "get", [argument(0)]), call(1, "all"), call(1, "insert", [argument(0), argument(9)]),
        ]),
        joined([
            call(0, "create", [argument("queue"), argument(2)]), call(1, "put", [argument("a")]),
            call(1, "get"), call(1, "get"), call(1, "taskDone"), call(1, "join"),
        ]),
        joined([
            call(0, "create", [argument("lock")]), call(1, "acquire"), call(1, "acquire"), call(1, "release"),
            call(0, "create", [argument("condition")]), call(2, "wait"), call(2, "notifyAll"),
        ]),
        joined([
            call(0, "create", [argument("semaphore"), argument(1)]), call(1, "acquire"), call(1, "acquire"),
            call(0, "create", [argument("barrier"), argument(2)]), call(2, "wait"), call(2, "abort"), call(2, "reset"),
            call(0, "create", [argument("event")]), call(3, "wait"), call(3, "set"), call(3, "isSet"),
            call(0, "create", [argument("value"), argument(1.5)]), call(4, "set", [argument(2.5)]), call(4, "get"),
            call(0, "ping"), call(0, "create", [argument("object"), argument("NotAType")]),
        ]),
        joined([ManagerReply.value([1, 2]).encoded(), ManagerReply.failure(.unknownObject(9)).encoded()]),
    ]
}, fuzz: { bytes in
    let server = ManagerServer(listener: nil, authenticationKey: [])
    var clients: Set<Int32> = []
    for piece in pieces(bytes).prefix(64) {
        if let reply = try? ManagerReply(decoding: piece), case let .failure(error) = reply { checkRoundTrip(error) }
        guard var request = try? ManagerRequest(decoding: piece) else { continue }
        // What the server read, written again, reads the same (a NaN timeout is any NaN).
        precondition((try? ManagerRequest(decoding: request.encoded()))?.encoded() == request.encoded(), "a manager request changed in a round trip")
        request.timeout = 0
        clients.insert(request.process)
        let reply: ManagerReply
        do throws(ManagerError) {
            reply = .value(try server.handle(request, callerGone: { false }))
        } catch {
            reply = .failure(error)
        }
        guard (try? ManagerReply(decoding: reply.encoded())) != nil else { fatalError("a manager reply does not decode") }
    }
    for client in clients { server.disconnected(String(client)) }
})

// MARK: - Authentication

/// Either side of the handshake against a peer that sent these bytes and
/// left: it must refuse, never accept (the peer has no key).
let handshake = FuzzTarget(name: "handshake", seeds: {
    func raw(_ messages: [[UInt8]]) -> [UInt8] {
        let (sender, receiver) = try! Connection.pipe(duplex: true)
        for message in messages { try! sender.sendBytes(message) }
        sender.close()
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while let n = try? chunk.withUnsafeMutableBytes({ try Syscall.read(receiver.fileDescriptor, into: $0) }), n > 0 {
            bytes += chunk[..<n]
        }
        receiver.close()
        return bytes
    }
    let challenge = Authentication.challengePrefix + [UInt8](repeating: 7, count: Authentication.challengeSize)
    return [
        [0] + raw([[UInt8](repeating: 1, count: 32), challenge]),
        [1] + raw([challenge, Authentication.welcome, [UInt8](repeating: 2, count: 32)]),
        [1] + raw([challenge, Authentication.failure]),
    ]
}, fuzz: { bytes in
    guard let selector = bytes.first, let (ours, peer) = try? Connection.pipe(duplex: true) else { return }
    defer { ours.close() }
    try? peer.sendRaw(Array(bytes.dropFirst()))
    peer.close()
    let accepted: Bool
    if selector % 2 == 0 {
        accepted = (try? Authentication.serve(ours, key: fuzzKey)) != nil
    } else {
        accepted = (try? Authentication.client(ours, key: fuzzKey)) != nil
    }
    precondition(!accepted, "the handshake accepted a peer that has no key")
})

// MARK: - The spawn bootstrap

/// A spawned child's first read: the request and the job's payload, then
/// the job type's resolution (run only for the fuzzer's own job).
let bootstrap = FuzzTarget(name: "bootstrap", seeds: {
    func raw(_ request: BootRequest, _ payload: [UInt8]) -> [UInt8] {
        var bytes = Frame.encode(try! ValueCodec.encode(request))
        bytes += Frame.encode(payload)
        return bytes
    }
    let square = JobRunner.typeName(of: FuzzSquare.self)
    return [
        raw(BootRequest(kind: .job, typeName: square, name: "job", parent: ProcessContext.current), try! ValueCodec.encode(FuzzSquare(x: 3))),
        raw(BootRequest(kind: .job, typeName: "Nope", name: "job", parent: ProcessContext.current, descriptorCount: 2), []),
        raw(BootRequest(kind: .forkServer, typeName: "", name: "forkserver", parent: ProcessContext.current), []),
    ]
}, fuzz: { bytes in
    guard let (here, there) = try? Syscall.socketPair() else { return }
    defer { try? here.close() }
    try? Frame.writeAll(bytes, to: there)
    try? there.close()
    guard let (request, payload) = try? BootRequest.receive(from: here), request.kind == .job else { return }
    guard let type = _typeByName(request.typeName) else { return }
    if type == FuzzSquare.self {
        if case let .success(output) = JobRunner.run(typeName: request.typeName, payload: payload) {
            precondition((try? ValueCodec.decode(Int.self, from: output)) != nil, "a job's output does not decode")
        }
    } else {
        _ = type as? any ProcessJob.Type
    }
})
#endif
