// The async forms of the proxy calls that can wait. Each runs its call on a
// thread of its own, never blocking the awaiting task's thread (nor the
// cooperative pool), and is cancelled with its task: the server is told, and
// a call still waiting there ends with `ManagerError.cancelled` having taken
// nothing — no element, no unit, no lock. A call the server had already
// answered returns as it ended.

extension ManagedQueue {
    /// Puts `element`, awaiting room while the queue is full, at most `timeout`.
    /// - Throws: ``ManagerError/timedOut`` if it stayed full,
    ///   ``ManagerError/cancelled`` if the task was cancelled first (nothing put).
    public func put(_ element: Element, timeout: Duration? = nil) async throws(ManagerError) {
        _ = try await reference.callAsync("put", [managerArgument(element)], timeout: timeout)
    }

    /// Takes the oldest element, awaiting one while the queue is empty, at most `timeout`.
    /// - Throws: ``ManagerError/timedOut`` if it stayed empty,
    ///   ``ManagerError/cancelled`` if the task was cancelled first (nothing taken).
    public func get(timeout: Duration? = nil) async throws(ManagerError) -> Element {
        try managerResult(Element.self, try await reference.callAsync("get", timeout: timeout))
    }

    /// Awaits every element put being marked done (`JoinableQueue.join`).
    public func join(timeout: Duration? = nil) async throws(ManagerError) {
        _ = try await reference.callAsync("join", timeout: timeout)
    }
}

extension ManagedEvent {
    /// Awaits the flag, at most `timeout`; returns whether it is set.
    @discardableResult
    public func wait(timeout: Duration? = nil) async throws(ManagerError) -> Bool {
        try await reference.callAsync("wait", timeout: timeout, as: Bool.self)
    }
}

extension ManagedSemaphore {
    /// Takes one unit, awaiting one at most `timeout`; returns whether it did.
    @discardableResult
    public func acquire(timeout: Duration? = nil) async throws(ManagerError) -> Bool {
        try await reference.callAsync("acquire", timeout: timeout, as: Bool.self)
    }
}

extension ManagedBarrier {
    /// Awaits every party; returns this caller's arrival index. A cancelled
    /// wait breaks the barrier for the others, as a timeout does.
    @discardableResult
    public func wait(timeout: Duration? = nil) async throws(ManagerError) -> Int {
        try await reference.callAsync("wait", timeout: timeout, as: Int.self)
    }
}

extension ManagedLock {
    /// Runs `body` with the lock held, taken without blocking a thread
    /// (waiting at most `timeout`). The lock is held by this call, not by a
    /// thread: `body` may hop threads, and a thread's ``release()`` does not
    /// release it.
    ///
    /// - Throws: ``ManagerError/timedOut`` if the lock was not taken in time,
    ///   ``ManagerError/cancelled`` if the task was cancelled first (the lock
    ///   is not taken), or what `body` throws (the lock is released).
    public func withLock<Result>(timeout: Duration?, _ body: () async throws -> Result) async throws -> Result {
        let caller = ManagerClient.asyncCaller()
        guard try await reference.callAsync("acquire", timeout: timeout, caller: caller, as: Bool.self) else { throw ManagerError.timedOut }
        do {
            let result = try await body()
            _ = try reference.call("release", caller: caller)
            return result
        } catch {
            _ = try? reference.call("release", caller: caller)
            throw error
        }
    }
}

extension ManagedLock {
    /// ``withLock(timeout:_:)`` without a time limit.
    public func withLock<Result>(_ body: () async throws -> Result) async throws -> Result {
        try await withLock(timeout: nil, body)
    }
}

extension ManagedCondition {
    /// The condition's lock, held by one ``ManagedCondition/withLock(timeout:_:)`` call.
    public struct Held: Sendable {
        let condition: ManagedCondition
        let caller: UInt64

        /// Lets the lock go, awaits a notification (at most `timeout`), takes
        /// the lock back; returns whether it was notified. Cancelled, it
        /// returns having taken the lock back, and throws
        /// ``ManagerError/cancelled``.
        @discardableResult
        public func wait(timeout: Duration? = nil) async throws(ManagerError) -> Bool {
            let notified = try await condition.reference.callAsync("wait", timeout: timeout, caller: caller, as: Bool.self)
            if !notified && Task.isCancelled { throw .cancelled }
            return notified
        }

        /// Wakes up to `count` waiters.
        public func notify(_ count: Int = 1) throws(ManagerError) {
            _ = try condition.reference.call("notify", [managerArgument(count)], caller: caller)
        }

        /// Wakes every waiter.
        public func notifyAll() throws(ManagerError) {
            _ = try condition.reference.call("notifyAll", caller: caller)
        }
    }

    /// Runs `body` with the condition's lock held, taken without blocking a
    /// thread; `body` waits and notifies through the ``Held`` it is given.
    /// Throws as ``ManagedLock/withLock(timeout:_:)``.
    public func withLock<Result>(timeout: Duration? = nil, _ body: (Held) async throws -> Result) async throws -> Result {
        let caller = ManagerClient.asyncCaller()
        guard try await reference.callAsync("acquire", timeout: timeout, caller: caller, as: Bool.self) else { throw ManagerError.timedOut }
        do {
            let result = try await body(Held(condition: self, caller: caller))
            _ = try reference.call("release", caller: caller)
            return result
        } catch {
            _ = try? reference.call("release", caller: caller)
            throw error
        }
    }
}
