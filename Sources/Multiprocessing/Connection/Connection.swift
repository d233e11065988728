import Glibc
import Synchronization
import SystemPackage

/// One end of a channel between processes: Python's `Connection`.
///
/// Sends and receives `Codable` values (``send(_:)``, ``receive(_:)``) and raw
/// messages (``sendBytes(_:)``, ``receiveBytes()``), each as one
/// length-prefixed frame. Sending and receiving may happen on two threads at
/// once; two threads receiving at once take whole messages in turn.
///
/// Make a pair with ``pipe(duplex:)`` (over OS pipes: the fastest channel
/// between two processes on Linux); accept or dial one with ``Listener``
/// and ``Client``. A connection passes to a child process by every start
/// method: a forked closure captures it, and a ``ProcessJob`` holding one
/// carries its descriptor to the child.
public final class Connection: @unchecked Sendable {  // the descriptor is immutable; buffers are behind locks
    /// The descriptor to wait on for receiving: a socket, or the read end of
    /// a pipe (for a send-only end, its write end).
    public let fileDescriptor: FileDescriptor
    /// Where messages are written: the same socket, or a pipe's write end.
    internal let writeDescriptor: FileDescriptor
    /// Whether the descriptors are pipes (written with `write`, not `send`).
    internal let isPipe: Bool
    /// Whether this end can receive.
    public let readable: Bool
    /// Whether this end can send.
    public let writable: Bool

    private let isClosed = Atomic<Bool>(false)
    private let receiveBuffer = Locked(ReceiveBuffer())
    private let sendLock = Locked(())

    /// Messages up to this size are received into storage of their full size
    /// at once; a larger claim grows its storage only as bytes arrive.
    static let eagerAllocationLimit = 64 << 20

    /// A connection over one socket.
    internal init(fileDescriptor: FileDescriptor, readable: Bool = true, writable: Bool = true) {
        self.fileDescriptor = fileDescriptor
        self.writeDescriptor = fileDescriptor
        self.isPipe = false
        self.readable = readable
        self.writable = writable
    }

    /// A connection over pipes: `read` and/or `write` ends.
    internal init(readEnd: FileDescriptor?, writeEnd: FileDescriptor?) {
        Syscall.ignoreBrokenPipeSignal()
        self.fileDescriptor = readEnd ?? writeEnd!
        self.writeDescriptor = writeEnd ?? readEnd!
        self.isPipe = true
        self.readable = readEnd != nil
        self.writable = writeEnd != nil
    }

    deinit {
        if !isClosed.load(ordering: .acquiring) { releaseDescriptors() }
    }

    private func releaseDescriptors() {
        Syscall.close(fileDescriptor)
        if writeDescriptor != fileDescriptor { Syscall.close(writeDescriptor) }
    }

    /// A connected pair (Python's `Pipe()`): both ends send and receive when
    /// `duplex`, else the first only receives and the second only sends.
    ///
    /// Made of OS pipes (two for a duplex pair): on Linux they carry small
    /// messages between processes about twice as fast as a socket pair. The
    /// first pipe made sets `SIGPIPE` to ignored if it was at its default,
    /// as CPython does, so that writing to a pipe nobody reads fails with
    /// `EPIPE` rather than killing the process.
    public static func pipe(duplex: Bool = true) throws -> (Connection, Connection) {
        let first = try Syscall.pipe()
        guard duplex else {
            return (Connection(readEnd: first.readEnd, writeEnd: nil), Connection(readEnd: nil, writeEnd: first.writeEnd))
        }
        let second: (readEnd: FileDescriptor, writeEnd: FileDescriptor)
        do {
            second = try Syscall.pipe()
        } catch {
            Syscall.close(first.readEnd)
            Syscall.close(first.writeEnd)
            throw error
        }
        return (Connection(readEnd: first.readEnd, writeEnd: second.writeEnd),
                Connection(readEnd: second.readEnd, writeEnd: first.writeEnd))
    }

    /// Closes this end; the peer then receives end of file. Idempotent.
    public func close() {
        if !isClosed.exchange(true, ordering: .acquiringAndReleasing) {
            releaseDescriptors()
        }
    }

    /// Whether ``close()`` was called.
    public var closed: Bool { isClosed.load(ordering: .acquiring) }

    private func check(reading: Bool) throws(ConnectionError) {
        if isClosed.load(ordering: .acquiring) { throw .closed }
        if reading && !readable { throw .notReadable }
        if !reading && !writable { throw .notWritable }
    }

    // MARK: - Sending

