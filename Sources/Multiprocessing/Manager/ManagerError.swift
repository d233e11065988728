import Glibc

/// Why a call on a manager or one of its proxies failed.
public enum ManagerError: Error, Sendable, Equatable, Codable, CustomStringConvertible {
    /// The manager's server cannot be reached: it ended, or was killed.
    case managerUnreachable(String)
    /// The server refused the connection: this side does not know its
    /// authentication key (or did not answer its challenge in time).
    case authenticationFailed
    /// The server does not know the object: it was never made there, or it
    /// was freed once no process held a proxy to it.
    case unknownObject(UInt64)
    /// This proxy's reference was released (``ManagedProxy/releaseReference()``).
    case referenceReleased
    /// The server could not read the request, or the object has no such method.
    case badRequest(String)
    /// An index, key or argument the object refused (an index out of range…).
    case invalidArgument(String)
    /// The call waited longer than its timeout (a queue stayed full or empty…).
    case timedOut
    /// Releasing a lock this thread does not hold.
    case notOwner
    /// The barrier was broken (aborted, reset, or a waiter timed out).
    case brokenBarrier
    /// A served ``ManagedObject`` threw: the error's type and description.
    case objectFailed(errorType: String, description: String)
    /// The task awaiting the call was cancelled while it waited: the call
    /// took nothing (an async proxy call).
    case cancelled

    public var description: String {
        switch self {
        case let .managerUnreachable(reason): "the manager cannot be reached: \(reason)"
        case .authenticationFailed: "the manager refused the connection: the authentication key is not its key"
        case let .unknownObject(id): "the manager has no object \(id) (never made, or freed once no proxy held it)"
        case .referenceReleased: "the proxy's reference to its object was released"
        case let .badRequest(reason): "the manager refused the request: \(reason)"
        case let .invalidArgument(reason): "invalid argument: \(reason)"
        case .timedOut: "the call timed out"
        case .notOwner: "the lock is not held by this thread"
        case .brokenBarrier: "the barrier is broken"
        case let .objectFailed(errorType, description): "the managed object threw \(errorType): \(description)"
        case .cancelled: "the call was cancelled"
        }
    }
}

/// A request to a manager's server: a method of one object, its encoded
/// arguments, who calls (for lock ownership) and how long it may wait.
///
/// Written by hand, not by the codec: a managed dictionary's `set` is one
/// request, and its cost is the manager's speed. Layout (little-endian):
/// object (8), timeout in seconds (8, a NaN for none), calling process (4)
/// and thread (8), method (4-byte length, UTF-8), argument count (4), each
/// argument (4-byte length, bytes).
internal struct ManagerRequest: Sendable {
    var object: UInt64
    var method: String
    var arguments: [[UInt8]] = []
    /// The calling process and thread: who owns a lock.
    var process: Int32 = 0
    var thread: UInt64 = 0
    /// Seconds the call may wait (nil: as long as it takes).
    var timeout: Double? = nil

    /// The manager's method (object 0) that moves a connection onto rings of
    /// shared memory (see ``ManagerChannel``).
    static let openRings = "openRings"
    // The manager's (object 0) reference counting; arguments are raw
    // little-endian UInt64s, not the codec's.
    static let incref = "incref"
    static let decref = "decref"
    static let transit = "transit"
    static let adopt = "adopt"
    /// Cancels the waiting call of the async caller named by a token
    /// (raw UInt64): it ends with ``ManagerError/cancelled`` and takes nothing.
    static let cancel = "cancel"

    /// The top bit of a `thread` that names an async call rather than a thread.
    static let asyncCallerBit: UInt64 = 1 << 63

    /// A request from the calling thread, or from the async caller `thread`
    /// names (a token with ``asyncCallerBit``).
    static func fromHere(object: UInt64, method: String, arguments: [[UInt8]] = [], timeout: Double? = nil, thread: UInt64? = nil) -> ManagerRequest {
        ManagerRequest(object: object, method: method, arguments: arguments, process: Syscall.currentProcessID,
                       thread: thread ?? UInt64(UInt(bitPattern: Int(bitPattern: pthread_self()))) & ~asyncCallerBit, timeout: timeout)
    }

