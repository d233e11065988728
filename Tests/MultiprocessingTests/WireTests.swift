import Foundation
import Testing

@testable import Multiprocessing

// Shapes of values that cross processes.
struct Address: Codable, Equatable {
    var street: String
    var number: Int16
}

enum Shape: Codable, Equatable {
    case circle(radius: Double)
    case polygon([Float])
    case empty
}

enum Suit: String, Codable { case hearts, spades }

struct Nested: Codable, Equatable {
    var name: String
    var age: UInt8
    var score: Double?
    var missing: Int?
    var tags: [String]
    var addresses: [Address]
    var shapes: [Shape]
    var lookup: [String: [Int]]
    var intKeys: [Int: String]
    var suit: Suit
    var flags: [Bool]
    var blob: Data
    var bytes: [UInt8]
    var matrix: [[Double]]
    var optionals: [Int?]
    var unit: Empty
    var big: UInt64
    var small: Int64
}

struct Empty: Codable, Equatable {}

class Base: Codable {
    var id: Int
    init(id: Int) { self.id = id }
}

final class Derived: Base, @unchecked Sendable {
    var label: String
    init(id: Int, label: String) {
        self.label = label
        super.init(id: id)
    }
    enum CodingKeys: String, CodingKey { case label }
    required init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        label = try container.decode(String.self, forKey: .label)
        try super.init(from: decoder)
    }
    override func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(label, forKey: .label)
        try super.encode(to: encoder)
    }
}

/// Written in one order, read in another, one field twice, one absent.
struct Unordered: Codable, Equatable {
    var a: Int
    var b: String
    var c: [Double]
    var d: Int?
    enum CodingKeys: String, CodingKey { case a, b, c, d, e }
    init(a: Int, b: String, c: [Double], d: Int?) {
        self.a = a
        self.b = b
        self.c = c
        self.d = d
    }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(a, forKey: .a)
        try container.encode(b, forKey: .b)
        try container.encode(c, forKey: .c)
        try container.encodeIfPresent(d, forKey: .d)
    }
    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        c = try container.decode([Double].self, forKey: .c)
        let again = try container.decode([Double].self, forKey: .c)
        precondition(again == c)
        #expect(!container.contains(.e))
        d = try container.decodeIfPresent(Int.self, forKey: .d)
        b = try container.decode(String.self, forKey: .b)
        a = try container.decode(Int.self, forKey: .a)
    }
}

/// A later version of ``Address`` with a field the sender did not have.
struct AddressV2: Codable, Equatable {
    var street: String
    var floor: Int?
    var number: Int16
}

/// Writes its elements through an unkeyed container, as `Array` would
/// without the codec's short cut: the bytes must be the same.
struct ThroughContainer<Element: Codable>: Codable {
    var elements: [Element]
    init(_ elements: [Element]) { self.elements = elements }
    func encode(to encoder: any Encoder) throws {
        var container = encoder.unkeyedContainer()
        for element in elements { try container.encode(element) }
    }
    init(from decoder: any Decoder) throws {
        var container = try decoder.unkeyedContainer()
        var elements: [Element] = []
        while !container.isAtEnd { elements.append(try container.decode(Element.self)) }
        self.elements = elements
    }
}

func roundTrip<T: Codable>(_ value: T) throws -> T {
    try ValueCodec.decode(T.self, from: try ValueCodec.encode(value))
}

/// A small, seeded generator, so a failing fuzz case can be replayed.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Values on the wire")
struct WireTests {
    static let sample = Nested(
        name: "Zoë 🚀 ünïcödé", age: 42, score: -0.5, missing: nil,
        tags: ["a", "", "ß"], addresses: [Address(street: "Rue", number: -7)],
        shapes: [.circle(radius: 2), .polygon([1, 2.5]), .empty],
        lookup: ["x": [1, 2], "": []], intKeys: [3: "three", -1: "minus one"], suit: .spades,
        flags: [true, false], blob: Data([0, 1, 255]), bytes: Array(0...255),
        matrix: [[1, 2], [], [3]], optionals: [1, nil, 3], unit: Empty(),
        big: .max, small: .min
    )

    @Test("nested structs, optionals, enums, dictionaries and unicode round-trip")
    func shapes() throws {
        #expect(try roundTrip(Self.sample) == Self.sample)
    }

