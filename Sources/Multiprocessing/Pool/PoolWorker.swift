import Glibc
import SystemPackage

/// The pool's side of one worker process. Touched only with the engine's
/// lock held, except its connection, which only the dispatcher thread uses.
internal final class PoolWorker: @unchecked Sendable {  // fields are guarded by the engine's lock
    enum Kind: Hashable {
        /// Runs work named by type, for every call; lives until the pool closes.
        case jobs
        /// Forked for the closure call with this id; leaves when it is done.
        case closure(callID: Int)
    }

    struct Assignment {
        let call: PoolCall
        let unit: Int
        let id: UInt64
        /// Items in the unit (its time limit is this many times the call's).
        let items: Int
    }

    let kind: Kind
    let process: ChildProcess
    /// The pool's end of the worker's connection.
    let connection: Connection
    /// A duplicate of the descriptor that becomes readable when the worker ends.
    let exitDescriptor: FileDescriptor
    /// How many bytes the pipe to the worker holds: a request sent ahead of
    /// the worker's answers must fit, so that sending it never blocks.
    let requestCapacity: Int
    /// What the connection's read end is, to catch a descriptor closed by
    /// someone else and reused (debug builds check it before each read).
    let readIdentity: (device: UInt, inode: UInt)?

    /// When it was started.
    let launchedAt = ContinuousClock.now
    /// Units sent and not yet answered, in the order the worker runs them.
    var outstanding: [Assignment] = []
    /// When the first outstanding unit started.
    var startedAt: ContinuousClock.Instant?
    var unitsDone = 0
    /// Asked to leave (or killed): it gets no more work.
    var retiring = false
    /// Why it was killed: the first outstanding unit fails with this.
    var killedFor: ProcessError?
    /// The connection reached its end; it is not polled any more.
    var connectionEnded = false
    /// It said it is ready: its setup and initializer are done.
    var ready = false
    /// Its resident memory passed ``WorkerLimits/recycleAbove``: it leaves
    /// once its outstanding units are done, and gets no more.
    var overMemory = false
    /// Its memory control group, if its memory is limited by one.
    let memoryGroup: MemoryGroup?
    /// Its forwarded output streams (only the dispatcher touches them).
    let relays: [OutputRelay]
    /// The one of them that is its standard error, where a trap's message is.
    let errorRelay: OutputRelay?
    /// The memory files its captured streams go to (only the dispatcher
    /// touches them; closed when it has ended).
    let captures: OutputCaptures

    init(kind: Kind, process: ChildProcess, connection: Connection, exitDescriptor: FileDescriptor, memoryGroup: MemoryGroup?,
         relays: [OutputRelay] = [], errorRelay: OutputRelay? = nil, captures: OutputCaptures = OutputCaptures()) {
        self.kind = kind
        self.captures = captures
        self.relays = relays
        self.errorRelay = errorRelay
        self.memoryGroup = memoryGroup
        self.process = process
        self.connection = connection
        self.exitDescriptor = exitDescriptor
        self.requestCapacity = (try? Syscall.pipeCapacity(connection.writeDescriptor)) ?? 0
        self.readIdentity = Syscall.identity(of: connection.fileDescriptor)
    }

    /// Asked to stop (SIGTERM), it is killed at this instant if still there.
    var stopDeadline: ContinuousClock.Instant?

    /// Asks the worker to stop (SIGTERM), to be killed at `deadline`; its
    /// first outstanding unit fails with `reason` (the first one given).
    func askToStop(for reason: ProcessError, killingAt deadline: ContinuousClock.Instant) {
        if killedFor == nil { killedFor = reason }
        retiring = true
        stopDeadline = deadline
        try? process.terminate()
    }

    /// Kills the worker; its first outstanding unit fails with `reason`
    /// (the first one given), or with what its exit status tells.
    func kill(for reason: ProcessError?) {
        if killedFor == nil { killedFor = reason }
        retiring = true
        try? process.kill()
    }

