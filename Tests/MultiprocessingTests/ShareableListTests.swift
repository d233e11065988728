import Foundation
import Testing

@testable import Multiprocessing

/// Writes its own item of a shareable list, given as a value or by name.
struct ListEditor: ProcessJob {
    var list: ShareableList?
    var name: String?
    var index: Int
    func run() throws -> [ShareableList.Item] {
        let list = try self.list ?? ShareableList.attach(name: name!)
        try list.set(.string("from \(index)"), at: index)
        try list.set(.int(list.count(of: .none)), at: 0)
        return list.toArray()
    }
}

@Suite("ShareableList")
struct ShareableListTests {
    static let items: [ShareableList.Item] = [.int(-5), .double(2.5), .bool(true), .string("héllo wörld"), .bytes([0, 1, 255]), .none, .none]

    @Test("read and written by children, passed by every start method", arguments: jobStartMethods)
    func passed(method: StartMethod) throws {
        let list = try ShareableList(Self.items)
        #expect(list.toArray() == Self.items)
        for index in [5, 6] {
            let child = try ChildProcess(job: ListEditor(list: list, index: index), startMethod: method)
            try child.start()
            #expect(try child.join() == 0)
        }
        #expect(list.toArray() == [.int(0), .double(2.5), .bool(true), .string("héllo wörld"), .bytes([0, 1, 255]), .string("from 5"), .string("from 6")])
        #expect(list.firstIndex(of: .bool(true)) == 2)
        #expect(list.firstIndex(of: .bool(false)) == nil)
    }

    @Test("a named list attached by unrelated processes; unlinked when its creator closes it")
    func named() throws {
        let name = "swift-mp-list-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let list = try ShareableList([.none, .none, .int(Int.max)], name: name)
        let child = try ChildProcess(job: ListEditor(list: nil, name: name, index: 1), startMethod: .spawn)
        try child.start()
        #expect(try child.join() == 0)
        #expect(try child.output(as: [ShareableList.Item].self) == [.int(1), .string("from 1"), .int(Int.max)])
        #expect(try ShareableList.attach(name: name)[1] == .string("from 1"))
        list.memory.close()
        #expect(sharedMemoryEntries(name).isEmpty)
    }

    @Test("an item that does not fit, an index out of range, memory that holds no list: typed errors; nothing changed")
    func badInput() throws {
        let list = try ShareableList([.string("abc"), .int(1)])
        // "abc" was given 8 bytes: 8 fit, 9 do not.
        try list.set(.string("12345678"), at: 0)
        #expect(throws: SharedMemoryError.itemTooLarge(index: 0, room: 8)) { try list.set(.string("123456789"), at: 0) }
        #expect(list[0] == .string("12345678"))
        try list.set(.double(-0.5), at: 0)
        #expect(list[0] == .double(-0.5))
        #expect(throws: SharedMemoryError.outOfRange(index: 2, count: 2)) { try list.set(.none, at: 2) }
        #expect(throws: SharedMemoryError.outOfRange(index: -1, count: 2)) { try list.set(.none, at: -1) }

        let name = "swift-mp-notalist-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let other = try SharedMemory(name: name, size: 64)
        defer { other.close() }
        #expect(throws: SharedMemoryError.invalidSize(64)) { try ShareableList.attach(name: name) }
        // A header that claims more items than fit, or an item outside the memory.
        other.bytes.copyBytes(from: Array("SMPSLIST".utf8) + [200, 0, 0, 0, 0, 0, 0, 0])
        #expect(throws: SharedMemoryError.invalidSize(64)) { try ShareableList.attach(name: name) }
        other.bytes.copyBytes(from: Array("SMPSLIST".utf8) + [1, 0, 0, 0, 0, 0, 0, 0] + [1, 0, 0, 0, 8, 0, 0, 0, 8, 0, 0, 0, 60, 0, 0, 0])
        #expect(throws: SharedMemoryError.invalidSize(64)) { try ShareableList.attach(name: name) }

        let empty = try ShareableList([])
        #expect(empty.count == 0 && empty.toArray().isEmpty)
    }
}
