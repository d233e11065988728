import CMultiprocessing
import Glibc
import SystemPackage

/// The operating system's process calls, as Python's `os` module gives them.
public enum OSProcess {
    /// Which side of a `fork()` the caller is on.
    public enum ForkResult: Sendable, Equatable {
        /// The caller is the parent; the child has this pid.
        case parent(child: Int32)
        /// The caller is the new child process.
        case child
    }

    /// Creates a child that is a copy of this process. Standard I/O is flushed
    /// first, so nothing buffered is printed twice.
    ///
    /// The child runs synchronous code only (never `await`), leaves with
    /// ``exit(_:)``, and must be reaped with ``wait(_:)``. The corresponding C
    /// function is `fork`.
    public static func fork() throws(Errno) -> ForkResult {
        let pid = try ForkGuard.fork { () throws(Errno) in try Syscall.quiescedFork(deathSignal: 0) }
        return pid == 0 ? .child : .parent(child: pid)
    }

    /// The caller's process identifier. The corresponding C function is `getpid`.
    public static func getpid() -> Int32 { Glibc.getpid() }

    /// The caller's parent's process identifier. The corresponding C function is `getppid`.
    public static func getppid() -> Int32 { Glibc.getppid() }

    /// Flushes standard I/O and ends the process at once, running no `atexit`
    /// handlers. The corresponding C function is `_exit`.
    public static func exit(_ status: Int32) -> Never {
        cmp_exit_now(status)
    }

    /// Waits for the child `pid` to end and reaps it; returns its exit code,
    /// negative for the signal that killed it. The corresponding C function is `waitid`.
    public static func wait(_ pid: Int32) throws(Errno) -> Int32 {
        let pidfd = try Syscall.pidfdOpen(pid)
        defer { Syscall.close(pidfd) }
        return try Syscall.waitPidfd(pidfd, block: true)!
    }
}
