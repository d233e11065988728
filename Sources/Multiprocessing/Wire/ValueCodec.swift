/// Encodes values that cross a process boundary, in the wire format of
/// ``WireEncoder``. Every crossing goes through here.
internal enum ValueCodec {
    static func encode<T: Encodable>(_ value: T, attachments: DescriptorAttachments? = nil) throws -> [UInt8] {
        try WireEncoder(attachments: attachments).encode(value)
    }

    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], attachments: DescriptorAttachments? = nil) throws(WireError) -> T {
        do {
            return try WireDecoder(attachments: attachments).decode(T.self, from: bytes)
        } catch let error as WireError {
            throw error
        } catch let DecodingError.dataCorrupted(context) {
            throw .corrupt("\(T.self) at \(context.codingPath.map(\.stringValue)): \(context.debugDescription)")
        } catch {
            throw .corrupt("\(T.self): \(error)")
        }
    }
}
