import CMultiprocessing
import Glibc
import SystemPackage

/// A process as seen from another: its name and pid.
public struct ProcessDescription: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The name given at creation (`"MainProcess"` for the program itself).
    public var name: String
    /// The process identifier.
    public var pid: Int32

    public init(name: String, pid: Int32) {
        self.name = name
        self.pid = pid
    }

    public var description: String { "\(name) (pid \(pid))" }
}

/// Who this process is, set when a child starts.
internal enum ProcessContext {
    struct Identity {
        var name = "MainProcess"
        var parent: ProcessDescription? = nil
    }

    private static let identity = Locked(Identity())

    /// Its lock, for ``ForkGuard``.
    static var forkLock: Locked<Identity> { identity }

    static func enterChild(name: String, parent: ProcessDescription) {
        identity.withLock { $0 = Identity(name: name, parent: parent) }
    }

    static var current: ProcessDescription {
        ProcessDescription(name: identity.withLock(\.name), pid: getpid())
    }

    static var parent: ProcessDescription? {
        identity.withLock(\.parent)
    }

    /// In a child: records who it is, runs `work`, reports the result on
    /// `report` and leaves with `_exit` (status 0 on success, 1 otherwise).
    static func runChild(
        name: String,
        parent: ProcessDescription,
        report: FileDescriptorNumber,
        _ work: () -> Result<[UInt8], ProcessError>
    ) -> Never {
        enterChild(name: name, parent: parent)
        let result = work()
        try? Frame.write(ChildReport.encode(result), to: .init(rawValue: report))
        switch result {
        case .success: cmp_exit_now(0)
        case .failure: cmp_exit_now(1)
        }
    }
}

internal typealias FileDescriptorNumber = Int32

/// The calling process: its name and pid (Python's `current_process()`).
public func currentProcess() -> ProcessDescription {
    ProcessContext.current
}

/// The process that started this one, or nil in the main process
/// (Python's `parent_process()`).
public func parentProcess() -> ProcessDescription? {
    ProcessContext.parent
}

