/// Why a call on a manager or one of its proxies failed.
public enum ManagerError: Error, Sendable, Equatable, Codable, CustomStringConvertible {
    /// The manager's server cannot be reached: it ended, or was killed.
    case managerUnreachable(String)
    /// The server does not know the object (it was never made there).
    case unknownObject(UInt64)
    /// The server could not read the request, or the object has no such method.
    case badRequest(String)
    /// An index, key or argument the object refused (an index out of range…).
    case invalidArgument(String)
    /// The call waited longer than its timeout (a queue stayed full or empty…).
    case timedOut
    /// Releasing a lock this thread does not hold.
    case notOwner
    /// The barrier was broken (aborted, reset, or a waiter timed out).
    case brokenBarrier
    /// A served ``ManagedObject`` threw: the error's type and description.
    case objectFailed(errorType: String, description: String)

    public var description: String {
        switch self {
        case let .managerUnreachable(reason): "the manager cannot be reached: \(reason)"
        case let .unknownObject(id): "the manager has no object \(id)"
        case let .badRequest(reason): "the manager refused the request: \(reason)"
        case let .invalidArgument(reason): "invalid argument: \(reason)"
        case .timedOut: "the call timed out"
        case .notOwner: "the lock is not held by this thread"
        case .brokenBarrier: "the barrier is broken"
        case let .objectFailed(errorType, description): "the managed object threw \(errorType): \(description)"
        }
    }
}

/// A request to a manager's server: a method of one object, its encoded
/// arguments, who calls (for lock ownership) and how long it may wait.
internal struct ManagerRequest: Codable, Sendable {
    var object: UInt64
    var method: String
    var arguments: [[UInt8]] = []
    /// `pid:tid` of the calling thread.
    var owner: String = ""
    /// Seconds the call may wait (nil: as long as it takes).
    var timeout: Double? = nil
}

/// The server's answer.
internal enum ManagerReply: Codable, Sendable {
    case value([UInt8])
    case failure(ManagerError)
}
