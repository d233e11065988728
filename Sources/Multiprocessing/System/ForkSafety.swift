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
/// stops the world: each other thread of the process is sent `SIGSYS`,
/// marked as the library's (the one asynchronous signal Dispatch's threads,
/// and so Swift concurrency's, leave open), whose handler only waits. The
/// forking thread reads where each one stopped and walks its frame-pointer
/// chain against `libswiftCore`'s symbol table. A thread inside the
/// runtime's C++ code is let run until its outermost runtime call returns —
/// that return address is pointed at a trampoline that parks it — while the
/// others stay parked; one running the C library's own locked code (malloc,
/// whose locks `fork` itself takes) is looked at again a moment later. The
/// fork happens when no thread is inside; then the parent lets every thread
/// go. A process with no other thread pays only for listing its threads,
/// and threads blocked in the library's own waits (a pool result, a join,
/// the wait for a fork) are not signalled at all: they hold nothing, and on
/// their way out of the wait they wait for the fork to be done.
///
/// What it cannot cover, and what happens then (each counted in
/// ``statistics`` and logged as a warning through ``logger``):
/// - A thread that blocks `SIGSYS` does not answer: after 20 ms the fork goes
///   ahead without stopping the others. So does one that answers nothing for
///   200 ms (stuck in the kernel).
/// - Some thread inside the runtime for 200 ms on end: the fork goes ahead.
/// - A parked thread that was blocked in the kernel while holding a lock
///   `fork` needs (writing out all of stdio's buffers, say): after 100 ms a
///   watchdog lets the threads go, and the fork completes without them parked.
/// - A lazy global whose initializer runs on another thread at the fork
///   cannot be used in the child (its initializer cannot finish there).
/// - Locks of other libraries (Foundation's caches, a C library's own) are
///   not judged: a child that needs one a parked thread held can still wait.
///   The start methods spawn and forkserver have no such hazard.
///
/// Threads of the program see `EINTR` from system calls that a signal
/// handler interrupts and the kernel does not restart (`poll`, `epoll_wait`,
/// `select`, `nanosleep`); code that retries `EINTR` is unaffected. A
/// debugger stops on `SIGSYS` by default: in gdb, `handle SIGSYS nostop
/// noprint pass`. Setting `SWIFT_MULTIPROCESSING_NO_HIJACK` in the
/// environment keeps return addresses untouched (threads inside the runtime
/// are then only looked at again, which under heavy runtime use can run out
/// the budget).
public enum ForkSafety {
    /// Counts of forks made by the library in this process, by how the stop went.
    public struct Statistics: Sendable, Equatable {
        /// Forks made.
        public var forks = 0
        /// Forks made with every other thread parked outside the runtime.
        public var quiesced = 0
        /// Forks with some thread that did not answer the signal.
        public var unstoppable = 0
        /// Forks with some thread inside the runtime at every look.
        public var busy = 0
        /// Forks during which the watchdog let the threads go.
        public var releasedEarly = 0
        /// Looks that found a thread inside the runtime or the C library.
        public var retries = 0
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
        case Int(CMP_QUIESCE_STOPPED): return
        case Int(CMP_QUIESCE_UNSTOPPABLE): reason = "a thread did not answer the park signal (it blocks SIGSYS, or is stuck in the kernel)"
        case Int(CMP_QUIESCE_BUSY): reason = "a thread stayed inside the Swift runtime for the whole budget"
        case Int(CMP_QUIESCE_RELEASED_EARLY): reason = "the fork waited on a lock a parked thread held; the threads were let go"
        default: reason = "the park signal's handler could not be installed"
        }
        var metadata: Logger.Metadata = [
            "fork.reason": "\(reason)",
            "fork.looks": "\(report.retries)",
            "fork.stop_ns": "\(report.elapsed_ns)",
        ]
        if report.unstoppable_thread != 0 { metadata["thread.id"] = "\(report.unstoppable_thread)" }
        logger.warning("forked without stopping the other threads", metadata: metadata)
    }
}
