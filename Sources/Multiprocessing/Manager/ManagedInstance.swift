import Crypto

/// A proxy to a value of any `Codable` type of yours that a ``Manager``'s
/// server holds, whose methods you call with a closure run in the server
/// (Python's `BaseManager.register(typeid, callable, exposed=…)`, without the
/// registration): `try counter.call { $0.increment() }`.
///
/// ```swift
/// struct Inventory: Codable, Sendable {
///     var stock: [String: Int] = [:]
///     mutating func take(_ item: String) -> Bool {
///         guard stock[item, default: 0] > 0 else { return false }
///         stock[item, default: 0] -= 1
///         return true
///     }
/// }
/// let inventory = try manager.share(Inventory(stock: ["apple": 3]))
/// // From any process, one call at a time on the server's copy:
/// let taken = try inventory.call(capturing: "apple") { inventory, item in inventory.take(item) }
/// ```
///
/// The closure runs in the server, on its one copy of the value, one call at
/// a time, so it is atomic across processes. Like
/// `ProcessPool.applyAsync(capturing:_:)`, it must capture nothing: what it
/// needs from the caller goes in `capturing:`, encoded and sent; the closure
/// itself is named by where its code is (the server runs this executable)
/// and signed with the manager's key, so the server runs only code its
/// clients named. A closure that captures throws
/// ``ManagerError/invalidArgument(_:)`` — and a closure written inside a
/// generic function captures that function's type parameters: write it where
/// the types are concrete.
public struct ManagedInstance<Object: Codable & Sendable>: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// Runs `body` on the server's value; returns what it returns.
    ///
    /// - Throws: ``ManagerError/objectFailed(errorType:description:)`` if
    ///   `body` threw (the value keeps what `body` did before it threw),
    ///   ``ManagerError/invalidArgument(_:)`` if `body` captures, or
    ///   ``ManagerError/badRequest(_:)`` if the server runs another build.
    @discardableResult
    public func call<Output: Codable & Sendable>(_ body: @escaping (inout Object) throws -> Output) throws(ManagerError) -> Output {
        let typeName = _mangledTypeName(SentInstanceCall<Object, Output>.self) ?? ""
        let code = try Self.code(of: body, typeName: typeName, key: reference.client.authenticationKey)
        return try managerResult(Output.self, try reference.call("sent", [Array(typeName.utf8), try managerArgument(code), []]))
    }

    /// Runs `body` on the server's value with `capture`, encoded and sent;
    /// returns what it returns. Throws as ``call(_:)``.
    @discardableResult
    public func call<Capture: Codable & Sendable, Output: Codable & Sendable>(capturing capture: Capture, _ body: @escaping (inout Object, Capture) throws -> Output) throws(ManagerError) -> Output {
        let typeName = _mangledTypeName(SentInstanceCapturingCall<Object, Capture, Output>.self) ?? ""
        let code = try Self.code(of: body, typeName: typeName, key: reference.client.authenticationKey)
        return try managerResult(Output.self, try reference.call("sent", [Array(typeName.utf8), try managerArgument(code), try managerArgument(capture)]))
    }

    /// A copy of the server's value.
    public func value() throws(ManagerError) -> Object {
        try managerResult(Object.self, try reference.call("get"))
    }

    /// The signed reference to `body`'s code. Never specialized or inlined:
    /// `body` must be the function value at the abstraction of the generic
    /// parameter, as the server rebuilds it (see ``SentCode``).
    @inline(never)
    @_semantics("optimize.sil.specialize.generic.never")
    private static func code<Function>(of body: Function, typeName: String, key: [UInt8]) throws(ManagerError) -> SentCode {
        let parts = ThickFunction(body)
        guard parts.context == nil else {
            throw .invalidArgument("a closure sent to a managed value must capture nothing (nor be written inside a generic function): pass what it needs as capturing:")
        }
        guard !typeName.isEmpty, let code = SentCode(parts.code, typeName: typeName, key: SymmetricKey(data: key)) else {
            throw .invalidArgument("the closure's code is in no image with a build ID")
        }
        return code
    }
}

/// A sent call on a served value: resolved in the server by its mangled name.
internal protocol SentInstanceWork {
    /// Runs the closure at `code` on `storage` (the value, or its encoding
    /// before the first call) with the encoded `capture`; returns the
    /// encoded output.
    static func run(_ code: UnsafeRawPointer, on storage: inout InstanceStorage, capture: [UInt8]) throws(ManagerError) -> [UInt8]
}

