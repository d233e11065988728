#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

#if _endian(big)
#error("the wire format copies numbers as little-endian raw bytes")
#endif

/// Encodes `Encodable` values in the library's binary wire format (see ``WireTag``).
///
/// Containers write straight into one buffer, so a nested container must be
/// filled before its parent writes its next entry — as every synthesised
/// `Codable` conformance does.
internal struct WireEncoder {
    /// Descriptors met while encoding (connections), sent beside the bytes.
    var attachments: DescriptorAttachments?

    func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let writer = WireWriter()
        try writer.writeValue(value, parent: nil, key: nil, attachments: attachments)
        return writer.bytes
    }

    /// Encodes `value` behind room for a frame header, and fills the header
    /// in: the frame is ready to send with no further copy.
    func encodeFrame<T: Encodable>(_ value: T) throws -> [UInt8] {
        let writer = WireWriter()
        writer.bytes.append(contentsOf: [0, 0, 0, 0, 0, 0, 0, 0])
        try writer.writeValue(value, parent: nil, key: nil, attachments: attachments)
        let length = UInt64(writer.bytes.count - 8).littleEndian
        writer.bytes.withUnsafeMutableBytes { $0.storeBytes(of: length, as: UInt64.self) }
        return writer.bytes
    }
}

/// The buffer every container of one encoding writes to.
internal final class WireWriter {
    var bytes: [UInt8] = []
    var rawArrays = RawArrayMemo()

    init() {
        bytes.reserveCapacity(64)
    }

    @inline(__always) func tag(_ tag: WireTag) { bytes.append(tag.rawValue) }

    @inline(__always) func varint(_ value: UInt64) {
        var value = value
        while value >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        bytes.append(UInt8(value))
    }

    func signed<T: FixedWidthInteger & SignedInteger>(_ value: T) {
        tag(.signed)
        let wide = Int64(value)
        varint(UInt64(bitPattern: (wide << 1) ^ (wide >> 63)))
    }

    func unsigned<T: FixedWidthInteger & UnsignedInteger>(_ value: T) {
        tag(.unsigned)
        varint(UInt64(value))
    }

    func raw(_ buffer: UnsafeRawBufferPointer) {
        bytes.append(contentsOf: buffer)
    }

    func string(_ value: String) {
        tag(.string)
        var value = value
        value.withUTF8 { utf8 in
            varint(UInt64(utf8.count))
            raw(UnsafeRawBufferPointer(utf8))
        }
    }

    func key(_ key: some CodingKey) {
        var name = key.stringValue
        name.withUTF8 { utf8 in
            varint(UInt64(utf8.count))
            raw(UnsafeRawBufferPointer(utf8))
        }
    }

    /// Writes a container header with a count of zero; returns where the count is.
    func containerHeader(_ tag: WireTag) -> Int {
        self.tag(tag)
        let offset = bytes.count
        bytes.append(contentsOf: [0, 0, 0, 0])
        return offset
    }

    func incrementCount(at offset: Int) {
        bytes.withUnsafeMutableBytes { buffer in
            let count = buffer.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
            buffer.storeBytes(of: count &+ 1, toByteOffset: offset, as: UInt32.self)
        }
    }

    func writeValue<T: Encodable>(_ value: T, parent: WireValueEncoder?, key: (any CodingKey)?, attachments: DescriptorAttachments?) throws {
        // Metadata comparisons first: far cheaper than the casts below.
        if T.self == Int.self { return signed(_identityCast(value, to: Int.self)) }
        if T.self == String.self { return string(_identityCast(value, to: String.self)) }
        if T.self == Double.self {
            tag(.double)
            return withUnsafeBytes(of: _identityCast(value, to: Double.self).bitPattern.littleEndian) { raw($0) }
        }
        if T.self == Bool.self { return tag(_identityCast(value, to: Bool.self) ? .trueValue : .falseValue) }
        if T.self == Data.self {
            let data = _identityCast(value, to: Data.self)
            tag(.data)
            varint(UInt64(data.count))
            return data.withUnsafeBytes { raw($0) }
        }
        if rawArrays.rawArrayType(T.self) != nil, let array = value as? any WireRawArray {
            tag(.rawArray)
            bytes.append(type(of: array).elementKind)
            array.withRawBytes { buffer in
                bytes.reserveCapacity(bytes.count + buffer.count + 10)
                varint(UInt64(buffer.count / type(of: array).elementStride))
                raw(buffer)
            }
            return
        }
        let encoder = WireValueEncoder(writer: self, parent: parent, key: key, attachments: attachments)
        try value.encode(to: encoder)
        if !encoder.wroteSomething {
            // A type that encodes nothing at all still takes one value's room.
            _ = containerHeader(.keyed)
        }
    }
}

