import FoundationEssentials

/// How far this process's peak resident memory rises during a repetition:
/// the peak (`VmHWM`) is reset to the current size by writing 5 to
/// `/proc/self/clear_refs`, and read back at the end.
final class PeakMemory {
    private var start = 0
    /// The largest rise seen, in bytes.
    private(set) var largestGrowth = 0

    func begin() {
        try? "5".write(toFile: "/proc/self/clear_refs", atomically: false, encoding: .utf8)
        start = Self.read("VmRSS:")
    }

    func end() {
        largestGrowth = max(largestGrowth, Self.read("VmHWM:") - start)
    }

    /// A size field of /proc/self/status, in bytes.
    static func read(_ field: String) -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix(field) {
            return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
        }
        return 0
    }
}