    /// Sends a value as one message. Blocks until the bytes are handed to the
    /// kernel, which is at once unless the peer has stopped reading.
    public func send<T: Encodable>(_ value: T) throws {
        try check(reading: false)
        if T.self == Int.self {
            // A number's frame is made on the stack: no allocation.
            return try withUnsafeTemporaryAllocation(byteCount: Frame.headerSize + ValueCodec.integerCapacity, alignment: 8) { buffer in
                let count = ValueCodec.encodeInteger(_identityCast(value, to: Int.self), into: UnsafeMutableRawBufferPointer(rebasing: buffer[Frame.headerSize...]))
                buffer.storeBytes(of: UInt64(count).littleEndian, as: UInt64.self)
                try sendLock.withLock { _ in try sendAll(UnsafeRawBufferPointer(rebasing: buffer[..<(Frame.headerSize + count)])) }
            }
        }
        let frame = try ValueCodec.encodeFrame(value)
        try sendLock.withLock { _ in
            try frame.withUnsafeBytes { try sendAll($0) }
        }
    }

    /// Sends raw bytes as one message (Python's `send_bytes`).
    public func sendBytes(_ bytes: some Sequence<UInt8>) throws {
        try check(reading: false)
        let sent: Void? = try bytes.withContiguousStorageIfAvailable { try sendFrame(UnsafeRawBufferPointer($0)) }
        if sent == nil {
            let copy = Array(bytes)
            try copy.withUnsafeBytes { try sendFrame($0) }
        }
    }

    /// Sends the bytes of `buffer` as one message.
    public func sendBytes(_ buffer: UnsafeRawBufferPointer) throws {
        try check(reading: false)
        try sendFrame(buffer)
    }

