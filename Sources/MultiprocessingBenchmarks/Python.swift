import FoundationEssentials

/// Runs the Python half of a scenario with `python3` and the script kept
/// beside this file.
enum Python {
    static var scriptPath: String? { script(named: "python_benchmarks.py") }

    /// A script kept beside this file (or under the package root's copy of it).
    static func script(named name: String) -> String? {
        let beside = #filePath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/") + "/" + name
        let fromRoot = FileManager.default.currentDirectoryPath + "/Sources/MultiprocessingBenchmarks/" + name
        return [beside, fromRoot].first { FileManager.default.fileExists(atPath: $0) }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// The seconds each repetition took, and for some scenarios how far
    /// the peak resident memory rose (the largest of the repetitions).
    static func run(scenario: String, count: Int, repeats: Int, pinned: Bool) throws -> (seconds: [Double], peakGrowth: Int?) {
        guard let script = scriptPath else { throw Failure(description: "python_benchmarks.py not found") }
        let (status, data) = try ExternalProgram.run(
            ["python3", script, "--scenario", scenario, "--count", String(count), "--repeats", String(repeats)] + (pinned ? ["--pin"] : []))
        guard status == 0 else {
            throw Failure(description: "python3 exited with \(status) for \(scenario)")
        }
        struct Result: Decodable {
            var seconds: [Double]
            var peak_growth: Int?
        }
        let result = try JSONDecoder().decode(Result.self, from: Data(data))
        return (result.seconds, result.peak_growth)
    }
}
