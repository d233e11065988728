import Foundation

/// Encodes values that cross a process boundary.
///
/// Stop-gap: JSON until the binary encoding of the wire issue lands; every
/// caller goes through here, so that change is made in one place.
internal enum ValueCodec {
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let encoder = JSONEncoder()
        return Array(try encoder.encode(Outgoing(value: value)))
    }

    static func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws(WireError) -> T {
        do {
            return try JSONDecoder().decode(Incoming<T>.self, from: Data(bytes)).value
        } catch {
            throw .corrupt("\(T.self): \(error)")
        }
    }

    /// JSON needs a container at the top; a bare `Int` is not a document.
    private struct Outgoing<Value: Encodable>: Encodable {
        var value: Value
    }

    private struct Incoming<Value: Decodable>: Decodable {
        var value: Value
    }
}
