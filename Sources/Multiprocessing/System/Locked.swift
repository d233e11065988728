import Glibc

/// A value behind a plain `pthread_mutex_t`.
///
/// The standard library's `Mutex` is not used: on Linux it keeps the owner's
/// thread id cached in thread-local storage, and in a forked child that cache
/// still holds the parent thread's id, so the child's first contended unlock
/// traps. Our children fork and lock all the time; glibc's mutex does not care.
internal final class Locked<Value>: @unchecked Sendable {  // `value` is only touched with `mutex` held
    private var value: Value
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Takes the lock for the duration of a fork (see ``ForkGuard``).
    func lockForFork() { pthread_mutex_lock(mutex) }

    /// Lets the lock go after a fork, in the parent and in the child.
    func unlockAfterFork() { pthread_mutex_unlock(mutex) }

    /// Runs `body` on the value while the lock is held by ``lockForFork()``
    /// (between it and ``unlockAfterFork()`` only).
    func whileHeldForFork<Result>(_ body: (inout Value) -> Result) -> Result { body(&value) }

    /// In a forked child only: a fresh mutex and value, whatever state the
    /// copy was in (a thread of the parent may have held it).
    func reinitializeInChild(_ value: Value) {
        pthread_mutex_init(mutex, nil)
        self.value = value
    }

    /// Runs `body` with the lock held. The corresponding C functions are
    /// `pthread_mutex_lock` and `pthread_mutex_unlock`.
    func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
