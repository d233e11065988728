#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

import Glibc

/// Decodes values written by ``WireEncoder``. Every read is bounds-checked
/// and every count is checked against the bytes that remain before anything
/// is allocated, so corrupt or hostile input gives a `DecodingError`, never a
/// crash, a hang or a huge allocation.
internal struct WireDecoder {
    var attachments: DescriptorAttachments?
    /// Containers nested deeper than this are refused (a stack-overflow guard).
    static let maximumDepth = 100

    /// Decodes the value that fills `bytes` from `start` to `end` (nil: the end).
    func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8], startingAt start: Int = 0, endingAt end: Int? = nil) throws -> T {
        let reader = WireReader(bytes: bytes, attachments: attachments)
        // The spare decoder holds the reader: let it go, or both leak.
        defer { reader.dropSpareDecoder() }
        var cursor = start
        let end = end ?? bytes.count
        let value = try reader.readValue(T.self, at: &cursor, parent: nil, key: nil, depth: 0)
        guard cursor == end else {
            throw reader.corrupt([], "\(end - cursor) bytes left after the value")
        }
        return value
    }
}

/// The bytes of one message and the primitive reads on them.
internal final class WireReader {
    let bytes: [UInt8]
    let attachments: DescriptorAttachments?
    var shapes = ShapeMemo()

    init(bytes: [UInt8], attachments: DescriptorAttachments?) {
        self.bytes = bytes
        self.attachments = attachments
    }

    func corrupt(_ path: @autoclosure () -> [any CodingKey], _ reason: String) -> DecodingError {
        .dataCorrupted(.init(codingPath: path(), debugDescription: reason))
    }

