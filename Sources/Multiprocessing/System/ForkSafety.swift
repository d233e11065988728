import CMultiprocessing
import Logging
import Synchronization

/// How the library keeps a forked child from inheriting a lock that another
/// thread of the parent held.
///
/// A forked child has one thread: the one that forked. Any lock another
/// thread held at that instant stays held in the child for ever. The Swift
/// runtime makes type metadata, protocol conformances, type names and lazy
/// globals on first use, under locks of its own, so a child whose code used
/// a type for the first time while some parent thread was inside the
/// runtime used to wait for ever.
///
/// Every fork the library makes — ``ChildProcess`` closures, the fork start
/// method, the workers of closure pool calls, ``OSProcess/fork()`` — first
/// stops the world, each thread at an instant when it holds no lock. The
/// library counts, per thread, the pthread mutexes held (every lock the
/// Swift runtime takes is one) and the lazy-global initializers running
/// (`swift_once`): it defines `pthread_mutex_lock`, `pthread_mutex_unlock`,
/// the condition waits and `swift_once` in the program, so the dynamic
/// linker binds every library's calls to them, and each goes on to the C
/// library's or the runtime's own. A thread that holds nothing, takes
/// nothing and runs no initializer is left alone: should it come to take a
/// lock before the fork is done, it waits at the door. Each other thread is
/// sent `SIGSYS`, marked as the library's (the one asynchronous signal
/// Dispatch's threads, and so Swift concurrency's, leave open): one that
/// holds one of the Swift runtime's locks (taken by the runtime's own code)
/// runs on and parks itself as it lets go of its last one, one that holds
/// only other libraries' locks or is waiting to take one parks in the
/// handler, and one running the C library's own code (malloc, whose locks
/// `fork` itself takes) is asked again a moment later.
/// The fork happens when every thread is parked; then every thread goes on.
/// A process with no other thread pays only for listing its threads, and
/// threads blocked in the library's own waits (a pool result, a join, the
/// wait for a fork) are not signalled at all: they hold nothing, and on
/// their way out of the wait they wait for the fork to be done.
///
/// What it cannot cover, and what happens then (each counted in
/// ``statistics`` and logged as a warning through ``logger``):
/// - A thread that blocks `SIGSYS` does not answer: the fork goes ahead
///   without stopping the others. So does one that answers nothing for
///   200 ms (stuck in the kernel).
/// - A thread that holds a runtime lock, or runs a lazy global's
///   initializer, for 200 ms on end (one that waits for something while
///   holding it): the fork goes ahead.
/// - A parked thread that was blocked in the kernel while holding a lock
///   `fork` needs (writing out all of stdio's buffers, say): after 100 ms a
///   watchdog lets the threads go, and the fork completes without them parked.
/// - Other libraries' locks are seen but not waited for, and locks that are
///   not pthread mutexes — Dispatch's and stdlib `Mutex` (futexes),
///   read-write locks — are not seen: a child that needs one a parked
///   thread held can still wait. Nothing is counted in a program
///   linked with a static Swift runtime or C library, which keep their own
///   definitions (``Statistics/untracked`` counts those forks).
/// - A thread left alone may be inside the C library under one of its own
///   internal locks (time zones, locale) at the instant of the fork.
///
/// The start methods spawn and forkserver have none of these hazards.
///
/// Threads of the program see `EINTR` from system calls that a signal
/// handler interrupts and the kernel does not restart (`poll`, `epoll_wait`,
/// `select`, `nanosleep`); code that retries `EINTR` is unaffected. A
/// debugger stops on `SIGSYS` by default: in gdb, `handle SIGSYS nostop
/// noprint pass`.
public enum ForkSafety {
    /// Counts of forks made by the library in this process, by how the stop went.
    public struct Statistics: Sendable, Equatable {
        /// Forks made.
        public var forks = 0
        /// Forks made with every other thread parked holding no lock.
        public var quiesced = 0
        /// Forks with some thread that did not answer the signal.
        public var unstoppable = 0
        /// Forks with some thread holding a lock (or running a lazy global's
        /// initializer) for the whole budget.
        public var busy = 0
        /// Forks during which the watchdog let the threads go.
        public var releasedEarly = 0
        /// Threads asked again: found in the C library's own code, or still
        /// holding a lock a while after they were first asked.
        public var retries = 0
        /// Threads that held a lock when asked and parked as they let go of
        /// their last one, all forks together.
        public var deferred = 0
        /// Threads found holding no lock, taking none and running no
        /// initializer, all forks together: these are not signalled (one that
        /// comes to take a lock while the fork is under way waits for it).
        public var quiet = 0
        /// Forks that stopped the world in a process whose locks are not
        /// counted (a static Swift runtime or C library): the threads were
        /// parked wherever the signal found them.
        public var untracked = 0
        /// Threads found blocked in one of the library's own waits (a pool's
        /// result, a queue, a join), all forks together: these are counted as
        /// parked without a signal, and wait on their way out until the fork
        /// is done.
        public var waiting = 0
        /// Time spent stopping the other threads, all forks together.
        public var stopping: Duration = .zero
    }

