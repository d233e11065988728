import CMultiprocessing
import Glibc
import SystemPackage

// The one place where raw system calls are made. Each is wrapped once: `EINTR`
// is retried here (never at a call site) and `errno` becomes a typed `Errno`.

/// Runs `body` until it does not fail with `EINTR`; turns `-1` + `errno` into `Errno`.
@inline(__always)
internal func valueOrErrno<I: FixedWidthInteger>(
    retryOnInterrupt: Bool = true,
    _ body: () -> I
) throws(Errno) -> I {
    while true {
        let result = body()
        if result != -1 { return result }
        let error = Errno(rawValue: errno)
        if retryOnInterrupt && error == .interrupted { continue }
        throw error
    }
}

internal enum Syscall {
    /// This process's id, without a system call (kept right across `fork`).
    static var currentProcessID: pid_t { cmp_current_pid() }

    /// `socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC)`: both ends close on exec.
    static func socketPair() throws(Errno) -> (FileDescriptor, FileDescriptor) {
        var fds: (Int32, Int32) = (-1, -1)
        _ = try withUnsafeMutablePointer(to: &fds) { pointer throws(Errno) in
            try pointer.withMemoryRebound(to: Int32.self, capacity: 2) { fdPointer throws(Errno) in
                try valueOrErrno {
                    socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, fdPointer)
                }
            }
        }
        return (FileDescriptor(rawValue: fds.0), FileDescriptor(rawValue: fds.1))
    }

    /// `close(2)`. Not retried on `EINTR`: on Linux the descriptor is released
    /// even when `close` is interrupted, so a retry could close another one.
    static func close(_ fd: FileDescriptor) {
        _ = Glibc.close(fd.rawValue)
    }

    /// `fcntl(F_SETFL, O_NONBLOCK)` on or off.
    static func setNonBlocking(_ fd: FileDescriptor, _ on: Bool) throws(Errno) {
        let flags = try valueOrErrno { fcntl(fd.rawValue, F_GETFL) }
        let wanted = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        if wanted != flags { _ = try valueOrErrno { fcntl(fd.rawValue, F_SETFL, wanted) } }
    }

    /// `fcntl(F_DUPFD_CLOEXEC)`.
    static func duplicate(_ fd: FileDescriptor) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try valueOrErrno { fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 0) })
    }

    /// `send(MSG_NOSIGNAL)`: a closed peer gives `EPIPE`, never `SIGPIPE`.
    static func send(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer) throws(Errno) -> Int {
        try valueOrErrno { Glibc.send(fd.rawValue, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL)) }
    }

    /// `write(2)`. On a pipe whose reader is gone this fails with `EPIPE`
    /// once `SIGPIPE` is ignored (``ignoreBrokenPipeSignal()``).
    static func write(_ fd: FileDescriptor, _ buffer: UnsafeRawBufferPointer) throws(Errno) -> Int {
        try valueOrErrno { Glibc.write(fd.rawValue, buffer.baseAddress, buffer.count) }
    }

    /// Ignores `SIGPIPE` if nobody else decided what it does.
    static func ignoreBrokenPipeSignal() {
        cmp_ignore_sigpipe_if_default()
    }

    /// Lets a fault (trap, segfault…) end this process at once with its
    /// signal, skipping the Swift runtime's backtracer: it takes seconds per
    /// crash, and was seen to hang for ever when its target was killed.
    static func defaultFaultSignals() {
        cmp_default_fault_signals()
    }

    /// Has malloc keep up to `bytes` of freed memory for reuse rather than
    /// give it back at once, and serve requests below half of it from that
    /// heap (`mallopt`'s `M_TRIM_THRESHOLD`, `M_MMAP_THRESHOLD`): memory given
    /// back is faulted in page by page when taken again.
    static func keepFreedMemory(upTo bytes: Int) {
        cmp_keep_freed_memory(Int32(clamping: bytes))
    }

    /// `dup2(fd, target)`, then closes `fd`.
    static func redirect(_ fd: FileDescriptor, onto target: Int32) throws(Errno) {
        guard fd.rawValue != target else { return }
        _ = try valueOrErrno { dup2(fd.rawValue, target) }
        close(fd)
    }

    /// Makes `fd` standard output: what C's `stdout` holds is written
    /// first, and from here on it writes each line as it ends (a pipe is
    /// otherwise written only when its buffer fills).
    /// Writes out what stdio holds for standard output and error.
    static func flushStandardStreams() {
        cmp_flush_stdio()
    }

    static func redirectStandardOutput(to fd: FileDescriptor) throws(Errno) {
        cmp_flush_stdio()
        try redirect(fd, onto: STDOUT_FILENO)
        cmp_line_buffer_stdout()
    }

    /// The width in columns of the terminal `fd` is; nil if it is none (or says 0).
    static func terminalColumns(_ fd: Int32) -> Int? {
        let columns = cmp_terminal_columns(fd)
        return columns > 0 ? Int(columns) : nil
    }

    /// `pipe2(O_CLOEXEC)`.
    static func pipe() throws(Errno) -> (readEnd: FileDescriptor, writeEnd: FileDescriptor) {
        var fds: (Int32, Int32) = (-1, -1)
        _ = try withUnsafeMutablePointer(to: &fds) { pointer throws(Errno) in
            try pointer.withMemoryRebound(to: Int32.self, capacity: 2) { fdPointer throws(Errno) in
                try valueOrErrno { cmp_pipe_cloexec(fdPointer) }
            }
        }
        return (FileDescriptor(rawValue: fds.0), FileDescriptor(rawValue: fds.1))
    }

    /// What `fd` refers to (device and inode, from `fstat`); nil if it is not open.
    static func identity(of fd: FileDescriptor) -> (device: UInt, inode: UInt)? {
        var info = stat()
        guard fstat(fd.rawValue, &info) == 0 else { return nil }
        return (UInt(info.st_dev), UInt(info.st_ino))
    }

    /// How many bytes the pipe holds (`fcntl(F_GETPIPE_SZ)`).
    static func pipeCapacity(_ fd: FileDescriptor) throws(Errno) -> Int {
        Int(try valueOrErrno { cmp_pipe_capacity(fd.rawValue) })
    }

    /// `read(2)`.
    static func read(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        try valueOrErrno { Glibc.read(fd.rawValue, buffer.baseAddress, buffer.count) }
    }

    /// `poll(2)` on `fds` for readability (or `events`). `timeout` in
    /// milliseconds, -1 for none. Returns the `revents` of each. A thread
    /// blocked here is not stopped by a stop-the-world fork (`cmp_safe_poll`).
    static func poll(_ fds: [FileDescriptor], events: Int16 = Int16(POLLIN), timeout: Int32) throws(Errno) -> [Int16] {
        var pollfds = fds.map { pollfd(fd: $0.rawValue, events: events, revents: 0) }
        _ = try pollfds.withUnsafeMutableBufferPointer { buffer throws(Errno) in
            try valueOrErrno { cmp_safe_poll(buffer.baseAddress, UInt(buffer.count), timeout) }
        }
        return pollfds.map { $0.revents }
    }

    /// `poll(2)` over a set the caller keeps and reuses: its `revents` are
    /// filled in; returns how many descriptors have events.
    @discardableResult
    static func poll(_ pollfds: inout [pollfd], timeout: Int32) throws(Errno) -> Int {
        try pollfds.withUnsafeMutableBufferPointer { buffer throws(Errno) in
            Int(try valueOrErrno { cmp_safe_poll(buffer.baseAddress, UInt(buffer.count), timeout) })
        }
    }

    /// `kill(2)`.
    static func kill(_ pid: pid_t, _ signal: Int32) throws(Errno) {
        _ = try valueOrErrno { Glibc.kill(pid, signal) }
    }

    /// `pidfd_open(2)`.
    static func pidfdOpen(_ pid: pid_t) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try valueOrErrno { cmp_pidfd_open(pid) })
    }

    /// `pidfd_send_signal(2)`.
    static func pidfdSendSignal(_ pidfd: FileDescriptor, _ signal: Int32) throws(Errno) {
        _ = try valueOrErrno { cmp_pidfd_send_signal(pidfd.rawValue, signal) }
    }

    /// `waitid(P_PIDFD)`: the exit code (negative signal number when killed)
    /// once the process has ended, or nil if `block` is false and it runs on.
    static func waitPidfd(_ pidfd: FileDescriptor, block: Bool) throws(Errno) -> Int32? {
        var code: Int32 = 0
        let reaped = try valueOrErrno { cmp_waitid_pidfd(pidfd.rawValue, block ? 0 : 1, &code) }
        return reaped == 1 ? code : nil
    }

    /// `waitpid(-1, WNOHANG)`: a reaped child's pid and exit code, or nil.
    static func reapAnyChild() throws(Errno) -> (pid: pid_t, exitCode: Int32)? {
        var code: Int32 = 0
        let pid = try valueOrErrno { cmp_reap_any(&code) }
        return pid > 0 ? (pid, code) : nil
    }

    /// `fork(2)` with stdio flushed and the child bound to its parent's life.
    static func fork() throws(Errno) -> pid_t {
        try ForkGuard.fork { () throws(Errno) in try quiescedFork(deathSignal: SIGKILL) }
    }

    /// `fork(2)` with every other thread parked outside the Swift runtime
    /// (see ``ForkSafety``); `deathSignal` (0: none) is the child's
    /// `PR_SET_PDEATHSIG`. The parent records how the stop went.
    static func quiescedFork(deathSignal: Int32) throws(Errno) -> pid_t {
        guard ForkSafety.stopsTheWorld else {
            let pid = try valueOrErrno { cmp_fork(deathSignal) }
            if pid != 0 { ForkSafety.recordPlainFork() }
            return pid
        }
        var report = cmp_quiesce_report_t()
        let pid = try valueOrErrno {
            cmp_fork_quiesced(deathSignal, ForkSafety.budgetNanoseconds, ForkSafety.watchdogNanoseconds, &report)
        }
        if pid != 0 { ForkSafety.record(report) }
        return pid
    }

    /// Forks and executes `path`; `descriptors` become 3, 4, … in the child.
    static func forkExec(path: String, arguments: [String], environment: [String], descriptors: [FileDescriptor]) throws(Errno) -> pid_t {
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let raw = descriptors.map { $0.rawValue }
        return try valueOrErrno {
            raw.withUnsafeBufferPointer { fds in
                cmp_fork_exec(path, argv, envp, fds.baseAddress, Int32(fds.count), SIGKILL)
            }
        }
    }

    /// Sends bytes and descriptors (`SCM_RIGHTS`) over a Unix socket.
    static func sendWithDescriptors(_ socket: FileDescriptor, _ bytes: [UInt8], _ fds: [FileDescriptor]) throws(Errno) -> Int {
        let raw = fds.map { $0.rawValue }
        return try valueOrErrno {
            bytes.withUnsafeBytes { buffer in
                raw.withUnsafeBufferPointer { fdBuffer in
                    cmp_send_with_fds(socket.rawValue, buffer.baseAddress, buffer.count, fdBuffer.baseAddress, Int32(fdBuffer.count))
                }
            }
        }
    }

    /// Receives bytes and descriptors (`SCM_RIGHTS`, made close-on-exec).
    static func receiveWithDescriptors(_ socket: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, maxDescriptors: Int) throws(Errno) -> (count: Int, descriptors: [FileDescriptor]) {
        var fds = [Int32](repeating: -1, count: maxDescriptors)
        var received: Int32 = 0
        let count = try valueOrErrno {
            fds.withUnsafeMutableBufferPointer { fdBuffer in
                cmp_recv_with_fds(socket.rawValue, buffer.baseAddress, buffer.count, fdBuffer.baseAddress, Int32(maxDescriptors), &received)
            }
        }
        return (count, fds.prefix(Int(received)).map { FileDescriptor(rawValue: $0) })
    }

    /// Keeps only stdio and `descriptors` (moved to 3, 4, …); closes every other one.
    static func isolateDescriptors(keeping descriptors: [FileDescriptor]) throws(Errno) {
        let raw = descriptors.map { $0.rawValue }
        _ = try valueOrErrno { raw.withUnsafeBufferPointer { cmp_isolate_descriptors($0.baseAddress, Int32($0.count)) } }
    }

    /// Closes every descriptor from 3 on except `descriptors`.
    static func closeAll(except descriptors: [FileDescriptor]) throws(Errno) {
        let raw = descriptors.map { $0.rawValue }
        _ = try valueOrErrno { raw.withUnsafeBufferPointer { cmp_close_all_except($0.baseAddress, Int32($0.count)) } }
    }

    /// `readlink("/proc/self/exe")`.
    static func executablePath() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard count > 0 else { return "/proc/self/exe" }
        return String(decoding: buffer[..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension Syscall {
    /// A listening Unix socket (`@name`: the abstract namespace).
    static func listenUnix(_ path: String, backlog: Int32) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try valueOrErrno { cmp_listen_unix(path, backlog) })
    }

    /// A listening TCP socket; returns it and the port it is bound to.
    static func listenTCP(host: String, port: UInt16, backlog: Int32) throws(Errno) -> (FileDescriptor, UInt16) {
        var bound: Int32 = Int32(port)
        let fd = try valueOrErrno { cmp_listen_tcp(host, Int32(port), backlog, &bound) }
        return (FileDescriptor(rawValue: fd), UInt16(truncatingIfNeeded: bound))
    }

    /// A Unix socket connected to `path`.
    static func connectUnix(_ path: String) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try valueOrErrno { cmp_connect_unix(path) })
    }

    /// A TCP socket connected to `host`:`port`.
    static func connectTCP(host: String, port: UInt16) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try valueOrErrno { cmp_connect_tcp(host, Int32(port)) })
    }

    /// `accept4(SOCK_CLOEXEC)`.
    static func accept(_ listener: FileDescriptor) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try valueOrErrno { cmp_accept(listener.rawValue) })
    }
}