    func byte(at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey]) throws -> UInt8 {
        guard cursor < bytes.count else { throw corrupt(path(), "unexpected end of data") }
        defer { cursor += 1 }
        return bytes[cursor]
    }

    func varint(at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey]) throws -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            let byte = try self.byte(at: &cursor, path())
            if shift == 63 && byte > 1 { throw corrupt(path(), "varint overflows 64 bits") }
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
            if shift > 63 { throw corrupt(path(), "varint too long") }
        }
    }

    /// A length or count, checked against the bytes that remain (`unit` bytes each).
    func length(at cursor: inout Int, unit: Int, _ path: @autoclosure () -> [any CodingKey]) throws -> Int {
        let value = try varint(at: &cursor, path())
        let remaining = bytes.count - cursor
        guard value <= UInt64(remaining / max(unit, 1)) else {
            throw corrupt(path(), "claims \(value) items of \(unit) bytes; only \(remaining) bytes remain")
        }
        return Int(value)
    }

    func count32(at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey]) throws -> Int {
        guard cursor + 4 <= bytes.count else { throw corrupt(path(), "unexpected end of data") }
        let value = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: cursor, as: UInt32.self) }
        cursor += 4
        // Every entry takes at least one byte.
        guard Int(value) <= bytes.count - cursor else { throw corrupt(path(), "claims \(value) entries; only \(bytes.count - cursor) bytes remain") }
        return Int(value)
    }

    func expect(_ tag: WireTag, at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey], for type: Any.Type) throws {
        let found = try byte(at: &cursor, path())
        guard found == tag.rawValue else {
            throw DecodingError.typeMismatch(type, .init(codingPath: path(), debugDescription: "expected tag \(tag), found \(found)"))
        }
    }

    func peekIsNil(at cursor: Int) -> Bool {
        cursor < bytes.count && bytes[cursor] == WireTag.null.rawValue
    }

    func bool(at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey]) throws -> Bool {
        switch try byte(at: &cursor, path()) {
        case WireTag.falseValue.rawValue: return false
        case WireTag.trueValue.rawValue: return true
        case let found: throw DecodingError.typeMismatch(Bool.self, .init(codingPath: path(), debugDescription: "expected a Bool, found tag \(found)"))
        }
    }

    func signed<T: FixedWidthInteger & SignedInteger>(_ type: T.Type, at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey]) throws -> T {
        try expect(.signed, at: &cursor, path(), for: T.self)
        let zigzag = try varint(at: &cursor, path())
        let value = Int64(bitPattern: (zigzag >> 1) ^ (0 &- (zigzag & 1)))
        guard let exact = T(exactly: value) else { throw corrupt(path(), "\(value) does not fit \(T.self)") }
        return exact
    }

    func unsigned<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type, at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey]) throws -> T {
        try expect(.unsigned, at: &cursor, path(), for: T.self)
        let value = try varint(at: &cursor, path())
        guard let exact = T(exactly: value) else { throw corrupt(path(), "\(value) does not fit \(T.self)") }
        return exact
    }

    func double(at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey]) throws -> Double {
        try expect(.double, at: &cursor, path(), for: Double.self)
        guard cursor + 8 <= bytes.count else { throw corrupt(path(), "unexpected end of data") }
        let bits = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: cursor, as: UInt64.self) }
        cursor += 8
        return Double(bitPattern: UInt64(littleEndian: bits))
    }

    func float(at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey]) throws -> Float {
        try expect(.float, at: &cursor, path(), for: Float.self)
        guard cursor + 4 <= bytes.count else { throw corrupt(path(), "unexpected end of data") }
        let bits = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: cursor, as: UInt32.self) }
        cursor += 4
        return Float(bitPattern: UInt32(littleEndian: bits))
    }

    func string(at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey]) throws -> String {
        try expect(.string, at: &cursor, path(), for: String.self)
        let count = try length(at: &cursor, unit: 1, path())
        defer { cursor += count }
        let start = cursor
        return try bytes.withUnsafeBytes { buffer in
            let utf8 = UnsafeRawBufferPointer(rebasing: buffer[start..<(start + count)])
            guard let string = String(validating: utf8.bindMemory(to: UInt8.self), as: UTF8.self) else {
                throw corrupt(path(), "invalid UTF-8")
            }
            return string
        }
    }

    /// Skips one value; returns nothing, moves `cursor` past it.
    func skipValue(at cursor: inout Int, _ path: @autoclosure () -> [any CodingKey], depth: Int) throws {
        guard depth < WireDecoder.maximumDepth else { throw corrupt(path(), "nested too deeply") }
        let tag = try byte(at: &cursor, path())
        switch WireTag(rawValue: tag) {
        case .null, .falseValue, .trueValue: break
        case .signed, .unsigned: _ = try varint(at: &cursor, path())
        case .float: cursor += 4
        case .double: cursor += 8
        case .string, .data: cursor += try length(at: &cursor, unit: 1, path())
        case .rawArray:
            let kind = try byte(at: &cursor, path())
            guard let stride = Self.stride(ofKind: kind) else { throw corrupt(path(), "unknown element kind \(kind)") }
            cursor += try length(at: &cursor, unit: stride, path()) * stride
        case .keyed:
            let count = try count32(at: &cursor, path())
            for _ in 0..<count {
                cursor += try length(at: &cursor, unit: 1, path())
                try skipValue(at: &cursor, path(), depth: depth + 1)
            }
        case .unkeyed:
            let count = try count32(at: &cursor, path())
            for _ in 0..<count { try skipValue(at: &cursor, path(), depth: depth + 1) }
        case nil:
            throw corrupt(path(), "unknown tag \(tag)")
        }
        guard cursor <= bytes.count else { throw corrupt(path(), "unexpected end of data") }
    }

    static func stride(ofKind kind: UInt8) -> Int? {
        switch kind {
        case 1, 2: 1
        case 3, 4: 2
        case 5, 6, 11: 4
        case 7, 8, 9, 10, 12: 8
        default: nil
        }
    }

    func readValue<T: Decodable>(_ type: T.Type, at cursor: inout Int, parent: WireValueDecoder?, key: (any CodingKey)?, depth: Int) throws -> T {
        // The coding path is only built when an error needs it.
        func codingPath() -> [any CodingKey] { WireValueDecoder.path(parent: parent, key: key) }
        guard depth < WireDecoder.maximumDepth else { throw corrupt(codingPath(), "nested too deeply") }
        if T.self == Int.self {
            return _identityCast(try signed(Int.self, at: &cursor, codingPath()), to: T.self)
        }
        if T.self == String.self {
            return _identityCast(try string(at: &cursor, codingPath()), to: T.self)
        }
        if T.self == Double.self {
            return _identityCast(try double(at: &cursor, codingPath()), to: T.self)
        }
        if T.self == Bool.self {
            return _identityCast(try bool(at: &cursor, codingPath()), to: T.self)
        }
        if T.self == Data.self {
            try expect(.data, at: &cursor, codingPath(), for: Data.self)
            let count = try length(at: &cursor, unit: 1, codingPath())
            defer { cursor += count }
            return Data(bytes[cursor..<(cursor + count)]) as! T
        }
        let shape = shapes.shape(of: T.self) { type in
            if type is any WireRawArray.Type { return .rawArray }
            if type is any WireDecodableArray.Type { return .array }
            return .other
        }
        if shape == .array, let arrayType = T.self as? any WireDecodableArray.Type {
            // The array's own place in the coding path, for its elements' errors.
            let node = WireValueDecoder(reader: self, offset: cursor, parent: parent, key: key, depth: depth)
            return try arrayType.wireDecodeElements(self, at: &cursor, parent: node, depth: depth) as! T
        }
        if shape == .rawArray, let rawType = T.self as? any WireRawArray.Type {
            try expect(.rawArray, at: &cursor, codingPath(), for: T.self)
            let kind = try byte(at: &cursor, codingPath())
            guard kind == rawType.elementKind else {
                throw DecodingError.typeMismatch(T.self, .init(codingPath: codingPath(), debugDescription: "array element kind \(kind), expected \(rawType.elementKind)"))
            }
            let count = try length(at: &cursor, unit: rawType.elementStride, codingPath())
            let start = cursor
            let byteCount = count * rawType.elementStride
            cursor += byteCount
            return bytes.withUnsafeBytes { buffer in
                rawType.fromRaw(UnsafeRawBufferPointer(rebasing: buffer[start..<(start + byteCount)]), count: count) as! T
            }
        }
        var decoder = makeDecoder(offset: cursor, parent: parent, key: key, depth: depth)
        let value = try T(from: decoder)
        if let end = decoder.endOffset {
            // Its keyed container already found where the value ends.
            cursor = end
        } else {
            try skipValue(at: &cursor, codingPath(), depth: depth)
        }
        // Kept by nobody else (no container escaped): the next value may use it.
        if isKnownUniquelyReferenced(&decoder) { spareDecoder = decoder }
        return value
    }

    /// A decoder made before and no longer used, if there is one.
    private var spareDecoder: WireValueDecoder?

    /// Ends the reuse: a spare decoder refers to its reader, so the two make
    /// a cycle until this is called (at the end of every decode).
    func dropSpareDecoder() {
        spareDecoder = nil
    }

    private func makeDecoder(offset: Int, parent: WireValueDecoder?, key: (any CodingKey)?, depth: Int) -> WireValueDecoder {
        guard let decoder = spareDecoder else {
            return WireValueDecoder(reader: self, offset: offset, parent: parent, key: key, depth: depth)
        }
        spareDecoder = nil
        decoder.reset(offset: offset, parent: parent, key: key, depth: depth)
        return decoder
    }
}

