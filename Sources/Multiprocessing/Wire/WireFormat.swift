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

/// Remembers, for the few types one encoding or decoding meets again and
/// again (an array's element type), whether each is a ``WireRawArray``: the
/// dynamic cast that tells costs more than encoding a small struct's field.
internal struct RawArrayMemo {
    private var types: (ObjectIdentifier?, ObjectIdentifier?, ObjectIdentifier?, ObjectIdentifier?) = (nil, nil, nil, nil)
    private var answers: (Bool, Bool, Bool, Bool) = (false, false, false, false)
    private var next = 0

    /// The raw-array type `type` is, if it is one.
    mutating func rawArrayType<T>(_ type: T.Type) -> (any WireRawArray.Type)? {
        let id = ObjectIdentifier(type)
        let known: Bool? =
            if types.0 == id { answers.0 } else if types.1 == id { answers.1 } else if types.2 == id { answers.2 } else if types.3 == id { answers.3 } else { nil }
        if known == false { return nil }
        let raw = type as? any WireRawArray.Type
        if known == nil {
            switch next {
            case 0: types.0 = id; answers.0 = raw != nil
            case 1: types.1 = id; answers.1 = raw != nil
            case 2: types.2 = id; answers.2 = raw != nil
            default: types.3 = id; answers.3 = raw != nil
            }
            next = (next + 1) % 4
        }
        return raw
    }
}
