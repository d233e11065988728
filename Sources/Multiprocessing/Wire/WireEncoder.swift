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
        // An array of numbers alone (often large) is written straight into
        // storage of its exact size: no copy out of the writer's buffer.
        // (Not asked of the common scalars: see ``ValueCodec/prepare(_:)``.)
        if !WireWriter.isScalar(T.self), T.self is any WireRawArray.Type, let array = value as? any WireRawArray {
            return Self.encodeRawArray(array)
        }
        let writer = WireWriter()
        defer { writer.finish() }
        try writer.writeValue(value, parent: nil, key: nil, attachments: attachments)
        return writer.bytes
    }

    private static func encodeRawArray(_ array: any WireRawArray) -> [UInt8] {
        array.withRawBytes { buffer in
            let stride = type(of: array).elementStride
            var count = UInt64(buffer.count / stride)
            return [UInt8](unsafeUninitializedCapacity: 12 + buffer.count) { bytes, written in
                bytes[0] = WireTag.rawArray.rawValue
                bytes[1] = type(of: array).elementKind
                written = 2
                while count >= 0x80 {
                    bytes[written] = UInt8(truncatingIfNeeded: count) | 0x80
                    count >>= 7
                    written += 1
                }
                bytes[written] = UInt8(count)
                written += 1
                if buffer.count > 0 {
                    UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: bytes[written...])).copyMemory(from: buffer)
                }
                written += buffer.count
            }
        }
    }

    /// Encodes `value` behind room for a frame header, and fills the header in.
    func encodeFrame<T: Encodable>(_ value: T) throws -> [UInt8] {
        let writer = WireWriter()
        defer { writer.finish() }
        writer.zeros(Frame.headerSize)
        try writer.writeValue(value, parent: nil, key: nil, attachments: attachments)
        writer.store(UInt64(writer.count - Frame.headerSize).littleEndian, at: 0)
        return writer.bytes
    }
}

/// The buffer every container of one encoding writes to.
///
/// Its bytes live in memory of its own, reached through a pointer: a class's
/// stored `var`s are checked for exclusive access on every use, and a struct
/// of a few fields makes dozens of appends.
internal final class WireWriter {
    private struct Storage {
        var base: UnsafeMutableRawPointer
        var count: Int
        var capacity: Int
        var shapes = ShapeMemo()
        /// An encoder made before and no longer used (see ``finish()``).
        var spare: WireValueEncoder?
    }

    private let storage: UnsafeMutablePointer<Storage>

    init() {
        storage = .allocate(capacity: 1)
        storage.initialize(to: Storage(base: .allocate(byteCount: 64, alignment: 8), count: 0, capacity: 64))
    }

    deinit {
        storage.pointee.base.deallocate()
        storage.deinitialize(count: 1)
        storage.deallocate()
    }

    /// Lets go of the spare encoder, which refers back to this writer.
    func finish() { storage.pointee.spare = nil }

    /// The bytes written so far.
    var bytes: [UInt8] { Array(UnsafeRawBufferPointer(start: storage.pointee.base, count: storage.pointee.count)) }

    var count: Int { storage.pointee.count }

    /// Makes room for `extra` more bytes.
    @inline(__always) func reserve(_ extra: Int) {
        let needed = storage.pointee.count + extra
        if needed > storage.pointee.capacity { grow(to: needed) }
    }

