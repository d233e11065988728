import Glibc
import SystemPackage

/// Where a pool's workers' standard output and standard error go.
///
/// ```swift
/// // Every line a worker prints reaches this process's stdout as
/// // "[PoolWorker-2] …", never cut in two by another worker's line.
/// let pool = try ProcessPool(output: WorkerOutput(standardOutput: .prefixed))
/// ```
///
/// By default a worker's standard output is its parent's own and its
/// standard error is ``Mode/forwarded``: the pool reads it, so that a
/// worker that traps fails its task with the Swift runtime's message in
/// ``CrashReport/message``.
public struct WorkerOutput: Sendable, Hashable {
    /// What happens to one of a worker's output streams.
    public enum Mode: Sendable, Hashable {
        /// The worker writes to the parent's own descriptor, as it is.
        case inherited
        /// The pool reads the stream and writes it to the parent's same
        /// descriptor a whole line at a time (a line the worker left
        /// unfinished when it ended is finished with a newline).
        case forwarded
        /// As ``forwarded``, with the worker's name before each line
        /// (`"[PoolWorker-3] "`).
        case prefixed
        /// The pool keeps what the worker writes while it runs each unit of
        /// work (a task, or a chunk of a map) and hands it back with that
        /// unit's outcome, never to the parent's stream: in
        /// ``AsyncResult/output`` for `apply` and `applyAsync`, whether the
        /// task returned, threw or crashed, in ``MapResult/outputs`` chunk by
        /// chunk for `mapAsync`, and in
        /// ``CrashReport/output`` for a unit whose worker crashed in any call
        /// (`imap`'s other chunks' output is not kept). At most the last
        /// ``CapturedOutput/limit`` bytes of each stream are kept. The
        /// worker writes into a memory file (`memfd_create`) that the pool
        /// reads; the runtime's message of a trap is still read from it.
        case captured
    }

    /// The workers' standard output.
    public var standardOutput: Mode
    /// The workers' standard error; the runtime's message of a worker
    /// that traps is read from it unless it is ``Mode/inherited``.
    public var standardError: Mode

    public init(standardOutput: Mode = .inherited, standardError: Mode = .forwarded) {
        self.standardOutput = standardOutput
        self.standardError = standardError
    }
}

/// What a worker wrote while it ran one unit of work, when its pool
/// captures its output (``WorkerOutput/Mode/captured``).
public struct CapturedOutput: Sendable, Equatable, Codable {
    /// The most of each stream kept: its last mebibyte.
    public static let limit = 1 << 20

    /// What it wrote to standard output (empty unless captured).
    public var standardOutput: [UInt8]
    /// What it wrote to standard error (empty unless captured).
    public var standardError: [UInt8]
    /// Whether a stream was longer than ``limit`` and only its end is kept.
    public var truncated: Bool

    public init(standardOutput: [UInt8] = [], standardError: [UInt8] = [], truncated: Bool = false) {
        self.standardOutput = standardOutput
        self.standardError = standardError
        self.truncated = truncated
    }

    /// Standard output as text (invalid UTF-8 repaired).
    public var standardOutputText: String { String(decoding: standardOutput, as: UTF8.self) }
    /// Standard error as text (invalid UTF-8 repaired).
    public var standardErrorText: String { String(decoding: standardError, as: UTF8.self) }

    /// Which of the worker's streams are captured: bit 0 stdout, bit 1 stderr.
    static func streams(of output: WorkerOutput) -> UInt8 {
        (output.standardOutput == .captured ? 1 : 0) | (output.standardError == .captured ? 2 : 0)
    }

    /// In the worker, before a unit runs: empties the captured streams.
    static func begin(_ streams: UInt8) {
        guard streams != 0 else { return }
        Syscall.flushStandardStreams()
        for (bit, fd) in [(UInt8(1), STDOUT_FILENO), (2, STDERR_FILENO)] where streams & bit != 0 {
            let descriptor = FileDescriptor(rawValue: fd)
            try? Syscall.resize(descriptor, to: 0)
            try? Syscall.rewind(descriptor)
        }
    }