/// The `Decoder` handed to one value's `init(from:)`.
internal final class WireValueDecoder: Decoder {
    let reader: WireReader
    private(set) var offset: Int
    private(set) var parent: WireValueDecoder?
    private(set) var key: (any CodingKey)?
    private(set) var depth: Int
    var codingPath: [any CodingKey] { Self.path(parent: parent, key: key) }

    static func path(parent: WireValueDecoder?, key: (any CodingKey)?) -> [any CodingKey] {
        (parent?.codingPath ?? []) + (key.map { [$0] } ?? [])
    }
    var userInfo: [CodingUserInfoKey: Any] {
        reader.attachments.map { [DescriptorAttachments.userInfoKey: $0] } ?? [:]
    }
    /// Where the value ends, once a keyed container has read or indexed all of it.
    var endOffset: Int?
    /// A keyed container's state, kept here: the standard library's box holds
    /// a copy of the container, and every copy must see the same progress.
    var keyed = KeyedState()
    /// A keyed container's entries, once indexed (kept apart from `keyed`,
    /// which is read often and is cheap to read only without an array in it).
    var entries: [WireKeyedEntry] = []

    init(reader: WireReader, offset: Int, parent: WireValueDecoder?, key: (any CodingKey)?, depth: Int) {
        self.reader = reader
        self.offset = offset
        self.parent = parent
        self.key = key
        self.depth = depth
    }

