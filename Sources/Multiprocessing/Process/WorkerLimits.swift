import Glibc
import SystemPackage

/// Limits on what each worker process of a pool may use, set in the worker
/// before its initializer and its first task run.
///
/// A worker ended by a limit fails the unit it was running with an error
/// that names the limit — ``ProcessError/memoryLimitExceeded(bytes:)``,
/// ``ProcessError/cpuTimeLimitExceeded(seconds:)`` — and the pool starts
/// another worker; every other task goes on.
///
/// ```swift
/// let pool = try ProcessPool(processes: 4, limits: WorkerLimits(memory: 512 << 20, cpuSeconds: 10))
/// ```
///
/// **Memory** is limited, where the machine lets this process make control
/// groups (cgroup v2 with the memory controller delegated to this process's
/// group, or cgroup v1's memory controller mounted writable), by a control
/// group per worker: the kernel counts the pages the worker touches (page
/// cache included) and kills it at the limit. Elsewhere it falls back to
/// `RLIMIT_DATA`, which counts the worker's private address space — what a
/// forked worker inherited too — and makes an allocation past it fail; the
/// worker then leaves at once with ``memoryLimitExitStatus``.
/// ``memoryEnforcement`` chooses; ``WorkerLimits/MemoryEnforcement/available``
/// says what this machine offers.
///
/// **CPU time** is counted per unit (a task, or `cpuSeconds` times the items
/// of a chunk), in whole seconds, through `RLIMIT_CPU` (the worker is ended
/// by `SIGXCPU`). Code that catches `SIGXCPU` is not stopped by it: give the
/// call a `timeout` as well.
///
/// **Core dumps** are off unless asked for: workers that crash on purpose
/// (the isolation a pool exists for) do not fill the disk.
public struct WorkerLimits: Sendable, Hashable, Codable {
    /// How a memory limit is enforced.
    public enum MemoryEnforcement: String, Sendable, Hashable, Codable {
        /// A control group per worker where this process can make one; `RLIMIT_DATA` otherwise.
        case automatic
        /// A control group per worker; a pool with a memory limit cannot be
        /// made where none can be (``PoolError/invalidArgument(_:)``).
        case controlGroup
        /// `RLIMIT_DATA`: the worker's allocations past the limit fail.
        case dataSegment

        /// What ``automatic`` uses on this machine: ``controlGroup`` where
        /// this process can make control groups with a memory limit.
        public static var available: MemoryEnforcement {
            MemoryGroup.base == nil ? .dataSegment : .controlGroup
        }
    }

    /// The most memory a worker may use, in bytes; nil for no limit.
    public var memory: Int?
    /// How ``memory`` is enforced.
    public var memoryEnforcement: MemoryEnforcement
    /// The CPU seconds a task may use (per item, for a chunk); nil for no limit.
    public var cpuSeconds: Int?
    /// The most descriptors a worker may have open (`RLIMIT_NOFILE`); nil
    /// leaves the inherited limit. The worker needs a few of its own.
    public var openFiles: Int?
    /// Whether a crashing worker may write a core dump (`RLIMIT_CORE`).
    public var coreDumps: Bool
    /// Recycling by memory (billiard's `max_memory_per_child`): a worker
    /// whose resident memory is above this many bytes after a unit gets no
    /// more units and is replaced once those already sent to it are done
    /// (a unit sent ahead still runs in it). nil: never; see also
    /// `maxTasksPerChild`. Not a limit: nothing fails.
    ///
    /// With this or ``memory`` set, a worker gives memory it frees back to
    /// the system at once; with neither, it keeps up to 32 MiB of it for its
    /// next units (its resident size stays that much higher).
    public var recycleAbove: Int?
    /// A seccomp sandbox for each worker (see ``WorkerSandbox``); nil: none.
    public var sandbox: WorkerSandbox?

    /// The exit status of a worker whose allocation failed under a
    /// `RLIMIT_DATA` memory limit. A worker's own `exit` with this status
    /// under such a limit reads as ``ProcessError/memoryLimitExceeded(bytes:)``.
    public static let memoryLimitExitStatus: Int32 = 252

