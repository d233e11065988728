/// Encodes values that cross a process boundary, in the wire format of
/// ``WireEncoder``. Every crossing goes through here.
internal enum ValueCodec {
    static func encode<T: Encodable>(_ value: T, attachments: DescriptorAttachments? = nil) throws -> [UInt8] {
        try WireEncoder(attachments: attachments).encode(value)
    }

    /// The frame (header and payload) of `value`, ready to send.
    static func encodeFrame<T: Encodable>(_ value: T) throws -> [UInt8] {
        try WireEncoder(attachments: nil).encodeFrame(value)
    }

    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], startingAt start: Int = 0, endingAt end: Int? = nil, attachments: DescriptorAttachments? = nil) throws(WireError) -> T {
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
