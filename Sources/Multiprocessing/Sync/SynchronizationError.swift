import Glibc

/// Why a lock, semaphore, condition or barrier operation failed.
public enum SynchronizationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The lock was acquired, but the process that held it before died
    /// holding it: what it protected may be half-updated. The caller now
    /// holds the lock; repair what it guards, then release it.
    case previousOwnerDied
    /// Released by a process or thread that does not hold it.
    case notOwner
    /// A non-recursive lock acquired again by the thread that holds it.
    case deadlock
    /// A bounded semaphore released more often than acquired.
    case boundExceeded
    /// The barrier is broken (a wait timed out, or it was aborted or reset).
    case brokenBarrier
    /// A system call failed with this errno.
    case system(Int32)

    public var description: String {
        switch self {
        case .previousOwnerDied: "the previous owner died holding the lock; the caller holds it now"
        case .notOwner: "released by a caller that does not hold it"
        case .deadlock: "the calling thread already holds this lock"
        case .boundExceeded: "bounded semaphore released too many times"
        case .brokenBarrier: "the barrier is broken"
        case let .system(code): String(cString: strerror(code))
        }
    }

    @usableFromInline init(code: Int32) {
        switch code {
        case EOWNERDEAD: self = .previousOwnerDied
        case EPERM: self = .notOwner
        case EDEADLK: self = .deadlock
        case ERANGE: self = .boundExceeded
        case EPIPE: self = .brokenBarrier
        default: self = .system(code)
        }
    }
}

/// A timeout as the C layer takes it: nanoseconds, -1 for none.
internal func nanoseconds(_ timeout: Duration?) -> Int64 {
    guard let timeout else { return -1 }
    if timeout <= .zero { return 0 }
    let (seconds, attoseconds) = timeout.components
    let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
    return overflow ? Int64.max / 2 : product + attoseconds / 1_000_000_000
}

@inlinable @inline(__always)
internal func check(_ code: Int32) throws(SynchronizationError) {
    if code != 0 { throw SynchronizationError(code: code) }
}