    /// Limits; each nil one is not set. Core dumps are off by default.
    public init(memory: Int? = nil, memoryEnforcement: MemoryEnforcement = .automatic, cpuSeconds: Int? = nil, openFiles: Int? = nil, coreDumps: Bool = false, recycleAbove: Int? = nil, sandbox: WorkerSandbox? = nil) {
        self.recycleAbove = recycleAbove
        self.sandbox = sandbox
        self.memory = memory
        self.memoryEnforcement = memoryEnforcement
        self.cpuSeconds = cpuSeconds
        self.openFiles = openFiles
        self.coreDumps = coreDumps
    }

    /// The limit that ended a process with exit `code` (negative: a
    /// signal), if one did: `oomKilled` is what its control group saw,
    /// `items` what the CPU time was granted for.
    func cause(ofExit code: Int32, oomKilled: Bool, enforcement: MemoryEnforcement?, items: Int) -> ProcessError? {
        if let memory {
            if code == -SIGKILL, oomKilled { return .memoryLimitExceeded(bytes: memory) }
            if code == Self.memoryLimitExitStatus, enforcement == .dataSegment { return .memoryLimitExceeded(bytes: memory) }
        }
        if let violation = sandbox?.violation(exitCode: code) { return violation }
        if code == -SIGXCPU, let cpuSeconds { return .cpuTimeLimitExceeded(seconds: cpuSeconds * items) }
        return nil
    }

    /// Checks the values; returns how memory is enforced here (nil: no memory limit).
    package func resolved() throws(PoolError) -> MemoryEnforcement? {
        if let memory, memory < 1 << 20 { throw .invalidArgument("a memory limit must be at least 1 MiB, not \(memory) bytes") }
        if let cpuSeconds, cpuSeconds < 1 { throw .invalidArgument("cpuSeconds must be at least 1, not \(cpuSeconds)") }
        if let recycleAbove, recycleAbove < 1 << 20 { throw .invalidArgument("recycleAbove must be at least 1 MiB, not \(recycleAbove) bytes") }
        if let openFiles, openFiles < 8 { throw .invalidArgument("openFiles must be at least 8 (a worker needs a few), not \(openFiles)") }
        try sandbox?.validate()
        guard memory != nil else { return nil }
        switch memoryEnforcement {
        case .automatic: return MemoryEnforcement.available
        case .controlGroup:
            guard MemoryGroup.base != nil else { throw .invalidArgument("this process cannot make memory control groups here") }
            return .controlGroup
        case .dataSegment: return .dataSegment
        }
    }
}

/// Where and how each worker process of a pool runs: environment variables,
/// working directory, CPU affinity and niceness, set in the worker before
/// its initializer and its first task. Something that cannot be set (a
/// directory that does not exist, a CPU the machine lacks) fails the work
/// those workers would run with the ``ProcessError/systemCall(_:errno:)``
/// that failed.
public struct WorkerEnvironment: Sendable, Hashable, Codable {
    /// Variables set in each worker (over what it inherited).
    public var variables: [String: String]
    /// The directory each worker changes to; nil: the inherited one.
    public var workingDirectory: String?
    /// The CPUs each worker may run on (`sched_setaffinity`); nil: the inherited set.
    public var cpuAffinity: [Int]?
    /// Each worker's nice value (`setpriority`; raising it needs no
    /// privilege, lowering it does); nil: the inherited one.
    public var niceness: Int?

    /// An environment; what is nil or empty is inherited.
    public init(variables: [String: String] = [:], workingDirectory: String? = nil, cpuAffinity: [Int]? = nil, niceness: Int? = nil) {
        self.variables = variables
        self.workingDirectory = workingDirectory
        self.cpuAffinity = cpuAffinity
        self.niceness = niceness
    }

    package func validate() throws(PoolError) {
        for name in variables.keys where name.isEmpty || name.contains("=") || name.utf8.contains(0) {
            throw .invalidArgument("'\(name)' is not an environment variable name")
        }
        if let cpuAffinity, cpuAffinity.isEmpty || cpuAffinity.contains(where: { $0 < 0 }) {
            throw .invalidArgument("cpuAffinity must name at least one CPU, each 0 or above: \(cpuAffinity)")
        }
    }
}

