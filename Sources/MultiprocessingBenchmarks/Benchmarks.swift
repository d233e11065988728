import ArgumentParser
import Foundation
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

    @Option(help: "Run only scenarios whose name contains this text.")
    var filter: String?

    @Option(help: "Repetitions of each side of each scenario.")
    var repeats: Int = 5

    @Option(help: "Also write the results to this JSON file.")
    var json: String?

    struct Row: Codable {
        var scenario: String
        var unit: String
        var ours: Samples
        var python: Samples?
        /// Our median throughput over Python's: above 1 is faster.
        var ratio: Double?
    }

    func run() throws {
        let repeats = quick ? 2 : max(1, self.repeats)
        let chosen = allScenarios.filter { filter == nil || $0.name.contains(filter!) }
        print("machine: \(machineDescription())")
        print("repetitions: \(repeats)\(quick ? " (quick)" : "")\n")
        var rows: [Row] = []
        printHeader()
        for scenario in chosen {
            let count = quick ? scenario.quickCount : scenario.count
            try scenario.run(max(1, count / 10))  // warm up
            var seconds: [Double] = []
            for _ in 0..<repeats {
                let start = ContinuousClock.now
                try scenario.run(count)
                let elapsed = ContinuousClock.now - start
                seconds.append(Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
            }
            let ours = Samples(operations: count, seconds: seconds)
            var python: Samples?
            if let name = scenario.python {
                python = Samples(operations: count, seconds: try Python.run(scenario: name, count: count, repeats: repeats))
            }
            let row = Row(scenario: scenario.name, unit: scenario.unit, ours: ours, python: python, ratio: python.map { ours.median / $0.median })
            printRow(row)
            rows.append(row)
        }
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(rows).write(to: URL(fileURLWithPath: json))
            print("\nwrote \(json)")
        }
    }

    private func printHeader() {
        print("| scenario | unit | ours (ops/s) | Python (ops/s) | ours / Python |")
        print("| --- | --- | ---: | ---: | ---: |")
    }

    private func printRow(_ row: Row) {
        let ours = "\(formatRate(row.ours.median)) ± \(format3(row.ours.spreadPercent)) %"
        let python = row.python.map { "\(formatRate($0.median)) ± \(format3($0.spreadPercent)) %" } ?? "—"
        let ratio = row.ratio.map { "\(format3($0))×" } ?? "—"
        print("| \(row.scenario) | \(row.unit) | \(ours) | \(python) | \(ratio) |")
        fflush(nil)
    }

    private func machineDescription() -> String {
        let model = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "unknown CPU"
        return "\(model), \(cpuCount()) CPUs (\(usableCPUCount()) usable), Linux \(ProcessInfo.processInfo.operatingSystemVersionString)"
    }
}
