/// The binary encoding of values that cross processes.
///
/// A value is a tag byte followed by its payload:
///
/// | tag | value | payload |
/// | --- | --- | --- |
/// | 0 | nil | — |
/// | 1, 2 | false, true | — |
/// | 3 | signed integer | zigzag varint |
/// | 4 | unsigned integer | varint |
/// | 5, 6 | Float, Double | 4 or 8 bytes, little-endian |
/// | 7 | String | varint byte count, UTF-8 |
/// | 8 | Data | varint byte count, bytes |
/// | 9 | array of fixed-width numbers | element kind, varint count, raw little-endian elements |
/// | 10 | keyed container | UInt32 count, then per entry: varint key length, key UTF-8, value |
/// | 11 | unkeyed container | UInt32 count, then the values |
///
/// Keyed entries carry their keys, so optional and reordered fields decode;
/// arrays of numbers, `[UInt8]`, `Data` and `String` are copied as raw bytes.
internal enum WireTag: UInt8 {
    case null = 0
    case falseValue = 1
    case trueValue = 2
    case signed = 3
    case unsigned = 4
    case float = 5
    case double = 6
    case string = 7
    case data = 8
    case rawArray = 9
    case keyed = 10
    case unkeyed = 11
}

/// Numbers whose arrays cross as raw bytes.
internal protocol WireRawElement: BitwiseCopyable {
    static var wireKind: UInt8 { get }
}

extension Int8: WireRawElement { static var wireKind: UInt8 { 1 } }
extension UInt8: WireRawElement { static var wireKind: UInt8 { 2 } }
extension Int16: WireRawElement { static var wireKind: UInt8 { 3 } }
extension UInt16: WireRawElement { static var wireKind: UInt8 { 4 } }
extension Int32: WireRawElement { static var wireKind: UInt8 { 5 } }
extension UInt32: WireRawElement { static var wireKind: UInt8 { 6 } }
extension Int64: WireRawElement { static var wireKind: UInt8 { 7 } }
extension UInt64: WireRawElement { static var wireKind: UInt8 { 8 } }
extension Int: WireRawElement { static var wireKind: UInt8 { 9 } }
extension UInt: WireRawElement { static var wireKind: UInt8 { 10 } }
extension Float: WireRawElement { static var wireKind: UInt8 { 11 } }
extension Double: WireRawElement { static var wireKind: UInt8 { 12 } }

/// An array that is written as one block of raw bytes.
internal protocol WireRawArray {
    static var elementKind: UInt8 { get }
    static var elementStride: Int { get }
    func withRawBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
    static func fromRaw(_ bytes: UnsafeRawBufferPointer, count: Int) -> Self
}

extension Array: WireRawArray where Element: WireRawElement {
    static var elementKind: UInt8 { Element.wireKind }
    static var elementStride: Int { MemoryLayout<Element>.stride }

    func withRawBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withUnsafeBytes(body)
    }

    static func fromRaw(_ bytes: UnsafeRawBufferPointer, count: Int) -> [Element] {
        [Element](unsafeUninitializedCapacity: count) { buffer, initialized in
            UnsafeMutableRawBufferPointer(buffer).copyMemory(from: bytes)
            initialized = count
        }
    }
}

/// A part of an array, encoded exactly as the array it would make (so it
/// decodes as one), without making that array first.
internal struct ArrayChunk<Element: Encodable>: Encodable {
    let slice: ArraySlice<Element>

    func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        for element in slice { try container.encode(element) }
    }
}

extension ArrayChunk: WireRawArray where Element: WireRawElement {
    static var elementKind: UInt8 { Element.wireKind }
    static var elementStride: Int { MemoryLayout<Element>.stride }

    func withRawBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try slice.withUnsafeBytes(body)
    }

    static func fromRaw(_ bytes: UnsafeRawBufferPointer, count: Int) -> ArrayChunk<Element> {
        ArrayChunk(slice: ArraySlice([Element].fromRaw(bytes, count: count)))
    }
}

/// The coding key of an element of an unkeyed container, for coding paths.
internal struct IndexKey: CodingKey {
    var stringValue: String { "Index \(intValue!)" }
    var intValue: Int?
    init(_ index: Int) { intValue = index }
    init?(stringValue: String) { nil }
    init?(intValue: Int) { self.intValue = intValue }
}

/// How a type crosses: as raw numbers, as an array whose elements the codec
/// walks itself, or through its own `Codable` conformance.
internal enum WireShape: UInt8 {
    case other, rawArray, array
}

/// Remembers, for the few types one encoding or decoding meets again and
/// again (an array's element type), which ``WireShape`` each has: the dynamic
/// casts that tell cost more than encoding a small struct's field.
internal struct ShapeMemo {
    private var types: (ObjectIdentifier?, ObjectIdentifier?, ObjectIdentifier?, ObjectIdentifier?) = (nil, nil, nil, nil)
    private var shapes: (WireShape, WireShape, WireShape, WireShape) = (.other, .other, .other, .other)
    private var next = 0

    /// The shape of `type`, found by `classify` the first time.
    mutating func shape<T>(of type: T.Type, _ classify: (T.Type) -> WireShape) -> WireShape {
        let id = ObjectIdentifier(type)
        if types.0 == id { return shapes.0 }
        if types.1 == id { return shapes.1 }
        if types.2 == id { return shapes.2 }
        if types.3 == id { return shapes.3 }
        let shape = classify(type)
        switch next {
        case 0: (types.0, shapes.0) = (id, shape)
        case 1: (types.1, shapes.1) = (id, shape)
        case 2: (types.2, shapes.2) = (id, shape)
        default: (types.3, shapes.3) = (id, shape)
        }
        next = (next + 1) % 4
        return shape
    }
}

/// Arrays whose elements the encoder writes one by one itself, rather than
/// through an unkeyed container (the same bytes, without a container call
/// per element).
internal protocol WireEncodableArray {
    func wireEncodeElements(_ writer: WireWriter, parent: WireValueEncoder?, attachments: DescriptorAttachments?) throws
}

/// Arrays whose elements the decoder reads one by one itself.
internal protocol WireDecodableArray {
    static func wireDecodeElements(_ reader: WireReader, at cursor: inout Int, parent: WireValueDecoder?, depth: Int) throws -> Self
}

extension Array: WireEncodableArray where Element: Encodable {
    func wireEncodeElements(_ writer: WireWriter, parent: WireValueEncoder?, attachments: DescriptorAttachments?) throws {
        let countOffset = writer.containerHeader(.unkeyed)
        try withUnsafeBufferPointer { elements in
            for index in elements.indices {
                try writer.writeValue(elements[index], parent: parent, key: IndexKey(index), attachments: attachments)
            }
        }
        writer.store(UInt32(count).littleEndian, at: countOffset)
    }
}

extension Array: WireDecodableArray where Element: Decodable {
    static func wireDecodeElements(_ reader: WireReader, at cursor: inout Int, parent: WireValueDecoder?, depth: Int) throws -> [Element] {
        try reader.expect(.unkeyed, at: &cursor, parent?.codingPath ?? [], for: [Element].self)
        let count = try reader.count32(at: &cursor, parent?.codingPath ?? [])
        var elements: [Element] = []
        elements.reserveCapacity(count)
        for index in 0..<count {
            elements.append(try reader.readValue(Element.self, at: &cursor, parent: parent, key: IndexKey(index), depth: depth + 1))
        }
        return elements
    }
}