    /// In the worker, after a unit ran: what it wrote.
    static func collect(_ streams: UInt8) -> CapturedOutput {
        Syscall.flushStandardStreams()
        return read(standardOutput: streams & 1 != 0 ? FileDescriptor(rawValue: STDOUT_FILENO) : nil,
                    standardError: streams & 2 != 0 ? FileDescriptor(rawValue: STDERR_FILENO) : nil)
    }

    /// Reads the memory files a worker writes its captured streams into.
    static func read(standardOutput: FileDescriptor?, standardError: FileDescriptor?) -> CapturedOutput {
        var output = CapturedOutput()
        if let standardOutput { output.standardOutput = tail(of: standardOutput, truncated: &output.truncated) }
        if let standardError { output.standardError = tail(of: standardError, truncated: &output.truncated) }
        return output
    }

    private static func tail(of descriptor: FileDescriptor, truncated: inout Bool) -> [UInt8] {
        guard let size = try? Syscall.descriptorSize(descriptor), size > 0 else { return [] }
        let start = max(0, size - limit)
        if start > 0 { truncated = true }
        var bytes = [UInt8](repeating: 0, count: size - start)
        let count = (try? bytes.withUnsafeMutableBytes { try Syscall.read(descriptor, at: start, into: $0) }) ?? 0
        bytes.removeSubrange(count...)
        return bytes
    }

    /// The reply's section that carries it: each stream's length (4 bytes,
    /// little-endian), its bytes, and a byte that is 1 if truncated.
    func wire() -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(standardOutput.count + standardError.count + 9)
        for stream in [standardOutput, standardError] {
            withUnsafeBytes(of: UInt32(stream.count).littleEndian) { bytes += $0 }
            bytes += stream
        }
        bytes.append(truncated ? 1 : 0)
        return bytes
    }

    /// Reads the section at `offset` in `bytes`; returns it and the offset after it.
    static func decode(_ bytes: [UInt8], at offset: Int) throws(WireError) -> (CapturedOutput, Int) {
        var at = offset
        var streams: [[UInt8]] = []
        for _ in 0..<2 {
            guard bytes.count - at >= 4 else { throw .corrupt("a captured output cut short") }
            let length = Int(bytes[at]) | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2]) << 16 | Int(bytes[at + 3]) << 24
            at += 4
            guard length <= bytes.count - at else { throw .corrupt("a captured output of \(length) bytes in \(bytes.count - at)") }
            streams.append(Array(bytes[at..<(at + length)]))
            at += length
        }
        guard at < bytes.count else { throw .corrupt("a captured output cut short") }
        let truncated = bytes[at] != 0
        return (CapturedOutput(standardOutput: streams[0], standardError: streams[1], truncated: truncated), at + 1)
    }

    /// The runtime's fatal message and the stack after it, in `standardError`.
    func runtimeMessage() -> (message: String?, backtrace: [String]) {
        var scanner = RuntimeMessageScanner()
        for line in standardErrorText.split(separator: "\n", omittingEmptySubsequences: false) { scanner.take(String(line)) }
        return (scanner.message, scanner.backtrace)
    }
}

/// Finds the Swift runtime's last fatal message in lines of a worker's
/// standard error, and the stack it printed after it.
struct RuntimeMessageScanner {
    private(set) var message: String?
    private(set) var backtrace: [String] = []
    /// Whether the lines since the message are still its stack.
    private var inBacktrace = false

    mutating func take(_ line: String) {
        if CrashReport.isRuntimeMessage(line) {
            message = line
            backtrace = []
            inBacktrace = true
        } else if inBacktrace {
            if CrashReport.isBacktraceFrame(line) {
                if backtrace.count < 64 { backtrace.append(line) }
            } else if !line.hasPrefix("Current stack trace") {
                inBacktrace = false
            }
        }
    }
}

