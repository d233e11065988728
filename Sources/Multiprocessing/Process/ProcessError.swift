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
    /// The job threw: the error's type name and description, as the child
    /// saw them, and the error itself when its type is `Codable`
    /// (``JobFailure/error``). Calls that throw untyped errors — `get()`,
    /// `apply`, `map`, ``ChildProcess/output(as:)`` — throw that error
    /// itself instead, so `catch let error as MyError` works across processes.
    case jobFailed(JobFailure)
    /// The child was ended by a signal (a trap, a segfault, `kill`):
    /// `report` says what it was running and what the Swift runtime said
    /// before it died, when that is known.
    case crashed(signal: Int32, report: CrashReport)
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
        case let .unknownJobType(name):
            "the child cannot find the job type \(TypeNames.described(name)): the type is not linked into the child's executable, or the child runs another build of the program"
        case let .notAJob(name): "\(TypeNames.readable(name)) is not a ProcessJob type; it was not run"
        case let .corruptRequest(reason): "the child could not decode its job: \(reason)"
        case let .jobFailed(failure): "the job threw \(failure.errorType): \(failure.description)"
        case let .crashed(signal, report): report.describe(signal: signal)
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

extension ProcessError {
    /// `error`, thrown by a job, as it crosses to the parent.
    @usableFromInline
    static func thrown(_ error: any Error) -> ProcessError { .jobFailed(JobFailure(error)) }

    /// A job's failure that is not an error it threw as such (`context` says
    /// what failed: "encoding the output").
    @usableFromInline
    static func thrown(_ error: any Error, while context: String) -> ProcessError {
        .jobFailed(JobFailure(errorType: String(reflecting: type(of: error)), description: "\(context): \(error)"))
    }

    /// What an untyped `throws` call throws for this error: the job's own
    /// error when it came back (``JobFailure/error``), else this.
    var rethrown: any Error {
        if case let .jobFailed(failure) = self, let error = failure.error { return error }
        return self
    }
}

/// An error a job threw, as it came back from the process that ran it.
public struct JobFailure: Sendable, Equatable, Codable {
    /// The error's type, as `String(reflecting:)` names it (`"MyApp.ParseError"`).
    public let errorType: String
    /// The error's description, as the process that ran the job saw it.
    public let description: String
    /// The error's type (mangled) and value, when the type is `Codable`.
    private let mangledType: String?
    private let payload: [UInt8]?

    /// A failure that carries no error value.
    public init(errorType: String, description: String) {
        self.errorType = errorType
        self.description = description
        mangledType = nil
        payload = nil
    }

    /// `error` as it crosses: with its value, when its type is `Codable`.
    init(_ error: any Error) {
        errorType = String(reflecting: type(of: error))
        description = String(describing: error)
        if type(of: error) is any Decodable.Type, let encodable = error as? any Encodable,
           let name = _mangledTypeName(type(of: error)), let bytes = try? ValueCodec.encode(encodable) {
            (mangledType, payload) = (name, bytes)
        } else {
            (mangledType, payload) = (nil, nil)
        }
    }

    /// The error the job threw, decoded, when its type is `Codable` (and
    /// this program has it: the same build runs the job); nil otherwise.
    public var error: (any Error)? {
        guard let mangledType, let payload,
              let type = _typeByName(mangledType) as? any (Error & Decodable).Type
        else { return nil }
        return try? Self.decode(type, payload)
    }

    private static func decode<E: Error & Decodable>(_ type: E.Type, _ bytes: [UInt8]) throws -> any Error {
        try ValueCodec.decode(E.self, from: bytes)
    }
}