    private func sendFrame(_ payload: UnsafeRawBufferPointer) throws {
        try sendLock.withLock { _ in
            if payload.count <= 64 * 1024 {
                // Header and payload in one system call.
                var frame = [UInt8](unsafeUninitializedCapacity: Frame.headerSize + payload.count) { buffer, count in
                    let header = UInt64(payload.count).littleEndian
                    withUnsafeBytes(of: header) { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: $0) }
                    if payload.count > 0 {
                        UnsafeMutableRawBufferPointer(rebasing: UnsafeMutableRawBufferPointer(buffer)[Frame.headerSize...]).copyMemory(from: payload)
                    }
                    count = Frame.headerSize + payload.count
                }
                try frame.withUnsafeMutableBytes { try sendAll(UnsafeRawBufferPointer($0)) }
            } else {
                try Frame.header(for: payload.count).withUnsafeBytes { try sendAll($0) }
                try sendAll(payload)
            }
        }
    }

    /// Sends `head` and `body` as one message without joining them first
    /// (the body may be large: it is written as it is).
    internal func sendBytes(head: [UInt8], body: [UInt8]) throws {
        try check(reading: false)
        if body.count <= 64 * 1024 {
            try sendBytes(head + body)
            return
        }
        try sendLock.withLock { _ in
            try (Frame.header(for: head.count + body.count) + head).withUnsafeBytes { try sendAll($0) }
            try body.withUnsafeBytes { try sendAll($0) }
        }
    }

    private func sendAll(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            offset += isPipe ? try Syscall.write(writeDescriptor, rest) : try Syscall.send(writeDescriptor, rest)
        }
    }

    /// For tests: writes `bytes` as they are, framed or not.
    internal func sendRaw(_ bytes: [UInt8]) throws {
        try sendLock.withLock { _ in try bytes.withUnsafeBytes { try sendAll($0) } }
    }

    // MARK: - Receiving

    /// Receives the next message and decodes it as `type`. Blocks until one arrives.
    ///
    /// - Throws: ``WireError/endOfFile`` once the peer has closed, or a
    ///   ``WireError`` for a truncated or corrupt message.
    @available(*, noasync, message: "use the async receive(_:)")
    public func receive<T: Decodable>(_ type: T.Type = T.self) throws -> T {
        try check(reading: true)
        if T.self == Int.self, let number = try receiveInteger() { return _identityCast(number, to: T.self) }
        return try ValueCodec.decode(T.self, from: try receiveFrame())
    }

    /// The next message decoded as a number straight from the receive
    /// buffer, when it is one; nil (nothing taken) when it is not.
    private func receiveInteger() throws -> Int? {
        try receiveBuffer.withLock { state in
            let length = try state.nextLength(from: fileDescriptor)
            guard length <= ValueCodec.integerCapacity else { return nil }
            return try state.peekPayload(length, from: fileDescriptor) { ValueCodec.decodeInteger($0) }
        }
    }

    /// Receives the next message as raw bytes (Python's `recv_bytes`).
    ///
    /// - Parameter maxLength: a message longer than this is refused with
    ///   ``ConnectionError/bufferTooSmall(needed:)`` and stays queued.
    @available(*, noasync, message: "use the async receiveBytes()")
    public func receiveBytes(maxLength: Int? = nil) throws -> [UInt8] {
        try check(reading: true)
        return try receiveFrame(maxLength: maxLength)
    }

    /// Receives the next message into `buffer` (Python's `recv_bytes_into`);
    /// returns its length.
    ///
    /// - Throws: ``ConnectionError/bufferTooSmall(needed:)`` if it does not
    ///   fit; the message then stays queued.
    @available(*, noasync, message: "use the async receiveBytes()")
    public func receiveBytes(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try check(reading: true)
        return try receiveBuffer.withLock { state in
            let length = try state.nextLength(from: fileDescriptor)
            guard length <= buffer.count else { throw ConnectionError.bufferTooSmall(needed: length) }
            try state.take(length, into: buffer, from: fileDescriptor)
            return length
        }
    }

    private func receiveFrame(maxLength: Int? = nil) throws -> [UInt8] {
        try receiveBuffer.withLock { state in
            let length = try state.nextLength(from: fileDescriptor)
            if let maxLength, length > maxLength { throw ConnectionError.bufferTooSmall(needed: length) }
            return try state.takeArray(length, from: fileDescriptor)
        }
    }

    /// Whether bytes of a message were already read ahead into the buffer.
    internal var hasBufferedBytes: Bool { receiveBuffer.withLock { $0.hasBufferedBytes } }

    /// Whether a message (or end of file) can be received without blocking,
    /// waiting at most `timeout` for one (nil: forever).
    @available(*, noasync, message: "use the async waitUntilReadable()")
    public func poll(timeout: Duration? = .zero) throws -> Bool {
        try check(reading: true)
        if hasBufferedBytes { return true }
        let events = try Syscall.poll([fileDescriptor], timeout: Self.milliseconds(timeout))
        return events[0] != 0
    }

    /// Checks for a message for a short while before the caller blocks on
    /// it: the answer to a request often arrives within microseconds, and a
    /// thread that has not gone to sleep needs no wake-up (on this kind of
    /// VM, a wake-up across CPUs costs more than the whole exchange).
    internal func spinUntilReadable(for duration: Duration) {
        let deadline = ContinuousClock.now + duration
        while ContinuousClock.now < deadline {
            if (try? poll(timeout: .zero)) != false { return }
            sched_yield()
        }
    }

    static func milliseconds(_ timeout: Duration?) -> Int32 {
        guard let timeout else { return -1 }
        if timeout <= .zero { return 0 }
        let (seconds, attoseconds) = timeout.components
        return Int32(clamping: seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
    }

    // MARK: - Async

    /// Waits, without blocking a thread, until a message or end of file can be received.
    public func waitUntilReadable() async throws {
        try check(reading: true)
        if hasBufferedBytes { return }
        try await IOWatcher.shared.waitUntilReadable([fileDescriptor])
    }

    /// Receives the next message and decodes it as `type`, waiting without blocking a thread.
    public func receive<T: Decodable>(_ type: T.Type = T.self) async throws -> T {
        try await waitUntilReadable()
        return try ValueCodec.decode(T.self, from: try receiveFrame())
    }

    /// Receives the next message as raw bytes, waiting without blocking a thread.
    public func receiveBytes(maxLength: Int? = nil) async throws -> [UInt8] {
        try await waitUntilReadable()
        return try receiveFrame(maxLength: maxLength)
    }
}

/// Bytes read ahead of the message being received.
private struct ReceiveBuffer {
    private var storage = [UInt8](repeating: 0, count: 64 * 1024)
    private var start = 0
    private var end = 0

    var hasBufferedBytes: Bool { end > start }
    private var buffered: Int { end - start }

