import Glibc
import Logging
import Synchronization
import SystemPackage

/// A child process, Python's `multiprocessing.Process`.
///
/// Create one from a closure (run in a forked copy of this process), from a
/// ``ProcessJob`` value (any ``StartMethod``), or subclass it and override
/// ``run()``. `pid` is nil until ``start()``; ``join(timeout:)`` waits for the
/// child, and ``exitCode`` then holds its exit status, negative for the signal
/// that killed it.
///
/// Every child dies with its parent and is reaped; a child that is never
/// joined is reaped at the next `start()` or ``activeChildren()`` call, and
/// children still running when the program exits are joined (daemons are
/// terminated first).
open class ChildProcess: @unchecked Sendable {  // all mutable state is in `state`, behind a mutex
    private enum Work {
        case closure
        /// `attachments`: descriptors the job holds (connections), sent beside it.
        case job(typeName: String, payload: [UInt8], attachments: [FileDescriptor], originals: [FileDescriptor])
    }

    private enum Phase {
        case created
        case starting
        case running(any ChildHandle, report: FileDescriptor)
        case exited(Int32)
        case closed
    }

    private struct State {
        var phase: Phase = .created
        var pid: pid_t?
        var reportBuffer = FrameBuffer()
        var result: Result<[UInt8], ProcessError>?
        var exitCode: Int32?
        /// Whether the copies of the job's descriptors were closed (once the
        /// child has its own, this process must not keep the channels open).
        var attachmentsReleased = false
        /// The child's memory control group, removed once it is reaped.
        var memoryGroup: MemoryGroup?
        var logger: Logger?
        var capturesOutput = false
        /// The memory files the child writes its output into, while it runs.
        var captures: ChildCaptures?
        /// What it wrote, once it has ended (captured output only).
        var capturedOutput: CapturedOutput?
    }

    /// Where the child's life is logged, through swift-log: started
    /// (`debug`, with `process.name`, `process.pid` and
    /// `process.start_method`), exited with status 0 (`debug`), and
    /// otherwise ended — a status, a signal, a limit — at `info`, with
    /// `process.status` and `error`. Nil, the default: nothing is logged.
    /// Set it before ``start()``.
    public var logger: Logger? {
        get { state.withLock { $0.logger } }
        set { state.withLock { $0.logger = newValue } }
    }

    /// Whether the child's standard output and standard error go to memory
    /// files that this process reads once the child has ended
    /// (``capturedOutput``), instead of this process's own streams. A child
    /// that traps then fails with the Swift runtime's message in
    /// ``CrashReport/message`` (and its stack in ``CrashReport/backtrace``
    /// when the runtime printed one), and the report carries the output.
    /// The last ``CapturedOutput/limit`` bytes of each stream are kept.
    /// False, the default: the child writes to this process's streams, as
    /// in Python. Set it before ``start()``; every start method honours it.
    public var capturesOutput: Bool {
        get { state.withLock { $0.capturesOutput } }
        set { state.withLock { $0.capturesOutput = newValue } }
    }

    /// What the child wrote to its standard output and error, once it has
    /// ended, when it ran with ``capturesOutput``; nil otherwise.
    public var capturedOutput: CapturedOutput? {
        _ = try? poll()
        return state.withLock { $0.capturedOutput }
    }

    private var logMetadata: Logger.Metadata {
        var metadata: Logger.Metadata = ["process.name": "\(name)", "process.start_method": "\(startMethod)"]
        if let pid { metadata["process.pid"] = "\(pid)" }
        return metadata
    }

    /// The name, for messages and ``currentProcess()`` in the child.
    public let name: String
    /// Whether the child is ended (not joined) when the program exits.
    public let daemon: Bool
    /// How the child is started.
    public let startMethod: StartMethod

    // Runs only in the forked child, a copy of this process, never
    // concurrently with anything here; so it need not be Sendable.
    nonisolated(unsafe) private let target: (() throws -> Void)?
    // A job run by fork: it runs in the child only, like `target`.
    nonisolated(unsafe) private var forkedJob: (() -> Result<[UInt8], ProcessError>)? = nil
    private let work: Work
    private let state = Locked(State())
    /// What the child is limited to, and how memory is enforced (nil: no limit).
    private let limits: WorkerLimits
    private let environment: WorkerEnvironment
    private let memoryEnforcement: WorkerLimits.MemoryEnforcement?