    @Test("scalars, empty values and optionals at the top level round-trip")
    func scalars() throws {
        #expect(try roundTrip(0) == 0)
        #expect(try roundTrip(Int.min) == Int.min)
        #expect(try roundTrip(UInt.max) == UInt.max)
        #expect(try roundTrip(Double.infinity) == .infinity)
        #expect(try roundTrip(Float(-1.25)) == -1.25)
        #expect(try roundTrip(true) == true)
        #expect(try roundTrip("") == "")
        #expect(try roundTrip([Int]()) == [])
        #expect(try roundTrip([String]()) == [])
        #expect(try roundTrip(Data()) == Data())
        #expect(try roundTrip(Empty()) == Empty())
        #expect(try roundTrip(Int?.none) == nil)
        #expect(try roundTrip([Int?.none, 5]) == [nil, 5])
        #expect(try roundTrip(Suit.hearts) == .hearts)
    }

    @Test("a lone Int takes a short cut that writes and reads exactly what the encoder does")
    func loneIntegers() throws {
        var random = SplitMix(state: 0x1D)
        let edges = [0, 1, -1, 63, -64, 64, -65, 1 << 62, Int.max, Int.min, Int.max - 1, Int.min + 1]
        for value in edges + (0..<500).map({ _ in Int.random(in: .min ... .max, using: &random) >> Int.random(in: 0...63, using: &random) }) {
            let fast = try ValueCodec.encode(value)
            #expect(fast == (try WireEncoder(attachments: nil).encode(value)))
            #expect(try ValueCodec.decode(Int.self, from: fast) == value)
        }
        // Short random inputs: the short cut and the general decoder agree, value or error.
        for _ in 0..<5000 {
            let bytes = (0..<Int.random(in: 0...12, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            let general = try? WireDecoder(attachments: nil).decode(Int.self, from: bytes)
            let fast = try? ValueCodec.decode(Int.self, from: bytes)
            #expect(fast == general, "\(bytes)")
        }
    }

    @Test("fields read out of order, twice, or missing; a value followed by others ends where it should")
    func keyedAccessPatterns() throws {
        let values = [Unordered(a: 1, b: "x", c: [1.5], d: nil), Unordered(a: -2, b: "", c: [], d: 7)]
        #expect(try roundTrip(values) == values)
        // Then a field in order after out-of-order ones, inside an array: the next element starts right.
        let mixed = try ValueCodec.decode([AddressV2].self, from: try ValueCodec.encode([Address(street: "A", number: 1), Address(street: "B", number: 2)]))
        #expect(mixed == [AddressV2(street: "A", floor: nil, number: 1), AddressV2(street: "B", floor: nil, number: 2)])
        // A required key that is absent is a typed error.
        #expect(throws: WireError.self) { try ValueCodec.decode(Address.self, from: try ValueCodec.encode(Empty())) }
        #expect(try roundTrip([WireTests.sample, WireTests.sample]) == [WireTests.sample, WireTests.sample])
    }

    @Test("arrays walked by the codec write the same bytes as an unkeyed container, and read them back")
    func arrayShortCut() throws {
        func same<Element: Codable & Equatable>(_ elements: [Element]) throws {
            let fast = try ValueCodec.encode(elements)
            #expect(fast == (try ValueCodec.encode(ThroughContainer(elements))))
            #expect(try ValueCodec.decode([Element].self, from: fast) == elements)
            #expect(try ValueCodec.decode(ThroughContainer<Element>.self, from: fast).elements == elements)
        }
        try same([Address(street: "a", number: 1), Address(street: "", number: -2)])
        try same([[Address(street: "x", number: 3)], []])
        try same(["one", "", "ünï"])
        try same([Int?.none, 5])
        try same([Suit.hearts, .spades])
        try same([Shape.circle(radius: 1), .empty])
        try same([[1, 2], [], [3]])
        try same([Address]())
        try same([WireTests.sample])
    }

    @Test("an error inside an array of structs names the array and the index")
    func errorPaths() throws {
        struct Holder: Codable { var addresses: [Address] }
        struct Loose: Codable { var addresses: [Empty] }
        do {
            _ = try ValueCodec.decode(Holder.self, from: try ValueCodec.encode(Loose(addresses: [Empty(), Empty()])))
            Issue.record("decoded a value with no fields as one with two")
        } catch {
            #expect("\(error)".contains("addresses"), "\(error)")
        }
    }

    @Test("large arrays of numbers cross as raw bytes")
    func largeArrays() throws {
        let ints = Array(0..<1_000_000)
        let encoded = try ValueCodec.encode(ints)
        #expect(encoded.count < ints.count * 8 + 16)
        #expect(try ValueCodec.decode([Int].self, from: encoded) == ints)
        let doubles = (0..<100_000).map { Double($0) / 3 }
        #expect(try roundTrip(doubles) == doubles)
        let text = String(repeating: "héllo ", count: 100_000)
        #expect(try roundTrip(text) == text)
    }

    @Test("a subclass and its superclass share one container")
    func classHierarchy() throws {
        let decoded = try roundTrip(Derived(id: 9, label: "nine"))
        #expect(decoded.id == 9)
        #expect(decoded.label == "nine")
    }

    @Test("a value decoded as the wrong type is a typed error")
    func typeMismatch() throws {
        let encoded = try ValueCodec.encode(Address(street: "x", number: 1))
        #expect(throws: WireError.self) { try ValueCodec.decode(Int.self, from: encoded) }
        #expect(throws: WireError.self) { try ValueCodec.decode([Int].self, from: try ValueCodec.encode([1.5])) }
        #expect(throws: WireError.self) { try ValueCodec.decode(UInt8.self, from: try ValueCodec.encode(300)) }
        #expect(throws: WireError.self) { try ValueCodec.decode(Int.self, from: try ValueCodec.encode(5) + [0]) }
    }

    @Test("containers that claim absurd counts are refused before allocating")
    func absurdCounts() throws {
        // A raw array of 2^60 Ints, with no bytes behind the claim.
        var claim: [UInt8] = [WireTag.rawArray.rawValue, Int.wireKind]
        var huge: UInt64 = 1 << 60
        while huge >= 0x80 {
            claim.append(UInt8(truncatingIfNeeded: huge) | 0x80)
            huge >>= 7
        }
        claim.append(UInt8(huge))
        #expect(throws: WireError.self) { try ValueCodec.decode([Int].self, from: claim) }
        // An unkeyed container of 4 billion entries.
        let container: [UInt8] = [WireTag.unkeyed.rawValue, 0xFF, 0xFF, 0xFF, 0xFF]
        #expect(throws: WireError.self) { try ValueCodec.decode([String].self, from: container) }
        // Containers nested far too deep.
        let deep = [UInt8](repeating: WireTag.unkeyed.rawValue, count: 1) + [1, 0, 0, 0]
        let bomb = Array([[UInt8]](repeating: deep, count: 10_000).joined())
        #expect(throws: WireError.self) { try ValueCodec.decode([[[[Int]]]].self, from: bomb) }
    }

    @Test("thousands of random and mutated inputs give typed errors, never a crash")
    func fuzz() throws {
        var random = SplitMix(state: 0x5EED)
        let valid = try ValueCodec.encode(Self.sample)
        var decodedSomething = 0
        for round in 0..<5000 {
            var bytes: [UInt8]
            switch round % 4 {
            case 0:
                bytes = (0..<Int.random(in: 0..<64, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            case 1:
                bytes = Array(valid.prefix(Int.random(in: 0..<valid.count, using: &random)))
            default:
                bytes = valid
                for _ in 0..<Int.random(in: 1...8, using: &random) {
                    bytes[Int.random(in: 0..<bytes.count, using: &random)] = UInt8.random(in: 0...255, using: &random)
                }
            }
            do {
                _ = try ValueCodec.decode(Nested.self, from: bytes)
                decodedSomething += 1
            } catch {
                // Typed: the catch is exhaustive over WireError by the signature.
                _ = error.description
            }
            if round % 4 == 0 {
                _ = try? ValueCodec.decode([String: [Int]].self, from: bytes)
                _ = try? ValueCodec.decode(String.self, from: bytes)
            }
        }
        // Mutations that hit only a value's payload still decode.
        #expect(decodedSomething < 5000)
    }

    @Test("frames: truncated input, absurd lengths and a closed peer are typed errors")
    func frames() throws {
        #expect(throws: WireError.frameTooLarge(claimed: UInt64.max, limit: Frame.maximumLength)) {
            try Frame.length(fromHeader: [UInt8](repeating: 0xFF, count: 8))
        }
        let (a, b) = try Syscall.socketPair()
        defer { Syscall.close(b) }
        try Frame.writeAll(Frame.header(for: 100) + [1, 2, 3], to: a)
        Syscall.close(a)
        #expect(throws: WireError.truncated(expected: 100, received: 3)) { try Frame.read(from: b) }
        #expect(throws: WireError.endOfFile) { try Frame.read(from: b) }
    }
}
