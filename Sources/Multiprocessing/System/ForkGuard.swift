import CMultiprocessing
import Glibc
import SystemPackage

/// Makes `fork()` safe for the library's own state.
///
/// A forked child has one thread. Any lock another thread of the parent held
/// at the instant of the fork stays locked in the child for ever, and the
/// child hangs on it (seen: a child's `exit` waiting on the registry lock, a
/// child flushing stdout). So, as `pthread_atfork` handlers would, every
/// process-wide lock a child may take — and stdout and stderr — is held by
/// the forking thread across the fork and released on both sides. These are
/// leaf locks: nobody holding one waits for anything else. The forkserver
/// client's lock is not one (a request may wait for the launcher thread), so
/// the child gets a fresh one instead. Every global the child touches here is
/// made before the fork (Swift makes globals lazily, under a once-flag).
internal enum ForkGuard {
    static func fork(_ body: () throws(Errno) -> pid_t) throws(Errno) -> pid_t {
        let launcher = Launcher.shared.forkLock
        let watcher = IOWatcher.shared.forkLock
        let registry = ChildRegistry.shared.forkLock
        let identity = ProcessContext.forkLock
        let segments = NamedSegments.shared.forkLock
        // Made here, in the parent: a lazy global first touched in the child
        // hangs it for ever if another thread of the parent was making it at
        // the instant of the fork (seen: a child stuck in swift_once here).
        let forkServer = ForkServerClient.shared
        // Manager clients' locks: a child may call a manager at once.
        let managerClients = ManagerClients.shared.lockForFork()
        cmp_lock_stdio()
        launcher.lockForFork()
        watcher.lockForFork()
        registry.lockForFork()
        identity.lockForFork()
        segments.lockForFork()
        let result = Result { () throws(Errno) in try body() }
        segments.unlockAfterFork()
        identity.unlockAfterFork()
        registry.unlockAfterFork()
        watcher.unlockAfterFork()
        launcher.unlockAfterFork()
        cmp_unlock_stdio()
        let inChild: Bool
        if case .success(0) = result { inChild = true } else { inChild = false }
        ManagerClients.shared.unlockAfterFork(managerClients, inChild: inChild)
        if inChild {
            forkServer.resetInChild()
        }
        return try result.get()
    }
}
