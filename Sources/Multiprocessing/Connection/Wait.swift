import Glibc
import SystemPackage

extension Connection {
    /// Waits until some of `connections` can receive (a message or end of
    /// file) or some of `processes` have ended, at most `timeout` (nil:
    /// forever). Python's `multiprocessing.connection.wait`.
    ///
    /// - Returns: those that are ready; both empty if the timeout passed.
    @available(*, noasync, message: "blocks the calling thread")
    public static func wait(
        _ connections: [Connection],
        processes: [ChildProcess] = [],
        timeout: Duration? = nil
    ) throws -> (connections: [Connection], processes: [ChildProcess]) {
        let deadline = timeout.map { ContinuousClock.now + $0 }
        while true {
            let readyConnections = connections.filter { !$0.closed && $0.receiveBufferHasBytes }
            let readyProcesses = processes.filter { $0.exitCode != nil }
            if !readyConnections.isEmpty || !readyProcesses.isEmpty {
                return (readyConnections, readyProcesses)
            }
            var descriptors = connections.filter { !$0.closed }.map(\.fileDescriptor)
            let connectionCount = descriptors.count
            // A running job may need its report drained before it can exit.
            var copies: [FileDescriptor] = []
            defer { copies.forEach(Syscall.close) }
            for process in processes { copies += try process.duplicateWaitDescriptors() ?? [] }
            descriptors += copies
            let remaining = deadline.map { $0 - ContinuousClock.now }
            if let remaining, remaining <= .zero { return ([], []) }
            let events = try Syscall.poll(descriptors, timeout: Connection.milliseconds(remaining))
            let open = connections.filter { !$0.closed }
            let ready = zip(open, events.prefix(connectionCount)).filter { $0.1 != 0 }.map(\.0)
            let ended = processes.filter { $0.exitCode != nil }
            if !ready.isEmpty || !ended.isEmpty { return (ready, ended) }
        }
    }

    /// Whether a message is already read ahead (no system call: the poll in
    /// `wait` looks at the descriptors themselves).
    var receiveBufferHasBytes: Bool {
        hasBufferedBytes
    }
}