/// A descriptor a worker takes as its standard output or error: it
/// travels with the worker's job (``DescriptorAttachments``).
internal struct PassedDescriptor: Codable, @unchecked Sendable {  // a descriptor number, owned by whoever decodes it
    let descriptor: FileDescriptor

    init(_ descriptor: FileDescriptor) { self.descriptor = descriptor }

    func encode(to encoder: any Encoder) throws {
        let attachments = try DescriptorAttachments.of(encoder, encoding: self, what: "a worker's output descriptor")
        var container = encoder.singleValueContainer()
        try container.encode(try attachments.attach(descriptor))
    }

    init(from decoder: any Decoder) throws {
        let attachments = try DescriptorAttachments.of(decoder, what: "a worker's output descriptor")
        descriptor = try attachments.take(try decoder.singleValueContainer().decode(Int.self))
    }
}

/// The pool's end of one worker output stream it forwards: it reads what
/// the worker wrote, writes whole lines to `destination` and keeps the last
/// line that was the runtime's fatal message, with the stack it printed
/// after it. Used by the dispatcher thread only.
internal final class OutputRelay: @unchecked Sendable {  // one thread uses it
    let source: FileDescriptor
    private let destination: Int32
    private let prefix: [UInt8]
    /// The bytes after the last newline read.
    private var partial: [UInt8] = []
    /// The last line read that is the Swift runtime's fatal message (it may
    /// be followed by a stack trace of any length).
    var runtimeMessage: String? { scanner.message }
    /// The frames of the stack the runtime printed after that message.
    var runtimeBacktrace: [String] { scanner.backtrace }
    private var scanner = RuntimeMessageScanner()
    /// The worker's end closed (or the pipe failed): nothing more to read.
    private(set) var ended = false

    /// Takes ownership of `source` (non-blocking from here on).
    init(source: FileDescriptor, destination: Int32, prefix: String?) {
        self.source = source
        self.destination = destination
        self.prefix = prefix.map { Array("[\($0)] ".utf8) } ?? []
        try? Syscall.setNonBlocking(source, true)
    }

    private var closed = false

    deinit { close() }

    /// Closes the pool's end (once): the worker's later writes fail.
    func close() {
        guard !closed else { return }
        closed = true
        ended = true
        Syscall.close(source)
    }

    /// Reads what is there now and writes its whole lines.
    func drain() {
        guard !ended else { return }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var lines: [UInt8] = []
        while true {
            let count: Int
            do {
                count = try buffer.withUnsafeMutableBytes { try Syscall.read(source, into: $0) }
            } catch Errno.resourceTemporarilyUnavailable {
                break
            } catch {
                ended = true
                break
            }
            if count == 0 {
                ended = true
                break
            }
            var start = 0
            for index in 0..<count where buffer[index] == UInt8(ascii: "\n") {
                partial += buffer[start..<index]
                takePartial(into: &lines)
                start = index + 1
            }
            partial += buffer[start..<count]
            // A line without end is written in pieces rather than held without bound.
            if partial.count > 64 * 1024 { takePartial(into: &lines) }
            if count < buffer.count { break }
        }
        if ended && !partial.isEmpty { takePartial(into: &lines) }
        write(lines)
    }

    /// Ends the line in `partial`: into `lines` (prefixed), and kept if it
    /// is the runtime's message.
    private func takePartial(into lines: inout [UInt8]) {
        lines += prefix
        lines += partial
        lines.append(UInt8(ascii: "\n"))
        scanner.take(String(decoding: partial, as: UTF8.self))
        partial.removeAll(keepingCapacity: true)
    }

    private func write(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw in
                try? Syscall.write(FileDescriptor(rawValue: destination), UnsafeRawBufferPointer(rebasing: raw[offset...]))
            }
            guard let written, written > 0 else { return }  // the parent's own stream is gone: dropped
            offset += written
        }
    }
}
