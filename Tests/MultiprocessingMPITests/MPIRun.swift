#if MPI
import Foundation
import Testing

/// Runs the scenarios executable under `mpirun` or alone, bounded in time,
/// and checks afterwards that none of its processes (ranks, their local
/// workers, `orted`) is left.
enum MPIRun {
    struct Outcome {
        let status: Int32
        let output: String
        var lines: [String] { output.split(separator: "\n").map(String.init) }
    }

    /// The scenarios executable, beside this test bundle.
    static let scenarios: String = {
        let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for directory in [bundle, bundle.deletingLastPathComponent()] {
            let path = directory.appendingPathComponent("MultiprocessingMPIScenarios").path
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return bundle.appendingPathComponent("MultiprocessingMPIScenarios").path
    }()

    /// What Open MPI needs on this machine kind: root allowed, 3 ranks on 2
    /// cores (oversubscribed ranks also yield when idle), loopback only.
    static var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["OMPI_ALLOW_RUN_AS_ROOT"] = "1"
        environment["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
        environment["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
        environment["OMPI_MCA_btl_tcp_if_include"] = "lo"
        environment["OMPI_MCA_oob_tcp_if_include"] = "lo"
        return environment
    }

    /// `mpirun -n 3 scenarios arguments…` (or `mpirun arguments…` when `raw`).
    static func mpirun(_ arguments: [String], raw: Bool = false, others: [String] = [], expectFailure: Bool = false, limit: TimeInterval = 120) throws -> Outcome {
        try run("/usr/bin/mpirun", raw ? arguments : ["-n", "3", scenarios] + arguments, executables: [scenarios] + others, limit: limit)
    }

    /// The scenarios executable on its own (it may start its own ranks).
    static func alone(_ arguments: [String], limit: TimeInterval = 120) throws -> Outcome {
        try run(scenarios, arguments, executables: [scenarios], limit: limit)
    }

    static func run(_ executable: String, _ arguments: [String], executables: [String], environment: [String: String] = MPIRun.environment, limit: TimeInterval) throws -> Outcome {
        let sharedBefore = sharedMemoryEntries()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = environment
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        // Read while it runs (a full pipe would stall it), on a thread of its own.
        let collected = Collected()
        let reader = Thread { collected.set(output.fileHandleForReading.readDataToEndOfFile()) }
        reader.start()
        let deadline = Date().addingTimeInterval(limit)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        let timedOut = process.isRunning
        if timedOut {
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        let text = collected.wait()
        #expect(!timedOut, "\(executable) \(arguments) ran past \(limit) s:\n\(text)")
        expectNothingLeft(of: executables, sharedBefore: sharedBefore)
        return Outcome(status: process.terminationStatus, output: text)
    }

    /// Waits (a few seconds at most) until no process runs one of
    /// `executables`, no `orted`, and `/dev/shm` holds no Open MPI segment
    /// that was not there before; fails the test with what is left. (Only
    /// Open MPI's: tests of the other target may make segments meanwhile.)
    static func expectNothingLeft(of executables: [String], sharedBefore: Set<String>) {
        let deadline = Date().addingTimeInterval(10)
        var left: [String] = []
        repeat {
            left = processes(running: executables) + sharedMemoryEntries().subtracting(sharedBefore).sorted().map { "/dev/shm/" + $0 }
            if left.isEmpty { return }
            usleep(50_000)
        } while Date() < deadline
        Issue.record("left behind: \(left)")
    }

    static func sharedMemoryEntries() -> Set<String> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: "/dev/shm")) ?? []).filter { $0.hasPrefix("vader_segment.") })
    }

    static func processes(running executables: [String]) -> [String] {
        let targets = Set(executables.map { URL(fileURLWithPath: $0).resolvingSymlinksInPath().path })
        let mine = getpid()
        var found: [String] = []
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), pid != mine else { continue }
            let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) ?? ""
            let command = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            let state = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?.split(separator: " ").dropFirst(2).first.map(String.init) ?? ""
            if targets.contains(exe) || command == "orted" || command == "mpirun" {
                // A zombie orted that init has not reaped yet is not running.
                if state == "Z" && command == "orted" { continue }
                found.append("\(pid) \(command) \(state) \(exe)")
            }
        }
        return found
    }

    /// A copy of the scenarios executable that differs only in its GNU
    /// build ID: another build, as far as the ranks can tell.
    static func copyWithOtherBuildID() throws -> String {
        var data = try Data(contentsOf: URL(fileURLWithPath: scenarios))
        let notes = try run("/usr/bin/readelf", ["-n", scenarios], executables: [], environment: ProcessInfo.processInfo.environment, limit: 30)
        let line = try #require(notes.lines.first { $0.contains("Build ID:") })
        let hex = try #require(line.split(separator: " ").last.map(String.init))
        var id: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            id.append(try #require(UInt8(hex[index..<next], radix: 16)))
            index = next
        }
        let range = try #require(data.range(of: Data(id)))
        #expect(data.range(of: Data(id), in: range.upperBound..<data.endIndex) == nil, "the build ID appears once")
        data[range.lowerBound] ^= 0xFF
        let path = NSTemporaryDirectory() + "mpi-other-build-\(getpid())"
        try data.write(to: URL(fileURLWithPath: path))
        chmod(path, 0o755)
        return path
    }
}

