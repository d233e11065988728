import Glibc
import SystemPackage

/// Length-prefixed frames: an 8-byte little-endian length, then the bytes.
internal enum Frame {
    static let headerSize = 8
    /// No frame may claim more than this; a larger claim is corruption and is
    /// refused before anything of that size is allocated.
    static let maximumLength = 1 << 34

    static func header(for count: Int) -> [UInt8] {
        withUnsafeBytes(of: UInt64(count).littleEndian) { Array($0) }
    }

    static func encode(_ payload: [UInt8]) -> [UInt8] {
        header(for: payload.count) + payload
    }

    static func length(fromHeader bytes: some Collection<UInt8>) throws(WireError) -> Int {
        var value: UInt64 = 0
        for (shift, byte) in zip(stride(from: 0, to: 64, by: 8), bytes) {
            value |= UInt64(byte) << UInt64(shift)
        }
        guard value <= UInt64(maximumLength) else {
            throw .frameTooLarge(claimed: value, limit: maximumLength)
        }
        return Int(value)
    }

    /// Writes one frame, waiting for room if the descriptor is non-blocking.
    static func write(_ payload: [UInt8], to fd: FileDescriptor) throws {
        try writeAll(encode(payload), to: fd)
    }

    static func writeAll(_ bytes: [UInt8], to fd: FileDescriptor) throws {
        var offset = 0
        while offset < bytes.count {
            do {
                offset += try bytes.withUnsafeBytes { buffer in
                    try Syscall.send(fd, UnsafeRawBufferPointer(rebasing: buffer[offset...]))
                }
            } catch Errno.wouldBlock {
                _ = try Syscall.poll([fd], events: Int16(POLLOUT), timeout: -1)
            }
        }
    }

    /// Reads one frame from a blocking descriptor.
    static func read(from fd: FileDescriptor) throws -> [UInt8] {
        let header = try readExactly(headerSize, from: fd, atStart: true)
        let count = try length(fromHeader: header)
        return try readExactly(count, from: fd, atStart: false)
    }

    private static func readExactly(_ count: Int, from fd: FileDescriptor, atStart: Bool) throws -> [UInt8] {
        // A claim is believed only as far as bytes arrive: memory for a
        // large one is taken a piece at a time, so a lying length costs
        // nothing (allocating 16 GiB for it would be the crash).
        var bytes = [UInt8](repeating: 0, count: min(count, Connection.eagerAllocationLimit))
        var received = 0
        while received < count {
            if received == bytes.count {
                bytes.append(contentsOf: repeatElement(0, count: min(count - received, max(bytes.count, 1 << 20))))
            }
            let n = try bytes.withUnsafeMutableBytes { buffer in
                try Syscall.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[received...]))
            }
            if n == 0 {
                if atStart && received == 0 { throw WireError.endOfFile }
                throw WireError.truncated(expected: count, received: received)
            }
            received += n
        }
        return bytes
    }
}

/// Accumulates bytes read from a non-blocking descriptor and cuts frames.
internal struct FrameBuffer: Sendable {
    private var bytes: [UInt8] = []
    private(set) var reachedEnd = false

    /// Reads what is available now. Returns false when nothing more is ready.
    mutating func fill(from fd: FileDescriptor) throws -> Bool {
        do {
            // Not zeroed first: only the pages the read fills are touched (a
            // zeroed 64 KiB buffer cost 16 page faults per call, twice per join).
            let chunk = try [UInt8](unsafeUninitializedCapacity: 64 * 1024) { buffer, initialized in
                initialized = try Syscall.read(fd, into: UnsafeMutableRawBufferPointer(buffer))
            }
            if chunk.isEmpty {
                reachedEnd = true
                return false
            }
            append(chunk)
            return true
        } catch Errno.wouldBlock {
            return false
        } catch Errno.connectionReset {
            reachedEnd = true
            return false
        }
    }

    /// Takes bytes received by other means (and the fuzzer's).
    mutating func append(_ received: some Collection<UInt8>) {
        bytes.append(contentsOf: received)
    }

    /// Reads until the descriptor has nothing more to give right now.
    mutating func drain(_ fd: FileDescriptor) throws {
        while try fill(from: fd) {}
    }

    /// The next complete frame, if one has arrived.
    mutating func nextFrame() throws(WireError) -> [UInt8]? {
        guard bytes.count >= Frame.headerSize else { return nil }
        let count = try Frame.length(fromHeader: bytes.prefix(Frame.headerSize))
        guard bytes.count >= Frame.headerSize + count else { return nil }
        let frame = Array(bytes[Frame.headerSize..<(Frame.headerSize + count)])
        bytes.removeFirst(Frame.headerSize + count)
        return frame
    }

    /// Bytes received that do not yet make a whole frame.
    var partialCount: Int { bytes.count }
}