/// What is known of a crash beyond its signal: which work the worker was
/// running, and the Swift runtime's own message (`"…/Array.swift:692:
/// Fatal error: Index out of range"`), read from the worker's standard
/// error when the pool forwards it (``WorkerOutput/standardError``).
public struct CrashReport: Sendable, Equatable, Codable {
    /// The last line the Swift runtime wrote before the process trapped
    /// (`Fatal error`, `Precondition failed`, `Assertion failed`), as it
    /// wrote it: file, line and message. Nil when it wrote none, or when
    /// the worker's standard error was not read (a pool's workers' is read
    /// unless ``WorkerOutput/Mode/inherited``; a lone child's only with
    /// ``ChildProcess/capturesOutput``).
    public var message: String?
    /// The indices, in the call's input, of the items the worker was running
    /// (one index unless the call is chunked); nil for a single task.
    public var items: Range<Int>?
    /// The type of the work, demangled (`"MyApp.Resize"`); nil for a closure.
    public var work: String?
    /// The stack the Swift runtime printed after ``message`` (its `Current
    /// stack trace:` frames, innermost first, as it wrote them: image,
    /// address, symbol or offset — `addr2line -e EXECUTABLE` turns an
    /// offset into a file and line), at most 64 frames; nil when it printed
    /// none or the worker's standard error was not read. The runtime prints
    /// this stack only when its backtracer is off (`SWIFT_BACKTRACE=enable=no`
    /// in the environment the worker started with).
    public var backtrace: [String]?
    /// What the worker wrote while it ran the unit that crashed, when its
    /// pool captures output (``WorkerOutput/Mode/captured``); for a lone
    /// child, everything it wrote, when it ran with
    /// ``ChildProcess/capturesOutput``.
    public var output: CapturedOutput?

    public init(message: String? = nil, items: Range<Int>? = nil, work: String? = nil, backtrace: [String]? = nil, output: CapturedOutput? = nil) {
        self.message = message
        self.items = items
        self.work = work
        self.backtrace = backtrace
        self.output = output
    }

    /// Takes the runtime's message and the stack after it — `lastWords`, read
    /// from the process's standard error — if `signal` is a trap's: no other
    /// death has them.
    mutating func take(_ lastWords: (message: String?, backtrace: [String]), signal: Int32) {
        guard [SIGILL, SIGTRAP, SIGABRT].contains(signal) else { return }
        message = lastWords.message
        if !lastWords.backtrace.isEmpty { backtrace = lastWords.backtrace }
    }

    func describe(signal: Int32) -> String {
        var text = "the child was killed by \(Signal.name(signal))"
        if let cause = Signal.explanation(signal) { text += " (\(cause))" }
        switch (items, work) {
        case let (items?, work?): text += " running \(Self.describe(items)) of \(work)"
        case let (items?, nil): text += " running \(Self.describe(items))"
        case let (nil, work?): text += " running \(work)"
        case (nil, nil): break
        }
        if let message { text += ": \(message)" }
        return text
    }

    private static func describe(_ items: Range<Int>) -> String {
        items.count == 1 ? "item \(items.lowerBound)" : "items \(items.lowerBound)..<\(items.upperBound)"
    }

    /// Whether `line` is a frame of the stack the Swift runtime prints after
    /// its message: `"3    libswiftCore.so    0x00007f… symbol + 221"`.
    static func isBacktraceFrame(_ line: String) -> Bool {
        let fields = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: true)
        return fields.count >= 3 && fields[0].allSatisfy(\.isNumber) && fields[2].hasPrefix("0x")
    }

    /// Whether `line` is the Swift runtime's fatal-error line.
    static func isRuntimeMessage(_ line: String) -> Bool {
        line.contains("Fatal error") || line.contains("Precondition failed") || line.contains("Assertion failed")
    }
}

/// Signal numbers and their names.
public enum Signal {
    /// What a crash by `signal` usually means, for an error message.
    public static func explanation(_ signal: Int32) -> String? {
        switch signal {
        case SIGILL, SIGTRAP:
            "a Swift runtime trap: a fatalError, a failed precondition, an index out of range, an arithmetic overflow or a nil unwrapped"
        case SIGSEGV, SIGBUS: "a bad memory access"
        case SIGABRT: "abort(): a failed C assertion, a corrupted heap or an uncaught C++ exception"
        case SIGFPE: "an arithmetic fault, such as an integer division by zero"
        case SIGKILL: "killed: by the kernel (out of memory), by the pool, or by someone"
        case SIGXCPU: "past its CPU time limit"
        default: nil
        }
    }

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

    /// The duration in whole nanoseconds (saturating).
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? .max : scaled.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue
    }
}