    /// Reads at least `count` bytes into the buffer (blocking).
    private mutating func fill(atLeast count: Int, from fd: FileDescriptor) throws {
        if start > 0 && storage.count - start < count {
            storage.withUnsafeMutableBytes { raw in
                raw.baseAddress!.copyMemory(from: raw.baseAddress! + start, byteCount: end - start)
            }
            end -= start
            start = 0
        }
        while buffered < count {
            let n = try storage.withUnsafeMutableBytes { raw in
                try Syscall.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: raw[end...]))
            }
            if n == 0 {
                if buffered == 0 { throw WireError.endOfFile }
                throw WireError.truncated(expected: count, received: buffered)
            }
            end += n
        }
    }

    /// The length of the next message, whose header stays buffered.
    mutating func nextLength(from fd: FileDescriptor) throws -> Int {
        try fill(atLeast: Frame.headerSize, from: fd)
        return try Frame.length(fromHeader: storage[start..<(start + Frame.headerSize)])
    }

    /// Reads the payload of the next message (its header already buffered)
    /// and gives it to `body`; the message is consumed only if `body`
    /// returns a value.
    mutating func peekPayload<R>(_ length: Int, from fd: FileDescriptor, _ body: (UnsafeRawBufferPointer) -> R?) throws -> R? {
        try fill(atLeast: Frame.headerSize + length, from: fd)
        let payloadStart = start + Frame.headerSize
        guard let result = storage.withUnsafeBytes({ body(UnsafeRawBufferPointer(rebasing: $0[payloadStart..<(payloadStart + length)])) }) else { return nil }
        start = payloadStart + length
        if start == end { start = 0; end = 0 }
        return result
    }

    /// Consumes the header and `length` payload bytes into `buffer`.
    mutating func take(_ length: Int, into buffer: UnsafeMutableRawBufferPointer, from fd: FileDescriptor) throws {
        start += Frame.headerSize
        let fromBuffer = min(length, buffered)
        storage.withUnsafeBytes { raw in
            if fromBuffer > 0 {
                UnsafeMutableRawBufferPointer(rebasing: buffer[..<fromBuffer]).copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[start..<(start + fromBuffer)]))
            }
        }
        start += fromBuffer
        var received = fromBuffer
        while received < length {
            let n = try Syscall.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[received..<length]))
            if n == 0 { throw WireError.truncated(expected: length, received: received) }
            received += n
        }
        if start == end { start = 0; end = 0 }
    }

    /// Consumes the header and returns the `length` payload bytes.
    mutating func takeArray(_ length: Int, from fd: FileDescriptor) throws -> [UInt8] {
        if length <= Connection.eagerAllocationLimit {
            var result = [UInt8](repeating: 0, count: length)
            try result.withUnsafeMutableBytes { try take(length, into: $0, from: fd) }
            return result
        }
        // A huge claim: grow only as bytes really arrive.
        var result: [UInt8] = []
        result.reserveCapacity(Connection.eagerAllocationLimit)
        start += Frame.headerSize
        let fromBuffer = min(length, buffered)
        result.append(contentsOf: storage[start..<(start + fromBuffer)])
        start += fromBuffer
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while result.count < length {
            let wanted = min(chunk.count, length - result.count)
            let n = try chunk.withUnsafeMutableBytes { try Syscall.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: $0[..<wanted])) }
            if n == 0 { throw WireError.truncated(expected: length, received: result.count) }
            result.append(contentsOf: chunk[..<n])
        }
        if start == end { start = 0; end = 0 }
        return result
    }
}

extension Connection: Codable {
    private enum CodingKeys: String, CodingKey {
        case descriptor, writeDescriptor, readable, writable, isPipe
    }

    /// Encodes the connection for a child process that this process starts:
    /// its descriptor travels beside the job.
    ///
    /// - Throws: `EncodingError` when not encoded for a child process.
    public func encode(to encoder: any Encoder) throws {
        let attachments = try DescriptorAttachments.of(encoder, encoding: self, what: "a Connection")
        if closed { throw ConnectionError.closed }
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(try attachments.attach(fileDescriptor), forKey: .descriptor)
        if writeDescriptor != fileDescriptor {
            try container.encode(try attachments.attach(writeDescriptor), forKey: .writeDescriptor)
        }
        try container.encode(readable, forKey: .readable)
        try container.encode(writable, forKey: .writable)
        try container.encode(isPipe, forKey: .isPipe)
    }

    /// Decodes a connection in a child process, taking the descriptor that
    /// came with the job.
    public convenience init(from decoder: any Decoder) throws {
        let attachments = try DescriptorAttachments.of(decoder, what: "a Connection")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let first = try attachments.take(try container.decode(Int.self, forKey: .descriptor))
        let second = try container.decodeIfPresent(Int.self, forKey: .writeDescriptor).map { index throws in try attachments.take(index) }
        let readable = try container.decode(Bool.self, forKey: .readable)
        let writable = try container.decode(Bool.self, forKey: .writable)
        if try container.decode(Bool.self, forKey: .isPipe) {
            self.init(readEnd: readable ? first : nil, writeEnd: writable ? (second ?? first) : nil)
        } else {
            self.init(fileDescriptor: first, readable: readable, writable: writable)
        }
    }
}