    /// Makes this decoder one for another value (decoders are reused).
    func reset(offset: Int, parent: WireValueDecoder?, key: (any CodingKey)?, depth: Int) {
        self.offset = offset
        self.parent = parent
        self.key = key
        self.depth = depth
        endOffset = nil
        keyed = KeyedState()
        if !entries.isEmpty { entries = [] }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(try WireKeyedDecoder<Key>(decoder: self))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try WireUnkeyedDecoder(decoder: self)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        WireSingleValueDecoder(decoder: self)
    }
}

/// One entry of a keyed container: where its key's bytes are, where its value starts.
internal struct WireKeyedEntry {
    var keyStart: Int
    var keyLength: Int
    var valueOffset: Int
}

/// How far a keyed container has been read. Fields are read in the order
/// they were written (what synthesised `Codable` does): each is found at the
/// cursor and parsed once. A field asked for out of order (or missing) makes
/// the container index all its entries, and lookups use the index from then on.
internal struct KeyedState {
    /// The number of entries, once the header is read.
    var count: Int?
    /// Where the first entry starts.
    var firstEntry = 0
    /// Entries read in order so far, and where the next one starts.
    var sequentialIndex = 0
    var sequentialCursor = 0
    /// Whether every entry is indexed (in the decoder's `entries`).
    var indexed = false
    /// The entry after the last one found in the index.
    var nextGuess = 0
}

