import Foundation
import Synchronization
import Testing

@testable import Multiprocessing

/// A type of the tests' own, served by a manager.
struct Tally: ManagedObject {
    var counts: [String: Int] = [:]
    mutating func handle(_ word: String) throws -> Int {
        if word.isEmpty { throw Refusal(reason: "empty word") }
        counts[word, default: 0] += 1
        return counts[word]!
    }
}

/// A job that puts numbers into a managed queue (runs by any start method).
struct QueueProducer: ProcessJob {
    var queue: ManagedQueue<Int>
    var count: Int
    func run() throws -> Int {
        for i in 0..<count { try queue.put(i) }
        return count
    }
}

struct QueueConsumer: ProcessJob {
    var queue: ManagedQueue<Int>
    var count: Int
    func run() throws -> Int {
        var sum = 0
        for _ in 0..<count { sum += try queue.get(timeout: .seconds(30)) }
        return sum
    }
}

/// Connects to a manager by address and key, from a process of its own.
struct RemoteUser: ProcessJob {
    var address: ConnectionAddress
    var key: [UInt8]
    var shared: ManagedDictionary<String, String>
    func run() throws -> Bool {
        let remote = try Manager.connect(to: address, authenticationKey: key)
        let list = try remote.list(["from the other process"])
        try shared.set("\(try list.count())", for: "count")
        return true
    }
}

/// Calls five proxies of one manager and says how many descriptors that opened.
struct ProxyUser: ProcessJob {
    var proxies: [ManagedValue<Int>]
    func run() throws -> Int {
        let before = openDescriptorCount()
        for proxy in proxies { _ = try proxy.get() }
        return openDescriptorCount() - before
    }
}

