import Foundation
import Testing

@testable import Multiprocessing

/// Makes `count` managed dictionaries on the manager at `address`, one at a
/// time, sets a value in each and drops it.
struct DictionaryChurn: ProcessJob {
    var address: ConnectionAddress
    var key: [UInt8]
    var count: Int
    func run() throws -> Int {
        let manager = try Manager.connect(to: address, authenticationKey: key)
        for i in 0..<count {
            let dictionary = try manager.dictionary(["n": i])
            if i % 1000 == 0, try dictionary.get("n") != i { return -1 }
        }
        return count
    }
}

/// Writes into a dictionary it was sent and says how many entries it has.
struct DictionaryWriter: ProcessJob {
    var dictionary: ManagedDictionary<String, Int>
    var key: String
    func run() throws -> Int {
        try dictionary.set(1, for: key)
        return try dictionary.count()
    }
}

/// Makes a managed value on the manager at `address` and returns its proxy.
struct ValueMaker: ProcessJob {
    var address: ConnectionAddress
    var key: [UInt8]
    func run() throws -> ManagedValue<Int> {
        try Manager.connect(to: address, authenticationKey: key).value(9)
    }
}

@Suite("Managers free what no process holds")
struct ManagerReferenceTests {
    @Test("100,000 dictionaries made and dropped by four processes leave the server's object count and memory flat")
    func churn() throws {
        let key = Array("churn".utf8)
        try withManager(authenticationKey: key) { manager in
            let base = try manager.servedObjectCount()
            let pid = try #require(manager.serverPID)
            // Warm up: the server's allocator reaches its working size.
            _ = try DictionaryChurn(address: manager.address, key: key, count: 2_000).run()
            #expect(try manager.servedObjectCount() == base)
            let warm = try #require(Syscall.residentMemory(of: pid))
            try withProcessPool(processes: 4) { (pool: ProcessPool) throws in
                let jobs = (0..<4).map { _ in DictionaryChurn(address: manager.address, key: key, count: 24_500) }
                #expect(try pool.map(jobs) == Array(repeating: 24_500, count: 4))
            }
            #expect(try manager.servedObjectCount() == base)
            let after = try #require(Syscall.residentMemory(of: pid))
            // 98,000 dictionaries kept would be tens of MiB (not under a
            // sanitizer: ASan's quarantine keeps what was freed).
            if !underSanitizer { #expect(after - warm < 8 << 20, "the server grew from \(warm) to \(after) bytes") }
        }
    }

    @Test("a proxy sent to a pool worker keeps its object alive after the sender dropped it; the worker's end frees it", arguments: jobStartMethods)
    func sentProxy(startMethod: StartMethod) throws {
        try withManager { manager in
            let base = try manager.servedObjectCount()
            try withProcessPool(processes: 1, startMethod: startMethod) { (pool: ProcessPool) throws in
                // The only proxy here is a temporary, dropped once the job is encoded.
                let result = try pool.applyAsync(DictionaryWriter(dictionary: try manager.dictionary(), key: "a"))
                #expect(try result.get(timeout: .seconds(30)) == 1)
            }
            // The worker has ended; nobody holds the dictionary.
            #expect(try manager.servedObjectCount() == base)
        }
    }

    @Test("a proxy held only by a SIGKILLed process is freed")
    func holderKilled() throws {
        try withManager { manager in
            let base = try manager.servedObjectCount()
            let dictionary: ManagedDictionary<String, Int> = try manager.dictionary()
            let (ready, signal) = try Connection.pipe()
            let holder = ChildProcess {
                try dictionary.set(1, for: "held")  // its first call: it holds the dictionary itself
                try signal.send(true)
                sleep(60)
            }
            try holder.start()
            #expect(try ready.receive(Bool.self) == true)
            try dictionary.releaseReference()
            #expect(try manager.servedObjectCount() == base + 1, "the child still holds it")
            try holder.kill()
            try holder.join()
            #expect(eventually(within: .seconds(10)) { (try? manager.servedObjectCount()) == base })
        }
    }

    @Test("releaseReference frees the object at once; every copy then throws referenceReleased; twice is harmless")
    func explicitRelease() throws {
        try withManager { manager in
            let base = try manager.servedObjectCount()
            let list: ManagedList<Int> = try manager.list([1, 2, 3])
            let copy = list
            #expect(try manager.servedObjectCount() == base + 1)
            try list.releaseReference()
            try list.releaseReference()
            #expect(try manager.servedObjectCount() == base)
            #expect(throws: ManagerError.referenceReleased) { try copy.count() }
            // The id is gone on the server too: a proxy decoded from an old encoding cannot revive it.
            #expect(throws: ManagerError.unknownObject(list.reference.id)) {
                try ManagedList<Int>(reference: ManagedReference(client: manager.client, id: list.reference.id)).count()
            }
        }
    }