    /// The counts so far.
    public static var statistics: Statistics {
        counters.withLock { $0 }
    }

    /// Where warnings about forks that could not stop the world go. Silent by
    /// default; set a logger of your own to see them.
    public static var logger: Logger {
        get { loggerBox.withLock { $0 } }
        set { loggerBox.withLock { $0 = newValue } }
    }

    /// Whether the library's forks stop the world first (the default).
    ///
    /// Turn it off only in a process whose other threads cannot be inside
    /// the Swift runtime while a fork happens (none, or all blocked in
    /// waits of their own): forks are then plain `fork(2)` calls and a child
    /// can inherit a runtime lock held. What stopping costs is in
    /// ``Statistics/stopping``; the benchmark's `fork.stop-the-world` row
    /// measures it against plain forks in the same run.
    public static var stopsTheWorld: Bool {
        get { enabled.load(ordering: .relaxed) }
        set { enabled.store(newValue, ordering: .relaxed) }
    }

    private static let enabled = Atomic<Bool>(true)

    static let budgetNanoseconds: Int64 = 200_000_000
    static let watchdogNanoseconds: Int64 = 100_000_000

    private static let counters = Locked(Statistics())
    private static let untrackedWarned = Atomic<Bool>(false)
    private static let loggerBox = Locked(Logger(label: "swift-multiprocessing.fork", factory: { _ in SwiftLogNoOpLogHandler() }))

    /// In the parent, after a plain fork (the world not stopped on purpose).
    static func recordPlainFork() {
        counters.withLock { $0.forks += 1 }
    }

    /// In the parent, after a fork: counts it and warns when the world could not be stopped.
    static func record(_ report: cmp_quiesce_report_t) {
        counters.withLock { statistics in
            statistics.forks += 1
            statistics.retries += Int(report.retries)
            statistics.deferred += Int(report.deferred)
            statistics.quiet += Int(report.quiet)
            if report.lock_tracking == 0 && report.outcome != CMP_QUIESCE_FAILED { statistics.untracked += 1 }
            statistics.waiting += Int(report.waiting)
            statistics.stopping += .nanoseconds(report.elapsed_ns)
            switch Int(report.outcome) {
            case Int(CMP_QUIESCE_STOPPED): statistics.quiesced += 1
            case Int(CMP_QUIESCE_UNSTOPPABLE): statistics.unstoppable += 1
            case Int(CMP_QUIESCE_BUSY): statistics.busy += 1
            case Int(CMP_QUIESCE_RELEASED_EARLY): statistics.releasedEarly += 1
            default: break
            }
        }
        let reason: String
        switch Int(report.outcome) {
        case Int(CMP_QUIESCE_STOPPED):
            if report.lock_tracking == 0, !untrackedWarned.exchange(true, ordering: .relaxed) {
                logger.warning("forks stop the world without knowing which threads hold locks: this program keeps its own pthread_mutex_lock or swift_once (a static C library or Swift runtime)")
            }
            return
        case Int(CMP_QUIESCE_UNSTOPPABLE): reason = "a thread did not answer the park signal (it blocks SIGSYS, or is stuck in the kernel)"
        case Int(CMP_QUIESCE_BUSY): reason = "a thread held a lock, or ran a lazy global's initializer, for the whole budget"
        case Int(CMP_QUIESCE_RELEASED_EARLY): reason = "the fork waited on a lock a parked thread held; the threads were let go"
        default: reason = "the park signal's handler could not be installed"
        }
        var metadata: Logger.Metadata = [
            "fork.reason": "\(reason)",
            "fork.asked_again": "\(report.retries)",
            "fork.rounds_given_up": "\(report.restarts)",
            "fork.stop_ns": "\(report.elapsed_ns)",
        ]
        if report.unstoppable_thread != 0 { metadata["thread.id"] = "\(report.unstoppable_thread)" }
        logger.warning("forked without stopping the other threads", metadata: metadata)
    }
}
