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
/// line that was the runtime's fatal message. Used by the dispatcher thread only.
internal final class OutputRelay: @unchecked Sendable {  // one thread uses it
    let source: FileDescriptor
    private let destination: Int32
    private let prefix: [UInt8]
    /// The bytes after the last newline read.
    private var partial: [UInt8] = []
    /// The last line read that is the Swift runtime's fatal message (it may
    /// be followed by a stack trace of any length).
    private(set) var runtimeMessage: String?
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
        let line = String(decoding: partial, as: UTF8.self)
        if CrashReport.isRuntimeMessage(line) { runtimeMessage = line }
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
