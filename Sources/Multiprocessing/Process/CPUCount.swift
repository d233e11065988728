import CMultiprocessing
import Glibc

/// The number of CPUs online (Python's `os.cpu_count()`).
public func cpuCount() -> Int {
    max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))
}

/// The number of CPUs this process may actually use: those in its affinity
/// mask, further limited by a cgroup v2 CPU quota (`cpu.max`) if one is set.
/// Python 3.13's `os.process_cpu_count()`, with the quota honoured as well.
public func usableCPUCount() -> Int {
    var count = Int(cmp_affinity_cpu_count())
    if count <= 0 { count = cpuCount() }
    if let quota = cgroupCPUQuota() {
        count = min(count, max(1, Int(quota.rounded(.up))))
    }
    return count
}

/// The CPU quota of this process's cgroup (v2), in CPUs, or nil if unlimited.
internal func cgroupCPUQuota() -> Double? {
    guard let membership = readSmallFile("/proc/self/cgroup") else { return nil }
    // cgroup v2: a line "0::/path".
    guard let line = membership.split(separator: "\n").first(where: { $0.hasPrefix("0::") }) else { return nil }
    var path = String(line.dropFirst(3))
    while true {
        let file = "/sys/fs/cgroup" + (path == "/" ? "" : path) + "/cpu.max"
        if let text = readSmallFile(file) {
            let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" })
            if fields.count >= 2, fields[0] != "max", let quota = Double(fields[0]), let period = Double(fields[1]), period > 0 {
                return quota / period
            }
        }
        if path == "/" || path.isEmpty { return nil }
        path = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        if path.isEmpty { path = "/" }
    }
}

private func readSmallFile(_ path: String) -> String? {
    guard let file = fopen(path, "r") else { return nil }
    defer { fclose(file) }
    var buffer = [UInt8](repeating: 0, count: 4096)
    let count = fread(&buffer, 1, buffer.count, file)
    return String(decoding: buffer[..<count], as: UTF8.self)
}