private struct WireKeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let decoder: WireValueDecoder
    private let reader: WireReader
    var codingPath: [any CodingKey] { decoder.codingPath }

    init(decoder: WireValueDecoder) throws {
        self.decoder = decoder
        self.reader = decoder.reader
        guard decoder.keyed.count == nil else { return }
        var cursor = decoder.offset
        let reader = decoder.reader
        try reader.expect(.keyed, at: &cursor, decoder.codingPath, for: Key.self)
        let count = try reader.count32(at: &cursor, decoder.codingPath)
        decoder.keyed.count = count
        decoder.keyed.firstEntry = cursor
        decoder.keyed.sequentialCursor = cursor
        if count == 0 { decoder.endOffset = cursor }
    }

    /// Indexes every entry (once): for keys asked for out of order.
    private func index() throws -> [WireKeyedEntry] {
        if decoder.keyed.indexed { return decoder.entries }
        var cursor = decoder.keyed.firstEntry
        let count = decoder.keyed.count ?? 0
        var entries: [WireKeyedEntry] = []
        entries.reserveCapacity(count)
        for _ in 0..<count {
            let keyLength = try reader.length(at: &cursor, unit: 1, decoder.codingPath)
            let keyStart = cursor
            cursor += keyLength
            entries.append(WireKeyedEntry(keyStart: keyStart, keyLength: keyLength, valueOffset: cursor))
            try reader.skipValue(at: &cursor, decoder.codingPath, depth: decoder.depth + 1)
        }
        decoder.entries = entries
        decoder.keyed.indexed = true
        decoder.endOffset = cursor
        return entries
    }

    var allKeys: [Key] {
        ((try? index()) ?? []).compactMap { entry in
            Key(stringValue: String(decoding: reader.bytes[entry.keyStart..<(entry.keyStart + entry.keyLength)], as: UTF8.self))
        }
    }

    /// Whether `bytes[start..<start + length]` spell `key`.
    @inline(__always)
    private func matches(_ key: Key, at start: Int, length: Int) -> Bool {
        var name = key.stringValue
        return name.withUTF8 { wanted in
            guard wanted.count == length else { return false }
            return reader.bytes.withUnsafeBytes { bytes in
                // Keys are short: a loop beats a call to memcmp.
                guard length <= 32 else { return memcmp(bytes.baseAddress! + start, wanted.baseAddress!, length) == 0 }
                for index in 0..<length where bytes[start + index] != wanted[index] { return false }
                return true
            }
        }
    }

    /// Where `key`'s value starts, and whether it is the next entry in order
    /// (then ``advance(to:)`` must follow once the value is read); nil if absent.
    private func find(_ key: Key) throws -> (offset: Int, inOrder: Bool)? {
        if !decoder.keyed.indexed, let count = decoder.keyed.count, decoder.keyed.sequentialIndex < count {
            var cursor = decoder.keyed.sequentialCursor
            let keyLength = try reader.length(at: &cursor, unit: 1, decoder.codingPath)
            if matches(key, at: cursor, length: keyLength) { return (cursor + keyLength, true) }
        }
        let entries = try index()
        let count = entries.count
        guard count > 0 else { return nil }
        let start = decoder.keyed.nextGuess < count ? decoder.keyed.nextGuess : 0
        for step in 0..<count {
            let index = (start + step) % count
            if matches(key, at: entries[index].keyStart, length: entries[index].keyLength) {
                decoder.keyed.nextGuess = index + 1
                return (entries[index].valueOffset, false)
            }
        }
        return nil
    }

    /// The value of the entry read in order ends at `end`.
    private func advance(to end: Int) {
        decoder.keyed.sequentialIndex += 1
        decoder.keyed.sequentialCursor = end
        if decoder.keyed.sequentialIndex == decoder.keyed.count { decoder.endOffset = end }
    }

    @inline(__always)
    private func offset(of key: Key) throws -> (offset: Int, inOrder: Bool) {
        guard let found = try find(key) else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no value for key \(key.stringValue)"))
        }
        return found
    }

    /// Reads `key`'s value with `read`, which moves the cursor past it.
    @inline(__always)
    private func read<T>(_ key: Key, _ read: (inout Int) throws -> T) throws -> T {
        let (offset, inOrder) = try offset(of: key)
        var cursor = offset
        let value = try read(&cursor)
        if inOrder { advance(to: cursor) }
        return value
    }

    func contains(_ key: Key) -> Bool { (try? find(key)) != nil }

    func decodeNil(forKey key: Key) throws -> Bool {
        let (offset, inOrder) = try offset(of: key)
        guard reader.peekIsNil(at: offset) else { return false }
        // A nil is consumed by being found: the caller reads nothing more.
        if inOrder { advance(to: offset + 1) }
        return true
    }

    private func path(_ key: Key) -> [any CodingKey] { codingPath + [key] }

    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool {
        try read(key) { cursor in try reader.bool(at: &cursor, path(key)) }
    }
    func decode(_ type: String.Type, forKey key: Key) throws -> String {
        try read(key) { cursor in try reader.string(at: &cursor, path(key)) }
    }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double {
        try read(key) { cursor in try reader.double(at: &cursor, path(key)) }
    }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float {
        try read(key) { cursor in try reader.float(at: &cursor, path(key)) }
    }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try signed(key) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try signed(key) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try signed(key) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try signed(key) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try signed(key) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try unsigned(key) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try unsigned(key) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try unsigned(key) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try unsigned(key) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try unsigned(key) }

    @inline(__always)
    private func signed<T: FixedWidthInteger & SignedInteger>(_ key: Key) throws -> T {
        try read(key) { cursor in try reader.signed(T.self, at: &cursor, path(key)) }
    }

    private func unsigned<T: FixedWidthInteger & UnsignedInteger>(_ key: Key) throws -> T {
        try read(key) { cursor in try reader.unsigned(T.self, at: &cursor, path(key)) }
    }

    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try read(key) { cursor in try reader.readValue(T.self, at: &cursor, parent: decoder, key: key, depth: decoder.depth + 1) }
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
        let nested = WireValueDecoder(reader: reader, offset: try indexedOffset(of: key), parent: decoder, key: key, depth: decoder.depth + 1)
        return try nested.container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        let nested = WireValueDecoder(reader: reader, offset: try indexedOffset(of: key), parent: decoder, key: key, depth: decoder.depth + 1)
        return try nested.unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        try superDecoder(forKey: Key(stringValue: "super")!)
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        WireValueDecoder(reader: reader, offset: try indexedOffset(of: key), parent: decoder, key: key, depth: decoder.depth + 1)
    }

    /// For a value read by another decoder, whose end this container does
    /// not learn: found through the index.
    private func indexedOffset(of key: Key) throws -> Int {
        _ = try index()
        return try offset(of: key).offset
    }
}

