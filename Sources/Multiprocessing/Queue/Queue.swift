import CMultiprocessing
import Glibc

/// Why a queue operation did not deliver.
public enum QueueError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The queue stayed full for the whole timeout (Python's `queue.Full`).
    case full
    /// The queue stayed empty for the whole timeout (Python's `queue.Empty`).
    case empty
    /// ``Queue/close()`` was called in this process.
    case closed
    /// `taskDone()` was called more often than items were put.
    case taskDoneTooOften
    /// An unbounded queue could not take the item: its pending items
    /// already fill its ceiling of `ceiling` bytes (``Queue/init(maxSize:bufferSize:)``),
    /// or the system has no memory left for them. Nothing was put.
    case outOfMemory(ceiling: Int)

    public var description: String {
        switch self {
        case .full: "the queue is full"
        case .empty: "the queue is empty"
        case .closed: "the queue is closed"
        case .taskDoneTooOften: "taskDone() called more times than there were items"
        case let .outOfMemory(ceiling): "the queue has no memory for the item (its ceiling is \(ceiling) bytes of pending items)"
        }
    }
}

/// A FIFO queue between processes (Python's `multiprocessing.Queue`).
///
/// Many producers and consumers; each producer's items arrive in the order it
/// put them. Items are `Codable` values; they live in a ring of shared memory
/// guarded by robust process-shared locks, so a process killed in the middle
/// of a `put` or `get` leaves the queue usable (an item being written is
/// dropped; one being read is lost with its reader). Passes to children by
/// every start method.
///
/// An **unbounded** queue (`maxSize` 0, the default) never blocks a `put`:
/// its ring is a large sparse region of shared memory that has memory only
/// for the items pending (pages are allocated ahead of the writers and given
/// back behind the readers). Items live in that shared memory, not in the
/// producer, so everything a process put is delivered even after it exits —
/// there is no feeder thread (neither of Python's pitfalls: items lost at
/// exit, or a `join` that deadlocks on them). Its ceiling is `bufferSize`
/// bytes of pending items; past it, or when the system has no memory left,
/// `put` throws ``QueueError/outOfMemory(ceiling:)`` at once.
///
/// A **bounded** queue blocks `put` while it holds `maxSize` items, or while
/// its ring of `bufferSize` bytes is full; items larger than its ring cross
/// in pieces, in order.
public final class Queue<Element: Codable>: Sendable, Codable {
    let memory: SharedMemory
    private var state: UnsafeMutablePointer<cmp_queue_t> {
        memory.baseAddress.assumingMemoryBound(to: cmp_queue_t.self)
    }

    /// The largest number of items the queue holds (Int.max: unbounded).
    public var maxSize: Int { Int(clamping: state.pointee.max_messages) }

    /// A queue of at most `maxSize` items (0 or less: unbounded).
    ///
    /// - Parameters:
    ///   - maxSize: the most items it holds; 0 or less: no limit, and `put` never blocks.
    ///   - bufferSize: the bytes of encoded items its ring holds (each item
    ///     takes 9 bytes more than its encoding). Bounded queues: nil means
    ///     1 MiB, all of it memory from the start. Unbounded: the ceiling of
    ///     what may be pending, with memory only for what is; nil means half
    ///     the machine's memory, at most 16 GiB.
    public convenience init(maxSize: Int = 0, bufferSize: Int? = nil) throws {
        let sparse = maxSize <= 0
        try self.init(ringBytes: bufferSize ?? (sparse ? Self.defaultCeiling : 1 << 20), maxSize: maxSize, sparse: sparse)
    }

    /// A queue whose ring of `ringBytes` bytes is all memory from the start
    /// unless `sparse`; a put blocks while it is full and a larger item
    /// crosses in pieces (the manager's channels use it so).
    internal init(ringBytes: Int, maxSize: Int, sparse: Bool) throws {
        precondition(ringBytes >= 64, "a queue's buffer needs at least 64 bytes")
        // A sparse ring has slack beyond its ceiling (see CMP_QUEUE_SPARSE_SLACK).
        let ring = UInt64(ringBytes) + (sparse ? UInt64(CMP_QUEUE_SPARSE_SLACK) : 0)
        memory = try SharedMemory(size: cmp_queue_size(ring))
        let limit = maxSize > 0 ? UInt64(maxSize) : UInt64.max
        try check(cmp_queue_init(state, memory.descriptor.rawValue, ring, limit, sparse ? 1 : 0))
    }

