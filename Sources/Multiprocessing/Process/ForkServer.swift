import CMultiprocessing
import Glibc
import SystemPackage

/// The forkserver: a clean, single-threaded process spawned once, which
/// forks a child for every job it is sent.
///
/// Requests arrive on the control socket: one byte carrying two descriptors
/// (`SCM_RIGHTS`: the child's report channel and the exit-status channel),
/// then a ``BootRequest`` and its payload. The server answers with the
/// child's pid, and later writes its exit code on the status channel.
internal enum ForkServer {
    /// The server's loop; it ends when the control socket closes.
    static func serve(control: FileDescriptor) -> Never {
        var children: [(pidfd: FileDescriptor, status: FileDescriptor)] = []
        var warmed = false
        while true {
            let fds = [control] + children.map { $0.pidfd }
            guard let events = try? Syscall.poll(fds, timeout: -1) else { cmp_exit_now(3) }
            for index in children.indices.reversed() where events[index + 1] != 0 {
                guard let code = try? Syscall.waitPidfd(children[index].pidfd, block: false) else { continue }
                let bytes = withUnsafeBytes(of: code.littleEndian) { Array($0) }
                try? Frame.write(bytes, to: children[index].status)
                Syscall.close(children[index].status)
                Syscall.close(children[index].pidfd)
                children.remove(at: index)
            }
            if events[0] != 0 {
                do {
                    children.append(try serveRequest(control))
                } catch {
                    // The client is gone (or spoke nonsense): nobody is left to serve.
                    cmp_exit_now(0)
                }
                if !warmed {
                    warmChildPaths()
                    warmed = true
                }
            }
        }
    }

    /// Runs once, after the first child is forked (so that it does not wait),
    /// the library's own steps of a child's life: a job found by name,
    /// decoded, run and its output encoded; a report; a pool worker's
    /// messages. A child forked from a freshly started image otherwise makes
    /// the Swift runtime's metadata and conformance records for each of them
    /// itself (a conformance lookup scans every record of every image);
    /// every later child finds them made.
    private static func warmChildPaths() {
        let payload = (try? ValueCodec.encode(ForkServerWarmUpJob())) ?? []
        _ = ChildReport.encode(JobRunner.run(typeName: JobRunner.typeName(of: ForkServerWarmUpJob.self), payload: payload))
        _ = ChildReport.encode(.failure(.cancelled))
        ForkWarmUp.poolMessages()
    }

    private static func serveRequest(_ control: FileDescriptor) throws -> (pidfd: FileDescriptor, status: FileDescriptor) {
        var marker: UInt8 = 0
        let (count, received) = try withUnsafeMutableBytes(of: &marker) { buffer in
            try Syscall.receiveWithDescriptors(control, into: buffer, maxDescriptors: 64)
        }
        guard count == 1, received.count >= 2 else {
            received.forEach(Syscall.close)
            throw WireError.endOfFile
        }
        let (report, status) = (received[0], received[1])
        let attached = Array(received.dropFirst(2))
        defer { attached.forEach(Syscall.close) }
        let (request, payload) = try BootRequest.receive(from: control)
        let pid = try Syscall.fork()
        if pid == 0 {
            // The child keeps its report channel as descriptor 3, what is
            // attached to its job as 4, 5, …, and nothing else.
            if (try? Syscall.isolateDescriptors(keeping: [report] + attached)) == nil { cmp_exit_now(4) }
            // The job's descriptors, then the memory files its output goes to, if captured.
            let all = attached.indices.map { FileDescriptor(rawValue: 4 + Int32($0)) }
            let attachments = DescriptorAttachments(Array(all.prefix(request.descriptorCount)))
            let captures = request.capturesOutput ? Array(all.dropFirst(request.descriptorCount)) : []
            ProcessContext.runChild(name: request.name, parent: request.parent, report: 3) {
                if request.capturesOutput, let error = ChildCaptures.redirect(captures) { return .failure(error) }
                let run = { JobRunner.run(typeName: request.typeName, payload: payload, attachments: attachments) }
                return request.setup.map { $0.run(run) } ?? run()
            }
        }
        Syscall.close(report)
        let pidfd = try Syscall.pidfdOpen(pid)
        let reply = withUnsafeBytes(of: Int32(pid).littleEndian) { Array($0) }
        try Frame.write(reply, to: control)
        return (pidfd, status)
    }
}

/// The job a forkserver runs on itself to warm its children's paths.
internal struct ForkServerWarmUpJob: ProcessJob {
    func run() -> Int { 0 }
}