    /// The worker's ends of the pipes of its forwarded output, or of the
    /// memory files of its captured output.
    struct OutputEnds {
        var standardOutput: PassedDescriptor?
        var standardError: PassedDescriptor?
    }

    /// The pool's own descriptors of a worker's captured streams.
    struct OutputCaptures {
        var standardOutput: FileDescriptor?
        var standardError: FileDescriptor?

        var isEmpty: Bool { standardOutput == nil && standardError == nil }

        /// What the worker wrote since its last unit began.
        func read() -> CapturedOutput { CapturedOutput.read(standardOutput: standardOutput, standardError: standardError) }

        func close() {
            standardOutput.map(Syscall.close)
            standardError.map(Syscall.close)
        }
    }

    /// Starts a worker of `kind` named `name` in `memoryGroup` (removed if
    /// it cannot start), its output as `output` says: `launch` starts the
    /// child that serves the connection's other end and takes the output
    /// pipes' ends; returns the worker once started.
    static func start(kind: Kind, name: String, memoryGroup: MemoryGroup?, output: WorkerOutput,
                      launch: (Connection, OutputEnds) throws -> ChildProcess) throws -> PoolWorker {
        var relays: [OutputRelay] = []
        var errorRelay: OutputRelay?
        var ends = OutputEnds()
        var captures = OutputCaptures()
        // The worker's ends, closed here once it has them (or could not start).
        var theirs: [FileDescriptor] = []
        defer { theirs.forEach(Syscall.close) }
        let (here, there): (Connection, Connection)
        do {
            for (mode, destination) in [(output.standardOutput, STDOUT_FILENO), (output.standardError, STDERR_FILENO)] where mode != .inherited {
                if mode == .captured {
                    // One open file, shared: the worker writes it, the pool reads it.
                    let file = try Syscall.memfdCreate(destination == STDOUT_FILENO ? "\(name)-stdout" : "\(name)-stderr")
                    if destination == STDOUT_FILENO {
                        captures.standardOutput = file
                        ends.standardOutput = PassedDescriptor(file)
                    } else {
                        captures.standardError = file
                        ends.standardError = PassedDescriptor(file)
                    }
                    continue
                }
                let pipe = try Syscall.pipe()
                theirs.append(pipe.writeEnd)
                let relay = OutputRelay(source: pipe.readEnd, destination: destination, prefix: mode == .prefixed ? name : nil)
                relays.append(relay)
                if destination == STDOUT_FILENO { ends.standardOutput = PassedDescriptor(pipe.writeEnd) } else {
                    ends.standardError = PassedDescriptor(pipe.writeEnd)
                    errorRelay = relay
                }
            }
            (here, there) = try Connection.pipe(duplex: true)
        } catch {
            relays.forEach { $0.close() }
            captures.close()
            memoryGroup?.remove()
            throw error
        }
        let process: ChildProcess
        do {
            process = try launch(there, ends)
        } catch {
            here.close()
            there.close()
            relays.forEach { $0.close() }
            captures.close()
            memoryGroup?.remove()
            throw error
        }
        there.close()
        let exit: FileDescriptor
        do {
            if let descriptors = try process.duplicateWaitDescriptors() {
                exit = descriptors[0]
                descriptors.dropFirst().forEach(Syscall.close)
            } else {
                // Already reaped (it ended at once, and another thread reaped
                // it): a pipe at its end stands in, readable at once.
                let pipe = try Syscall.pipe()
                Syscall.close(pipe.writeEnd)
                exit = pipe.readEnd
            }
        } catch {
            try? process.kill()
            _ = try? process.join()
            here.close()
            relays.forEach { $0.close() }
            captures.close()
            memoryGroup?.remove()
            throw error
        }
        return PoolWorker(kind: kind, process: process, connection: here, exitDescriptor: exit, memoryGroup: memoryGroup,
                          relays: relays, errorRelay: errorRelay, captures: captures)
    }
}
