import CMultiprocessing
import Glibc

/// A value of a fixed-layout type in shared memory, with a lock (Python's
/// `multiprocessing.Value`).
///
/// Reading and writing ``value`` take the lock; a compound update (`+= 1`)
/// must use ``withLock(_:)`` to be atomic across processes. Passes to
/// children by every start method.
public final class SharedValue<Element: BitwiseCopyable>: Sendable, Codable {
    let memory: SharedMemory
    private static var valueOffset: Int {
        let alignment = MemoryLayout<Element>.alignment
        let lockSize = MemoryLayout<cmp_lock_t>.size
        return (lockSize + alignment - 1) / alignment * alignment
    }

    private var lockPointer: UnsafeMutablePointer<cmp_lock_t> {
        memory.baseAddress.assumingMemoryBound(to: cmp_lock_t.self)
    }

    private var elementPointer: UnsafeMutablePointer<Element> {
        (memory.baseAddress + Self.valueOffset).assumingMemoryBound(to: Element.self)
    }

    /// A shared value holding `initial`.
    public init(_ initial: Element) throws {
        memory = try SharedMemory(size: Self.valueOffset + MemoryLayout<Element>.size)
        try check(cmp_lock_init(lockPointer, 1))
        elementPointer.initialize(to: initial)
    }

    /// The value, read or written under the lock.
    public var value: Element {
        get { (try? withLock { $0 }) ?? elementPointer.pointee }
        set { _ = try? withLock { $0 = newValue } }
    }

    /// Runs `body` on the value with the lock held: the way to update it
    /// atomically across processes.
    ///
    /// - Throws: ``SynchronizationError/previousOwnerDied`` if a process died
    ///   holding the lock (the value may be half-written; the lock is
    ///   released and usable again), or what `body` throws.
    public func withLock<Result>(_ body: (inout Element) throws -> Result) throws -> Result {
        let code = cmp_lock_acquire(lockPointer, -1)
        if code == EOWNERDEAD {
            cmp_lock_release(lockPointer)
            throw SynchronizationError.previousOwnerDied
        }
        try check(code)
        defer { cmp_lock_release(lockPointer) }
        return try body(&elementPointer.pointee)
    }

    public convenience init(from decoder: any Decoder) throws {
        try self.init(memory: try SharedMemory(from: decoder))
    }

    private init(memory: SharedMemory) throws {
        guard memory.size == Self.valueOffset + MemoryLayout<Element>.size else {
            throw SharedMemoryError.invalidSize(memory.size)
        }
        self.memory = memory
    }

    public func encode(to encoder: any Encoder) throws {
        try memory.encode(to: encoder)
    }
}

/// A fixed-length array of a fixed-layout type in shared memory, with a lock
/// (Python's `multiprocessing.Array`).
public final class SharedArray<Element: BitwiseCopyable>: Sendable, Codable {
    let memory: SharedMemory
    /// The number of elements.
    public let count: Int

    private static var elementsOffset: Int {
        let alignment = MemoryLayout<Element>.alignment
        let lockSize = MemoryLayout<cmp_lock_t>.size
        return (lockSize + alignment - 1) / alignment * alignment
    }

    private var lockPointer: UnsafeMutablePointer<cmp_lock_t> {
        memory.baseAddress.assumingMemoryBound(to: cmp_lock_t.self)
    }

    private var elements: UnsafeMutableBufferPointer<Element> {
        UnsafeMutableBufferPointer(start: (memory.baseAddress + Self.elementsOffset).assumingMemoryBound(to: Element.self), count: count)
    }

    /// Shared memory for `count` elements (zeroed) and the lock.
    private init(count: Int) throws {
        precondition(count >= 0, "a negative count")
        self.count = count
        memory = try SharedMemory(size: Self.elementsOffset + max(1, count) * MemoryLayout<Element>.stride)
        try check(cmp_lock_init(lockPointer, 1))
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
        let code = cmp_lock_acquire(lockPointer, -1)
        if code == EOWNERDEAD {
            cmp_lock_release(lockPointer)
            throw SynchronizationError.previousOwnerDied
        }
        try check(code)
        defer { cmp_lock_release(lockPointer) }
        return try body(elements)
    }

    private enum CodingKeys: String, CodingKey { case memory, count }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        count = try container.decode(Int.self, forKey: .count)
        memory = try container.decode(SharedMemory.self, forKey: .memory)
        guard count >= 0, memory.size == Self.elementsOffset + max(1, count) * MemoryLayout<Element>.stride else {
            throw SharedMemoryError.invalidSize(memory.size)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(memory, forKey: .memory)
        try container.encode(count, forKey: .count)
    }
}