/// The `Encoder` handed to one value's `encode(to:)`.
internal final class WireValueEncoder: Encoder {
    let writer: WireWriter
    /// The coding path, kept as a parent link and is only built when asked for.
    let parent: WireValueEncoder?
    let key: (any CodingKey)?
    let attachments: DescriptorAttachments?
    var codingPath: [any CodingKey] { (parent?.codingPath ?? []) + (key.map { [$0] } ?? []) }
    var userInfo: [CodingUserInfoKey: Any] {
        attachments.map { [DescriptorAttachments.userInfoKey: $0] } ?? [:]
    }

    /// The count offset of this value's container, once it has one: asking
    /// twice (a subclass and its superclass) gives the same container.
    private var keyedCount: Int?
    private var unkeyedCount: Int?
    private(set) var wroteSomething = false

    init(writer: WireWriter, parent: WireValueEncoder?, key: (any CodingKey)?, attachments: DescriptorAttachments?) {
        self.writer = writer
        self.parent = parent
        self.key = key
        self.attachments = attachments
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if keyedCount == nil {
            keyedCount = writer.containerHeader(.keyed)
            wroteSomething = true
        }
        return KeyedEncodingContainer(WireKeyedEncoder<Key>(encoder: self, countOffset: keyedCount!))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if unkeyedCount == nil {
            unkeyedCount = writer.containerHeader(.unkeyed)
            wroteSomething = true
        }
        return WireUnkeyedEncoder(encoder: self, countOffset: unkeyedCount!)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        wroteSomething = true
        return WireSingleValueEncoder(encoder: self)
    }

}