@Suite("Managers")
struct ManagerTests {
    @Test("concurrent updates from several processes to a dict and a list are all there")
    func concurrentUpdates() throws {
        try withManager { manager in
            let dictionary = try manager.dictionary([String: Int]())
            let list = try manager.list([Int]())
            let children = (0..<4).map { child in
                ChildProcess {
                    for i in 0..<50 {
                        try dictionary.set(child * 1000 + i, for: "k\(child)-\(i)")
                        try list.append(child * 1000 + i)
                    }
                }
            }
            for child in children { try child.start() }
            for child in children { #expect(try child.join() == 0) }
            #expect(try dictionary.count() == 200)
            #expect(try list.count() == 200)
            #expect(try dictionary.get("k3-49") == 3049)
            #expect(try Set(list.snapshot()) == Set((0..<4).flatMap { c in (0..<50).map { c * 1000 + $0 } }))
            #expect(try dictionary.removeValue(forKey: "k0-0") == 0)
            #expect(try dictionary.contains("k0-0") == false)
        }
    }

    @Test("a managed queue of size 10 between pool workers, by every start method")
    func queueBetweenPoolWorkers() throws {
        try withManager { manager in
            let queue = try manager.queue(of: Int.self, maxSize: 10)
            for method in jobStartMethods {
                try withProcessPool(processes: 2, startMethod: method) { (pool: ProcessPool) throws in
                    let consumer = try pool.applyAsync(QueueConsumer(queue: queue, count: 100))
                    let producer = try pool.applyAsync(QueueProducer(queue: queue, count: 100))
                    #expect(try producer.get(timeout: .seconds(60)) == 100)
                    #expect(try consumer.get(timeout: .seconds(60)) == 4950)
                }
            }
            // Closure workers too.
            try withProcessPool(processes: 2) { (pool: ProcessPool) throws in
                let consumer = try pool.applyAsync { () -> Int in (0..<30).reduce(0) { sum, _ in sum + ((try? queue.get()) ?? -1000) } }
                let producer = try pool.applyAsync { () -> Int in for i in 0..<30 { try queue.put(i) }; return 30 }
                #expect(try producer.get() == 30)
                #expect(try consumer.get() == 435)
            }
            #expect(throws: ManagerError.timedOut) { try queue.get(timeout: .milliseconds(20)) }
        }
    }

    @Test("values, arrays, namespaces, events, semaphores, barriers and conditions work across processes")
    func sharedState() throws {
        try withManager { manager in
            let value = try manager.value(1.5)
            let array = try manager.array([0, 0, 0, 0])
            let namespace = try manager.namespace()
            let event = try manager.event()
            let barrier = try manager.barrier(parties: 3)
            let semaphore = try manager.semaphore(value: 1, bounded: true)
            let condition = try manager.condition()
            let flag = try manager.value(false)
            let children = (0..<2).map { child in
                ChildProcess {
                    try array.set(child, to: child + 10)
                    try namespace.set("from\(child)", to: "child \(child)")
                    _ = try barrier.wait(timeout: .seconds(30))
                    try event.wait(timeout: .seconds(30))
                    try semaphore.acquire()
                    try value.set(try value.get() + 1)
                    try semaphore.release()
                    if child == 0 {
                        try condition.acquire()
                        while !(try flag.get()) { try condition.wait(timeout: .seconds(30)) }
                        try condition.release()
                    }
                }
            }
            for child in children { try child.start() }
            #expect(try barrier.wait(timeout: .seconds(30)) >= 0)
            try event.set()
            try condition.acquire()
            try flag.set(true)
            try condition.notifyAll()
            try condition.release()
            for child in children { #expect(try child.join() == 0) }
            #expect(try value.get() == 3.5)
            #expect(try array.snapshot() == [10, 11, 0, 0])
            #expect(try namespace.get("from1", as: String.self) == "child 1")
            #expect(try namespace.get("missing", as: Int.self) == nil)
            #expect(throws: ManagerError.invalidArgument("a bounded semaphore released too many times")) { try semaphore.release() }
            #expect(throws: ManagerError.invalidArgument("index 4 out of range 0..<4")) { try array.get(4) }
            #expect(throws: ManagerError.notOwner) { try manager.lock().release() }
        }
    }

    @Test("a lock whose holder is killed is released")
    func lockHolderKilled() throws {
        try withManager { manager in
            let lock = try manager.lock()
            let held = try manager.event()
            let holder = ChildProcess {
                try lock.acquire()
                try held.set()
                sleep(60)
            }
            try holder.start()
            #expect(try held.wait(timeout: .seconds(10)))
            #expect(try lock.acquire(timeout: .zero) == false)
            try holder.kill()
            try holder.join()
            #expect(try lock.acquire(timeout: .seconds(10)))
            try lock.release()
        }
    }

    @Test("a type of our own is served; its errors come back typed")
    func userObjects() throws {
        try withManager { manager in
            let tally = try manager.serve(Tally())
            let child = ChildProcess { _ = try tally.send("apple") }
            try child.start()
            try child.join()
            #expect(try tally.send("apple") == 2)
            #expect(throws: ManagerError.objectFailed(errorType: String(reflecting: Refusal.self), description: "refused: empty word")) {
                try tally.send("")
            }
        }
    }

    @Test("a remote manager over loopback TCP: the right key works, a wrong one is refused")
    func remoteManager() throws {
        let key = Array("the key".utf8)
        let manager = try Manager(address: .tcp(host: "127.0.0.1", port: 0), authenticationKey: key)
        let shared = try manager.dictionary([String: String]())
        try shared.set("hello", for: "greeting")
        let address = manager.address
        // Another process connects by address and key only.
        let other = try ChildProcess(job: RemoteUser(address: address, key: key, shared: shared), startMethod: .forkserver)
        try other.start()
        #expect(try other.join() == 0)
        #expect(try shared.get("count") == "1")
        #expect(throws: ManagerError.authenticationFailed) { try Manager.connect(to: address, authenticationKey: Array("wrong".utf8)) }
        #expect(try shared.get("greeting") == "hello")
        manager.shutdown()
    }

    @Test("a manager SIGKILLed mid-use gives typed errors in every client, at once")
    func managerKilled() throws {
        let manager = try Manager()
        let queue = try manager.queue(of: Int.self)
        let dictionary = try manager.dictionary([Int: Int]())
        let waiter = ChildProcess {
            do {
                _ = try queue.get()  // blocks until the server dies
                exit(2)
            } catch ManagerError.managerUnreachable {
                exit(0)
            }
        }
        try waiter.start()
        try dictionary.set(1, for: 1)
        let pid = try #require(manager.serverPID)
        #expect(eventually(within: .seconds(5)) { (try? queue.count()) == 0 })
        kill(pid, SIGKILL)
        #expect(try waiter.join(timeout: .seconds(10)) == 0)
        #expect {
            try dictionary.get(1)
        } throws: { error in
            if case ManagerError.managerUnreachable = error { return true }
            return false
        }
        manager.shutdown()
        #expect(!isRunning(pid))
    }

    @Test("many threads of one process call at once, each on a channel of its own; a waiting call holds up no other")
    func threadsShareAClient() throws {
        try withManager { manager in
            let shared = try manager.dictionary([Int: Int]())
            let queue = try manager.queue(of: Int.self)
            // One thread waits on the queue the whole time: the others go on.
            let waiter = Thread { _ = try? queue.get(timeout: .seconds(20)) }
            waiter.start()
            DispatchQueue.concurrentPerform(iterations: 8) { worker in
                for i in 0..<200 { try? shared.set(i, for: worker * 1000 + i) }
            }
            #expect(try shared.count() == 1600)
            try queue.put(1)
            #expect(eventually(within: .seconds(10)) { (try? queue.count()) == 0 })
        }
    }

