import ArgumentParser
import CBenchmarkFloor
import FoundationEssentials
import Glibc
import Multiprocessing

/// Runs each scenario with swift-multiprocessing and, in the same run, with
/// CPython's multiprocessing, and prints medians, spreads and ratios.
@main
struct Benchmarks: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "multiprocessing-benchmarks",
        abstract: "swift-multiprocessing side by side with Python's multiprocessing."
    )

    @Flag(help: "A smoke run in seconds: tiny counts, two repetitions.")
    var quick = false

    @Option(help: "Run only scenarios whose name contains this text (or one of several, comma-separated).")
    var filter: String?

    @Option(help: "Repetitions of each side of each scenario.")
    var repeats: Int = 5

    @Option(help: "Also write the results to this JSON file.")
    var json: String?

    @Flag(help: "Skip the MPI rows (they need the MPI trait, Open MPI and mpi4py).")
    var noMPI = false

    @Flag(help: .hidden)
    var mpiRank0 = false

    @Option(help: .hidden)
    var mpiTasks: Int = 100_000

    /// In a fresh process of the pool.first-result rows: make a pool, print the seconds to its first result.
    @Option(help: .hidden)
    var firstResult: String?

    struct Row: Codable {
        init(scenario: String, unit: String, ours: Samples, baselineName: String?, baseline: Samples?, ratio: Double?, pinned: Bool) {
            (self.scenario, self.unit, self.ours, self.baselineName, self.baseline, self.ratio, self.pinned) = (scenario, unit, ours, baselineName, baseline, ratio, pinned)
        }

        var scenario: String
        var unit: String
        var ours: Samples
        /// What the baseline is: "Python", "raw pipes", "memcpy ×2"…
        var baselineName: String?
        var baseline: Samples?
        /// Our median throughput over the baseline's: above 1 is faster.
        var ratio: Double?
        /// Whether every process ran on one CPU.
        var pinned: Bool
    }

    func run() throws {
        let repeats = quick ? 2 : max(1, self.repeats)
        if let firstResult {
            print(try measureFirstResult(firstResult == "fork" ? .fork : .forkserver))
            return
        }
        if mpiRank0 {
            // Rank 0 of an MPI row's job (see MPIBenchmarks).
            try MPIBenchmarks.measureOnRank0(tasks: mpiTasks, repeats: repeats)
            return
        }
        let wanted = filter.map { $0.split(separator: ",").map(String.init) }
        let chosen = allScenarios.filter { scenario in wanted.map { $0.contains { scenario.name.contains($0) } } ?? true }
        print("machine: \(machineDescription())")
        print("repetitions: \(repeats)\(quick ? " (quick)" : "")\n")
        var rows: [Row] = []
        var peakNotes: [String] = []
        printHeader()
        for scenario in chosen {
            let count = quick ? scenario.quickCount : scenario.count
            // Each scenario starts from a heap given back to the system: memory
            // an earlier one freed but malloc kept would make every later
            // fork copy its page tables (value.locked read 2-3x slower after
            // the codec scenarios, from forking alone).
            cbf_trim_heap()
            if scenario.pinned { cbf_pin_all_threads(0) }
            defer { if scenario.pinned { cbf_pin_all_threads(-1) } }
            let memory = PeakMemory()
            let seconds = try scenario.timed.map { try measureTimed($0, count: count, repeats: repeats) }
                ?? measure(scenario.run, count: count, repeats: repeats, memory: scenario.measuresPeakMemory ? memory : nil)
            let operations = count * scenario.operationsPerIteration
            let ours = Samples(operations: operations, seconds: seconds)
            var baseline: Samples?
            var baselineGrowth: Int?
            switch scenario.baseline {
            case let .python(name)?:
                let python = try Python.run(scenario: name, count: count, repeats: repeats, pinned: scenario.pinned)
                baseline = Samples(operations: operations, seconds: python.seconds)
                baselineGrowth = python.peakGrowth
            case let .swift(_, run)?:
                baseline = Samples(operations: operations, seconds: try measure(run, count: count, repeats: repeats))
            case nil:
                break
            }
            let row = Row(
                scenario: scenario.name, unit: scenario.unit, ours: ours,
                baselineName: scenario.baseline?.label, baseline: baseline,
                ratio: baseline.map { ours.median / $0.median },
                pinned: scenario.pinned
            )
            printRow(row)
            if scenario.measuresPeakMemory {
                peakNotes.append("\(scenario.name): peak memory rose \(megabytes(memory.largestGrowth)) here, \(baselineGrowth.map(megabytes) ?? "—") in \(row.baselineName ?? "the baseline")")
            }
            rows.append(row)
        }
        if !noMPI && (wanted.map { $0.contains { "mpi".contains($0) || $0.hasPrefix("mpi") } } ?? true) {
            switch MPIBenchmarks.rows(tasks: quick ? 10_000 : 100_000, repeats: repeats) {
            case let .success(mpiRows):
                mpiRows.forEach(printRow)
                rows += mpiRows
            case let .failure(failure):
                print("| mpi | — | \(failure) | | | |")
            }
        }
        if !peakNotes.isEmpty {
            print("\npeak resident memory above the start of a repetition (largest of the repetitions):")
            peakNotes.forEach { print("- \($0)") }
        }
        if rows.contains(where: \.pinned) {
            print("\n¹ every process of both sides on one CPU (see Scenario.pinned)")
        }
        let forks = ForkSafety.statistics
        if forks.forks > 0 {
            let perFork = forks.stopping / forks.forks
            print("\nforks: \(forks.forks), \(forks.quiesced) with the world stopped, \(forks.retries) threads asked again, \(forks.quiet) left alone; stopping took \(perFork) per fork")
        }
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(rows).write(to: URL(fileURLWithPath: json))
            print("\nwrote \(json)")
        }
    }

    /// Seconds each repetition of `count` iterations took, after a warm-up.
    private func measure(_ run: (Int) throws -> Void, count: Int, repeats: Int, memory: PeakMemory? = nil) throws -> [Double] {
        try run(max(1, count / 10))
        var seconds: [Double] = []
        for _ in 0..<repeats {
            memory?.begin()
            let start = ContinuousClock.now
            try run(count)
            let elapsed = ContinuousClock.now - start
            memory?.end()
            seconds.append(secondsOf(elapsed))
        }
        return seconds
    }

    /// The seconds a self-timed scenario counted in each repetition, after a warm-up.
    private func measureTimed(_ run: (Int) throws -> Double, count: Int, repeats: Int) throws -> [Double] {
        _ = try run(max(1, count / 10))
        return try (0..<repeats).map { _ in try run(count) }
    }

    private func printHeader() {
        print("| scenario | unit | ours (per s) | baseline | baseline (per s) | ours / baseline |")
        print("| --- | --- | ---: | --- | ---: | ---: |")
    }

    private func printRow(_ row: Row) {
        let ours = "\(formatRate(row.ours.median)) ± \(format3(row.ours.spreadPercent)) %"
        let baseline = row.baseline.map { "\(formatRate($0.median)) ± \(format3($0.spreadPercent)) %" } ?? "—"
        let ratio = row.ratio.map { "\(format3($0))×" } ?? "—"
        print("| \(row.scenario)\(row.pinned ? " ¹" : "") | \(row.unit) | \(ours) | \(row.baselineName ?? "—") | \(baseline) | \(ratio) |")
        fflush(nil)
    }

    private func megabytes(_ bytes: Int) -> String {
        "\(format3(Double(bytes) / 1e6)) MB"
    }

    private func machineDescription() -> String {
        let model = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":").last?.drop { $0 == " " || $0 == "\t" } ?? "unknown CPU"
        return "\(model), \(cpuCount()) CPUs (\(usableCPUCount()) usable), Linux \(ProcessInfo.processInfo.operatingSystemVersionString)"
    }
}
