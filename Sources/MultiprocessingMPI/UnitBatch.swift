#if MPI
import Multiprocessing

/// Units sent to a rank, grouped by call: per group the call's work (kind,
/// type name, encoded value) and time limit once, then each unit's number,
/// item count and encoded inputs. Framed by hand, little-endian, every
/// length checked on reading: these cross for every unit, and a generic
/// encoding cost rank 0 more than the rest of a unit's trip.
struct UnitBatch: Equatable {
    struct Unit: Equatable {
        var id: UInt64
        var items: Int
        var inputs: [UInt8]
    }

    struct Group: Equatable {
        /// The call on rank 0 (for cancelling).
        var call: Int
        var kind: UnitRequest.Kind
        var typeName: String
        var payload: [UInt8]
        /// The limit per item, in nanoseconds.
        var timeout: Int64?
        var units: [Unit] = []
    }

    var groups: [Group] = []

    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        writer.integer(UInt32(groups.count))
        for group in groups {
            writer.integer(Int64(group.call))
            writer.integer(group.kind.rawValue)
            writer.bytes(Array(group.typeName.utf8))
            writer.bytes(group.payload)
            writer.integer(group.timeout ?? -1)
            writer.integer(UInt32(group.units.count))
            for unit in group.units {
                writer.integer(unit.id)
                writer.integer(Int64(unit.items))
                writer.bytes(unit.inputs)
            }
        }
        return writer.buffer
    }

    init() {}

    init(decoding bytes: [UInt8]) throws(WireError) {
        var reader = ByteReader(bytes)
        let groupCount = try reader.integer(UInt32.self)
        for _ in 0..<groupCount {
            let call = try reader.integer(Int64.self)
            let rawKind = try reader.integer(UInt8.self)
            guard let kind = UnitRequest.Kind(rawValue: rawKind) else { throw .corrupt("a unit kind of \(rawKind)") }
            let typeName = String(decoding: try reader.bytes(), as: UTF8.self)
            let payload = try reader.bytes()
            let timeout = try reader.integer(Int64.self)
            var group = Group(call: Int(truncatingIfNeeded: call), kind: kind, typeName: typeName, payload: payload, timeout: timeout < 0 ? nil : timeout)
            let unitCount = try reader.integer(UInt32.self)
            guard Int(unitCount) <= reader.remaining / 20 else { throw .corrupt("\(unitCount) units in \(reader.remaining) bytes") }
            for _ in 0..<unitCount {
                let id = try reader.integer(UInt64.self)
                let items = try reader.integer(Int64.self)
                guard items >= 0, items <= Int64(Int32.max) else { throw .corrupt("a unit of \(items) items") }
                group.units.append(Unit(id: id, items: Int(items), inputs: try reader.bytes()))
            }
            groups.append(group)
        }
        guard reader.remaining == 0 else { throw .corrupt("\(reader.remaining) bytes after the units") }
    }
}

/// How units ended: each a ``UnitReply`` as it crosses a pipe, framed by hand.
struct ReplyBatch: Equatable {
    var replies: [[UInt8]]

    init(replies: [[UInt8]]) { self.replies = replies }

    func encoded() -> [UInt8] {
        var writer = ByteWriter()
        writer.integer(UInt32(replies.count))
        for reply in replies { writer.bytes(reply) }
        return writer.buffer
    }

    init(decoding bytes: [UInt8]) throws(WireError) {
        var reader = ByteReader(bytes)
        let count = try reader.integer(UInt32.self)
        guard Int(count) <= reader.remaining / 4 else { throw .corrupt("\(count) replies in \(reader.remaining) bytes") }
        replies = []
        replies.reserveCapacity(Int(count))
        for _ in 0..<count { replies.append(try reader.bytes()) }
        guard reader.remaining == 0 else { throw .corrupt("\(reader.remaining) bytes after the replies") }
    }
}

/// Appends little-endian integers and length-prefixed bytes.
struct ByteWriter {
    var buffer: [UInt8] = []

    mutating func integer<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { buffer.append(contentsOf: $0) }
    }

    mutating func bytes(_ bytes: [UInt8]) {
        integer(UInt32(bytes.count))
        buffer.append(contentsOf: bytes)
    }
}

/// Reads what ``ByteWriter`` wrote; every read is checked against the end.
struct ByteReader {
    private let storage: [UInt8]
    private var offset = 0

    init(_ bytes: [UInt8]) { storage = bytes }

    var remaining: Int { storage.count - offset }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) throws(WireError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw .corrupt("\(remaining) bytes where a \(size)-byte integer was due") }
        var value: T = 0
        for index in (0..<size).reversed() { value = value << 8 | T(storage[offset + index]) }
        offset += size
        return value
    }

    mutating func bytes() throws(WireError) -> [UInt8] {
        let count = Int(try integer(UInt32.self))
        guard remaining >= count else { throw .corrupt("\(count) bytes announced, \(remaining) there") }
        defer { offset += count }
        return Array(storage[offset..<offset + count])
    }
}
#endif
