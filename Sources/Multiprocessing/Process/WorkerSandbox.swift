import Glibc

/// A sandbox for workers that run untrusted input: `no_new_privs` and a
/// seccomp filter, installed in each worker after its setup and its
/// initializer (which may still open what the tasks need) and before its
/// first task, on every thread of the worker.
///
/// ```swift
/// let pool = try ProcessPool(limits: WorkerLimits(sandbox: WorkerSandbox([.noNewProcesses, .noNetwork])))
/// ```
///
/// A denied call either fails with `EPERM` (``Violation/fail``: the code
/// sees an error it can handle) or ends the worker (``Violation/kill``):
/// the task fails with ``ProcessError/sandboxViolation(profile:)``, which
/// names the profile it broke, and the pool starts another worker.
///
/// The filter is written for the kernel's interface directly (x86-64 and
/// arm64): a dozen instructions did not justify a new system library for
/// every user of the package. It is a seatbelt against code that goes
/// astray, not a jail: files stay readable and writable as the worker's
/// user may, and so do the descriptors the worker already holds.
public struct WorkerSandbox: Sendable, Hashable, Codable {
    /// What a sandboxed worker may not do.
    public enum Profile: String, Sendable, Hashable, Codable, CaseIterable {
        /// No new processes and no `exec`: `fork`, `vfork`, `execve`,
        /// `execveat` and every `clone` that does not make a thread are
        /// denied (`clone3` answers `ENOSYS`, so the C library makes its
        /// threads with `clone`). Threads still work.
        case noNewProcesses
        /// No network: `socket` of any family but `AF_UNIX` is denied.
        case noNetwork
    }

    /// What a denied call does. Killing, a new process is refused by the
    /// kernel's own kill (`SIGSYS`), a socket by a trap whose handler
    /// leaves with a status of its own; code that blocks `SIGSYS` around a
    /// socket call is killed by the kernel too, and reads as
    /// ``Profile/noNewProcesses`` when that profile is in force.
    public enum Violation: String, Sendable, Hashable, Codable {
        /// The call fails with `EPERM`; the task goes on.
        case fail
        /// The worker ends at once; its task fails with
        /// ``ProcessError/sandboxViolation(profile:)``.
        case kill
    }

    /// The profiles in force.
    public var profiles: Set<Profile>
    /// What a denied call does.
    public var onViolation: Violation

    /// A sandbox with `profiles` (at least one).
    public init(_ profiles: Set<Profile>, onViolation: Violation = .kill) {
        self.profiles = profiles
        self.onViolation = onViolation
    }

    /// Whether this machine's architecture has the filter.
    public static var isSupported: Bool {
        #if arch(x86_64) || arch(arm64)
        true
        #else
        false
        #endif
    }

    func validate() throws(PoolError) {
        if profiles.isEmpty { throw .invalidArgument("a sandbox needs at least one profile") }
        if !Self.isSupported { throw .invalidArgument("the sandbox has no filter for this architecture") }
    }

    /// In the worker: installs the filter; an error says what failed.
    func enter() -> ProcessError? {
        do {
            try Syscall.installSandbox(denyProcesses: profiles.contains(.noNewProcesses), denyNetwork: profiles.contains(.noNetwork),
                                       killOnViolation: onViolation == .kill)
            return nil
        } catch {
            return ProcessError("seccomp", error)
        }
    }

    /// What the parent reads in a sandboxed worker's exit code, if it was the sandbox.
    func violation(exitCode code: Int32) -> ProcessError? {
        guard onViolation == .kill else { return nil }
        switch code {
        case Syscall.sandboxNetworkStatus where profiles.contains(.noNetwork): return .sandboxViolation(profile: Profile.noNetwork.rawValue)
        // The kernel's kill: a new process, or a socket while SIGSYS was blocked.
        case -SIGSYS: return .sandboxViolation(profile: (profiles.contains(.noNewProcesses) ? Profile.noNewProcesses : .noNetwork).rawValue)
        default: return nil
        }
    }
}
