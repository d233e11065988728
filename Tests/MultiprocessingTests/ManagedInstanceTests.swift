import Foundation
import Testing

@testable import Multiprocessing

/// A type of the tests' own, shared through a manager without any protocol.
struct Inventory: Codable, Sendable, Equatable {
    var stock: [String: Int] = [:]
    var log: [String] = []

    mutating func take(_ item: String) -> Bool {
        guard stock[item, default: 0] > 0 else { return false }
        stock[item, default: 0] -= 1
        log.append(item)
        return true
    }
}

struct OutOfStock: Error, Codable {}

/// A shared value that holds a proxy of the same manager.
struct Shelf: Codable, Sendable {
    var items: ManagedList<String>
}

/// Takes `item` from a shared inventory until none is left; says how many it took.
struct Taker: ProcessJob {
    var inventory: ManagedInstance<Inventory>
    var item: String
    func run() throws -> Int {
        var taken = 0
        while try inventory.call(capturing: item, { inventory, item in inventory.take(item) }) { taken += 1 }
        return taken
    }
}

@Suite("Values of the user's types, their methods called in the server")
struct ManagedInstanceTests {
    @Test("four pool workers and this process take from one inventory: every item taken once, by every start method", arguments: jobStartMethods)
    func atomicAcrossProcesses(startMethod: StartMethod) throws {
        try withManager { manager in
            let inventory = try manager.share(Inventory(stock: ["apple": 300, "pear": 5]))
            let taken = try withProcessPool(processes: 2, startMethod: startMethod) { (pool: ProcessPool) throws -> [Int] in
                let jobs = (0..<4).map { _ in Taker(inventory: inventory, item: "apple") }
                let results = try pool.mapAsync(jobs)
                let here = try Taker(inventory: inventory, item: "apple").run()
                return try results.get(timeout: .seconds(60)) + [here]
            }
            #expect(taken.reduce(0, +) == 300)
            let value = try inventory.value()
            #expect(value.stock == ["apple": 0, "pear": 5])
            #expect(value.log.count == 300)
            // A call without capture, returning something of another type.
            #expect(try inventory.call { $0.stock["pear"] } == 5)
        }
    }

    @Test("an error thrown by the closure comes back typed and keeps what it did; a closure that captures is refused")
    func errorsAndCaptures() throws {
        try withManager { manager in
            let inventory = try manager.share(Inventory(stock: ["fig": 1]))
            #expect {
                try inventory.call { inventory -> Bool in
                    _ = inventory.take("fig")
                    throw OutOfStock()
                }
            } throws: { error in
                guard case let .objectFailed(type, _) = error as? ManagerError else { return false }
                return type.hasSuffix("OutOfStock")
            }
            #expect(try inventory.value().stock["fig"] == 0)

            let wanted = "fig"
            #expect(throws: ManagerError.self) { try inventory.call { $0.take(wanted) } }
            #expect(try inventory.value().log == ["fig"])
        }
    }

    @Test("a shared value holding a proxy: used in the server, then freed there without the server waiting on itself")
    func holdingAProxy() throws {
        try withManager { manager in
            let base = try manager.servedObjectCount()
            let shelf = try manager.share(Shelf(items: try manager.list(["jam"])))
            #expect(try manager.servedObjectCount() == base + 2)
            // Decoded in the server, the inner proxy calls the server from there.
            #expect(try shelf.call { try $0.items.count() } == 1)
            try shelf.releaseReference()
            // Freeing the shelf lets go of the list it held: both are gone.
            #expect(eventually(within: .seconds(10)) { (try? manager.servedObjectCount()) == base })
        }
    }

    @Test("a forged or unknown closure reference is refused and runs nothing")
    func forged() throws {
        let key = Array("instance".utf8)
        try withManager(authenticationKey: key) { manager in
            let inventory = try manager.share(Inventory(stock: ["kiwi": 2]))
            let typeName = _mangledTypeName(SentInstanceCall<Inventory, Int>.self)!
            let body: (inout Inventory) throws -> Int = { $0.stock.count }
            // Signed with another key.
            let forged = try #require(SentCode(ThickFunction(body).code, typeName: typeName, key: .init(data: Array("other".utf8))))
            #expect(throws: ManagerError.self) {
                try inventory.reference.call("sent", [Array(typeName.utf8), try ValueCodec.encode(forged), []])
            }
            // A type that is no call.
            #expect(throws: ManagerError.self) {
                try inventory.reference.call("sent", [Array("Si".utf8), try ValueCodec.encode(forged), []])
            }
            #expect(throws: ManagerError.self) { try inventory.reference.call("sent", []) }
            #expect(try inventory.value() == Inventory(stock: ["kiwi": 2]))
        }
    }
}
