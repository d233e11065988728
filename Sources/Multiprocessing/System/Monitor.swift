import CMultiprocessing
import Glibc

/// A value behind a `pthread_mutex_t` with a condition variable, for threads
/// of this process that wait for the value to change.
///
/// Process-private: nothing in a forked child touches one (pool workers run
/// only their work loop).
package final class Monitor<Value>: @unchecked Sendable {  // `value` is only touched with `mutex` held
    private var value: Value
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>

    package init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        condition = .allocate(capacity: 1)
        condition.initialize(to: pthread_cond_t())
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    /// Runs `body` with the lock held.
    package func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }

    /// Runs `body` with the lock held, then wakes every waiter.
    package func update<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(condition)
            pthread_mutex_unlock(mutex)
        }
        return try body(&value)
    }

    /// Waits until `ready` returns a value, at most until `deadline`; nil if
    /// the deadline passed first. The corresponding C function is
    /// `pthread_cond_timedwait`.
    package func wait<Result>(until deadline: ContinuousClock.Instant?, _ ready: (inout Value) -> Result?) -> Result? {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while true {
            if let result = ready(&value) { return result }
            // Waits a stop-the-world fork need not interrupt (see cmp_safe_cond_wait).
            guard let deadline else {
                cmp_safe_cond_wait(condition, mutex, nil)
                continue
            }
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero { return nil }
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let (seconds, attoseconds) = remaining.components
            var nanoseconds = Int(now.tv_nsec) + Int(attoseconds / 1_000_000_000)
            var wholeSeconds = Int(now.tv_sec) + Int(seconds)
            if nanoseconds >= 1_000_000_000 {
                nanoseconds -= 1_000_000_000
                wholeSeconds += 1
            }
            var limit = timespec(tv_sec: wholeSeconds, tv_nsec: nanoseconds)
            cmp_safe_cond_wait(condition, mutex, &limit)
        }
    }
}
