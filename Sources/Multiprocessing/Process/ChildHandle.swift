import Glibc
import SystemPackage

/// The parent's view of a running child, whatever started it.
internal protocol ChildHandle: Sendable {
    var pid: pid_t { get }
    /// Readable once the child has ended.
    var exitDescriptor: FileDescriptor { get }
    /// The exit code once the child has ended (reaping it), else nil. Never blocks.
    func reap() throws -> Int32?
    /// Sends `signal` unless the child is already reaped.
    func send(signal: Int32) throws
    /// Releases the handle's descriptors.
    func release()
}

/// A child of this process (fork and spawn), watched through a pidfd: the
/// pidfd can signal it without any risk of pid reuse, and reaps it.
internal struct DirectChild: ChildHandle {
    let pid: pid_t
    let pidfd: FileDescriptor

    var exitDescriptor: FileDescriptor { pidfd }

    func reap() throws -> Int32? {
        try Syscall.waitPidfd(pidfd, block: false)
    }

    func send(signal: Int32) throws {
        do {
            try Syscall.pidfdSendSignal(pidfd, signal)
        } catch .noSuchProcess {
            // Already ended; reaping will tell.
        }
    }

    func release() { Syscall.close(pidfd) }
}

/// A child forked by the forkserver. The server writes its exit code on
/// `status` (one frame) when it ends, and closes it.
internal final class ForkServerChild: ChildHandle {
    let pid: pid_t
    let status: FileDescriptor
    // The frame buffer is only touched under the owning process's lock.
    private let buffer = Locked(FrameBuffer())

    init(pid: pid_t, status: FileDescriptor) {
        self.pid = pid
        self.status = status
    }

    var exitDescriptor: FileDescriptor { status }

    func reap() throws -> Int32? {
        try buffer.withLock { buffer in
            try buffer.drain(status)
            if let frame = try buffer.nextFrame() {
                guard frame.count == 4 else { throw WireError.corrupt("exit status of \(frame.count) bytes") }
                return frame.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
            }
            if buffer.reachedEnd {
                // The server died before the child: the child died with it.
                return -SIGKILL
            }
            return nil
        }
    }

    func send(signal: Int32) throws {
        do {
            try Syscall.kill(pid, signal)
        } catch .noSuchProcess {
        }
    }

    func release() { Syscall.close(status) }
}