/// This process's connection to its forkserver, started on first use and
/// again if it dies.
internal final class ForkServerClient: Sendable {
    static let shared = ForkServerClient()

    struct Server {
        var ownerPID: pid_t
        var pid: pid_t
        var pidfd: FileDescriptor
        var control: FileDescriptor
    }

    // Requests are serialised: each one is a short exchange on `control`.
    private let server = Locked<Server?>(nil)

    private init() {}

    /// Starts this process's forkserver now if none runs, so that its image
    /// loads (milliseconds) while the caller prepares what it will ask of it:
    /// a pool calls this first. Errors are left for ``start(_:payload:attachments:report:)``.
    func prepare() {
        server.withLock { server in _ = try? Self.ensureRunning(&server) }
    }

    /// A server of this process that has not ended: the one there, or a new one.
    private static func ensureRunning(_ server: inout Server?) throws -> Server {
        if let stale = server, stale.ownerPID != getpid() {
            discard(stale)
            server = try launch()
        } else if server == nil {
            server = try launch()
        } else if try Syscall.waitPidfd(server!.pidfd, block: false) != nil {
            discard(server!)
            server = try launch()
        }
        return server!
    }

    /// Asks the forkserver for a child running the job; returns its handle.
    func start(_ request: BootRequest, payload: [UInt8], attachments: [FileDescriptor], report: FileDescriptor) throws -> ForkServerChild {
        try server.withLock { server in
            var lastError: any Error = ProcessError.forkServerDied
            for _ in 0..<2 {
                _ = try Self.ensureRunning(&server)
                do {
                    return try Self.request(server!, request, payload: payload, descriptors: [report] + attachments)
                } catch {
                    // The server died under us: start a new one and try once more.
                    lastError = error
                    Self.discard(server!)
                    server = nil
                }
            }
            throw lastError
        }
    }

    private static func request(_ server: Server, _ request: BootRequest, payload: [UInt8], descriptors: [FileDescriptor]) throws -> ForkServerChild {
        let (statusHere, statusThere) = try Syscall.socketPair()
        defer { Syscall.close(statusThere) }
        do {
            _ = try Syscall.sendWithDescriptors(server.control, [1], [descriptors[0], statusThere] + descriptors.dropFirst())
            try BootRequest.send(request, payload: payload, to: server.control)
            let reply = try Frame.read(from: server.control)
            guard reply.count == 4 else { throw WireError.corrupt("forkserver reply of \(reply.count) bytes") }
            let pid = reply.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
            try Syscall.setNonBlocking(statusHere, true)
            return ForkServerChild(pid: pid, status: statusHere)
        } catch {
            Syscall.close(statusHere)
            throw error
        }
    }

    /// In a forked child: forgets the parent's server without touching its
    /// descriptors, and with a fresh lock (a parent thread may have held it
    /// mid-request; it is not taken across forks, since a request may wait
    /// for the launcher thread that forks).
    func resetInChild() {
        server.reinitializeInChild(nil)
    }

    /// Stops this process's forkserver, if it has one, and reaps it: closing
    /// the control socket ends its loop.
    func shutDown() {
        server.withLock { server in
            guard let running = server, running.ownerPID == getpid() else { return }
            Syscall.close(running.control)
            _ = try? Syscall.waitPidfd(running.pidfd, block: true)
            Syscall.close(running.pidfd)
            server = nil
        }
    }

    private static func launch() throws -> Server {
        ChildRegistry.shared.installExitHandler()
        let (here, there) = try Syscall.socketPair()
        defer { Syscall.close(there) }
        let pid: pid_t
        do {
            pid = try Spawner.spawnImage(channel: there)
        } catch {
            Syscall.close(here)
            throw error
        }
        let pidfd = try Syscall.pidfdOpen(pid)
        let request = BootRequest(kind: .forkServer, typeName: "", name: "ForkServer", parent: ProcessContext.current)
        try BootRequest.send(request, payload: [], to: here)
        return Server(ownerPID: getpid(), pid: pid, pidfd: pidfd, control: here)
    }

    /// Ends a server that failed and reaps it. A forked child's inherited copy
    /// is left alone: its descriptors may already be closed and their numbers
    /// reused.
    private static func discard(_ server: Server) {
        guard server.ownerPID == getpid() else { return }
        Syscall.close(server.control)
        try? Syscall.pidfdSendSignal(server.pidfd, SIGKILL)
        _ = try? Syscall.waitPidfd(server.pidfd, block: true)
        Syscall.close(server.pidfd)
    }
}
