import CMultiprocessing
import Glibc
import SystemPackage

/// Starts children by each start method. All forks happen on the launcher thread.
internal enum Spawner {
    /// Runs this executable anew as a worker whose bootstrap channel is `channel`.
    static func spawnImage(channel: FileDescriptor, attachments: [FileDescriptor] = []) throws -> pid_t {
        let path = Syscall.executablePath()
        var environment: [String] = []
        if var entry = Optional(environ) {
            while let pointer = entry.pointee {
                let variable = String(cString: pointer)
                if !variable.hasPrefix(CMP_BOOTSTRAP_ENV + "=") { environment.append(variable) }
                entry += 1
            }
        }
        environment.append("\(CMP_BOOTSTRAP_ENV)=\(CMP_BOOTSTRAP_FD)")
        return try Launcher.shared.perform(forksSwift: false) {
            try Syscall.forkExec(path: path, arguments: [path], environment: environment, descriptors: [channel] + attachments)
        }
    }

    /// Forks a child that runs `body` and reports on `report`.
    static func fork(
        name: String,
        report: (here: FileDescriptor, there: FileDescriptor),
        keeping keep: [FileDescriptor]?,
        _ body: @escaping () -> Result<[UInt8], ProcessError>
    ) throws -> DirectChild {
        let parent = ProcessContext.current
        return try Launcher.shared.perform {
            let pid = try Syscall.fork()
            if pid == 0 {
                Syscall.close(report.here)
                if let keep, (try? Syscall.closeAll(except: keep)) == nil { cmp_exit_now(4) }
                ProcessContext.runChild(name: name, parent: parent, report: report.there.rawValue, body)
            }
            return DirectChild(pid: pid, pidfd: try Syscall.pidfdOpen(pid))
        }
    }

    /// Spawns a child that runs the job named `request.typeName`.
    static func spawn(_ request: BootRequest, payload: [UInt8], attachments: [FileDescriptor], report: (here: FileDescriptor, there: FileDescriptor)) throws -> DirectChild {
        let pid = try spawnImage(channel: report.there, attachments: attachments)
        let child = DirectChild(pid: pid, pidfd: try Syscall.pidfdOpen(pid))
        try BootRequest.send(request, payload: payload, to: report.here)
        return child
    }
}

/// The entry of a spawned image, called by the C constructor before `main`.
@_cdecl("swift_multiprocessing_bootstrap")
public func _multiprocessingBootstrap(_ channel: Int32) {
    let fd = FileDescriptor(rawValue: channel)
    guard let (request, payload) = try? BootRequest.receive(from: fd) else {
        // Not a request we can read: report it if we can, and leave.
        let error = ProcessError.corruptRequest("unreadable bootstrap request")
        try? Frame.write(ChildReport.encode(.failure(error)), to: fd)
        cmp_exit_now(1)
    }
    switch request.kind {
    case .forkServer:
        ForkServer.serve(control: fd)
    case .job:
        // Attached descriptors follow the channel: 4, 5, …
        let attachments = DescriptorAttachments((0..<request.descriptorCount).map { FileDescriptor(rawValue: channel + 1 + Int32($0)) })
        // Then the memory files its output goes to, if captured.
        let captures = request.capturesOutput ? (0..<2).map { FileDescriptor(rawValue: channel + 1 + Int32(request.descriptorCount + $0)) } : []
        ProcessContext.runChild(name: request.name, parent: request.parent, report: channel) {
            if !captures.isEmpty, let error = ChildCaptures.redirect(captures) { return .failure(error) }
            let run = { JobRunner.run(typeName: request.typeName, payload: payload, attachments: attachments) }
            return request.setup.map { $0.run(run) } ?? run()
        }
    }
}
