import Foundation
import Testing

@testable import Multiprocessing

/// Adds its numbers to a managed set and says how many were new.
struct SetAdder: ProcessJob {
    var set: ManagedSet<Int>
    var numbers: [Int]
    func run() throws -> Int {
        try numbers.filter { try set.insert($0) }.count
    }
}

@Suite("Managed sets, and Python 3.14's dictionary and list methods")
struct ManagerCollectionTests {
    @Test("a set shared by pool workers: each element once, Python's set operations")
    func sets() throws {
        try withManager { manager in
            let set = try manager.set(Set([1, 2, 3]))
            try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
                // 0..<100 in two overlapping halves: 97 new elements in all, each counted once.
                let added = try pool.map([SetAdder(set: set, numbers: Array(0..<60)), SetAdder(set: set, numbers: Array(40..<100))])
                #expect(added.reduce(0, +) == 97)
            }
            #expect(try set.count() == 100)
            #expect(try set.snapshot() == Set(0..<100))
            #expect(try set.insert(5) == false)
            #expect(try set.remove(5) == true)
            #expect(try set.remove(5) == false)
            #expect(try set.contains(5) == false && set.contains(6))
            // s -= range(10, 100); s &= {0, 1, 2, 50}; s ^= {2, 3}; s |= {7}
            try set.subtract(10..<100)
            #expect(try set.snapshot() == Set([0, 1, 2, 3, 4, 6, 7, 8, 9]))
            try set.formIntersection([0, 1, 2, 50])
            #expect(try set.snapshot() == [0, 1, 2])
            try set.formSymmetricDifference([2, 3])
            #expect(try set.snapshot() == [0, 1, 3])
            try set.formUnion([7])
            #expect(try set.isSubset(of: [0, 1, 3, 7, 8]) && !set.isSubset(of: [0, 1]))
            #expect(try set.isSuperset(of: [0, 7]) && !set.isSuperset(of: [9]))
            #expect(try set.isDisjoint(with: [2, 4]) && !set.isDisjoint(with: [3]))
            var popped: Set<Int> = []
            while let element = try set.popFirst() { popped.insert(element) }
            #expect(popped == [0, 1, 3, 7])
            #expect(try set.count() == 0)
            try set.formUnion([1, 2])
            try set.removeAll()
            #expect(try set.snapshot().isEmpty)
            // An element that does not decode as the proxy's type is a typed error.
            let strings = try manager.set(Set(["a"]))
            #expect(throws: ManagerError.self) { try ManagedSet<[Int]>(reference: strings.reference).snapshot() }
        }
    }

    @Test("dictionary fromkeys, union (|) and clear, as Python's")
    func dictionaries() throws {
        try withManager { manager in
            let dictionary = try manager.dictionary(fromKeys: ["a", "b", "c"], value: 0)
            #expect(try dictionary.snapshot() == ["a": 0, "b": 0, "c": 0])
            // d | {"c": 3, "d": 4}: a new dictionary, the right side wins; d unchanged.
            #expect(try dictionary.merging(["c": 3, "d": 4]) == ["a": 0, "b": 0, "c": 3, "d": 4])
            #expect(try dictionary.count() == 3)
            try dictionary.merge(["c": 3])  // d |= {"c": 3}
            #expect(try dictionary.get("c") == 3)
            try dictionary.removeAll()
            #expect(try dictionary.count() == 0)
        }
    }

    @Test("list reverse, sort, index and count as Python's, sort racing other writers loses nothing")
    func lists() throws {
        try withManager { manager in
            let list = try manager.list([3, 1, 2, 3, 5])
            try list.reverse()
            #expect(try list.snapshot() == [5, 3, 2, 1, 3])
            #expect(try list.firstIndex(of: 3) == 1)
            #expect(try list.firstIndex(of: 9) == nil)
            #expect(try list.count(of: 3) == 2)
            try list.sort()
            #expect(try list.snapshot() == [1, 2, 3, 3, 5])
            try list.sort(by: >)
            #expect(try list.snapshot() == [5, 3, 3, 2, 1])
            let copy = try list.snapshot()  // Python's copy(): a plain list
            try list.removeAll()
            #expect(try list.count() == 0 && copy.count == 5)

            // Sorts while a child appends: every element is there, and the
            // last sort leaves them in order.
            let shared = try manager.list([Int]())
            let writer = ChildProcess { for i in 0..<300 { try shared.append(300 - i) } }
            try writer.start()
            for _ in 0..<20 { try shared.sort() }
            #expect(try writer.join() == 0)
            try shared.sort()
            #expect(try shared.snapshot() == Array(1...300))

            let array = try manager.array([1, 2])
            #expect(throws: ManagerError.self) { try ManagedList<Int>(reference: array.reference).reverse() }
        }
    }
}
