/// A fixed-length list of numbers, strings and bytes in one block of shared
/// memory (Python's `multiprocessing.shared_memory.ShareableList`).
///
/// Each item keeps the room it was made with: a number, a `Bool` or `nil`
/// takes 8 bytes, a string or bytes their length rounded up to 8 (at least
/// 8). An item may be replaced by one of any kind that fits that room. There
/// is no lock, as in Python: for users who synchronise themselves (one
/// writer per item, or a ``Lock``). Passes to children by every start
/// method; with a name, unrelated processes ``attach(name:)`` to it.
public final class ShareableList: @unchecked Sendable, Codable {  // shared and unsynchronised by design
    /// One item.
    public enum Item: Sendable, Hashable, Codable {
        case int(Int)
        case double(Double)
        case bool(Bool)
        case string(String)
        case bytes([UInt8])
        case none

        fileprivate var kind: UInt8 {
            switch self {
            case .int: 1
            case .double: 2
            case .bool: 3
            case .string: 4
            case .bytes: 5
            case .none: 6
            }
        }

        fileprivate var payload: [UInt8] {
            switch self {
            case let .int(value): withUnsafeBytes(of: value.littleEndian) { Array($0) }
            case let .double(value): withUnsafeBytes(of: value.bitPattern.littleEndian) { Array($0) }
            case let .bool(value): [value ? 1 : 0]
            case let .string(value): Array(value.utf8)
            case let .bytes(value): value
            case .none: []
            }
        }

        /// The room `payload` takes: 8 bytes, or its length rounded up to 8.
        fileprivate static func room(_ payload: [UInt8]) -> Int { max(8, (payload.count + 7) / 8 * 8) }
    }

    /// The memory the list lives in.
    public let memory: SharedMemory
    /// The number of items.
    public let count: Int
    /// Each item's room and offset, fixed when the list was made: read once
    /// (and checked, for a list made elsewhere), never again from the memory.
    private let slots: [(room: Int, offset: Int)]

    // Layout: "SMPSLIST", the count (8 bytes), then per item 16 bytes — its
    // kind (1), 3 unused, its length (4), its room (4), its offset (4) —
    // then the items' bytes. Little-endian.
    private static let magic = Array("SMPSLIST".utf8)
    private static let headerSize = 16
    private static let slotSize = 16

    /// A list holding `items`, in anonymous shared memory, or named `name`
    /// (see ``SharedMemory/init(name:size:track:)``).
    ///
    /// - Throws: ``SharedMemoryError`` if the memory cannot be made (a
    ///   name taken…).
    public init(_ items: [Item], name: String? = nil, track: Bool = true) throws {
        let tableEnd = Self.headerSize + items.count * Self.slotSize
        let payloads = items.map(\.payload)
        let size = payloads.reduce(tableEnd) { $0 + Item.room($1) }
        // Offsets and rooms are 4 bytes.
        guard size <= Int(UInt32.max) else { throw SharedMemoryError.invalidSize(size) }
        memory = try name.map { try SharedMemory(name: $0, size: size, track: track) } ?? SharedMemory(size: size)
        count = items.count
        var slots: [(room: Int, offset: Int)] = []
        let bytes = memory.bytes
        bytes.copyBytes(from: Self.magic)
        Self.store(UInt64(items.count), in: bytes, at: 8, width: 8)
        var offset = tableEnd
        for (index, payload) in payloads.enumerated() {
            let slot = Self.headerSize + index * Self.slotSize
            let room = Item.room(payload)
            Self.store(UInt64(room), in: bytes, at: slot + 8, width: 4)
            Self.store(UInt64(offset), in: bytes, at: slot + 12, width: 4)
            slots.append((room, offset))
            offset += room
        }
        self.slots = slots
        for (index, item) in items.enumerated() { write(item.kind, payloads[index], at: index) }
    }

    /// The list another process made under `name`.
    ///
    /// - Throws: ``SharedMemoryError/notFound(_:)``, or
    ///   ``SharedMemoryError/invalidSize(_:)`` if the memory does not hold a
    ///   list.
    public static func attach(name: String) throws -> ShareableList {
        try ShareableList(validating: try SharedMemory.attach(name: name))
    }