    private static let counter = Atomic<Int>(0)

    private static func defaultName() -> String {
        "ChildProcess-\(counter.add(1, ordering: .relaxed).newValue)"
    }

    /// A process that runs `target` in a forked child.
    ///
    /// The closure may capture anything: the child is a copy of this process.
    /// It must be synchronous. If it throws, ``failure`` holds the error and
    /// the exit code is 1.
    public init(name: String? = nil, daemon: Bool = false, target: @escaping () throws -> Void) {
        self.name = name ?? Self.defaultName()
        self.daemon = daemon
        self.startMethod = .fork
        self.target = target
        self.work = .closure
        self.limits = WorkerLimits()
        self.environment = WorkerEnvironment()
        self.memoryEnforcement = nil
    }

    /// A process that runs `target` in a forked child under `limits`, with
    /// `environment`.
    ///
    /// As ``init(name:daemon:target:)``; the limits and the environment apply
    /// in the child before `target` runs, as for a pool's workers (see
    /// ``WorkerLimits`` and ``WorkerEnvironment``), and a child ended by a
    /// limit fails with the error that names it
    /// (``ProcessError/memoryLimitExceeded(bytes:)``…).
    ///
    /// - Throws: ``PoolError/invalidArgument(_:)`` for limits or an
    ///   environment out of range.
    public init(name: String? = nil, daemon: Bool = false, limits: WorkerLimits,
                environment: WorkerEnvironment = WorkerEnvironment(), target: @escaping () throws -> Void) throws {
        self.name = name ?? Self.defaultName()
        self.daemon = daemon
        self.startMethod = .fork
        self.target = target
        self.work = .closure
        self.memoryEnforcement = try limits.resolved()
        try environment.validate()
        self.limits = limits
        self.environment = environment
    }

    /// A process for a subclass that overrides ``run()``; it starts by fork.
    public init(name: String? = nil, daemon: Bool = false) {
        self.name = name ?? Self.defaultName()
        self.daemon = daemon
        self.startMethod = .fork
        self.target = nil
        self.work = .closure
        self.limits = WorkerLimits()
        self.environment = WorkerEnvironment()
        self.memoryEnforcement = nil
    }

    /// A process that runs `job` in a child started by `startMethod`.
    ///
    /// Its output is read with ``output(as:)`` after ``join(timeout:)``.
    ///
    /// - Parameters:
    ///   - limits: what the child may use, as for a pool's workers (see
    ///     ``WorkerLimits``); `cpuSeconds` counts the child's whole life.
    ///     A child ended by a limit fails with the error that names it
    ///     (``ProcessError/memoryLimitExceeded(bytes:)``…). With the default
    ///     limits and environment nothing is set: the child inherits all.
    ///   - environment: the child's environment variables, working
    ///     directory, CPU affinity and niceness (see ``WorkerEnvironment``).
    /// - Throws: an encoding error if the job cannot be encoded;
    ///   ``PoolError/invalidArgument(_:)`` for limits out of range.
    public init<Job: ProcessJob>(job: Job, startMethod: StartMethod = .forkserver, name: String? = nil, daemon: Bool = false,
                                 limits: WorkerLimits = WorkerLimits(), environment: WorkerEnvironment = WorkerEnvironment()) throws {
        self.name = name ?? Self.defaultName()
        self.daemon = daemon
        self.startMethod = startMethod
        self.target = nil
        self.memoryEnforcement = try limits.resolved()
        try environment.validate()
        self.limits = limits
        self.environment = environment
        if startMethod == .fork { ValueCodec.prepare(Job.Output.self) }  // the forked child encodes it
        self.forkedJob = startMethod == .fork ? { job.runAndEncode() } : nil
        let attachments = DescriptorAttachments()
        attachments.forForkedChild = startMethod == .fork
        let payload: [UInt8]
        do {
            payload = try ValueCodec.encode(job, attachments: attachments)
        } catch {
            attachments.closeUntaken()
            throw error
        }
        self.work = .job(typeName: JobRunner.typeName(of: Job.self), payload: payload, attachments: attachments.descriptors, originals: attachments.originals)
    }

