import CMultiprocessing
import Glibc

/// A flag shared between processes that others can wait for (Python's `Event`).
public final class Event: Sendable, Codable {
    let cell: SharedCell<cmp_event_t>

    /// A new event, not set.
    public init() throws {
        cell = try SharedCell()
        try check(cmp_event_init(cell.pointer))
    }

    /// Sets the flag and wakes every waiter.
    public func set() throws(SynchronizationError) { try check(cmp_event_set(cell.pointer, 1)) }

    /// Clears the flag.
    public func clear() throws(SynchronizationError) { try check(cmp_event_set(cell.pointer, 0)) }

    /// Whether the flag is set.
    public var isSet: Bool { cmp_event_is_set(cell.pointer) != 0 }

    /// Waits until the flag is set, at most `timeout`; returns whether it is.
    @discardableResult
    public func wait(timeout: Duration? = nil) -> Bool {
        cmp_event_wait(cell.pointer, nanoseconds(timeout)) == 0
    }
}

/// A condition variable shared between processes (Python's `Condition`),
/// over a ``Lock`` (its own, or one given).
public final class Condition: Sendable, Codable {
    /// The lock that guards the condition; hold it to wait or notify.
    public let lock: Lock
    let cell: SharedCell<cmp_condition_t>

    public init(lock: Lock? = nil) throws {
        self.lock = try lock ?? Lock()
        cell = try SharedCell()
        try check(cmp_condition_init(cell.pointer))
    }

    /// See ``Lock/acquire(timeout:)``.
    @discardableResult
    public func acquire(timeout: Duration? = nil) throws(SynchronizationError) -> Bool {
        try lock.acquire(timeout: timeout)
    }

    /// See ``Lock/release()``.
    public func release() throws(SynchronizationError) { try lock.release() }

    /// See ``Lock/withLock(_:)``.
    public func withLock<Result>(_ body: () throws -> Result) throws -> Result {
        try lock.withLock(body)
    }

    /// With the lock held: releases it, waits for a notification (at most
    /// `timeout`), and takes it again. Returns false on timeout.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws(SynchronizationError) -> Bool {
        let code = cmp_condition_wait(cell.pointer, lock.cell.pointer, nanoseconds(timeout))
        if code == ETIMEDOUT { return false }
        try check(code)
        return true
    }

    /// With the lock held: waits until `predicate` holds, at most `timeout`;
    /// returns the predicate's last value.
    public func wait(timeout: Duration? = nil, until predicate: () throws -> Bool) throws -> Bool {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while try !predicate() {
            let remaining = deadline.map { $0 - ContinuousClock.now }
            if let remaining, remaining <= .zero { return try predicate() }
            try wait(timeout: remaining)
        }
        return true
    }

    /// Wakes one waiter (the lock must be held).
    public func notify() throws(SynchronizationError) { try check(cmp_condition_notify(cell.pointer, 0)) }

    /// Wakes every waiter (the lock must be held).
    public func notifyAll() throws(SynchronizationError) { try check(cmp_condition_notify(cell.pointer, 1)) }
}

/// Lets a fixed number of processes wait for each other (Python's `Barrier`).
public final class Barrier: Sendable, Codable {
    let cell: SharedCell<cmp_barrier_t>
    /// How many must arrive before all go on.
    public let parties: Int

    public init(parties: Int) throws {
        precondition(parties > 0 && parties <= Int(Int32.max), "a barrier needs at least one party")
        self.parties = parties
        cell = try SharedCell()
        try check(cmp_barrier_init(cell.pointer, Int32(parties)))
    }

    /// Waits until all parties have arrived; returns this caller's arrival
    /// index (`parties - 1` for the first, 0 for the last).
    ///
    /// - Throws: ``SynchronizationError/brokenBarrier`` if the timeout passes
    ///   (the barrier then breaks for everyone), or it is broken, aborted or reset.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws(SynchronizationError) -> Int {
        var index: Int32 = 0
        let code = cmp_barrier_wait(cell.pointer, nanoseconds(timeout), &index)
        if code == ETIMEDOUT { throw .brokenBarrier }
        try check(code)
        return Int(index)
    }

    /// Breaks the barrier: waiters and later callers get ``SynchronizationError/brokenBarrier``.
    public func abort() throws(SynchronizationError) { try check(cmp_barrier_abort(cell.pointer)) }

    /// Mends the barrier; current waiters get ``SynchronizationError/brokenBarrier``.
    public func reset() throws(SynchronizationError) { try check(cmp_barrier_reset(cell.pointer)) }

    /// How many are waiting now.
    public var waiting: Int { Int(cmp_barrier_waiting(cell.pointer)) }

    /// Whether the barrier is broken.
    public var isBroken: Bool { cmp_barrier_is_broken(cell.pointer) != 0 }
}