private struct WireUnkeyedDecoder: UnkeyedDecodingContainer {
    let decoder: WireValueDecoder
    var reader: WireReader { decoder.reader }
    var codingPath: [any CodingKey] { decoder.codingPath }
    let count: Int?
    private(set) var currentIndex = 0
    private var cursor: Int

    init(decoder: WireValueDecoder) throws {
        self.decoder = decoder
        var cursor = decoder.offset
        try decoder.reader.expect(.unkeyed, at: &cursor, decoder.codingPath, for: [Any].self)
        count = try decoder.reader.count32(at: &cursor, decoder.codingPath)
        self.cursor = cursor
    }

    var isAtEnd: Bool { currentIndex >= count! }

    private var path: [any CodingKey] { codingPath + [IndexKey(currentIndex)] }
    private var indexKey: IndexKey { IndexKey(currentIndex) }

    private mutating func next<T>(_ read: (WireReader, inout Int) throws -> T) throws -> T {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(T.self, .init(codingPath: path, debugDescription: "the unkeyed container is at its end"))
        }
        let reader = decoder.reader
        let value = try read(reader, &cursor)
        currentIndex += 1
        return value
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else { return false }
        if reader.peekIsNil(at: cursor) {
            cursor += 1
            currentIndex += 1
            return true
        }
        return false
    }

    mutating func decode(_ type: Bool.Type) throws -> Bool { let d = decoder, k = indexKey; return try next { reader, cursor in try reader.bool(at: &cursor, WireValueDecoder.path(parent: d, key: k)) } }
    mutating func decode(_ type: String.Type) throws -> String { let d = decoder, k = indexKey; return try next { reader, cursor in try reader.string(at: &cursor, WireValueDecoder.path(parent: d, key: k)) } }
    mutating func decode(_ type: Double.Type) throws -> Double { let d = decoder, k = indexKey; return try next { reader, cursor in try reader.double(at: &cursor, WireValueDecoder.path(parent: d, key: k)) } }
    mutating func decode(_ type: Float.Type) throws -> Float { let d = decoder, k = indexKey; return try next { reader, cursor in try reader.float(at: &cursor, WireValueDecoder.path(parent: d, key: k)) } }
    mutating func decode(_ type: Int.Type) throws -> Int { try signed() }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try signed() }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try signed() }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try signed() }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try signed() }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try unsigned() }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try unsigned() }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try unsigned() }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try unsigned() }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try unsigned() }

    private mutating func signed<T: FixedWidthInteger & SignedInteger>() throws -> T {
        let d = decoder, k = indexKey
        return try next { reader, cursor in try reader.signed(T.self, at: &cursor, WireValueDecoder.path(parent: d, key: k)) }
    }

    private mutating func unsigned<T: FixedWidthInteger & UnsignedInteger>() throws -> T {
        let d = decoder, k = indexKey
        return try next { reader, cursor in try reader.unsigned(T.self, at: &cursor, WireValueDecoder.path(parent: d, key: k)) }
    }

    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let d = decoder, k = indexKey
        let depth = decoder.depth + 1
        return try next { reader, cursor in try reader.readValue(T.self, at: &cursor, parent: d, key: k, depth: depth) }
    }

    private mutating func nestedDecoder() throws -> WireValueDecoder {
        let d = decoder, k = indexKey
        let depth = decoder.depth + 1
        return try next { reader, cursor in
            let nested = WireValueDecoder(reader: reader, offset: cursor, parent: d, key: k, depth: depth)
            try reader.skipValue(at: &cursor, WireValueDecoder.path(parent: d, key: k), depth: depth)
            return nested
        }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        try nestedDecoder().container(keyedBy: type)
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try nestedDecoder().unkeyedContainer()
    }

    mutating func superDecoder() throws -> any Decoder {
        try nestedDecoder()
    }
}