extension Syscall {
    /// `memfd_create(MFD_CLOEXEC)`.
    static func memfdCreate(_ name: String) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try valueOrErrno { cmp_memfd_create(name) })
    }

    /// `shm_open(O_RDWR | O_CLOEXEC [| O_CREAT | O_EXCL])`.
    static func sharedMemoryOpen(_ path: String, create: Bool) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try valueOrErrno { cmp_shm_open(path, create ? 1 : 0) })
    }

    /// `ftruncate(2)`.
    static func resize(_ fd: FileDescriptor, to size: Int) throws(Errno) {
        _ = try valueOrErrno { ftruncate(fd.rawValue, off_t(size)) }
    }

    /// `fstat(2)`'s size.
    static func descriptorSize(_ fd: FileDescriptor) throws(Errno) -> Int {
        Int(try valueOrErrno { cmp_descriptor_size(fd.rawValue) })
    }

    /// Moves `fd`'s offset back to its start (`lseek(fd, 0, SEEK_SET)`).
    static func rewind(_ fd: FileDescriptor) throws(Errno) {
        do { _ = try fd.seek(offset: 0, from: .start) } catch let error as Errno { throw error } catch { throw .ioError }
    }

    /// `pread`: reads into `buffer` from `offset`, leaving `fd`'s own offset
    /// where it is; EINTR retried. Returns how many bytes were read.
    static func read(_ fd: FileDescriptor, at offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        do { return try fd.read(fromAbsoluteOffset: Int64(offset), into: buffer) } catch let error as Errno { throw error } catch { throw .ioError }
    }

    /// `mmap(MAP_SHARED, PROT_READ | PROT_WRITE)` of the whole object.
    static func mapShared(_ fd: FileDescriptor, size: Int) throws(Errno) -> UnsafeMutableRawPointer {
        guard let address = cmp_map_shared(fd.rawValue, size) else { throw Errno(rawValue: errno) }
        return address
    }
}