/// In a pool worker: whether the pool asked the running task to stop — its
/// `timeout` passed and the pool has a grace period (`gracePeriod`). A task
/// that checks can clean up and return (or throw) before the grace ends,
/// when its worker is killed; either way the task fails with
/// ``ProcessError/timedOut(seconds:)``, and its worker is replaced.
/// Always false elsewhere.
public func isStopRequested() -> Bool {
    Syscall.stopRequested
}

/// What a worker sets up before anything else runs in it (the limits the
/// parent resolved for it). Travels in the worker's job.
internal struct WorkerSetup: Codable, Sendable {
    /// The control group the worker moves itself into.
    var memoryGroup: String? = nil
    /// `RLIMIT_DATA`, in bytes.
    var dataLimit: Int? = nil
    var openFiles: Int? = nil
    var coreDumps = false
    var environment = WorkerEnvironment()
    /// The pool gives tasks past their time a grace period: SIGTERM asks
    /// the task to stop (``isStopRequested()``) instead of ending the worker.
    var handlesStopRequests = false
    /// Installed after the initializer, before the first task.
    var sandbox: WorkerSandbox? = nil
    /// A lone child's CPU seconds, all told (a pool worker's are per unit).
    var cpuSeconds: Int? = nil
    /// Pipes to the pool, or memory files it reads, taken as standard
    /// output and error (forwarded or captured output).
    var standardOutput: PassedDescriptor? = nil
    var standardError: PassedDescriptor? = nil
    /// Which of them capture each unit's output (``CapturedOutput/streams(of:)``).
    var capturedStreams: UInt8 = 0
    /// Whether the worker's malloc keeps memory it freed for reuse (see
    /// ``Syscall/keepFreedMemory(upTo:)``): only with no memory limit and no
    /// recycling by memory, which freed memory kept would count against.
    var keepsFreedMemory = false

    /// What a worker under `limits` and `environment` sets up, and the
    /// memory control group it joins (made here; the caller removes it).
    static func make(_ limits: WorkerLimits, _ environment: WorkerEnvironment, enforcement: WorkerLimits.MemoryEnforcement?,
                     handlesStopRequests: Bool = false) throws -> (WorkerSetup, MemoryGroup?) {
        var setup = WorkerSetup(openFiles: limits.openFiles, coreDumps: limits.coreDumps, environment: environment,
                                handlesStopRequests: handlesStopRequests, sandbox: limits.sandbox)
        setup.keepsFreedMemory = limits.memory == nil && limits.recycleAbove == nil
        guard let memory = limits.memory, let enforcement else { return (setup, nil) }
        if enforcement == .dataSegment {
            setup.dataLimit = memory
            return (setup, nil)
        }
        let group = try MemoryGroup.make(limit: memory)
        setup.memoryGroup = group.path
        return (setup, group)
    }

    /// In a lone child (``ChildProcess``): sets everything up, then runs `work`.
    func run(_ work: () -> Result<[UInt8], ProcessError>) -> Result<[UInt8], ProcessError> {
        if let error = apply() ?? sandbox?.enter() { return .failure(error) }
        if let cpuSeconds { Self.limitCPU(seconds: cpuSeconds) }
        return work()
    }