private struct WireKeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let encoder: WireValueEncoder
    let countOffset: Int
    var codingPath: [any CodingKey] { encoder.codingPath }
    /// Held directly: reaching it through `encoder` costs a retain per field.
    let writer: WireWriter

    init(encoder: WireValueEncoder, countOffset: Int) {
        self.encoder = encoder
        self.countOffset = countOffset
        self.writer = encoder.writer
    }

    private func begin(_ key: Key) {
        writer.incrementCount(at: countOffset)
        writer.key(key)
    }

    mutating func encodeNil(forKey key: Key) throws { begin(key); writer.tag(.null) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { begin(key); writer.tag(value ? .trueValue : .falseValue) }
    mutating func encode(_ value: String, forKey key: Key) throws { begin(key); writer.string(value) }
    mutating func encode(_ value: Double, forKey key: Key) throws {
        begin(key)
        writer.tag(.double)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { writer.raw($0) }
    }
    mutating func encode(_ value: Float, forKey key: Key) throws {
        begin(key)
        writer.tag(.float)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { writer.raw($0) }
    }
    mutating func encode(_ value: Int, forKey key: Key) throws { begin(key); writer.signed(value) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { begin(key); writer.signed(value) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { begin(key); writer.signed(value) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { begin(key); writer.signed(value) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { begin(key); writer.signed(value) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { begin(key); writer.unsigned(value) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { begin(key); writer.unsigned(value) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { begin(key); writer.unsigned(value) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { begin(key); writer.unsigned(value) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { begin(key); writer.unsigned(value) }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        begin(key)
        try writer.writeValue(value, parent: encoder, key: key, attachments: encoder.attachments)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
        begin(key)
        return WireValueEncoder(writer: writer, parent: encoder, key: key, attachments: encoder.attachments).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        begin(key)
        return WireValueEncoder(writer: writer, parent: encoder, key: key, attachments: encoder.attachments).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        superEncoder(forKey: Key(stringValue: "super")!)
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        begin(key)
        return WireValueEncoder(writer: writer, parent: encoder, key: key, attachments: encoder.attachments)
    }
}

private struct WireUnkeyedEncoder: UnkeyedEncodingContainer {
    let encoder: WireValueEncoder
    let countOffset: Int
    var codingPath: [any CodingKey] { encoder.codingPath }
    let writer: WireWriter
    private(set) var count = 0

    init(encoder: WireValueEncoder, countOffset: Int) {
        self.encoder = encoder
        self.countOffset = countOffset
        self.writer = encoder.writer
    }

    private mutating func begin() {
        writer.incrementCount(at: countOffset)
        count += 1
    }

    mutating func encodeNil() throws { begin(); writer.tag(.null) }
    mutating func encode(_ value: Bool) throws { begin(); writer.tag(value ? .trueValue : .falseValue) }
    mutating func encode(_ value: String) throws { begin(); writer.string(value) }
    mutating func encode(_ value: Double) throws {
        begin()
        writer.tag(.double)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { writer.raw($0) }
    }
    mutating func encode(_ value: Float) throws {
        begin()
        writer.tag(.float)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { writer.raw($0) }
    }
    mutating func encode(_ value: Int) throws { begin(); writer.signed(value) }
    mutating func encode(_ value: Int8) throws { begin(); writer.signed(value) }
    mutating func encode(_ value: Int16) throws { begin(); writer.signed(value) }
    mutating func encode(_ value: Int32) throws { begin(); writer.signed(value) }
    mutating func encode(_ value: Int64) throws { begin(); writer.signed(value) }
    mutating func encode(_ value: UInt) throws { begin(); writer.unsigned(value) }
    mutating func encode(_ value: UInt8) throws { begin(); writer.unsigned(value) }
    mutating func encode(_ value: UInt16) throws { begin(); writer.unsigned(value) }
    mutating func encode(_ value: UInt32) throws { begin(); writer.unsigned(value) }
    mutating func encode(_ value: UInt64) throws { begin(); writer.unsigned(value) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let key = IndexKey(count)
        begin()
        try writer.writeValue(value, parent: encoder, key: key, attachments: encoder.attachments)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let key = IndexKey(count)
        begin()
        return WireValueEncoder(writer: writer, parent: encoder, key: key, attachments: encoder.attachments).container(keyedBy: keyType)
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let key = IndexKey(count)
        begin()
        return WireValueEncoder(writer: writer, parent: encoder, key: key, attachments: encoder.attachments).unkeyedContainer()
    }

    mutating func superEncoder() -> any Encoder {
        let key = IndexKey(count)
        begin()
        return WireValueEncoder(writer: writer, parent: encoder, key: key, attachments: encoder.attachments)
    }
}

private struct WireSingleValueEncoder: SingleValueEncodingContainer {
    let encoder: WireValueEncoder
    var codingPath: [any CodingKey] { encoder.codingPath }
    var writer: WireWriter { encoder.writer }

    mutating func encodeNil() throws { writer.tag(.null) }
    mutating func encode(_ value: Bool) throws { writer.tag(value ? .trueValue : .falseValue) }
    mutating func encode(_ value: String) throws { writer.string(value) }
    mutating func encode(_ value: Double) throws {
        writer.tag(.double)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { writer.raw($0) }
    }
    mutating func encode(_ value: Float) throws {
        writer.tag(.float)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { writer.raw($0) }
    }
    mutating func encode(_ value: Int) throws { writer.signed(value) }
    mutating func encode(_ value: Int8) throws { writer.signed(value) }
    mutating func encode(_ value: Int16) throws { writer.signed(value) }
    mutating func encode(_ value: Int32) throws { writer.signed(value) }
    mutating func encode(_ value: Int64) throws { writer.signed(value) }
    mutating func encode(_ value: UInt) throws { writer.unsigned(value) }
    mutating func encode(_ value: UInt8) throws { writer.unsigned(value) }
    mutating func encode(_ value: UInt16) throws { writer.unsigned(value) }
    mutating func encode(_ value: UInt32) throws { writer.unsigned(value) }
    mutating func encode(_ value: UInt64) throws { writer.unsigned(value) }
    mutating func encode<T: Encodable>(_ value: T) throws {
        try writer.writeValue(value, parent: encoder.parent, key: encoder.key, attachments: encoder.attachments)
    }
}
