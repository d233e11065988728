import Foundation
import Testing

@testable import Multiprocessing

@Suite("Async proxies: awaited without blocking a thread, cancelled with their task")
struct AsyncProxyTests {
    @Test("64 tasks await an empty queue without holding the cooperative pool; each gets one element, none twice")
    func manyWaiters() async throws {
        let manager = try Manager()
        defer { manager.shutdown() }
        let queue = try manager.queue(of: Int.self)
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<64 { group.addTask { try await queue.get(timeout: .seconds(60)) } }
            // With 64 calls waiting, the cooperative pool still runs other work.
            #expect(await Task { 6 * 7 }.value == 42)
            let producer = ChildProcess { for i in 0..<64 { try queue.put(i) } }
            try producer.start()
            var got: [Int] = []
            for try await element in group { got.append(element) }
            #expect(got.sorted() == Array(0..<64))
            #expect(try await producer.join() == 0)
        }
    }

    @Test("a get cancelled while it waits takes nothing: the element put later goes to the next get")
    func cancelledGet() async throws {
        let manager = try Manager()
        defer { manager.shutdown() }
        let queue = try manager.queue(of: String.self)
        let waiting = Task { try await queue.get(timeout: .seconds(30)) }
        // Most likely waiting at the server by then; cancelled before it got
        // there, it must take nothing all the same (bounded: without
        // cancellation it would end timed out, failing the test).
        try await Task.sleep(for: .milliseconds(50))
        waiting.cancel()
        await #expect(throws: ManagerError.cancelled) { try await waiting.value }
        try await queue.put("kept")
        #expect(try await queue.get(timeout: .seconds(10)) == "kept")
        #expect(try queue.count() == 0)
    }

    @Test("an async lock is held by its call, a cancelled one is never taken; semaphores, events and barriers await and cancel")
    func synchronisation() async throws {
        let manager = try Manager()
        defer { manager.shutdown() }
        let lock = try manager.lock()
        let held = try manager.event()
        let release = try manager.event()
        let holder = ChildProcess {
            try lock.acquire()
            try held.set()
            _ = try release.wait(timeout: .seconds(60))
            try lock.release()
        }
        try holder.start()
        let isHeld = try await held.wait(timeout: .seconds(30))
        #expect(isHeld)
        // Cancelled while the child holds it: never taken.
        let cancelled = Task { try await lock.withLock(timeout: .seconds(30)) { 1 } }
        try await Task.sleep(for: .milliseconds(50))
        cancelled.cancel()
        await #expect(throws: ManagerError.cancelled) { try await cancelled.value }
        // Awaited until the child lets go; the body may hop threads.
        async let taken = lock.withLock(timeout: .seconds(30)) { () async throws -> Int in
            await Task.yield()
            return 7
        }
        try release.set()
        #expect(try await taken == 7)
        #expect(try await holder.join() == 0)
        #expect(try lock.acquire(timeout: .zero), "released by withLock")
        try lock.release()

        let semaphore = try manager.semaphore(value: 0)
        let acquiring = Task { try await semaphore.acquire(timeout: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(50))
        acquiring.cancel()
        await #expect(throws: ManagerError.cancelled) { try await acquiring.value }
        try semaphore.release()
        #expect(try semaphore.value() == 1, "the cancelled acquire took no unit")

        let barrier = try manager.barrier(parties: 2)
        let arriving = Task { try await barrier.wait(timeout: .seconds(30)) }
        try await Task.sleep(for: .milliseconds(50))
        arriving.cancel()
        await #expect(throws: ManagerError.cancelled) { try await arriving.value }
        #expect(try barrier.isBroken(), "a waiter that left breaks it")

        let condition = try manager.condition()
        let notified = try await condition.withLock { held in try await held.wait(timeout: .milliseconds(10)) }
        #expect(notified == false)
    }
}
