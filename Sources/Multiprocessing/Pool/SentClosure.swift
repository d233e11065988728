import Crypto

/// A closure that captures nothing, sent to a pool's warm workers by where
/// its code is, with the value it is given (`capturing:`) encoded beside it.
///
/// A closure literal that uses nothing from around it is a code address and
/// a nil context. Every pool worker runs the same executable, so the code is
/// named by image build ID and offset (``CodeLocation``), and the worker calls
/// it at the same abstraction the caller's closure was made for: the
/// parameter of a generic function that is never specialized, and a
/// function value rebuilt inside the generic ``SentJob`` or ``SentFunction``
/// of the same parameters. A closure with a context (it captures, or is a
/// function reference wrapped in a thunk) is never sent: its call forks.
///
/// A worker jumps to an address it was sent only if the reference carries
/// the HMAC-SHA256, under the pool's key, of the work's type name and the
/// location: bytes that did not come from this pool never run as code.
internal struct SentCode: Codable, Sendable, Hashable {
    var location: CodeLocation
    var signature: [UInt8]

    /// What a pool caches a reference by: the code's address here and the work's type.
    struct Key: Hashable {
        var address: UInt
        var typeName: String
    }

    /// The reference to `code`, for work of type `typeName`, signed with
    /// `key`; nil if the code is in no image with a build ID.
    init?(_ code: UnsafeRawPointer, typeName: String, key: SymmetricKey) {
        guard let location = CodeLocation(code) else { return nil }
        self.location = location
        self.signature = Array(HMAC<SHA256>.authenticationCode(for: Self.message(typeName, location), using: key))
    }

    private static func message(_ typeName: String, _ location: CodeLocation) -> [UInt8] {
        Array(typeName.utf8) + [0] + location.image + withUnsafeBytes(of: location.offset.littleEndian) { Array($0) }
    }

    /// The code's address in this process, once the signature is checked.
    func resolve(typeName: String, key: SymmetricKey) throws(ProcessError) -> UnsafeRawPointer {
        guard HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: Self.message(typeName, location), using: key) else {
            throw .corruptRequest("a closure reference not signed by this pool")
        }
        guard let address = location.resolve() else {
            throw .unknownJobType("a closure at offset \(location.offset) of image \(location.imageDescription): the worker runs another build")
        }
        return address
    }
}

/// What a worker keeps between requests for work named by type: the types
/// and closure code already resolved, and the pool's key for closure code.
internal struct NamedWorkCache {
    private struct Signed: Hashable {
        var code: SentCode
        var typeName: String
    }

    var types: [String: Any.Type] = [:]
    private var code: [Signed: UnsafeRawPointer] = [:]
    let key: SymmetricKey?

    init(key: [UInt8]) {
        self.key = key.isEmpty ? nil : SymmetricKey(data: key)
    }

    mutating func type(named name: String) -> Any.Type? {
        if let type = types[name] { return type }
        let type = _typeByName(name)
        types[name] = type
        return type
    }

    mutating func code(_ sent: SentCode, typeName: String) throws(ProcessError) -> UnsafeRawPointer {
        let signed = Signed(code: sent, typeName: typeName)
        if let address = code[signed] { return address }
        guard let key else { throw .corruptRequest("closure code sent to a worker that has no key") }
        let address = try sent.resolve(typeName: typeName, key: key)
        code[signed] = address
        return address
    }
}

/// Work whose code is a sent closure: a ``SentJob`` or a ``SentFunction``,
/// resolved in the worker by the type's mangled name.
internal protocol SentClosureWork {
    /// Worker side: decodes the capture (and the inputs) and runs the closure.
    static func run(_ code: UnsafeRawPointer, payload: [UInt8], inputs: [UInt8], offset: Int) -> (tag: UInt8, body: [UInt8])
    /// Parent side (fork start method): decodes what a worker will.
    static func decodeOnly(payload: [UInt8], inputs: [UInt8], offset: Int)
}

/// `applyAsync(capturing:)`'s work: one call of `(Capture) throws -> Output`.
internal enum SentJob<Capture: Codable & Sendable, Output: Codable & Sendable>: SentClosureWork {
    typealias Body = (Capture) throws -> Output

    static func run(_ code: UnsafeRawPointer, payload: [UInt8], inputs: [UInt8], offset: Int) -> (tag: UInt8, body: [UInt8]) {
        let capture: Capture
        do {
            capture = try ValueCodec.decode(Capture.self, from: payload)
        } catch {
            return UnitOutcome.failed(.corruptRequest(error.description)).wire()
        }
        let body = ThickFunction(code: code).function(as: Body.self)
        switch JobRunner.runAndEncode({ try body(capture) }) {
        case let .success(bytes): return UnitOutcome.values(bytes, offset: 0).wire()
        case let .failure(error): return UnitOutcome.failed(error).wire()
        }
    }

    static func decodeOnly(payload: [UInt8], inputs: [UInt8], offset: Int) {
        _ = try? ValueCodec.decode(Capture.self, from: payload)
    }
}

/// A ``SentClosureWork/run(_:payload:inputs:offset:)`` compiled for the
/// caller's types. Sent beside a map's closure when it has no context (the
/// caller's module specialized it), so that the worker runs code made for
/// those types instead of the generic code its type name resolves to.
@usableFromInline
internal typealias SentRunner = (UnsafeRawPointer, [UInt8], [UInt8], Int) -> (tag: UInt8, body: [UInt8])

/// Holds a ``SentRunner`` as it is: not being generic, its stored property
/// is never converted to another abstraction (see ``ThickFunction``).
internal struct SentRunnerBox {
    var run: SentRunner

    init(_ run: @escaping SentRunner) { self.run = run }

    init(_ parts: ThickFunction) { self = unsafeBitCast(parts, to: SentRunnerBox.self) }

    var parts: ThickFunction { unsafeBitCast(self, to: ThickFunction.self) }

    /// The type name a runner for work of type `typeName` is signed with.
    static func signedName(_ typeName: String) -> String { typeName + " runner" }
}

/// `map(_:capturing:)`'s work: `(Capture, Item) throws -> Output` over a chunk of items.
@usableFromInline
internal enum SentFunction<Capture: Codable & Sendable, Item: Codable & Sendable, Output: Codable & Sendable>: SentClosureWork {
    @usableFromInline typealias Body = (Capture, Item) throws -> Output

    @inlinable
    static func run(_ code: UnsafeRawPointer, payload: [UInt8], inputs: [UInt8], offset: Int) -> (tag: UInt8, body: [UInt8]) {
        let capture: Capture
        let items: [Item]
        do {
            capture = try WireCodec.decode(Capture.self, from: payload)
            items = try WireCodec.decode([Item].self, from: inputs, startingAt: offset)
        } catch {
            return UnitOutcome.failed(.corruptRequest(error.description)).wire()
        }
        let body = ThickFunction(code: code).function(as: Body.self)
        return ChunkRunner.run(items) { try body(capture, $0) }.wire()
    }

    static func decodeOnly(payload: [UInt8], inputs: [UInt8], offset: Int) {
        _ = try? ValueCodec.decode(Capture.self, from: payload)
        _ = try? ValueCodec.decode([Item].self, from: inputs, startingAt: offset)
    }
}