    /// An unbounded queue's default ceiling: half the machine's memory, at most 16 GiB.
    static var defaultCeiling: Int {
        let physical = sysconf(Int32(_SC_PHYS_PAGES)) * sysconf(Int32(_SC_PAGESIZE))
        return max(1 << 20, min(physical / 2, 16 << 30))
    }

    /// The descriptor of the queue's memory, which its C side allocates and frees pages of.
    private var descriptor: Int32 { memory.descriptor.rawValue }

    /// Throws for what `cmp_queue_put` returned.
    private func checkPut(_ code: Int32) throws {
        switch code {
        case 0: return
        case ETIMEDOUT: throw QueueError.full
        case ENOSPC, ENOMEM: throw QueueError.outOfMemory(ceiling: Int(clamping: state.pointee.capacity) - Int(CMP_QUEUE_SPARSE_SLACK))
        default: try check(code)
        }
    }

    /// Items up to this size are taken in one step when whole in the ring.
    private static var smallItem: Int { 256 }

    private func checkOpen() throws(QueueError) {
        if memory.isClosedHere { throw .closed }
    }

    /// Puts `item` at the back, waiting while the queue is full — at most
    /// `timeout` (forever if nil; `.zero`: not at all).
    ///
    /// - Throws: ``QueueError/full`` if it stayed full.
    public func put(_ item: Element, timeout: Duration? = nil) throws {
        try checkOpen()
        if Element.self == Int.self {
            // Numbers are encoded on the stack: no allocation.
            let code = withUnsafeTemporaryAllocation(byteCount: ValueCodec.integerCapacity, alignment: 1) { buffer in
                let count = ValueCodec.encodeInteger(_identityCast(item, to: Int.self), into: buffer)
                return cmp_queue_put(state, descriptor, buffer.baseAddress, UInt64(count), nanoseconds(timeout))
            }
            return try checkPut(code)
        }
        try putEncoded(try ValueCodec.encode(item), timeout: timeout)
    }

    /// Puts an item that is already encoded (or any bytes, for a queue used
    /// as a channel of raw messages).
    internal func putEncoded(_ bytes: [UInt8], timeout: Duration? = nil) throws {
        try checkOpen()
        let code = bytes.withUnsafeBytes { buffer in
            cmp_queue_put(state, descriptor, buffer.baseAddress, UInt64(buffer.count), nanoseconds(timeout))
        }
        try checkPut(code)
    }

    /// Puts `item` only if there is room now. - Throws: ``QueueError/full``.
    public func putNoWait(_ item: Element) throws { try put(item, timeout: .zero) }

    /// Takes the front item, waiting while the queue is empty — at most
    /// `timeout` (forever if nil; `.zero`: not at all).
    ///
    /// - Throws: ``QueueError/empty`` if it stayed empty; a ``WireError`` if
    ///   the item does not decode as `Element`.
    public func get(timeout: Duration? = nil) throws -> Element {
        if Element.self == Int.self, let number = try getInteger(timeout: timeout) {
            return _identityCast(number, to: Element.self)
        }
        return try ValueCodec.decode(Element.self, from: try getEncoded(timeout: timeout))
    }

    /// Takes a number put by ``put(_:timeout:)`` straight off the ring onto
    /// the stack; nil if the front item needs the general path.
    private func getInteger(timeout: Duration?) throws -> Int? {
        try checkOpen()
        var length: UInt64 = 0
        var code: Int32 = 0
        let number = withUnsafeTemporaryAllocation(byteCount: ValueCodec.integerCapacity, alignment: 1) { buffer -> Int? in
            code = cmp_queue_get_small(state, descriptor, buffer.baseAddress, UInt64(buffer.count), &length, nanoseconds(timeout))
            return code == 0 ? ValueCodec.decodeInteger(UnsafeRawBufferPointer(rebasing: buffer[..<Int(length)])) : nil
        }
        if let number { return number }
        if code == ETIMEDOUT { throw QueueError.empty }
        // Taken but not a number: cannot happen with this queue's own puts.
        if code == 0 { throw WireError.corrupt("an item of \(length) bytes is not an Int") }
        // EAGAIN (a writer or reader is mid-message), ECANCELED (its writer died), or too
        // large: the general path, which may wait its whole timeout again. Between this
        // queue's own puts neither happens after a wait (numbers never cross in pieces), and
        // reading the clock on every get to avoid it cost 15 % of queue.int.
        return nil
    }