    /// For tests: a process asked to run whatever `typeName` and `payload` say.
    internal init(rawTypeName typeName: String, payload: [UInt8], startMethod: StartMethod) {
        self.name = Self.defaultName()
        self.daemon = false
        self.startMethod = startMethod
        self.target = nil
        self.work = .job(typeName: typeName, payload: payload, attachments: [], originals: [])
        self.limits = WorkerLimits()
        self.environment = WorkerEnvironment()
        self.memoryEnforcement = nil
    }

    deinit {
        if case let .running(handle, report) = state.withLock({ $0.phase }) {
            handle.release()
            Syscall.close(report)
        }
        state.withLock { $0.captures }?.close()
        if state.withLock({ !$0.attachmentsReleased }), case let .job(_, _, attachments, _) = work {
            attachments.forEach(Syscall.close)
        }
    }

    /// The work of the child. Runs the target by default; override it in a
    /// subclass (fork start method) to do the work there.
    open func run() throws {
        try target?()
    }

    // MARK: - Starting

    /// Starts the child.
    ///
    /// - Throws: ``ProcessError/alreadyStarted`` if called twice,
    ///   ``ProcessError/unsupportedStartMethod(_:)``, or a system error.
    public func start() throws {
        try state.withLock { state throws(ProcessError) in
            guard case .created = state.phase else { throw .alreadyStarted }
            state.phase = .starting
        }
        _ = ChildRegistry.shared.reapFinished()
        let started: (any ChildHandle, FileDescriptor)
        do {
            started = try launch()
        } catch {
            state.withLock { $0.phase = .created }
            throw error
        }
        state.withLock { state in
            state.pid = started.0.pid
            state.phase = .running(started.0, report: started.1)
            state.attachmentsReleased = true
        }
        if case let .job(_, _, attachments, _) = work {
            attachments.forEach(Syscall.close)
        }
        ChildRegistry.shared.add(self)
        logger?.debug("child process started", metadata: logMetadata)
    }

    /// The setup a job child runs before its job (nil: none), and the
    /// memory control group it joins (kept until the child is reaped).
    private func childSetup() throws -> WorkerSetup? {
        guard limits != WorkerLimits() || environment != WorkerEnvironment() else { return nil }
        var (setup, group) = try WorkerSetup.make(limits, environment, enforcement: memoryEnforcement)
        setup.cpuSeconds = limits.cpuSeconds
        state.withLock { $0.memoryGroup = group }
        return setup
    }

    /// Runs ``run()`` in the forked child; its error becomes the report.
    private func runTarget() -> Result<[UInt8], ProcessError> {
        do {
            try run()
            return .success([])
        } catch let error as ProcessError {
            return .failure(error)
        } catch {
            return .failure(.thrown(error))
        }
    }

    private func launch() throws -> (any ChildHandle, FileDescriptor) {
        let (here, there) = try Syscall.socketPair()
        defer { Syscall.close(there) }
        let setup: WorkerSetup?
        let captures: ChildCaptures?
        do {
            setup = try childSetup()
            captures = state.withLock(\.capturesOutput) ? try ChildCaptures.make(name: name) : nil
        } catch {
            Syscall.close(here)
            state.withLock { state in
                state.memoryGroup?.remove()
                state.memoryGroup = nil
            }
            throw error
        }
        do {
            let handle: any ChildHandle
            switch (startMethod, work) {
            case (.fork, .closure), (.fork, .job):
                // A job forked holds only what it was given, as by the other
                // start methods; a closure inherits everything, as in Python.
                var keep: [FileDescriptor]? = nil
                if case let .job(_, _, _, originals) = work { keep = originals + [there] + (captures?.descriptors ?? []) }
                handle = try Spawner.fork(name: name, report: (here, there), keeping: keep) { [self] in
                    if let captures, let error = ChildCaptures.redirect(captures.descriptors) { return .failure(error) }
                    let work = forkedJob ?? runTarget
                    return setup.map { $0.run(work) } ?? work()
                }
            case let (.spawn, .job(typeName, payload, attachments, _)):
                // The memory files follow the job's own descriptors.
                let request = BootRequest(kind: .job, typeName: typeName, name: name, parent: ProcessContext.current, descriptorCount: attachments.count,
                                          setup: setup, capturesOutput: captures != nil)
                handle = try Spawner.spawn(request, payload: payload, attachments: attachments + (captures?.descriptors ?? []), report: (here, there))
            case let (.forkserver, .job(typeName, payload, attachments, _)):
                let request = BootRequest(kind: .job, typeName: typeName, name: name, parent: ProcessContext.current, descriptorCount: attachments.count,
                                          setup: setup, capturesOutput: captures != nil)
                handle = try ForkServerClient.shared.start(request, payload: payload, attachments: attachments + (captures?.descriptors ?? []), report: there)
            case (.spawn, .closure), (.forkserver, .closure):
                throw ProcessError.unsupportedStartMethod(startMethod)
            }
            try Syscall.setNonBlocking(here, true)
            state.withLock { $0.captures = captures }
            return (handle, here)
        } catch {
            Syscall.close(here)
            captures?.close()
            state.withLock { state in
                state.memoryGroup?.remove()
                state.memoryGroup = nil
            }
            throw error
        }
    }