    func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(40 + method.utf8.count + arguments.reduce(0) { $0 + 4 + $1.count })
        bytes.appendLittleEndian(object)
        bytes.appendLittleEndian((timeout ?? .nan).bitPattern)
        bytes.appendLittleEndian(UInt32(bitPattern: process))
        bytes.appendLittleEndian(thread)
        bytes.appendLittleEndian(UInt32(method.utf8.count))
        bytes.append(contentsOf: method.utf8)
        bytes.appendLittleEndian(UInt32(arguments.count))
        for argument in arguments {
            bytes.appendLittleEndian(UInt32(argument.count))
            bytes.append(contentsOf: argument)
        }
        return bytes
    }

    /// Reads a request; every length is checked against the bytes there are.
    init(decoding bytes: [UInt8]) throws(WireError) {
        var reader = ByteReader(bytes)
        object = try reader.integer(UInt64.self)
        let seconds = Double(bitPattern: try reader.integer(UInt64.self))
        timeout = seconds.isNaN ? nil : seconds
        process = Int32(bitPattern: try reader.integer(UInt32.self))
        thread = try reader.integer(UInt64.self)
        guard let method = String(validating: try reader.bytes(Int(try reader.integer(UInt32.self))), as: UTF8.self) else {
            throw .corrupt("a method name that is not UTF-8")
        }
        self.method = method
        let count = Int(try reader.integer(UInt32.self))
        guard count <= reader.remaining / 4 else { throw .corrupt("\(count) arguments in \(reader.remaining) bytes") }
        arguments = []
        arguments.reserveCapacity(count)
        for _ in 0..<count {
            arguments.append(Array(try reader.bytes(Int(try reader.integer(UInt32.self)))))
        }
        guard reader.remaining == 0 else { throw .corrupt("\(reader.remaining) bytes after a request") }
    }

    init(object: UInt64, method: String, arguments: [[UInt8]] = [], process: Int32 = 0, thread: UInt64 = 0, timeout: Double? = nil) {
        self.object = object
        self.method = method
        self.arguments = arguments
        self.process = process
        self.thread = thread
        self.timeout = timeout
    }
}

/// The server's answer: a tag byte (0: a value, 1: a failure), then the
/// value's bytes as they are, or the failure encoded by the codec.
internal enum ManagerReply: Sendable {
    case value([UInt8])
    case failure(ManagerError)

    func encoded() -> [UInt8] {
        switch self {
        case let .value(bytes):
            var result = [UInt8](repeating: 0, count: 1)
            result.append(contentsOf: bytes)
            return result
        case let .failure(error):
            return [1] + ((try? ValueCodec.encode(error)) ?? [])
        }
    }

    init(decoding bytes: [UInt8]) throws(WireError) {
        guard let tag = bytes.first else { throw .corrupt("an empty reply") }
        switch tag {
        case 0: self = .value(Array(bytes[1...]))
        case 1: self = .failure(try ValueCodec.decode(ManagerError.self, from: bytes, startingAt: 1))
        default: throw .corrupt("a reply tagged \(tag)")
        }
    }
}

/// Reads fixed-width integers and runs of bytes off a message, checking
/// each against what is left.
internal struct ByteReader {
    private let bytes: [UInt8]
    private var cursor = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - cursor }

    mutating func integer<T: FixedWidthInteger>(_ type: T.Type) throws(WireError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .corrupt("\(size) bytes wanted, \(remaining) left") }
        defer { cursor += size }
        return T(littleEndian: bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: cursor, as: T.self) })
    }

    mutating func bytes(_ count: Int) throws(WireError) -> ArraySlice<UInt8> {
        guard count >= 0, remaining >= count else { throw .corrupt("\(count) bytes wanted, \(remaining) left") }
        defer { cursor += count }
        return bytes[cursor..<(cursor + count)]
    }
}

extension [UInt8] {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}
