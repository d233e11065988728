import FoundationEssentials
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

/// A child process appends `count` Ints to a manager's list (Python:
/// `l.append(i)` on a `Manager().list()` proxy).
@Sendable func managerList(_ count: Int) throws {
    try withManager { manager in
        let shared = try manager.list([Int]())
        let child = ChildProcess {
            for i in 0..<count { try shared.append(i) }
        }
        try child.start()
        guard try child.join() == 0, try shared.count() == count else { throw BenchmarkFailure(description: "lost elements") }
    }
}

/// A child process adds `count` Ints to a manager's set (Python 3.14's
/// `Manager().set()`; before 3.14, a `set` registered with the add,
/// `__contains__` and `__len__` methods exposed, as 3.14's SetProxy).
@Sendable func managerSet(_ count: Int) throws {
    try withManager { manager in
        let shared = try manager.set(Set<Int>())
        let child = ChildProcess {
            for i in 0..<count { try shared.insert(i) }
        }
        try child.start()
        guard try child.join() == 0, try shared.count() == count else { throw BenchmarkFailure(description: "lost elements") }
    }
}

let managerScenarios: [Scenario] = [
    Scenario(name: "manager.dict", unit: "sets", count: 20_000, quickCount: 200, baseline: .python("manager.dict"), run: managerDictionary),
    Scenario(name: "manager.list", unit: "appends", count: 20_000, quickCount: 200, baseline: .python("manager.list"), run: managerList),
    Scenario(name: "manager.set", unit: "adds", count: 20_000, quickCount: 200, baseline: .python("manager.set"), run: managerSet),
]