    // MARK: - Observing

    /// The child's process identifier; nil before ``start()``.
    public var pid: Int32? {
        state.withLock(\.pid)
    }

    /// The exit code once the child has ended, negative for the signal that
    /// killed it (as in Python); nil while it runs or before it starts.
    public var exitCode: Int32? {
        (try? poll()) ?? nil
    }

    /// Whether the child has started and not yet ended.
    public var isAlive: Bool {
        guard pid != nil else { return false }
        return exitCode == nil && !isClosed
    }

    private var isClosed: Bool {
        state.withLock { if case .closed = $0.phase { true } else { false } }
    }

    /// Why the child did not succeed, once it has ended: the error its work
    /// threw, the job type it could not resolve, or the signal that killed it.
    /// nil while it runs, and after a clean exit.
    public var failure: ProcessError? {
        guard exitCode != nil else { return nil }
        return state.withLock { state in
            if case let .failure(error) = state.result { return error }
            return nil
        }
    }

    /// The output of a job process, decoded as `type`.
    ///
    /// - Throws: ``ProcessError/stillRunning`` if it has not ended, or the
    ///   child's ``failure``.
    public func output<Output: Decodable>(as type: Output.Type = Output.self) throws -> Output {
        guard exitCode != nil else { throw ProcessError.stillRunning }
        let result = state.withLock(\.result)
        switch result {
        case let .success(bytes)?: return try ValueCodec.decode(Output.self, from: bytes)
        case let .failure(error)?: throw error.rethrown
        case nil: throw ProcessError.closed
        }
    }

    /// Makes whatever progress can be made without blocking; returns the exit
    /// code once the child has ended.
    private func poll() throws -> Int32? {
        let finished: Bool
        let code: Int32?
        (finished, code) = try state.withLock { state throws -> (Bool, Int32?) in
            switch state.phase {
            case .created, .starting: return (false, nil)
            case .closed: return (false, state.exitCode)
            case let .exited(code): return (false, code)
            case let .running(handle, report):
                if !state.reportBuffer.reachedEnd { try state.reportBuffer.drain(report) }
                guard let code = try handle.reap() else { return (false, nil) }
                // Everything the child wrote is in the socket now.
                if !state.reportBuffer.reachedEnd { try state.reportBuffer.drain(report) }
                handle.release()
                Syscall.close(report)
                state.phase = .exited(code)
                state.exitCode = code
                // Everything it wrote is in its memory files now.
                state.capturedOutput = state.captures?.read()
                state.captures?.close()
                state.captures = nil
                state.result = Self.outcome(code: code, report: &state.reportBuffer, work: crashReportWork, captured: state.capturedOutput)
                let oomKilled = state.memoryGroup?.oomKilled ?? false
                state.memoryGroup?.remove()
                state.memoryGroup = nil
                if let cause = limits.cause(ofExit: code, oomKilled: oomKilled, enforcement: memoryEnforcement, items: 1) {
                    state.result = .failure(cause)
                }
                return (true, code)
            }
        }
        if finished {
            ChildRegistry.shared.remove(self)
            if let logger, let code {
                var metadata = logMetadata
                metadata["process.status"] = "\(code)"
                if case let .failure(error)? = state.withLock({ $0.result }) { metadata["error"] = "\(error)" }
                if code == 0 {
                    logger.debug("child process exited", metadata: metadata)
                } else {
                    logger.info(code < 0 ? "child process killed by a signal" : "child process exited with a failure", metadata: metadata)
                }
            }
        }
        return code
    }