    /// In the worker: applies the setup; an error says what failed.
    func apply() -> ProcessError? {
        do {
            if let standardOutput { try Syscall.redirectStandardOutput(to: standardOutput.descriptor) }
            if let standardError { try Syscall.redirect(standardError.descriptor, onto: STDERR_FILENO) }
        } catch {
            return ProcessError("dup2 (forwarded output)", error)
        }
        if handlesStopRequests { Syscall.handleStopRequests() }
        do {
            for (name, value) in environment.variables.sorted(by: { $0.key < $1.key }) { try Syscall.setEnvironment(name, value) }
        } catch {
            return ProcessError("setenv", error)
        }
        if let directory = environment.workingDirectory {
            do { try Syscall.changeDirectory(directory) } catch { return ProcessError("chdir \(directory)", error) }
        }
        if let cpus = environment.cpuAffinity {
            do { try Syscall.setCPUAffinity(cpus) } catch { return ProcessError("sched_setaffinity \(cpus)", error) }
        }
        if let niceness = environment.niceness {
            do { try Syscall.setNiceness(niceness) } catch { return ProcessError("setpriority \(niceness)", error) }
        }
        do {
            if !coreDumps { try Syscall.setResourceLimit(RLIMIT_CORE, soft: 0, hard: Syscall.hardResourceLimit(RLIMIT_CORE)) }
            if let openFiles { try Syscall.setResourceLimit(RLIMIT_NOFILE, soft: openFiles, hard: openFiles) }
        } catch {
            return ProcessError("setrlimit", error)
        }
        if let memoryGroup {
            do {
                try Syscall.writeText("\(Syscall.currentProcessID)\n", to: memoryGroup + "/cgroup.procs")
            } catch {
                return ProcessError("joining the memory control group \(memoryGroup)", error)
            }
        }
        if let dataLimit {
            Syscall.exitOnAllocationFailure(status: WorkerLimits.memoryLimitExitStatus)
            do {
                try Syscall.setResourceLimit(RLIMIT_DATA, soft: dataLimit, hard: dataLimit)
            } catch {
                return ProcessError("setrlimit(RLIMIT_DATA)", error)
            }
        }
        return nil
    }

    /// In the worker, before a unit: it may use `seconds` more CPU time.
    static func limitCPU(seconds: Int) {
        let used = Syscall.processCPUTime.components
        // RLIMIT_CPU counts whole seconds: the unit gets at least `seconds`.
        let soft = Int(used.seconds) + (used.attoseconds > 0 ? 1 : 0) + seconds
        let hard = Syscall.hardResourceLimit(RLIMIT_CPU)
        try? Syscall.setResourceLimit(RLIMIT_CPU, soft: hard.map { min($0, soft) } ?? soft, hard: hard)
    }
}

/// A control group with a memory limit, for one worker (cgroup v2's
/// `memory.max`, or v1's memory controller), made by the pool before the
/// worker starts and removed once it is reaped.
internal final class MemoryGroup: Sendable {
    enum Version: Sendable { case v1, v2 }

    /// This process's own memory control group, where it may make groups;
    /// nil if it cannot (found once).
    static let base: (path: String, version: Version)? = findBase()

    private static let prefix = "swift-multiprocessing-"

    /// Where this process's shared-memory tracker goes: out of a group the
    /// library made for this process (removed, its members killed, when the
    /// worker ends), into the one it was made in; nil when not in such a group.
    static var trackerGroup: String? {
        guard let base, let slash = base.path.lastIndex(of: "/"),
              base.path[base.path.index(after: slash)...].hasPrefix(prefix) else { return nil }
        return String(base.path[..<slash])
    }
    private static let serial = Locked(0)
    /// Whether this process has removed the groups its dead predecessors left.
    private static let swept = Locked(false)

    let path: String
    let version: Version

    private init(path: String, version: Version) {
        self.path = path
        self.version = version
    }

    /// A new group limited to `bytes` (no swap beyond it).
    static func make(limit bytes: Int) throws -> MemoryGroup {
        guard let base else { throw ProcessError.systemCall("no memory control group can be made here", errno: ENOTSUP) }
        sweepOnce(base.path)
        let number = serial.withLock { value in
            value += 1
            return value
        }
        let path = "\(base.path)/\(prefix)\(Syscall.currentProcessID)-\(number)"
        do {
            try Syscall.makeDirectory(path)
        } catch {
            throw ProcessError("mkdir \(path)", error)
        }
        let group = MemoryGroup(path: path, version: base.version)
        do {
            switch base.version {
            case .v1:
                try Syscall.writeText("\(bytes)", to: path + "/memory.limit_in_bytes")
                // Where swap is accounted, no more memory+swap than memory.
                try? Syscall.writeText("\(bytes)", to: path + "/memory.memsw.limit_in_bytes")
            case .v2:
                try Syscall.writeText("\(bytes)", to: path + "/memory.max")
                try? Syscall.writeText("0", to: path + "/memory.swap.max")
            }
        } catch {
            group.remove()
            throw ProcessError("setting the memory limit of \(path)", error)
        }
        return group
    }