/// Bytes read on one thread and waited for on another.
final class Collected: @unchecked Sendable {  // `data` is guarded by `condition`
    private let condition = NSCondition()
    private var data: Data?

    func set(_ data: Data) {
        condition.lock()
        self.data = data
        condition.broadcast()
        condition.unlock()
    }

    func wait() -> String {
        condition.lock()
        defer { condition.unlock() }
        while data == nil { condition.wait() }
        return String(decoding: data!, as: UTF8.self)
    }
}

/// Two MPI hosts on this machine: network namespaces joined by a veth pair
/// (`scripts/mpi-hosts/two-hosts.sh`), ranks placed on the second through
/// an `ssh` stand-in that runs `ip netns exec` (`rsh-agent.sh`).
struct TwoHosts {
    let prefix: String
    let subnet: String
    let scripts: String

    /// Makes the namespaces; nil where they cannot be made (not root, no `ip`).
    static func up() throws -> TwoHosts? {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/sbin/ip") || FileManager.default.isExecutableFile(atPath: "/usr/bin/ip") else { return nil }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let hosts = TwoHosts(prefix: "mpt\(getpid() % 100_000)", subnet: "10.\(77 + getpid() % 50).0", scripts: root.appendingPathComponent("scripts/mpi-hosts").path)
        let made = try MPIRun.run("/bin/bash", [hosts.scripts + "/two-hosts.sh", "up"], executables: [], environment: hosts.environment, limit: 60)
        guard made.status == 0 else {
            hosts.down()
            Issue.record("two-hosts.sh up failed: \(made.output)")
            return nil
        }
        return hosts
    }

    var environment: [String: String] {
        var environment = MPIRun.environment
        environment["NETNS_PREFIX"] = prefix
        environment["NETNS_SUBNET"] = subnet
        environment["OMPI_MCA_btl_tcp_if_include"] = "\(subnet).0/24"
        environment["OMPI_MCA_oob_tcp_if_include"] = "\(subnet).0/24"
        return environment
    }

    /// Rank 0 on host A, ranks 1 and 2 on host B.
    func mpirun(_ arguments: [String]) throws -> MPIRun.Outcome {
        let hostfile = NSTemporaryDirectory() + "\(prefix)-hostfile"
        try "\(subnet).1 slots=1\n\(subnet).2 slots=2\n".write(toFile: hostfile, atomically: true, encoding: .utf8)
        defer { unlink(hostfile) }
        return try MPIRun.run("/bin/bash", [scripts + "/two-hosts.sh", "run", "--", "mpirun", "--hostfile", hostfile, "-np", "3",
                                            "--mca", "plm_rsh_agent", scripts + "/rsh-agent.sh", "--bind-to", "none", MPIRun.scenarios] + arguments,
                               executables: [MPIRun.scenarios], environment: environment, limit: 120)
    }

    /// The bytes host A's end of the veth received and sent.
    func vethBytes() throws -> (received: Int, sent: Int) {
        let out = try MPIRun.run("/bin/bash", [scripts + "/two-hosts.sh", "bytes"], executables: [], environment: environment, limit: 30)
        let line = try #require(out.lines.first { $0.hasPrefix("\(prefix)A ") }, "\(out.output)")
        func field(_ name: String) -> Int {
            line.split(separator: " ").first { $0.hasPrefix(name + "=") }.flatMap { Int($0.dropFirst(name.count + 1)) } ?? 0
        }
        return (field("rx_bytes"), field("tx_bytes"))
    }

    /// Removes the namespaces and whatever still runs in them.
    func down() {
        _ = try? MPIRun.run("/bin/bash", [scripts + "/two-hosts.sh", "down"], executables: [], environment: environment, limit: 60)
        let left = (try? MPIRun.run("/usr/sbin/ip", ["netns", "list"], executables: [], environment: environment, limit: 10))?.lines.filter { $0.hasPrefix(prefix) } ?? []
        #expect(left.isEmpty, "namespaces left: \(left)")
    }
}
#endif
