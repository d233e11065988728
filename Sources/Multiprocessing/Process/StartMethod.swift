/// How a child process comes to be, as in Python's `multiprocessing`.
public enum StartMethod: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// The child is a copy of the parent made by `fork()`: it can run any
    /// closure, with what it captured. It runs synchronous code only.
    case fork
    /// The child is this executable run anew; it runs a ``ProcessJob``,
    /// which crosses by type name and encoded value.
    case spawn
    /// A clean, single-threaded server spawned once forks each child: fork's
    /// speed with spawn's isolation. The default for jobs.
    case forkserver

    public var description: String { rawValue }
}