    @Test("proxies of one manager received by a process share its connection", arguments: jobStartMethods)
    func proxiesShareAConnection(method: StartMethod) throws {
        try withManager { manager in
            let proxies = try (0..<5).map { try manager.value($0) }
            // The job iterates over the proxies: iterate here first, so that a forked
            // child finds the runtime's records for it made (the fork hazard of README).
            for proxy in proxies { _ = proxy }
            // One connection: a socket and the two rings' memory.
            #expect(try ChildProcess.execute(ProxyUser(proxies: proxies), startMethod: method) <= 3)
        }
    }

    @Test("children forked while other threads call the manager can call it at once")
    func forkWhileCalling() throws {
        try withManager { manager in
            let shared = try manager.dictionary([Int: Int]())
            let stop = Atomic<Bool>(false)
            let callers = (0..<4).map { worker in
                Thread {
                    var i = 0
                    while !stop.load(ordering: .relaxed) {
                        try? shared.set(i, for: worker)
                        i += 1
                    }
                }
            }
            callers.forEach { $0.start() }
            defer { stop.store(true, ordering: .relaxed) }
            for round in 0..<20 {
                let child = ChildProcess { try shared.set(round, for: 100 + round) }
                try child.start()
                #expect(try child.join(timeout: .seconds(20)) == 0)
            }
            #expect(try shared.get(119) == 19)
        }
    }

    @Test("values larger than a channel's ring cross whole, both ways, from a child")
    func largeValues() throws {
        try withManager { manager in
            let big = (0..<(300_000)).map { UInt8(truncatingIfNeeded: $0 &* 7) }  // more than the 256 KiB rings
            let shared = try manager.dictionary([String: [UInt8]]())
            // The calls the child makes, made here first (the fork hazard of README).
            try shared.set([1], for: "small")
            #expect(try shared.get("small") == [1])
            let child = ChildProcess {
                try shared.set(big, for: "big")
                guard try shared.get("big") == big else { exit(3) }
            }
            try child.start()
            #expect(try child.join() == 0)
            #expect(try shared.get("big") == big)
        }
    }

    @Test("malformed requests get error replies and the server keeps serving, over the socket and over the rings", arguments: [false, true])
    func malformedRequests(overRings: Bool) throws {
        let key = Array("k".utf8)
        try withManager(authenticationKey: key) { manager in
            let value = try manager.value(7)
            // A raw socket client, or a channel that moved onto shared memory.
            let call: ([UInt8]) throws -> ManagerReply
            let close: () -> Void
            if overRings {
                let channel = try ManagerChannel.connect(to: manager.address, authenticationKey: key)
                #expect(channel.isShared)
                call = { try ManagerReply(decoding: channel.call($0)) }
                close = channel.close
            } else {
                let raw = try Client.connect(to: manager.address, authenticationKey: key)
                call = { bytes in
                    try raw.sendBytes(bytes)
                    return try ManagerReply(decoding: raw.receiveBytes())
                }
                close = raw.close
            }
            defer { close() }
            for garbage in [[UInt8](), [0xFF, 0x00, 0x13, 0x37], [UInt8](repeating: 0xAB, count: 5000)] {
                guard case .failure(.badRequest) = try call(garbage) else { Issue.record("no error reply to \(garbage.count) bytes"); return }
            }
            guard case .failure(.unknownObject(999)) = try call(ManagerRequest(object: 999, method: "get").encoded()) else { Issue.record("no unknown-object reply"); return }
            guard case .failure(.badRequest) = try call(ManagerRequest(object: 0, method: "create", arguments: [try ValueCodec.encode("nonsense")]).encoded()) else { Issue.record("no bad-kind reply"); return }
            guard case .failure(.badRequest) = try call(ManagerRequest(object: 0, method: "create", arguments: [try ValueCodec.encode("object"), try ValueCodec.encode("Si"), []]).encoded()) else { Issue.record("a non-ManagedObject type was made"); return }
            #expect(try value.get() == 7)
            #expect(throws: ManagerError.self) { try ManagedValue<[String]>(reference: value.reference).get() }
        }
    }

    @Test("shutdown ends the server; proxies then fail at once")
    func shutdown() throws {
        let manager = try Manager()
        let list = try manager.list([1, 2])
        let pid = try #require(manager.serverPID)
        manager.shutdown()
        #expect(!isRunning(pid))
        #expect(throws: ManagerError.self) { try list.count() }
    }
}
