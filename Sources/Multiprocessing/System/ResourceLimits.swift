import CMultiprocessing
import Glibc
import SystemPackage

// Resource limits and the files of control groups: the system calls the
// worker limits (``WorkerLimits``) are made of.

extension Syscall {
    /// `setrlimit(2)`; nil means no limit (`RLIM_INFINITY`).
    static func setResourceLimit(_ resource: __rlimit_resource, soft: Int?, hard: Int?) throws(Errno) {
        let infinity = UInt64.max  // RLIM_INFINITY
        _ = try valueOrErrno {
            cmp_set_resource_limit(Int32(resource.rawValue), soft.map { UInt64($0) } ?? infinity, hard.map { UInt64($0) } ?? infinity)
        }
    }

    /// The hard limit of `resource` (`getrlimit(2)`); nil for none.
    static func hardResourceLimit(_ resource: __rlimit_resource) -> Int? {
        let hard = cmp_hard_resource_limit(Int32(resource.rawValue))
        return hard == UInt64.max ? nil : Int(clamping: hard)
    }

    /// The CPU time this process has used (all its threads), what `RLIMIT_CPU` counts.
    static var processCPUTime: Duration {
        .nanoseconds(cmp_process_cpu_time_ns())
    }

    /// From now on an allocation failure ends this process with `_exit(status)`.
    static func exitOnAllocationFailure(status: Int32) {
        cmp_exit_on_allocation_failure(status)
    }

    /// The resident memory of process `pid` in bytes (`/proc/pid/statm`); nil if it is gone.
    static func residentMemory(of pid: pid_t) -> Int? {
        guard let text = readText("/proc/\(pid)/statm") else { return nil }
        let fields = text.split(separator: " ")
        guard fields.count >= 2, let pages = Int(fields[1]) else { return nil }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// From now on SIGTERM sets ``stopRequested`` instead of ending this process.
    static func handleStopRequests() { cmp_handle_stop_requests() }

    /// Whether SIGTERM arrived since ``handleStopRequests()``.
    static var stopRequested: Bool { cmp_stop_requested() != 0 }

    /// `no_new_privs` and a seccomp filter on every thread (see ``WorkerSandbox``).
    static func installSandbox(denyProcesses: Bool, denyNetwork: Bool, killOnViolation: Bool) throws(Errno) {
        guard cmp_install_sandbox(denyProcesses ? 1 : 0, denyNetwork ? 1 : 0, killOnViolation ? 1 : 0) == 0 else { throw Errno(rawValue: errno) }
    }

    /// The exit status of a sandboxed worker killed for opening a network socket.
    static let sandboxNetworkStatus = Int32(CMP_SANDBOX_NETWORK_STATUS)

    /// `sched_setaffinity(2)`: this process runs only on `cpus`.
    static func setCPUAffinity(_ cpus: [Int]) throws(Errno) {
        let numbers = cpus.map { Int32(clamping: $0) }
        _ = try valueOrErrno { numbers.withUnsafeBufferPointer { cmp_set_cpu_affinity($0.baseAddress, Int32($0.count)) } }
    }

    /// `setpriority(PRIO_PROCESS, 0, niceness)`.
    static func setNiceness(_ niceness: Int) throws(Errno) {
        _ = try valueOrErrno { cmp_set_niceness(Int32(clamping: niceness)) }
    }

    /// `chdir(2)`.
    static func changeDirectory(_ path: String) throws(Errno) {
        _ = try valueOrErrno { chdir(path) }
    }

    /// `setenv(3)`, overwriting.
    static func setEnvironment(_ name: String, _ value: String) throws(Errno) {
        _ = try valueOrErrno(retryOnInterrupt: false) { setenv(name, value, 1) }
    }

    /// `mkdir(2)`.
    static func makeDirectory(_ path: String) throws(Errno) {
        _ = try valueOrErrno { mkdir(path, 0o755) }
    }

    /// `rmdir(2)`.
    static func removeDirectory(_ path: String) throws(Errno) {
        _ = try valueOrErrno { rmdir(path) }
    }

    /// The names in directory `path` (`opendir`/`readdir`), without `.` and `..`.
    static func directoryEntries(_ path: String) -> [String] {
        guard let directory = opendir(path) else { return [] }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { bytes in
                String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// The whole text of a small file (procfs, cgroupfs); nil if it cannot be read.
    static func readText(_ path: String) -> String? {
        guard let fd = try? FileDescriptor.open(FilePath(path), .readOnly, options: .closeOnExec) else { return nil }
        defer { Syscall.close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            guard let count = try? buffer.withUnsafeMutableBytes({ try Syscall.read(fd, into: $0) }) else { return nil }
            if count == 0 { break }
            bytes += buffer[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Writes `text` to the file at `path` in one `write(2)` (how cgroupfs
    /// files take a value).
    static func writeText(_ text: String, to path: String) throws(Errno) {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(path), .writeOnly, options: .closeOnExec)
        } catch let error as Errno {
            throw error
        } catch {
            throw .ioError
        }
        defer { Syscall.close(fd) }
        let bytes = Array(text.utf8)
        let written = bytes.withUnsafeBytes { buffer in Result { () throws(Errno) in try Syscall.write(fd, buffer) } }
        _ = try written.get()
    }
}
