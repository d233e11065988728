import CMultiprocessing
import Glibc

/// A lock shared between processes (Python's `multiprocessing.Lock`).
///
/// Robust: if a process dies holding it, the next ``acquire(timeout:)``
/// gets the lock and throws ``SynchronizationError/previousOwnerDied`` so
/// that the caller knows; nobody deadlocks. Passes to children by every
/// start method (inside a ``ProcessJob``, or captured by a forked closure).
public final class Lock: Sendable, Codable {
    let cell: SharedCell<cmp_lock_t>

    /// A new, unlocked lock.
    public convenience init() throws {
        try self.init(recursive: false)
    }

    internal init(recursive: Bool) throws {
        cell = try SharedCell()
        try check(cmp_lock_init(cell.pointer, recursive ? 1 : 0))
    }

    /// Waits for the lock, at most `timeout` (forever if nil).
    ///
    /// - Returns: false if the timeout passed first.
    /// - Throws: ``SynchronizationError/previousOwnerDied`` (the caller holds
    ///   the lock), or ``SynchronizationError/deadlock`` if this thread holds
    ///   it already.
    @discardableResult
    public func acquire(timeout: Duration? = nil) throws(SynchronizationError) -> Bool {
        let code = cmp_lock_acquire(cell.pointer, nanoseconds(timeout))
        if code == ETIMEDOUT { return false }
        try check(code)
        return true
    }

    /// Releases the lock. - Throws: ``SynchronizationError/notOwner``.
    public func release() throws(SynchronizationError) {
        try check(cmp_lock_release(cell.pointer))
    }

    /// Runs `body` holding the lock.
    ///
    /// If the previous holder died holding it, the lock is released again
    /// and ``SynchronizationError/previousOwnerDied`` is thrown without
    /// running `body`; the lock is usable afterwards.
    public func withLock<Result>(_ body: () throws -> Result) throws -> Result {
        do {
            try acquire()
        } catch .previousOwnerDied {
            try? release()
            throw SynchronizationError.previousOwnerDied
        }
        defer { try? release() }
        return try body()
    }
}

/// A lock its holder may take again (Python's `RLock`); released when
/// released as often as acquired. Robust like ``Lock``.
public final class RLock: Sendable, Codable {
    let lock: Lock

    public init() throws {
        lock = try Lock(recursive: true)
    }

    /// See ``Lock/acquire(timeout:)``.
    @discardableResult
    public func acquire(timeout: Duration? = nil) throws(SynchronizationError) -> Bool {
        try lock.acquire(timeout: timeout)
    }

    /// See ``Lock/release()``.
    public func release() throws(SynchronizationError) {
        try lock.release()
    }

    /// See ``Lock/withLock(_:)``.
    public func withLock<Result>(_ body: () throws -> Result) throws -> Result {
        try lock.withLock(body)
    }
}
