import Foundation
import Multiprocessing

/// A child process sets `count` entries of a manager's dictionary, one
/// round trip each (Python: `d[i] = i` on a `Manager().dict()` proxy).
@Sendable func managerDictionary(_ count: Int) throws {
    try withManager { manager in
        let shared = try manager.dictionary([Int: Int]())
        let child = ChildProcess {
            for i in 0..<count { try shared.set(i, for: i) }
        }
        try child.start()
        guard try child.join() == 0, try shared.count() == count else { throw BenchmarkFailure(description: "lost entries") }
    }
}

let managerScenarios: [Scenario] = [
    Scenario(name: "manager.dict", unit: "sets", count: 20_000, quickCount: 200, baseline: .python("manager.dict"), run: managerDictionary),
]