private struct WireSingleValueDecoder: SingleValueDecodingContainer {
    let decoder: WireValueDecoder
    var reader: WireReader { decoder.reader }
    var codingPath: [any CodingKey] { decoder.codingPath }

    private func read<T>(_ body: (inout Int) throws -> T) throws -> T {
        var cursor = decoder.offset
        return try body(&cursor)
    }

    func decodeNil() -> Bool { reader.peekIsNil(at: decoder.offset) }
    func decode(_ type: Bool.Type) throws -> Bool { try read { try reader.bool(at: &$0, codingPath) } }
    func decode(_ type: String.Type) throws -> String { try read { try reader.string(at: &$0, codingPath) } }
    func decode(_ type: Double.Type) throws -> Double { try read { try reader.double(at: &$0, codingPath) } }
    func decode(_ type: Float.Type) throws -> Float { try read { try reader.float(at: &$0, codingPath) } }
    func decode(_ type: Int.Type) throws -> Int { try read { try reader.signed(Int.self, at: &$0, codingPath) } }
    func decode(_ type: Int8.Type) throws -> Int8 { try read { try reader.signed(Int8.self, at: &$0, codingPath) } }
    func decode(_ type: Int16.Type) throws -> Int16 { try read { try reader.signed(Int16.self, at: &$0, codingPath) } }
    func decode(_ type: Int32.Type) throws -> Int32 { try read { try reader.signed(Int32.self, at: &$0, codingPath) } }
    func decode(_ type: Int64.Type) throws -> Int64 { try read { try reader.signed(Int64.self, at: &$0, codingPath) } }
    func decode(_ type: UInt.Type) throws -> UInt { try read { try reader.unsigned(UInt.self, at: &$0, codingPath) } }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try read { try reader.unsigned(UInt8.self, at: &$0, codingPath) } }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try read { try reader.unsigned(UInt16.self, at: &$0, codingPath) } }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try read { try reader.unsigned(UInt32.self, at: &$0, codingPath) } }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try read { try reader.unsigned(UInt64.self, at: &$0, codingPath) } }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try read { try reader.readValue(T.self, at: &$0, parent: decoder.parent, key: decoder.key, depth: decoder.depth + 1) }
    }
}
