import Glibc
import SystemPackage

/// Why a child process could not be started, joined or did not deliver.
public enum ProcessError: Error, Sendable, Equatable, Codable, CustomStringConvertible {
    /// `start()` was called on a process that was already started.
    case alreadyStarted
    /// The process was never started, so it cannot be joined or signalled.
    case notStarted
    /// `close()` was called while the process still runs.
    case stillRunning
    /// The process was closed; its handle can no longer be used.
    case closed
    /// The work cannot run with this start method (closures need `.fork`).
    case unsupportedStartMethod(StartMethod)
    /// The child could not resolve the job type named by the parent.
    case unknownJobType(String)
    /// The name resolved to a type that is not a ``ProcessJob``: it is never run.
    case notAJob(String)
    /// The job's input did not decode in the child.
    case corruptRequest(String)
    /// The job threw: the error's type name and description, as the child saw them.
    case jobFailed(errorType: String, description: String)
    /// The child was ended by a signal (a trap, a segfault, `kill`).
    case crashed(signal: Int32)
    /// The child exited with a non-zero status and reported nothing.
    case exited(status: Int32)
    /// The forkserver that started the child died.
    case forkServerDied
    /// A system call failed.
    case systemCall(String, errno: Int32)
    /// A pool task ran past its time limit; its worker was killed.
    case timedOut(seconds: Double)
    /// The work was cancelled before it delivered (a Swift `Task` was
    /// cancelled, or ``AsyncResult/cancel()`` was called).
    case cancelled
    /// The pool was terminated before the task delivered.
    case poolTerminated
    /// The pool's initializer failed in a worker, so the pool runs no work
    /// of that kind.
    case initializerFailed(String)
    /// A worker answered with bytes that are not a reply; it was killed.
    case corruptReply(String)
    /// A pool call's input failed: an asynchronous sequence threw, or an
    /// item did not encode. The items read before it ran; no more were read.
    case inputFailed(errorType: String, description: String)
    /// The worker passed its memory limit (``WorkerLimits/memory``): the
    /// kernel killed it at its control group's limit, or an allocation failed.
    case memoryLimitExceeded(bytes: Int)
    /// The task used more CPU time than ``WorkerLimits/cpuSeconds`` allows
    /// (times the items of its chunk); its worker was ended by `SIGXCPU`.
    case cpuTimeLimitExceeded(seconds: Int)
    /// Workers kept dying before they were ready (`deaths` in a row within
    /// `seconds`: a crash loop, an initializer that aborts, a limit too low
    /// to start): the pool stopped starting them and failed the work they
    /// would have run. `last` is how the last one ended.
    indirect case restartBudgetExceeded(deaths: Int, seconds: Double, last: ProcessError)
    /// A sandboxed worker (``WorkerLimits/sandbox``, ``WorkerSandbox``)
    /// made a call its profile denies, and was ended: `profile` is the
    /// profile's name (`"noNewProcesses"`, `"noNetwork"`).
    case sandboxViolation(profile: String)
    /// A task of a pool with `retries` failed every attempt: each attempt's
    /// error, in order (the last is how the last one ended).
    indirect case retriesExhausted(attempts: [ProcessError])

    public var description: String {
        switch self {
        case .alreadyStarted: "the process was already started"
        case .notStarted: "the process was never started"
        case .stillRunning: "the process is still running"
        case .closed: "the process handle is closed"
        case let .unsupportedStartMethod(method): "this work cannot run with the \(method) start method"
        case let .unknownJobType(name): "the child cannot resolve the job type '\(name)'"
        case let .notAJob(name): "'\(name)' is not a ProcessJob type; it was not run"
        case let .corruptRequest(reason): "the child could not decode its job: \(reason)"
        case let .jobFailed(errorType, description): "the job threw \(errorType): \(description)"
        case let .crashed(signal): "the child was killed by \(Signal.name(signal))"
        case let .exited(status): "the child exited with status \(status)"
        case .forkServerDied: "the forkserver that started the child died"
        case let .systemCall(name, errno): "\(name) failed: \(String(cString: strerror(errno)))"
        case let .timedOut(seconds): "the task ran past its limit of \(seconds) s; its worker was killed"
        case .cancelled: "the work was cancelled"
        case .poolTerminated: "the pool was terminated"
        case let .initializerFailed(reason): "the pool's initializer failed: \(reason)"
        case let .corruptReply(reason): "a worker sent a corrupt reply: \(reason)"
        case let .inputFailed(errorType, description): "the call's input failed with \(errorType): \(description)"
        case let .memoryLimitExceeded(bytes): "the worker passed its memory limit of \(bytes) bytes"
        case let .cpuTimeLimitExceeded(seconds): "the task passed its CPU time limit of \(seconds) s"
        case let .restartBudgetExceeded(deaths, seconds, last):
            "\(deaths) workers in a row died before they were ready, within \(seconds) s; the last: \(last)"
        case let .sandboxViolation(profile): "the worker made a call its sandbox denies (\(profile)) and was ended"
        case let .retriesExhausted(attempts):
            "the task failed all \(attempts.count) attempts: " + attempts.map(\.description).joined(separator: "; ")
        }
    }
}

/// Signal numbers and their names.
public enum Signal {
    /// The conventional name of a signal number, such as `SIGSEGV`.
    public static func name(_ signal: Int32) -> String {
        switch signal {
        case SIGHUP: "SIGHUP"
        case SIGINT: "SIGINT"
        case SIGQUIT: "SIGQUIT"
        case SIGILL: "SIGILL"
        case SIGTRAP: "SIGTRAP"
        case SIGABRT: "SIGABRT"
        case SIGBUS: "SIGBUS"
        case SIGFPE: "SIGFPE"
        case SIGKILL: "SIGKILL"
        case SIGUSR1: "SIGUSR1"
        case SIGSEGV: "SIGSEGV"
        case SIGUSR2: "SIGUSR2"
        case SIGPIPE: "SIGPIPE"
        case SIGALRM: "SIGALRM"
        case SIGTERM: "SIGTERM"
        case SIGXCPU: "SIGXCPU"
        default: "signal \(signal)"
        }
    }
}

extension ProcessError {
    init(_ call: String, _ error: Errno) {
        self = .systemCall(call, errno: error.rawValue)
    }
}

extension Duration {
    /// The duration in seconds, as a time limit is reported.
    var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