/// The value a server holds: encoded until its first call decodes it; from
/// then on the value, and how to encode it again (``ManagedInstance/value()``).
internal struct InstanceStorage {
    var value: Any
    var encode: ((Any) throws(ManagerError) -> [UInt8])?

    init(encoded: [UInt8]) {
        value = encoded
        encode = nil
    }

    func encoded() throws(ManagerError) -> [UInt8] {
        guard let encode else { return value as! [UInt8] }  // never decoded
        return try encode(value)
    }
}

extension SentInstanceWork {
    /// The typed value in `storage`, decoded on first use.
    static func typed<Object: Codable>(_ storage: inout InstanceStorage, as type: Object.Type) throws(ManagerError) -> Object {
        if storage.encode != nil {
            guard let object = storage.value as? Object else { throw .badRequest("a managed value is not a \(Object.self)") }
            return object
        }
        let object = try Served.decode(Object.self, storage.value as! [UInt8])
        storage.value = object
        storage.encode = { (value: Any) throws(ManagerError) -> [UInt8] in try Served.encode(value as! Object) }
        return object
    }

    static func failure(_ error: any Error) -> ManagerError {
        .objectFailed(errorType: String(reflecting: type(of: error)), description: String(describing: error))
    }
}

internal enum SentInstanceCall<Object: Codable & Sendable, Output: Codable & Sendable>: SentInstanceWork {
    typealias Body = (inout Object) throws -> Output

    static func run(_ code: UnsafeRawPointer, on storage: inout InstanceStorage, capture: [UInt8]) throws(ManagerError) -> [UInt8] {
        var object = try typed(&storage, as: Object.self)
        let body = ThickFunction(code: code).function(as: Body.self)
        defer { storage.value = object }
        let output: Output
        do { output = try body(&object) } catch { throw failure(error) }
        return try Served.encode(output)
    }
}

internal enum SentInstanceCapturingCall<Object: Codable & Sendable, Capture: Codable & Sendable, Output: Codable & Sendable>: SentInstanceWork {
    typealias Body = (inout Object, Capture) throws -> Output

    static func run(_ code: UnsafeRawPointer, on storage: inout InstanceStorage, capture: [UInt8]) throws(ManagerError) -> [UInt8] {
        var object = try typed(&storage, as: Object.self)
        let argument = try Served.decode(Capture.self, capture)
        let body = ThickFunction(code: code).function(as: Body.self)
        defer { storage.value = object }
        let output: Output
        do { output = try body(&object, argument) } catch { throw failure(error) }
        return try Served.encode(output)
    }
}

/// A value of the client's type: calls are sent closures, run one at a time.
internal final class ServedInstance: ServedObject, @unchecked Sendable {  // `storage` is only touched under `lock`
    private let lock = Monitor(())
    private var storage: InstanceStorage
    private let key: SymmetricKey
    /// Resolved call types and code (the same few calls come again and again).
    private var types: [String: any SentInstanceWork.Type] = [:]
    /// By code and call type: a signature holds for the pair it signed.
    private var code: [String: [SentCode: UnsafeRawPointer]] = [:]

    init(encoded: [UInt8], key: [UInt8]) {
        storage = InstanceStorage(encoded: encoded)
        self.key = SymmetricKey(data: key)
    }

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        if method == "get" { return try lock.withLock { _ throws(ManagerError) in try storage.encoded() } }
        guard method == "sent" else { throw Served.noSuchMethod(method, "managed value") }
        let typeName = String(decoding: try Served.argument(arguments, 0, method), as: UTF8.self)
        let sent = try Served.decode(SentCode.self, Served.argument(arguments, 1, method))
        let capture = try Served.argument(arguments, 2, method)
        return try lock.withLock { _ throws(ManagerError) -> [UInt8] in
            let work: any SentInstanceWork.Type
            if let known = types[typeName] {
                work = known
            } else {
                guard let resolved = _typeByName(typeName) as? any SentInstanceWork.Type else {
                    throw .badRequest("the server cannot resolve the call type '\(TypeNames.readable(typeName))': it runs another build")
                }
                types[typeName] = resolved
                work = resolved
            }
            let address: UnsafeRawPointer
            if let known = code[typeName]?[sent] {
                address = known
            } else {
                do { address = try sent.resolve(typeName: typeName, key: key) } catch { throw .badRequest("\(error)") }
                code[typeName, default: [:]][sent] = address
            }
            return try work.run(address, on: &storage, capture: capture)
        }
    }
}