    /// What a crash report names as the work: the job's type, demangled; nil for a closure.
    private var crashReportWork: String? {
        if case let .job(typeName, _, _, _) = work { TypeNames.readable(typeName) } else { nil }
    }

    private static func outcome(code: Int32, report: inout FrameBuffer, work: String?, captured: CapturedOutput?) -> Result<[UInt8], ProcessError> {
        let reported: Result<[UInt8], ProcessError>? = {
            guard let frame = try? report.nextFrame() else { return nil }
            return try? ChildReport.decode(frame)
        }()
        if code < 0 {
            var crash = CrashReport(work: work, output: captured)
            if let captured { crash.take(captured.runtimeMessage(), signal: -code) }
            return .failure(.crashed(signal: -code, report: crash))
        }
        if let reported { return reported }
        return code == 0 ? .success([]) : .failure(.exited(status: code))
    }

    /// Duplicates of the descriptors to wait on (the exit and the report
    /// channel), made under the lock; the caller closes them. nil once the
    /// child is reaped.
    ///
    /// Not the originals: another thread (`activeChildren()`, another join)
    /// may reap the child and close them at any moment, and a number closed
    /// and reused by an unrelated descriptor would leave a poll waiting for
    /// ever (seen: about one suite run in five hung in a join). A duplicate
    /// stays valid, and readable once the child has ended.
    internal func duplicateWaitDescriptors() throws -> [FileDescriptor]? {
        try state.withLock { state throws -> [FileDescriptor]? in
            guard case let .running(handle, report) = state.phase else { return nil }
            let originals = state.reportBuffer.reachedEnd ? [handle.exitDescriptor] : [handle.exitDescriptor, report]
            var copies: [FileDescriptor] = []
            do {
                for fd in originals { copies.append(try Syscall.duplicate(fd)) }
            } catch {
                copies.forEach(Syscall.close)
                throw error
            }
            return copies
        }
    }

    // MARK: - Waiting

    /// Waits for the child to end; returns its exit code (negative for the
    /// signal that killed it).
    ///
    /// - Throws: ``ProcessError/notStarted`` if the process was never started.
    @available(*, noasync, message: "use the async join()")
    @discardableResult
    public func join() throws -> Int32 {
        try wait(until: nil)!
    }

    /// Waits for the child to end, at most `timeout`.
    ///
    /// - Returns: the exit code, or nil if the timeout passed first.
    /// - Throws: ``ProcessError/notStarted`` if the process was never started.
    @available(*, noasync, message: "use the async join()")
    @discardableResult
    public func join(timeout: Duration) throws -> Int32? {
        try wait(until: ContinuousClock.now + timeout)
    }

    private func wait(until deadline: ContinuousClock.Instant?) throws -> Int32? {
        while true {
            try checkStarted()
            if let code = try poll() { return code }
            guard let fds = try duplicateWaitDescriptors() else { continue }
            defer { fds.forEach(Syscall.close) }
            var milliseconds: Int32 = -1
            if let deadline {
                let remaining = deadline - ContinuousClock.now
                if remaining <= .zero { return nil }
                let (seconds, attoseconds) = remaining.components
                milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            }
            _ = try Syscall.poll(fds, timeout: milliseconds)
        }
    }

    /// Waits for the child to end without blocking a thread; returns its exit code.
    ///
    /// - Throws: ``ProcessError/notStarted``, or `CancellationError` if the
    ///   task is cancelled (the child goes on).
    @discardableResult
    public func join() async throws -> Int32 {
        while true {
            try checkStarted()
            if let code = try poll() { return code }
            guard let fds = try duplicateWaitDescriptors() else { continue }
            defer { fds.forEach(Syscall.close) }
            try await IOWatcher.shared.waitUntilReadable(fds)
        }
    }

    private func checkStarted() throws(ProcessError) {
        try state.withLock { state throws(ProcessError) in
            switch state.phase {
            case .created, .starting: throw .notStarted
            default: break
            }
        }
    }

    // MARK: - Ending