    private func grow(to needed: Int) {
        let capacity = max(needed, storage.pointee.capacity * 2)
        let base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 8)
        base.copyMemory(from: storage.pointee.base, byteCount: storage.pointee.count)
        storage.pointee.base.deallocate()
        storage.pointee.base = base
        storage.pointee.capacity = capacity
    }

    @inline(__always) func byte(_ byte: UInt8) {
        reserve(1)
        storage.pointee.base.storeBytes(of: byte, toByteOffset: storage.pointee.count, as: UInt8.self)
        storage.pointee.count += 1
    }

    @inline(__always) func tag(_ tag: WireTag) { byte(tag.rawValue) }

    @inline(__always) func varint(_ value: UInt64) {
        reserve(10)
        var value = value
        let base = storage.pointee.base
        var count = storage.pointee.count
        while value >= 0x80 {
            base.storeBytes(of: UInt8(truncatingIfNeeded: value) | 0x80, toByteOffset: count, as: UInt8.self)
            value >>= 7
            count += 1
        }
        base.storeBytes(of: UInt8(value), toByteOffset: count, as: UInt8.self)
        storage.pointee.count = count + 1
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
        guard buffer.count > 0 else { return }
        reserve(buffer.count)
        (storage.pointee.base + storage.pointee.count).copyMemory(from: buffer.baseAddress!, byteCount: buffer.count)
        storage.pointee.count += buffer.count
    }

    /// Appends `count` zero bytes (room filled in later).
    func zeros(_ count: Int) {
        reserve(count)
        (storage.pointee.base + storage.pointee.count).initializeMemory(as: UInt8.self, repeating: 0, count: count)
        storage.pointee.count += count
    }

    /// Overwrites the bytes at `offset` with `value`'s.
    func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storage.pointee.base.storeBytes(of: value, toByteOffset: offset, as: T.self)
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
        let offset = storage.pointee.count
        reserve(4)
        store(UInt32(0), at: offset)
        storage.pointee.count += 4
        return offset
    }

    func incrementCount(at offset: Int) {
        let count = storage.pointee.base.loadUnaligned(fromByteOffset: offset, as: UInt32.self)
        storage.pointee.base.storeBytes(of: count &+ 1, toByteOffset: offset, as: UInt32.self)
    }

    func shape<T>(of type: T.Type) -> WireShape {
        storage.pointee.shapes.shape(of: type) { type in
            if type is any WireRawArray.Type { return .rawArray }
            if type is any WireEncodableArray.Type { return .array }
            return .other
        }
    }

    /// Types written without a look at their conformances.
    static func isScalar<T>(_ type: T.Type) -> Bool {
        T.self == Int.self || T.self == String.self || T.self == Double.self || T.self == Bool.self || T.self == Data.self
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
        let shape = shape(of: T.self)
        if shape == .array, let array = value as? any WireEncodableArray {
            // The array's own place in the coding path, for its elements' errors.
            let node = WireValueEncoder(writer: self, parent: parent, key: key, attachments: attachments)
            return try array.wireEncodeElements(self, parent: node, attachments: attachments)
        }
        if shape == .rawArray, let array = value as? any WireRawArray {
            tag(.rawArray)
            byte(type(of: array).elementKind)
            array.withRawBytes { buffer in
                reserve(buffer.count + 10)
                varint(UInt64(buffer.count / type(of: array).elementStride))
                raw(buffer)
            }
            return
        }
        var encoder: WireValueEncoder
        if let spare = storage.pointee.spare {
            storage.pointee.spare = nil
            spare.reset(parent: parent, key: key, attachments: attachments)
            encoder = spare
        } else {
            encoder = WireValueEncoder(writer: self, parent: parent, key: key, attachments: attachments)
        }
        try value.encode(to: encoder)
        if !encoder.wroteSomething {
            // A type that encodes nothing at all still takes one value's room.
            _ = containerHeader(.keyed)
        }
        // Kept by nobody else (no container escaped): the next value may use it.
        if isKnownUniquelyReferenced(&encoder) { storage.pointee.spare = encoder }
    }
}

/// The `Encoder` handed to one value's `encode(to:)`.
internal final class WireValueEncoder: Encoder {
    let writer: WireWriter
    /// The coding path, kept as a parent link and is only built when asked for.
    private(set) var parent: WireValueEncoder?
    private(set) var key: (any CodingKey)?
    private(set) var attachments: DescriptorAttachments?
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

    /// Makes this encoder one for another value (encoders are reused).
    func reset(parent: WireValueEncoder?, key: (any CodingKey)?, attachments: DescriptorAttachments?) {
        self.parent = parent
        self.key = key
        self.attachments = attachments
        keyedCount = nil
        unkeyedCount = nil
        wroteSomething = false
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
