import CMultiprocessing
import Glibc

/// A counter shared between processes (Python's `Semaphore`): ``acquire(timeout:)``
/// takes one, waiting while there is none; ``release()`` gives one back.
public final class Semaphore: Sendable, Codable {
    let cell: SharedCell<cmp_semaphore_t>

    /// A semaphore holding `value`. With `bounded`, releasing past `value`
    /// throws (Python's `BoundedSemaphore`).
    public init(value: Int = 1, bounded: Bool = false) throws {
        precondition(value >= 0 && value <= Int(Int32.max), "a semaphore's value is 0...Int32.max")
        cell = try SharedCell()
        try check(cmp_semaphore_init(cell.pointer, UInt32(value), bounded ? Int32(value) : 0))
    }

    /// Takes one, waiting at most `timeout` (forever if nil). Returns false on timeout.
    @discardableResult
    public func acquire(timeout: Duration? = nil) throws(SynchronizationError) -> Bool {
        let code = cmp_semaphore_acquire(cell.pointer, nanoseconds(timeout))
        if code == ETIMEDOUT { return false }
        try check(code)
        return true
    }

    /// Gives one back. - Throws: ``SynchronizationError/boundExceeded`` for a
    /// bounded semaphore already at its initial value.
    public func release() throws(SynchronizationError) {
        try check(cmp_semaphore_release(cell.pointer))
    }

    /// The current count (approximate: others may change it at once).
    public var value: Int { Int(cmp_semaphore_value(cell.pointer)) }
}

/// A semaphore that refuses to be released past its initial value
/// (Python's `BoundedSemaphore`).
public final class BoundedSemaphore: Sendable, Codable {
    let semaphore: Semaphore

    public init(value: Int = 1) throws {
        semaphore = try Semaphore(value: value, bounded: true)
    }

    /// See ``Semaphore/acquire(timeout:)``.
    @discardableResult
    public func acquire(timeout: Duration? = nil) throws(SynchronizationError) -> Bool {
        try semaphore.acquire(timeout: timeout)
    }

    /// See ``Semaphore/release()``; past the initial value it throws
    /// ``SynchronizationError/boundExceeded``.
    public func release() throws(SynchronizationError) { try semaphore.release() }

    /// See ``Semaphore/value``.
    public var value: Int { semaphore.value }
}
