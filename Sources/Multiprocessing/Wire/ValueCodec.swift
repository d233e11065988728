/// Encodes values that cross a process boundary, in the wire format of
/// ``WireEncoder``. Every crossing goes through here.
@usableFromInline
internal enum ValueCodec {
    static func encode<T: Encodable>(_ value: T, attachments: DescriptorAttachments? = nil) throws -> [UInt8] {
        // A lone integer (a queue of numbers, a pool's index) needs no
        // encoder: the same bytes, one allocation.
        if T.self == Int.self { return encodeInteger(_identityCast(value, to: Int.self)) }
        return try WireEncoder(attachments: attachments).encode(value)
    }

    /// The most bytes a lone integer takes: a tag and a 10-byte varint.
    static let integerCapacity = 11

    /// Tag and zigzag varint of `value`, as ``WireWriter/signed(_:)`` writes
    /// them, into `buffer` (at least ``integerCapacity`` bytes); returns the count.
    static func encodeInteger(_ value: Int, into buffer: UnsafeMutableRawBufferPointer) -> Int {
        buffer[0] = WireTag.signed.rawValue
        var rest = UInt64(bitPattern: Int64((value << 1) ^ (value >> 63)))
        var count = 1
        while rest >= 0x80 {
            buffer[count] = UInt8(truncatingIfNeeded: rest) | 0x80
            rest >>= 7
            count += 1
        }
        buffer[count] = UInt8(rest)
        return count + 1
    }

    private static func encodeInteger(_ value: Int) -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: integerCapacity) { buffer, count in
            count = encodeInteger(value, into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    /// The lone integer that fills `bytes`, or nil: then the general path
    /// decodes it (and says what is wrong with a corrupt one).
    static func decodeInteger(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.count >= 2, bytes.count <= integerCapacity, bytes[0] == WireTag.signed.rawValue else { return nil }
        var value: UInt64 = 0
        var shift: UInt64 = 0
        for index in 1..<bytes.count {
            let byte = bytes[index]
            guard (byte & 0x80 == 0) == (index == bytes.count - 1), !(shift == 63 && byte > 1) else { return nil }
            value |= UInt64(byte & 0x7F) << shift
            shift += 7
        }
        return Int(Int64(bitPattern: (value >> 1) ^ (0 &- (value & 1))))
    }

    private static func decodeInteger(_ bytes: [UInt8], from start: Int, to end: Int) -> Int? {
        guard start >= 0, start <= end, end <= bytes.count else { return nil }
        return bytes.withUnsafeBytes { decodeInteger(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
    }

    /// Asks the runtime, here, the conformance questions that encoding or
    /// decoding a `T` asks (is it an array of numbers, an array of values).
    ///
    /// The answers are cached process-wide, and a forked child inherits the
    /// cache. A child that must ask a new question takes the runtime's
    /// conformance lock, which another thread of the parent may have held at
    /// the instant of the fork: the child then waits for ever (seen: a pool
    /// worker encoding its initializer's result). So the library asks first,
    /// in the parent, about the types its forked children will write.
    @usableFromInline
    static func prepare<T>(_ type: T.Type) {
        if WireWriter.isScalar(type) { return }
        _ = type is any WireRawArray.Type
        _ = type is any WireEncodableArray.Type
        _ = type is any WireDecodableArray.Type
    }

    /// The frame (header and payload) of `value`, ready to send.
    static func encodeFrame<T: Encodable>(_ value: T) throws -> [UInt8] {
        try WireEncoder(attachments: nil).encodeFrame(value)
    }

    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], startingAt start: Int = 0, endingAt end: Int? = nil, attachments: DescriptorAttachments? = nil) throws(WireError) -> T {
        if T.self == Int.self, let value = decodeInteger(bytes, from: start, to: end ?? bytes.count) {
            return _identityCast(value, to: T.self)
        }
        do {
            return try WireDecoder(attachments: attachments).decode(T.self, from: bytes, startingAt: start, endingAt: end)
        } catch let error as WireError {
            throw error
        } catch let DecodingError.dataCorrupted(context) {
            throw .corrupt("\(T.self) at \(context.codingPath.map(\.stringValue)): \(context.debugDescription)")
        } catch {
            throw .corrupt("\(T.self): \(error)")
        }
    }
}

/// The library's binary encoding of `Codable` values: what crosses between
/// processes. Compact, with raw-byte copies for arrays of numbers, `[UInt8]`,
/// `Data` and `String`; decoding checks every length, so corrupt input is a
/// ``WireError``, never a crash.
public enum WireCodec {
    /// Encodes `value`.
    public static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        try ValueCodec.encode(value)
    }

    /// Decodes a `T` from bytes made by ``encode(_:)``.
    public static func decode<T: Decodable>(_ type: T.Type = T.self, from bytes: [UInt8]) throws(WireError) -> T {
        try decode(type, from: bytes, startingAt: 0)
    }

    /// Decodes the value encoded in `bytes` from `start` on.
    public static func decode<T: Decodable>(_ type: T.Type = T.self, from bytes: [UInt8], startingAt start: Int) throws(WireError) -> T {
        guard start >= 0, start <= bytes.count else { throw .corrupt("an offset of \(start) in \(bytes.count) bytes") }
        return try ValueCodec.decode(T.self, from: bytes, startingAt: start)
    }
}