    /// Whether the kernel's OOM killer ended a process of this group.
    var oomKilled: Bool {
        let file = version == .v1 ? "/memory.oom_control" : "/memory.events"
        guard let text = Syscall.readText(path + file) else { return false }
        for line in text.split(separator: "\n") where line.hasPrefix("oom_kill ") {
            return (Int(line.dropFirst("oom_kill ".count)) ?? 0) > 0
        }
        return false
    }

    /// Kills what is left in the group (a worker's own children) and removes it.
    func remove() {
        Self.remove(path)
    }

    private static func remove(_ path: String) {
        for _ in 0..<100 {
            let members = (Syscall.readText(path + "/cgroup.procs") ?? "").split(separator: "\n").compactMap { Int32($0) }
            for pid in members { try? Syscall.kill(pid, SIGKILL) }
            do {
                try Syscall.removeDirectory(path)
                return
            } catch .resourceBusy {
                // The members just killed leave the group as they are reaped.
                sched_yield()
            } catch {
                return
            }
        }
    }

    /// Removes the groups left by processes of this library that died
    /// without removing theirs (a SIGKILLed pool owner).
    private static func sweepOnce(_ base: String) {
        guard swept.withLock({ swept in
            defer { swept = true }
            return !swept
        }) else { return }
        for name in Syscall.directoryEntries(base) where name.hasPrefix(prefix) {
            let owner = name.dropFirst(prefix.count).split(separator: "-").first.flatMap { Int32($0) }
            guard let owner, owner != Syscall.currentProcessID, Glibc.kill(owner, 0) != 0, errno == ESRCH else { continue }
            remove(base + "/" + name)
        }
    }

    /// This process's memory control group, if groups can be made in it.
    private static func findBase() -> (path: String, version: Version)? {
        guard let membership = Syscall.readText("/proc/self/cgroup"),
              let mounts = Syscall.readText("/proc/self/mountinfo") else { return nil }
        var v1Path: String?
        var v2Path: String?
        for line in membership.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            if fields[1].split(separator: ",").contains("memory") { v1Path = String(fields[2]) }
            if fields[0] == "0" && fields[1].isEmpty { v2Path = String(fields[2]) }
        }
        for line in mounts.split(separator: "\n") {
            // id parent major:minor root mount-point options... - type source super-options
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let left = halves[0].split(separator: " ")
            let right = halves[1].split(separator: " ")
            guard left.count >= 5, right.count >= 3 else { continue }
            let root = String(left[3])
            let mountPoint = String(left[4])
            let candidate: (String, Version)?
            if right[0] == "cgroup", right[2].split(separator: ",").contains("memory"), let v1Path {
                candidate = (join(mountPoint, root, v1Path), .v1)
            } else if right[0] == "cgroup2", let v2Path {
                let path = join(mountPoint, root, v2Path)
                // Children get the memory controller only if it is enabled below this group.
                let enabled = Syscall.readText(path + "/cgroup.subtree_control") ?? ""
                candidate = enabled.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("memory") ? (path, .v2) : nil
            } else {
                candidate = nil
            }
            if let (path, version) = candidate, access(path, W_OK) == 0, probe(path) { return (path, version) }
        }
        return nil
    }

    /// `mountPoint` + the part of `path` below the mount's `root`.
    private static func join(_ mountPoint: String, _ root: String, _ path: String) -> String {
        var below = path
        if root != "/" && below.hasPrefix(root) { below = String(below.dropFirst(root.count)) }
        if below == "/" { below = "" }
        return mountPoint + below
    }

    /// Whether a group can be made and removed in `path`.
    private static func probe(_ path: String) -> Bool {
        let trial = "\(path)/\(prefix)\(Syscall.currentProcessID)-probe"
        guard (try? Syscall.makeDirectory(trial)) != nil else { return false }
        try? Syscall.removeDirectory(trial)
        return true
    }
}
