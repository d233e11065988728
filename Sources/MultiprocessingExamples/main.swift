// The seed's programs, in Swift, printing what they print.
import Multiprocessing

#if canImport(Glibc)
import Glibc
#endif

/// Prints a line and flushes it at once, so that parent and child lines
/// interleave as they happen even when the output is a pipe.
func say(_ line: String) {
    print(line)
    fflush(nil)
}

/// Seed program 1: fork. Parent and child each print their lines with real
/// pids; the greeting before the fork is printed once, because `fork()`
/// flushes standard output first.
func forkExample() throws {
    say("Hello from the main process (pid \(OSProcess.getpid()))")
    switch try OSProcess.fork() {
    case .child:
        say("I am the child process, pid \(OSProcess.getpid()); my parent is \(OSProcess.getppid())")
        OSProcess.exit(0)
    case let .parent(child):
        say("I am the parent process, pid \(OSProcess.getpid()); my child is \(child)")
        let status = try OSProcess.wait(child)
        say("child \(child) exited with status \(status)")
    }
}

/// Seed program 2: a process whose target sleeps 2 s and prints.
func processExample() throws {
    let process = ChildProcess {
        sleep(2)
        say("hello from the child process (pid \(OSProcess.getpid()))")
    }
    say("pid before start: \(process.pid.map(String.init) ?? "nil")")
    try process.start()
    say("pid after start: \(process.pid.map(String.init) ?? "nil")")
    try process.join()
    say("main process finished")
}

/// The same process, written by overriding `run()`.
final class Sleeper: ChildProcess, @unchecked Sendable {  // no state of its own
    override func run() throws {
        sleep(2)
        say("hello from \(currentProcess().name) (pid \(OSProcess.getpid())), which overrides run()")
    }
}

func subclassExample() throws {
    let process = Sleeper(name: "Sleeper")
    say("pid before start: \(process.pid.map(String.init) ?? "nil")")
    try process.start()
    say("pid after start: \(process.pid.map(String.init) ?? "nil")")
    try process.join()
    say("main process finished")
}

/// Seed program 3: a pipe between two processes. The producer sends
/// "scott"; the consumer receives it and prints it.
struct Produce: ProcessJob {
    var connection: Connection
    func run() throws -> Bool {
        try connection.send("scott")
        return true
    }
}

struct Consume: ProcessJob {
    var connection: Connection
    func run() throws -> Bool {
        let name = try connection.receive(String.self)
        say(name)
        return true
    }
}

func pipeExample() throws {
    let (consumerEnd, producerEnd) = try Connection.pipe()
    let producer = try ChildProcess(job: Produce(connection: producerEnd))
    let consumer = try ChildProcess(job: Consume(connection: consumerEnd))
    try producer.start()
    try consumer.start()
    try producer.join()
    try consumer.join()
}

/// Seed program 4: a queue of size 10; a producer process puts "a", a
/// consumer process gets it and prints it; both are joined.
struct PutLetter: ProcessJob {
    var queue: Queue<String>
    func run() throws -> Bool {
        try queue.put("a")
        return true
    }
}

struct GetLetter: ProcessJob {
    var queue: Queue<String>
    func run() throws -> Bool {
        say(try queue.get())
        return true
    }
}

func queueExample() throws {
    let queue = try Queue<String>(maxSize: 10)
    let producer = try ChildProcess(job: PutLetter(queue: queue))
    let consumer = try ChildProcess(job: GetLetter(queue: queue))
    try producer.start()
    try consumer.start()
    try producer.join()
    try consumer.join()
}

/// Seed program 5: a pool of `cpuCount` workers; `applyAsync(doSomething, 3)`,
/// close, join, print the result (3). `doSomething(n)` works for n seconds.
func doSomething(_ n: Int) -> Int {
    sleep(UInt32(n))
    say("do something in sub_progress")
    return n
}