    private init(validating memory: SharedMemory) throws {
        let bytes = memory.bytes
        guard memory.size >= Self.headerSize, Array(bytes[0..<8]) == Self.magic else { throw SharedMemoryError.invalidSize(memory.size) }
        self.memory = memory
        let count = Int(clamping: Self.load(bytes, at: 8, width: 8))
        guard count >= 0, count <= (memory.size - Self.headerSize) / Self.slotSize else { throw SharedMemoryError.invalidSize(memory.size) }
        self.count = count
        // Every slot's room must lie inside the memory.
        var slots: [(room: Int, offset: Int)] = []
        for index in 0..<count {
            let slot = Self.headerSize + index * Self.slotSize
            let (room, offset) = (Int(Self.load(bytes, at: slot + 8, width: 4)), Int(Self.load(bytes, at: slot + 12, width: 4)))
            guard offset >= Self.headerSize + count * Self.slotSize, room >= 8, offset + room <= memory.size else {
                throw SharedMemoryError.invalidSize(memory.size)
            }
            slots.append((room, offset))
        }
        self.slots = slots
    }

    private static func load(_ bytes: UnsafeMutableRawBufferPointer, at offset: Int, width: Int) -> UInt64 {
        (0..<width).reversed().reduce(UInt64(0)) { $0 << 8 | UInt64(bytes[offset + $1]) }
    }

    private static func store(_ value: UInt64, in bytes: UnsafeMutableRawBufferPointer, at offset: Int, width: Int) {
        for byte in 0..<width { bytes[offset + byte] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(byte))) }
    }

    private func slot(_ index: Int) -> Int { Self.headerSize + index * Self.slotSize }

    private func write(_ kind: UInt8, _ payload: [UInt8], at index: Int) {
        let (slot, offset) = (self.slot(index), slots[index].offset)
        memory.bytes[slot] = kind
        Self.store(UInt64(payload.count), in: memory.bytes, at: slot + 4, width: 4)
        UnsafeMutableRawBufferPointer(rebasing: memory.bytes[offset..<(offset + payload.count)]).copyBytes(from: payload)
    }

    /// The item at `index`.
    ///
    /// - Precondition: `index` is in `0..<count`.
    public subscript(index: Int) -> Item {
        precondition(index >= 0 && index < count, "index \(index) out of range 0..<\(count)")
        let slot = slot(index)
        let bytes = memory.bytes
        // The length is read again (another process may have replaced the
        // item), but never past the item's room.
        let length = min(Int(Self.load(bytes, at: slot + 4, width: 4)), slots[index].room)
        let offset = slots[index].offset
        let payload = Array(bytes[offset..<(offset + length)])
        func word() -> UInt64 { payload.count == 8 ? payload.reversed().reduce(0) { $0 << 8 | UInt64($1) } : 0 }
        switch bytes[slot] {
        case 1: return .int(Int(truncatingIfNeeded: word()))
        case 2: return .double(Double(bitPattern: word()))
        case 3: return .bool(payload.first == 1)
        case 4: return .string(String(decoding: payload, as: UTF8.self))
        case 5: return .bytes(payload)
        default: return .none
        }
    }

    /// Replaces the item at `index` with `item`, of any kind that fits the
    /// room the item there was made with.
    ///
    /// - Throws: ``SharedMemoryError/outOfRange(index:count:)`` for an index
    ///   out of range, ``SharedMemoryError/itemTooLarge(index:room:)`` for an
    ///   item that does not fit.
    public func set(_ item: Item, at index: Int) throws(SharedMemoryError) {
        guard index >= 0 && index < count else { throw .outOfRange(index: index, count: count) }
        let (payload, room) = (item.payload, slots[index].room)
        guard payload.count <= room else { throw .itemTooLarge(index: index, room: room) }
        write(item.kind, payload, at: index)
    }

    /// A copy of every item, in order (not taken atomically).
    public func toArray() -> [Item] { (0..<count).map { self[$0] } }

    /// The index of the first item equal to `item`, or nil (Python's `index`).
    public func firstIndex(of item: Item) -> Int? { (0..<count).first { self[$0] == item } }

    /// How many items equal `item` (Python's `count`).
    public func count(of item: Item) -> Int { (0..<count).count { self[$0] == item } }

    public convenience init(from decoder: any Decoder) throws {
        try self.init(validating: try SharedMemory(from: decoder))
    }

    public func encode(to encoder: any Encoder) throws {
        try memory.encode(to: encoder)
    }
}
