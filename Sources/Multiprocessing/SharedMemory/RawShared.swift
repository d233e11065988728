/// A value of a fixed-layout type in shared memory, without a lock
/// (Python's `multiprocessing.RawValue`, or `Value(…, lock=False)`).
///
/// Reads and writes are plain loads and stores: for users who synchronise
/// themselves (a ``Lock``, an ``Event``, a ``Barrier``, or one writer at a
/// time). Two processes writing at once, or one reading while another
/// writes a value wider than a machine word, may see it torn. Passes to
/// children by every start method.
public final class RawSharedValue<Element: BitwiseCopyable>: @unchecked Sendable, Codable {  // shared and unsynchronised by design
    let memory: SharedMemory

    private var pointer: UnsafeMutablePointer<Element> { memory.baseAddress.assumingMemoryBound(to: Element.self) }

    /// A shared value holding `initial`.
    public init(_ initial: Element) throws {
        memory = try SharedMemory(size: max(1, MemoryLayout<Element>.size))
        pointer.initialize(to: initial)
    }

    /// The value, read or written as it is, without a lock.
    public var value: Element {
        get { pointer.pointee }
        set { pointer.pointee = newValue }
    }

    /// Runs `body` with a pointer to the value in shared memory.
    public func withUnsafeMutablePointer<Result>(_ body: (UnsafeMutablePointer<Element>) throws -> Result) rethrows -> Result {
        try body(pointer)
    }

    public init(from decoder: any Decoder) throws {
        memory = try SharedMemory(from: decoder)
        guard memory.size == max(1, MemoryLayout<Element>.size) else { throw SharedMemoryError.invalidSize(memory.size) }
    }

    public func encode(to encoder: any Encoder) throws {
        try memory.encode(to: encoder)
    }
}

/// A fixed-length array of a fixed-layout type in shared memory, without a
/// lock (Python's `multiprocessing.RawArray`, or `Array(…, lock=False)`).
///
/// As ``RawSharedValue``: plain loads and stores, for users who synchronise
/// themselves — typically each process writing its own slice.
public final class RawSharedArray<Element: BitwiseCopyable>: @unchecked Sendable, Codable {  // shared and unsynchronised by design
    let memory: SharedMemory
    /// The number of elements.
    public let count: Int

    /// The bytes of `count` elements; nil if that many cannot be.
    private static func bytes(_ count: Int) -> Int? {
        guard count >= 0 else { return nil }
        let (bytes, overflow) = count.multipliedReportingOverflow(by: MemoryLayout<Element>.stride)
        return overflow ? nil : max(1, bytes)
    }

    private var elements: UnsafeMutableBufferPointer<Element> {
        UnsafeMutableBufferPointer(start: memory.baseAddress.assumingMemoryBound(to: Element.self), count: count)
    }

    /// Shared memory for `count` elements.
    private init(count: Int) throws {
        guard let bytes = Self.bytes(count) else { throw SharedMemoryError.invalidSize(count) }
        self.count = count
        memory = try SharedMemory(size: bytes)
    }

    /// A shared array of `count` copies of `value`.
    ///
    /// - Throws: ``SharedMemoryError/invalidSize(_:)`` for a negative count.
    public convenience init(repeating value: Element, count: Int) throws {
        try self.init(count: count)
        elements.initialize(repeating: value)
    }

    /// A shared array holding `values`.
    public convenience init(_ values: [Element]) throws {
        try self.init(count: values.count)
        _ = elements.initialize(fromContentsOf: values)
    }

    /// The element at `index`, read or written as it is, without a lock.
    ///
    /// - Precondition: `index` is in `0..<count`.
    public subscript(index: Int) -> Element {
        get {
            precondition(index >= 0 && index < count, "index \(index) out of range 0..<\(count)")
            return elements[index]
        }
        set {
            precondition(index >= 0 && index < count, "index \(index) out of range 0..<\(count)")
            elements[index] = newValue
        }
    }

    /// A copy of the elements (not taken atomically).
    public func toArray() -> [Element] { Array(elements) }

    /// Runs `body` on the elements in shared memory.
    public func withUnsafeMutableBufferPointer<Result>(_ body: (UnsafeMutableBufferPointer<Element>) throws -> Result) rethrows -> Result {
        try body(elements)
    }

    private enum CodingKeys: String, CodingKey { case memory, count }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        count = try container.decode(Int.self, forKey: .count)
        guard let bytes = Self.bytes(count) else { throw SharedMemoryError.invalidSize(count) }
        memory = try container.decode(SharedMemory.self, forKey: .memory)
        guard memory.size == bytes else { throw SharedMemoryError.invalidSize(memory.size) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(memory, forKey: .memory)
        try container.encode(count, forKey: .count)
    }
}
