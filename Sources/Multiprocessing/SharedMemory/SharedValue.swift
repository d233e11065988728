import CMultiprocessing
import Glibc

/// Shared memory that starts with a robust recursive lock, followed by the
/// payload at `payloadOffset` (aligned for `Payload`).
@usableFromInline
internal struct LockedRegion<Payload>: Sendable {
    @usableFromInline let memory: SharedMemory

    @inlinable static var payloadOffset: Int {
        let alignment = MemoryLayout<Payload>.alignment
        return (MemoryLayout<cmp_lock_t>.size + alignment - 1) / alignment * alignment
    }

    /// New memory for `payloadBytes` bytes after the lock, which is initialised.
    init(payloadBytes: Int) throws {
        memory = try SharedMemory(size: Self.payloadOffset + payloadBytes)
        try check(cmp_lock_init(lock, 1))
    }

    /// Memory received from another process; `payloadBytes` must match.
    init(memory: SharedMemory, payloadBytes: Int) throws {
        guard memory.size == Self.payloadOffset + payloadBytes else { throw SharedMemoryError.invalidSize(memory.size) }
        self.memory = memory
    }

    @inlinable var lock: UnsafeMutablePointer<cmp_lock_t> { memory.baseAddress.assumingMemoryBound(to: cmp_lock_t.self) }

    @inlinable var payload: UnsafeMutablePointer<Payload> {
        (memory.baseAddress + Self.payloadOffset).assumingMemoryBound(to: Payload.self)
    }

    /// Runs `body` with the lock held. If a process died holding it, the lock
    /// is released again and ``SynchronizationError/previousOwnerDied`` thrown.
    @inlinable func withLock<Result>(_ body: () throws -> Result) throws -> Result {
        let code = cmp_lock_acquire(lock, -1)
        if code == EOWNERDEAD {
            cmp_lock_release(lock)
            throw SynchronizationError.previousOwnerDied
        }
        try check(code)
        defer { cmp_lock_release(lock) }
        return try body()
    }
}

/// A value of a fixed-layout type in shared memory, with a lock (Python's
/// `multiprocessing.Value`).
///
/// Reading and writing ``value`` take the lock; a compound update (`+= 1`)
/// must use ``withLock(_:)`` to be atomic across processes. Passes to
/// children by every start method.
public final class SharedValue<Element: BitwiseCopyable>: Sendable, Codable {
    @usableFromInline let region: LockedRegion<Element>

    /// A shared value holding `initial`.
    public init(_ initial: Element) throws {
        region = try LockedRegion(payloadBytes: MemoryLayout<Element>.size)
        region.payload.initialize(to: initial)
    }

    /// The value, read or written under the lock.
    public var value: Element {
        get { (try? withLock { $0 }) ?? region.payload.pointee }
        set { _ = try? withLock { $0 = newValue } }
    }

    /// Runs `body` on the value with the lock held: the way to update it
    /// atomically across processes.
    ///
    /// - Throws: ``SynchronizationError/previousOwnerDied`` if a process died
    ///   holding the lock (the value may be half-written; the lock is
    ///   released and usable again), or what `body` throws.
    @inlinable
    public func withLock<Result>(_ body: (inout Element) throws -> Result) throws -> Result {
        try region.withLock { try body(&region.payload.pointee) }
    }

    public init(from decoder: any Decoder) throws {
        region = try LockedRegion(memory: try SharedMemory(from: decoder), payloadBytes: MemoryLayout<Element>.size)
    }

    public func encode(to encoder: any Encoder) throws {
        try region.memory.encode(to: encoder)
    }
}

/// A fixed-length array of a fixed-layout type in shared memory, with a lock
/// (Python's `multiprocessing.Array`).
public final class SharedArray<Element: BitwiseCopyable>: Sendable, Codable {
    let region: LockedRegion<Element>
    /// The number of elements.
    public let count: Int

    private static func payloadBytes(_ count: Int) -> Int { max(1, count) * MemoryLayout<Element>.stride }

    private var elements: UnsafeMutableBufferPointer<Element> {
        UnsafeMutableBufferPointer(start: region.payload, count: count)
    }

    /// Shared memory for `count` elements (zeroed) and the lock.
    private init(count: Int) throws {
        precondition(count >= 0, "a negative count")
        self.count = count
        region = try LockedRegion(payloadBytes: Self.payloadBytes(count))
    }

    /// A shared array of `count` copies of `value`.
    public convenience init(repeating value: Element, count: Int) throws {
        try self.init(count: count)
        elements.initialize(repeating: value)
    }

    /// A shared array holding `values`.
    public convenience init(_ values: [Element]) throws {
        try self.init(count: values.count)
        _ = elements.initialize(fromContentsOf: values)
    }

    /// The element at `index`, read or written under the lock.
    ///
    /// - Precondition: `index` is in `0..<count`.
    public subscript(index: Int) -> Element {
        get {
            precondition(index >= 0 && index < count, "index \(index) out of range 0..<\(count)")
            return (try? withLock { $0[index] }) ?? elements[index]
        }
        set {
            precondition(index >= 0 && index < count, "index \(index) out of range 0..<\(count)")
            _ = try? withLock { $0[index] = newValue }
        }
    }

    /// A copy of the elements, taken under the lock.
    public func toArray() throws -> [Element] {
        try withLock { Array($0) }
    }

    /// Runs `body` on the elements with the lock held.
    ///
    /// - Throws: ``SynchronizationError/previousOwnerDied`` (see
    ///   ``SharedValue/withLock(_:)``), or what `body` throws.
    public func withLock<Result>(_ body: (UnsafeMutableBufferPointer<Element>) throws -> Result) throws -> Result {
        try region.withLock { try body(elements) }
    }

    private enum CodingKeys: String, CodingKey { case memory, count }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        count = try container.decode(Int.self, forKey: .count)
        guard count >= 0 else { throw SharedMemoryError.invalidSize(count) }
        region = try LockedRegion(memory: try container.decode(SharedMemory.self, forKey: .memory), payloadBytes: Self.payloadBytes(count))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(region.memory, forKey: .memory)
        try container.encode(count, forKey: .count)
    }
}