    /// Asks the child to end (`SIGTERM`).
    public func terminate() throws { try send(signal: SIGTERM) }

    /// Interrupts the child (`SIGINT`), as Ctrl-C would (Python 3.14's `interrupt()`).
    /// A child that ignores SIGINT — as children of a program started in a
    /// shell's background inherit — is not stopped by it; use ``terminate()``.
    public func interrupt() throws { try send(signal: SIGINT) }

    /// Ends the child at once (`SIGKILL`).
    public func kill() throws { try send(signal: SIGKILL) }

    /// Sends `signal` to the child; nothing happens once it has ended.
    public func send(signal: Int32) throws {
        try state.withLock { state throws in
            switch state.phase {
            case .created, .starting: throw ProcessError.notStarted
            case .exited, .closed: return
            case let .running(handle, _): try handle.send(signal: signal)
            }
        }
    }

    /// Releases the process's resources. The exit code stays readable.
    ///
    /// - Throws: ``ProcessError/stillRunning`` if the child still runs.
    public func close() throws {
        _ = try poll()
        try state.withLock { state throws(ProcessError) in
            switch state.phase {
            case .running: throw .stillRunning
            case .starting: throw .stillRunning
            default: state.phase = .closed
            }
        }
    }
}

extension ChildProcess {
    /// Runs `job` in a new child process and returns its output.
    ///
    /// - Parameters:
    ///   - timeout: the child is killed if it has not ended by then (nil: no
    ///     limit), and the call throws ``ProcessError/timedOut(seconds:)``.
    ///   - limits, environment: as for ``init(job:startMethod:name:daemon:limits:environment:)``.
    /// - Throws: the child's ``ProcessError`` (the job threw, the child crashed…).
    @available(*, noasync, message: "use the async execute(_:startMethod:timeout:limits:environment:)")
    public static func execute<Job: ProcessJob>(_ job: Job, startMethod: StartMethod = .forkserver, timeout: Duration? = nil,
                                                limits: WorkerLimits = WorkerLimits(), environment: WorkerEnvironment = WorkerEnvironment()) throws -> Job.Output {
        let process = try ChildProcess(job: job, startMethod: startMethod, limits: limits, environment: environment)
        try process.start()
        if let timeout {
            if try process.join(timeout: timeout) == nil {
                try process.kill()
                try process.join()
                throw ProcessError.timedOut(seconds: timeout.seconds)
            }
        } else {
            try process.join()
        }
        return try process.output(as: Job.Output.self)
    }

    /// Runs `job` in a new child process and returns its output, awaiting the
    /// child without blocking a thread.
    ///
    /// - Parameters:
    ///   - timeout: the child is killed if it has not ended by then (nil: no
    ///     limit), and the call throws ``ProcessError/timedOut(seconds:)``.
    ///   - limits, environment: as for ``init(job:startMethod:name:daemon:limits:environment:)``.
    /// - Throws: the child's ``ProcessError`` (the job threw, the child
    ///   crashed…); if the task is cancelled, the child is killed and the
    ///   call throws `CancellationError`.
    public static func execute<Job: ProcessJob>(_ job: Job, startMethod: StartMethod = .forkserver, timeout: Duration? = nil,
                                                limits: WorkerLimits = WorkerLimits(), environment: WorkerEnvironment = WorkerEnvironment()) async throws -> Job.Output {
        let process = try ChildProcess(job: job, startMethod: startMethod, limits: limits, environment: environment)
        try process.start()
        do {
            if let timeout {
                let ended = try await withThrowingTaskGroup(of: Bool.self) { group in
                    group.addTask { try await process.join(); return true }
                    group.addTask { try await Task.sleep(for: timeout); return false }
                    let first = try await group.next() ?? true
                    group.cancelAll()
                    return first
                }
                if !ended {
                    try process.kill()
                    try await process.join()
                    throw ProcessError.timedOut(seconds: timeout.seconds)
                }
            } else {
                try await process.join()
            }
        } catch let error as ProcessError {
            throw error
        } catch {
            // Cancelled: the child does not outlive the call.
            try? process.kill()
            // Reaped by a task of its own: this one is cancelled, its waits would end at once.
            _ = try? await Task { try await process.join() }.value
            throw error
        }
        return try process.output(as: Job.Output.self)
    }
}
