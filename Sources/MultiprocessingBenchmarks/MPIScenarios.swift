import FoundationEssentials
import Glibc
import Multiprocessing
#if MPI
import MultiprocessingMPI

/// Under `mpirun`, the ranks other than 0 serve the MPI pool before `main`.
@_cdecl("swift_multiprocessing_mpi_workers") func mpiWorkers() {}
#endif

/// The MPI rows: 100,000 x² tasks across 3 ranks at chunk 1 and chunk 100,
/// and single-task round trips — ours (`MPIPool`) and `mpi4py.futures`'
/// `MPIPoolExecutor`, each a job of its own under `mpirun -n 3`, on this
/// machine and across two hosts made of network namespaces.
enum MPIBenchmarks {
    /// What one side measured, per repetition.
    struct Figures: Codable {
        var chunk1: [Double]
        var chunk100: [Double]
        var roundTrips: [Double]
    }

    /// On rank 0 of our job: measures with an ``MPIPool`` and prints the figures.
    static func measureOnRank0(tasks: Int, repeats: Int) throws {
        #if MPI
        let pool = try MPIPool()
        _ = try pool.map(SquareTask(), over: 0..<1000, chunkSize: 1)
        func rate(_ chunk: Int) throws -> Double {
            let start = ContinuousClock.now
            let squares = try pool.map(SquareTask(), over: 0..<tasks, chunkSize: chunk)
            guard squares.last == (tasks - 1) * (tasks - 1) else { throw BenchmarkFailure(description: "wrong result") }
            return Double(tasks) / seconds(since: start)
        }
        func roundTrips() throws -> Double {
            let start = ContinuousClock.now
            for i in 0..<200 {
                guard try pool.apply(SquareJob(x: i)) == i * i else { throw BenchmarkFailure(description: "wrong result") }
            }
            return 200 / seconds(since: start)
        }
        let figures = Figures(chunk1: try (0..<repeats).map { _ in try rate(1) }, chunk100: try (0..<repeats).map { _ in try rate(100) },
                              roundTrips: try (0..<repeats).map { _ in try roundTrips() })
        pool.close()
        try pool.join()
        print(String(decoding: try JSONEncoder().encode(figures), as: UTF8.self))
        #else
        throw BenchmarkFailure(description: "built without the MPI trait")
        #endif
    }

    private static func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    }

    /// The rows, or why there are none.
    static func rows(tasks: Int, repeats: Int) -> Result<[Benchmarks.Row], BenchmarkFailure> {
        #if MPI
        Result {
            var rows = try compare(prefix: "mpi", tasks: tasks, repeats: repeats, hosts: nil)
            if let hosts = NamespaceHosts.up() {
                defer { hosts.down() }
                rows += try compare(prefix: "mpi.hosts", tasks: tasks, repeats: repeats, hosts: hosts)
            }
            return rows
        }.mapError { ($0 as? BenchmarkFailure) ?? BenchmarkFailure(description: "\($0)") }
        #else
        .failure(BenchmarkFailure(description: "built without the MPI trait (swift build -c release --traits MPI)"))
        #endif
    }

    private static func compare(prefix: String, tasks: Int, repeats: Int, hosts: NamespaceHosts?) throws -> [Benchmarks.Row] {
        let ours = try run([(try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0], "--mpi-rank0", "--mpi-tasks", String(tasks), "--repeats", String(repeats)], hosts: hosts)
        guard let script = Python.script(named: "mpi4py_benchmarks.py") else { throw BenchmarkFailure(description: "mpi4py_benchmarks.py not found") }
        let theirs = try run(["python3", "-m", "mpi4py.futures", script, "--tasks", String(tasks), "--repeats", String(repeats)], hosts: hosts)
        func row(_ name: String, _ unit: String, _ side: (Figures) -> [Double]) -> Benchmarks.Row {
            let ours = Samples(rates: side(ours)), theirs = Samples(rates: side(theirs))
            return Benchmarks.Row(scenario: "\(prefix).\(name)", unit: unit, ours: ours, baselineName: "mpi4py.futures", baseline: theirs,
                                  ratio: ours.median / theirs.median, pinned: false)
        }
        return [row("map.chunk1", "tasks", \.chunk1), row("map.chunk100", "tasks", \.chunk100), row("apply", "round trips", \.roundTrips)]
    }

    /// Runs `command` as 3 ranks (on two hosts if given) and decodes its last line.
    private static func run(_ command: [String], hosts: NamespaceHosts?) throws -> Figures {
        var environment = [
            "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_rmaps_base_oversubscribe": "1",
        ]
        let interfaces = hosts.map { "\($0.subnet).0/24" } ?? "lo"
        environment["OMPI_MCA_btl_tcp_if_include"] = interfaces
        environment["OMPI_MCA_oob_tcp_if_include"] = interfaces
        let arguments: [String]
        if let hosts {
            environment["NETNS_PREFIX"] = hosts.prefix
            environment["NETNS_SUBNET"] = hosts.subnet
            arguments = ["bash", hosts.scripts + "/two-hosts.sh", "run", "--", "mpirun", "--hostfile", hosts.hostfile, "-np", "3",
                         "--mca", "plm_rsh_agent", hosts.scripts + "/rsh-agent.sh", "--bind-to", "none"] + command
        } else {
            arguments = ["timeout", "600", "mpirun", "-n", "3"] + command
        }
        let (status, data) = try ExternalProgram.run(arguments, setting: environment)
        guard status == 0, let line = String(decoding: data, as: UTF8.self).split(separator: "\n").last else {
            throw BenchmarkFailure(description: "\(command.prefix(3).joined(separator: " ")) under mpirun exited with \(status)")
        }
        return try JSONDecoder().decode(Figures.self, from: Data(line.utf8))
    }
}

/// Two hosts made of network namespaces joined by a veth pair, for the
/// `mpi.hosts` rows (`scripts/mpi-hosts`); only as root with iproute2.
struct NamespaceHosts {
    let prefix = "mpb\(getpid() % 100_000)"
    let subnet = "10.\(130 + getpid() % 50).0"
    let scripts: String
    let hostfile: String

    static func up() -> NamespaceHosts? {
        let root = FileManager.default.currentDirectoryPath
        let packageRoot = #filePath.split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
        let scripts = [packageRoot, root]
            .map { $0 + "/scripts/mpi-hosts" }.first { FileManager.default.fileExists(atPath: $0 + "/two-hosts.sh") }
        guard getuid() == 0, let scripts else { return nil }
        let hosts = NamespaceHosts(scripts: scripts, hostfile: "/tmp/mpb-hostfile-\(getpid())")
        try? "\(hosts.subnet).1 slots=1\n\(hosts.subnet).2 slots=2\n".write(toFile: hosts.hostfile, atomically: true, encoding: .utf8)
        guard hosts.script("up") else {
            hosts.down()
            return nil
        }
        return hosts
    }

    func down() {
        _ = script("down")
        unlink(hostfile)
    }

    private func script(_ command: String) -> Bool {
        let result = try? ExternalProgram.run(["bash", scripts + "/two-hosts.sh", command],
                                              setting: ["NETNS_PREFIX": prefix, "NETNS_SUBNET": subnet], capturingOutput: false)
        return result?.status == 0
    }
}