    /// Takes the front item's bytes, not decoded.
    internal func getEncoded(timeout: Duration? = nil) throws -> [UInt8] {
        try checkOpen()
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while true {
            var remaining = deadline.map { max(.zero, $0 - ContinuousClock.now) }
            var length: UInt64 = 0
            // Most items are small and whole in the ring: one step under the
            // queue's mutex, without the reader lock.
            var fast: Int32 = 0
            let small = [UInt8](unsafeUninitializedCapacity: Self.smallItem) { buffer, count in
                fast = cmp_queue_get_small(state, descriptor, buffer.baseAddress, UInt64(Self.smallItem), &length, nanoseconds(remaining))
                count = fast == 0 ? Int(length) : 0
            }
            if fast == 0 { return small }
            if fast == ECANCELED { continue }  // its writer died while writing it
            if fast == ETIMEDOUT { throw QueueError.empty }
            if fast != EAGAIN { try check(fast) }
            remaining = deadline.map { max(.zero, $0 - ContinuousClock.now) }
            let code = cmp_queue_get_begin(state, descriptor, nanoseconds(remaining), &length)
            if code == ETIMEDOUT { throw QueueError.empty }
            try check(code)
            var bytes = [UInt8](repeating: 0, count: Int(length))
            let finished = bytes.withUnsafeMutableBytes { cmp_queue_get_finish(state, descriptor, $0.baseAddress, length) }
            if finished == ECANCELED { continue }  // its writer died while writing it
            return bytes
        }
    }

    /// Takes the front item only if there is one now. - Throws: ``QueueError/empty``.
    public func getNoWait() throws -> Element { try get(timeout: .zero) }

    /// The number of items in the queue: approximate, others change it at once.
    public var count: Int { Int(clamping: cmp_queue_count(state)) }

    /// Whether the queue is empty (approximate).
    public var isEmpty: Bool { count == 0 }

    /// Whether the queue is full (approximate).
    public var isFull: Bool { count >= maxSize }

    /// Closes the queue in this process: later calls here throw
    /// ``QueueError/closed``; other processes go on.
    public func close() { memory.close() }

    // JoinableQueue support.
    func taskDone() throws {
        try checkOpen()
        if cmp_queue_task_done(state) == ERANGE { throw QueueError.taskDoneTooOften }
    }

    func join(timeout: Duration?) throws -> Bool {
        try checkOpen()
        return cmp_queue_join(state, nanoseconds(timeout)) == 0
    }

    public convenience init(from decoder: any Decoder) throws {
        try self.init(memory: try SharedMemory(from: decoder))
    }

    /// Another handle on the queue in `memory` (for tests).
    internal convenience init(sharing memory: SharedMemory) throws {
        try self.init(memory: memory)
    }

    internal init(memory: SharedMemory) throws {
        guard memory.size > MemoryLayout<cmp_queue_t>.size else { throw SharedMemoryError.invalidSize(memory.size) }
        self.memory = memory
    }

    public func encode(to encoder: any Encoder) throws {
        try memory.encode(to: encoder)
    }
}

extension Queue where Element: Sendable {
    /// Puts `item` without blocking a thread of the cooperative pool.
    public func put(_ item: Element, timeout: Duration? = nil) async throws {
        try await offload(timeout: timeout) { [self] slice throws in try put(item, timeout: slice) }
    }

    /// Takes the front item without blocking a thread of the cooperative pool.
    public func get(timeout: Duration? = nil) async throws -> Element {
        try await offload(timeout: timeout) { [self] slice throws in try get(timeout: slice) }
    }
}

/// Runs a blocking queue operation on a thread of its own, in slices of at
/// most 50 ms so that cancelling the awaiting task stops it.
private func offload<T: Sendable>(
    timeout: Duration?,
    _ operation: @escaping @Sendable (Duration) throws -> T
) async throws -> T {
    let deadline = timeout.map { ContinuousClock.now + $0 }
    let cancelled = Locked(false)
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            _ = SystemThread.start {
                while true {
                    if cancelled.withLock({ $0 }) {
                        continuation.resume(throwing: CancellationError())
                        return
                    }
                    let remaining = deadline.map { $0 - ContinuousClock.now }
                    let slice = min(remaining ?? .milliseconds(50), .milliseconds(50))
                    do {
                        continuation.resume(returning: try operation(max(slice, .zero)))
                        return
                    } catch let error as QueueError where error == .full || error == .empty {
                        if let deadline, ContinuousClock.now >= deadline {
                            continuation.resume(throwing: error)
                            return
                        }
                    } catch {
                        continuation.resume(throwing: error)
                        return
                    }
                }
            }
        }
    } onCancel: {
        cancelled.withLock { $0 = true }
    }
}