    @Test("a proxy decoded twice from one encoding holds twice; one a child returns outlives the child until decoded")
    func transits() throws {
        try withManager { manager in
            let base = try manager.servedObjectCount()
            var value: ManagedValue<Int>? = try manager.value(5)
            let bytes = try ValueCodec.encode(value!)
            value = nil
            #expect(try manager.servedObjectCount() == base + 1, "held in transit")
            var first: ManagedValue<Int>? = try ValueCodec.decode(ManagedValue<Int>.self, from: bytes)
            var second: ManagedValue<Int>? = try ValueCodec.decode(ManagedValue<Int>.self, from: bytes)
            #expect(try first?.get() == 5)
            first = nil
            #expect(try second?.get() == 5)
            second = nil
            #expect(try manager.servedObjectCount() == base)

            // Made by a child and returned as its output: decoded here after
            // the child is gone, its hold in transit outlived it.
            for method in jobStartMethods {
                let child = try ChildProcess(job: ValueMaker(address: manager.address, key: manager.client.authenticationKey), startMethod: method)
                try child.start()
                #expect(try child.join() == 0)
                var made: ManagedValue<Int>? = try child.output(as: ManagedValue<Int>.self)
                #expect(try made?.get() == 9)
                made = nil
                #expect(try manager.servedObjectCount() == base)
            }
        }
    }

    @Test("reference-counting requests with bad arguments get typed errors; letting go of what one does not hold changes nothing")
    func badRequests() throws {
        let server = ManagerServer(listener: nil, authenticationKey: [])
        func call(_ method: String, _ arguments: [[UInt8]], process: Int32 = 1) throws(ManagerError) -> [UInt8] {
            try server.handle(ManagerRequest(object: 0, method: method, arguments: arguments, process: process), callerGone: { false })
        }
        let id = try ValueCodec.decode(UInt64.self, from: try call("create", [try ValueCodec.encode("dict")]))
        let raw = { (value: UInt64) in withUnsafeBytes(of: value.littleEndian) { Array($0) } }
        #expect(throws: ManagerError.unknownObject(999)) { try call(ManagerRequest.incref, [raw(999)]) }
        #expect(throws: ManagerError.unknownObject(999)) { try call(ManagerRequest.transit, [raw(999)]) }
        for method in [ManagerRequest.incref, ManagerRequest.decref, ManagerRequest.transit, ManagerRequest.adopt] {
            #expect(throws: ManagerError.self) { try call(method, []) }
            #expect(throws: ManagerError.self) { try call(method, [[1, 2, 3]]) }
        }
        // Process 2 holds nothing: its decref is ignored, the object stays.
        _ = try call(ManagerRequest.decref, [raw(id)], process: 2)
        #expect(try ValueCodec.decode(Int.self, from: try call("objects", [])) == 1)
        // An unknown transit token: the caller holds on its own.
        _ = try call(ManagerRequest.adopt, [raw(id), raw(12345)], process: 2)
        _ = try call(ManagerRequest.decref, [raw(id)], process: 1)
        #expect(try ValueCodec.decode(Int.self, from: try call("objects", [])) == 1)
        _ = try call(ManagerRequest.decref, [raw(id)], process: 2)
        #expect(try ValueCodec.decode(Int.self, from: try call("objects", [])) == 0)
    }
}

/// Reads the inner lists of a managed dictionary and appends to each.
struct NestedAppender: ProcessJob {
    var outer: ManagedDictionary<String, ManagedList<Int>>
    func run() throws -> Int {
        var appended = 0
        for key in try outer.keys() {
            guard let inner = try outer.get(key) else { continue }
            try inner.append(key.count)
            appended += 1
        }
        return appended
    }
}

@Suite("Nested proxies")
struct NestedProxyTests {
    @Test("a managed dictionary of managed lists round-trips through a pool worker, by every start method", arguments: jobStartMethods)
    func throughWorker(startMethod: StartMethod) throws {
        try withManager { manager in
            let outer = try manager.dictionary([String: ManagedList<Int>]())
            let inners = try ["a", "bb", "ccc"].map { key in (key, try manager.list([Int]())) }
            for (key, inner) in inners { try outer.set(inner, for: key) }
            try withProcessPool(processes: 1, startMethod: startMethod) { (pool: ProcessPool) throws in
                #expect(try pool.apply(NestedAppender(outer: outer)) == 3)
            }
            for (key, inner) in inners { #expect(try inner.snapshot() == [key.count]) }
            // Read back here, they are the same objects.
            #expect(try outer.get("bb")?.snapshot() == [2])
        }
    }
}