func poolApplyExample() throws {
    let pool = try ProcessPool(processes: cpuCount())
    // The argument is sent to a warm worker, as Python's `apply_async(f, args)`
    // does; the closure uses nothing else, so no process is forked for it.
    let result = try pool.applyAsync(capturing: 3) { x in doSomething(x) }
    pool.close()
    try pool.join()
    say("\(try result.get())")
}

/// Seed program 6: `imap(doSomething, [1, 3, 5])` prints each result as
/// "do something in Ns", in submission order. Then a variant whose first
/// item takes longest: `imap` still gives input order, `imapUnordered` gives
/// completion order.
func slowIdentity(_ x: Int) -> Int {
    usleep(UInt32(6 - x) * 100_000)  // 1 sleeps longest
    return x
}

func poolImapExample() throws {
    try withProcessPool(processes: 3) { (pool: ProcessPool) throws in
        for result in try pool.imap([1, 3, 5], capturing: 0, { _, n in doSomething(n) }) { say("do something in \(try result.get())s") }
        for result in try pool.imap([1, 3, 5], slowIdentity) { say("imap: \(try result.get())") }
        for result in try pool.imapUnordered([1, 3, 5], slowIdentity) { say("imapUnordered: \(try result.get())") }
    }
}

/// A long map with the library's progress bar (drawn on standard error when
/// it is a terminal; nothing is drawn otherwise).
func poolProgressExample() throws {
    try withProcessPool { (pool: ProcessPool) throws in
        let sums = try pool.map(1...400, chunkSize: 10, progress: ProgressBar.terminal(title: "sums")) { n in
            usleep(5_000)
            return (1...n).reduce(0, +)
        }
        say("400 sums, the last \(sums.last!)")
    }
}

/// Seed program 7: a pool of 2 whose producer and consumer share a
/// manager's queue of size 10 (a plain `Queue` cannot reach workers that
/// already run; a manager's can).
struct ProduceLetters: ProcessJob {
    var queue: ManagedQueue<String>
    func run() throws -> Bool {
        for letter in ["a", "b", "c"] { try queue.put(letter) }
        return true
    }
}

struct ConsumeLetters: ProcessJob {
    var queue: ManagedQueue<String>
    func run() throws -> String {
        try (0..<3).map { _ in try queue.get() }.joined(separator: " ")
    }
}

func managerQueueExample() throws {
    try withManager { manager in
        let queue = try manager.queue(of: String.self, maxSize: 10)
        try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
            let producer = try pool.applyAsync(ProduceLetters(queue: queue))
            let consumer = try pool.applyAsync(ConsumeLetters(queue: queue))
            _ = try producer.get()
            say("consumer got: \(try consumer.get())")
        }
    }
}

/// Seed program 8: a manager's dictionary, list and array used from child processes.
func managerStateExample() throws {
    try withManager { manager in
        let dictionary = try manager.dictionary([String: Double]())
        let list = try manager.list(Array(0..<10))
        let array = try manager.array([Double](repeating: 0, count: 4))
        let children = (0..<2).map { child in
            ChildProcess {
                try dictionary.set(0.25 * Double(child + 1), for: "child \(child)")
                try list.set(child, to: -child - 100)
                try array.set(child, to: Double(child) + 0.5)
            }
        }
        for child in children { try child.start() }
        for child in children { try child.join() }
        say("dictionary: \(try dictionary.snapshot().sorted { $0.key < $1.key })")
        say("list: \(try list.snapshot())")
        say("array: \(try array.snapshot())")
    }
}

let examples: [(String, () throws -> Void)] = [
    ("fork", forkExample),
    ("process", processExample),
    ("process subclass", subclassExample),
    ("pipe", pipeExample),
    ("queue", queueExample),
    ("pool", poolApplyExample),
    ("imap", poolImapExample),
    ("progress", poolProgressExample),
    ("manager queue", managerQueueExample),
    ("manager state", managerStateExample),
]

let chosen = CommandLine.arguments.dropFirst()
for (name, example) in examples where chosen.isEmpty || chosen.contains(name) {
    say("=== \(name) ===")
    do {
        try example()
    } catch {
        say("\(name) failed: \(error)")
        exit(1)
    }
}
