/// A proxy to a dictionary in a ``Manager``'s server. Each call is one round
/// trip; compound updates from several processes need a ``ManagedLock``.
public struct ManagedDictionary<Key: Codable & Hashable & Sendable, Value: Codable & Sendable>: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// The value for `key`, or nil.
    public func get(_ key: Key) throws(ManagerError) -> Value? {
        guard let bytes = try reference.call("get", [managerArgument(key)], as: [UInt8]?.self) else { return nil }
        return try managerResult(Value.self, bytes)
    }

    /// Sets the value for `key` (Python's `d[key] = value`).
    public func set(_ value: Value, for key: Key) throws(ManagerError) {
        _ = try reference.call("set", [managerArgument(key), managerArgument(value)])
    }

    /// Sets every pair of `other` in one call.
    public func merge(_ other: [Key: Value]) throws(ManagerError) {
        var arguments: [[UInt8]] = []
        for (key, value) in other {
            arguments.append(try managerArgument(key))
            arguments.append(try managerArgument(value))
        }
        _ = try reference.call("update", arguments)
    }

    /// Removes `key`; returns its value, if it had one.
    @discardableResult
    public func removeValue(forKey key: Key) throws(ManagerError) -> Value? {
        guard let bytes = try reference.call("remove", [managerArgument(key)], as: [UInt8]?.self) else { return nil }
        return try managerResult(Value.self, bytes)
    }

    /// Whether `key` has a value.
    public func contains(_ key: Key) throws(ManagerError) -> Bool {
        try reference.call("contains", [managerArgument(key)], as: Bool.self)
    }

    /// The number of entries.
    public func count() throws(ManagerError) -> Int { try reference.call("count", as: Int.self) }

    /// A copy of every entry.
    public func snapshot() throws(ManagerError) -> [Key: Value] {
        let flat = try reference.call("items", as: [[UInt8]].self)
        var result: [Key: Value] = [:]
        for pair in stride(from: 0, to: flat.count - 1, by: 2) {
            result[try managerResult(Key.self, flat[pair])] = try managerResult(Value.self, flat[pair + 1])
        }
        return result
    }

    /// The keys, in insertion order.
    public func keys() throws(ManagerError) -> [Key] {
        let flat = try reference.call("items", as: [[UInt8]].self)
        return try stride(from: 0, to: flat.count - 1, by: 2).map { pair throws(ManagerError) in try managerResult(Key.self, flat[pair]) }
    }

    /// Removes every entry (Python's `clear()`).
    public func removeAll() throws(ManagerError) { _ = try reference.call("clear") }

    /// A copy of every entry with `other`'s merged in, `other` winning
    /// (Python's `d | other`); the served dictionary is unchanged. For
    /// Python's `d |= other`, ``merge(_:)``.
    public func merging(_ other: [Key: Value]) throws(ManagerError) -> [Key: Value] {
        try snapshot().merging(other) { $1 }
    }
}

/// A proxy to a list in a ``Manager``'s server.
public struct ManagedList<Element: Codable & Sendable>: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// Appends `element`.
    public func append(_ element: Element) throws(ManagerError) {
        _ = try reference.call("append", [managerArgument(element)])
    }

    /// Appends every element of `elements`, in one call.
    public func append(contentsOf elements: [Element]) throws(ManagerError) {
        _ = try reference.call("extend", try elements.map { element throws(ManagerError) in try managerArgument(element) })
    }

    /// Inserts `element` at `index`.
    public func insert(_ element: Element, at index: Int) throws(ManagerError) {
        _ = try reference.call("insert", [managerArgument(index), managerArgument(element)])
    }

    /// The element at `index`. - Throws: ``ManagerError/invalidArgument(_:)`` out of range.
    public func get(_ index: Int) throws(ManagerError) -> Element {
        try managerResult(Element.self, try reference.call("get", [managerArgument(index)]))
    }

    /// Replaces the element at `index`.
    public func set(_ index: Int, to element: Element) throws(ManagerError) {
        _ = try reference.call("set", [managerArgument(index), managerArgument(element)])
    }

    /// Removes and returns the element at `index`.
    @discardableResult
    public func remove(at index: Int) throws(ManagerError) -> Element {
        try managerResult(Element.self, try reference.call("remove", [managerArgument(index)]))
    }

    /// The number of elements.
    public func count() throws(ManagerError) -> Int { try reference.call("count", as: Int.self) }

    /// A copy of every element, in order.
    public func snapshot() throws(ManagerError) -> [Element] {
        try reference.call("all", as: [[UInt8]].self).map { bytes throws(ManagerError) in try managerResult(Element.self, bytes) }
    }

    /// Removes every element (Python's `clear()`).
    public func removeAll() throws(ManagerError) { _ = try reference.call("clear") }

    /// Reverses the elements in place, in one call.
    public func reverse() throws(ManagerError) { _ = try reference.call("reverse") }

    /// Sorts the elements in place by `areInIncreasingOrder` (Python's
    /// `sort(key=…)`): read, sorted here and written back in one call that
    /// succeeds only if nobody changed the list in between — else read and
    /// sorted again.
    public func sort(by areInIncreasingOrder: (Element, Element) throws -> Bool) throws {
        while true {
            let versioned = try reference.call("versioned", as: [[UInt8]].self)
            guard let version = versioned.first else { throw ManagerError.badRequest("a list's version is missing") }
            let elements = try versioned.dropFirst().map { bytes throws(ManagerError) in (bytes, try managerResult(Element.self, bytes)) }
            let sorted = try elements.sorted { try areInIncreasingOrder($0.1, $1.1) }
            if try reference.call("replace", [version] + sorted.map(\.0), as: Bool.self) { return }
        }
    }
}

extension ManagedList where Element: Comparable {
    /// Sorts the elements in place, ascending (Python's `sort()`).
    public func sort() throws(ManagerError) {
        do { try sort(by: <) } catch let error as ManagerError { throw error } catch { throw .badRequest("\(error)") }
    }
}

extension ManagedList where Element: Equatable {
    /// The index of the first element equal to `element`, or nil (Python's
    /// `index`, which raises instead). Compared by encoding, in the server.
    public func firstIndex(of element: Element) throws(ManagerError) -> Int? {
        try reference.call("index", [managerArgument(element)], as: Int?.self)
    }

    /// How many elements equal `element` (Python's `count(x)`). Compared by
    /// encoding, in the server.
    public func count(of element: Element) throws(ManagerError) -> Int {
        try reference.call("occurrences", [managerArgument(element)], as: Int.self)
    }
}

/// A proxy to a set in a ``Manager``'s server (Python 3.14's `SetProxy`).
/// Elements are the same when their encodings are (see ``Manager/set(_:)``).
public struct ManagedSet<Element: Codable & Hashable & Sendable>: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    private func arguments(_ elements: some Sequence<Element>) throws(ManagerError) -> [[UInt8]] {
        var arguments: [[UInt8]] = []
        for element in elements { arguments.append(try managerArgument(element)) }
        return arguments
    }

    /// Adds `element`; returns whether it was not there yet (Python's `add`).
    @discardableResult
    public func insert(_ element: Element) throws(ManagerError) -> Bool {
        try reference.call("add", [managerArgument(element)], as: Bool.self)
    }

    /// Removes `element`; returns whether it was there (Python's `discard`).
    @discardableResult
    public func remove(_ element: Element) throws(ManagerError) -> Bool {
        try reference.call("discard", [managerArgument(element)], as: Bool.self)
    }

    /// Whether `element` is in the set (Python's `in`).
    public func contains(_ element: Element) throws(ManagerError) -> Bool {
        try reference.call("contains", [managerArgument(element)], as: Bool.self)
    }

    /// The number of elements (Python's `len`).
    public func count() throws(ManagerError) -> Int { try reference.call("count", as: Int.self) }

    /// A copy of every element (Python's `copy()`).
    public func snapshot() throws(ManagerError) -> Set<Element> {
        Set(try reference.call("all", as: [[UInt8]].self).map { bytes throws(ManagerError) in try managerResult(Element.self, bytes) })
    }

    /// Removes and returns an element, or nil if the set is empty (Python's `pop`, which raises instead).
    public func popFirst() throws(ManagerError) -> Element? {
        guard let bytes = try reference.call("pop", as: [UInt8]?.self) else { return nil }
        return try managerResult(Element.self, bytes)
    }

    /// Removes every element (Python's `clear()`).
    public func removeAll() throws(ManagerError) { _ = try reference.call("clear") }

    /// Adds every element of `other`, in one call (Python's `update` and `|=`).
    public func formUnion(_ other: some Sequence<Element>) throws(ManagerError) {
        _ = try reference.call("update", arguments(other))
    }

    /// Removes every element of `other` (Python's `difference_update` and `-=`).
    public func subtract(_ other: some Sequence<Element>) throws(ManagerError) {
        _ = try reference.call("differenceUpdate", arguments(other))
    }

    /// Keeps only the elements also in `other` (Python's `intersection_update` and `&=`).
    public func formIntersection(_ other: some Sequence<Element>) throws(ManagerError) {
        _ = try reference.call("intersectionUpdate", arguments(other))
    }

    /// Keeps the elements in either but not both (Python's `symmetric_difference_update` and `^=`).
    public func formSymmetricDifference(_ other: some Sequence<Element>) throws(ManagerError) {
        _ = try reference.call("symmetricDifferenceUpdate", arguments(other))
    }

    /// Whether every element is in `other` (Python's `issubset`, `<=`).
    public func isSubset(of other: some Sequence<Element>) throws(ManagerError) -> Bool {
        try reference.call("isSubset", arguments(other), as: Bool.self)
    }

    /// Whether every element of `other` is in the set (Python's `issuperset`, `>=`).
    public func isSuperset(of other: some Sequence<Element>) throws(ManagerError) -> Bool {
        try reference.call("isSuperset", arguments(other), as: Bool.self)
    }

    /// Whether no element is in `other` (Python's `isdisjoint`).
    public func isDisjoint(with other: some Sequence<Element>) throws(ManagerError) -> Bool {
        try reference.call("isDisjoint", arguments(other), as: Bool.self)
    }
}

/// A proxy to an array of fixed length in a ``Manager``'s server.
public struct ManagedArray<Element: Codable & Sendable>: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// The element at `index`.
    public func get(_ index: Int) throws(ManagerError) -> Element {
        try managerResult(Element.self, try reference.call("get", [managerArgument(index)]))
    }

    /// Replaces the element at `index`.
    public func set(_ index: Int, to element: Element) throws(ManagerError) {
        _ = try reference.call("set", [managerArgument(index), managerArgument(element)])
    }

    /// The number of elements.
    public func count() throws(ManagerError) -> Int { try reference.call("count", as: Int.self) }

    /// A copy of every element, in order.
    public func snapshot() throws(ManagerError) -> [Element] {
        try reference.call("all", as: [[UInt8]].self).map { bytes throws(ManagerError) in try managerResult(Element.self, bytes) }
    }
}

/// A proxy to one value in a ``Manager``'s server.
public struct ManagedValue<Value: Codable & Sendable>: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// The value now.
    public func get() throws(ManagerError) -> Value { try managerResult(Value.self, try reference.call("get")) }

    /// Replaces the value.
    public func set(_ value: Value) throws(ManagerError) { _ = try reference.call("set", [managerArgument(value)]) }
}

/// A proxy to a namespace: values of any `Codable` type, by name.
public struct ManagedNamespace: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// The value named `name`, decoded as `type`; nil if there is none.
    public func get<Value: Decodable>(_ name: String, as type: Value.Type = Value.self) throws(ManagerError) -> Value? {
        guard let bytes = try reference.call("get", [managerArgument(name)], as: [UInt8]?.self) else { return nil }
        return try managerResult(Value.self, bytes)
    }

    /// Sets the value named `name`.
    public func set<Value: Encodable>(_ name: String, to value: Value) throws(ManagerError) {
        _ = try reference.call("set", [managerArgument(name), managerArgument(value)])
    }
}

/// A proxy to a queue in a ``Manager``'s server: it works between any
/// processes, pool workers included (a ``Queue`` is passed to children; this
/// one can be passed to workers that already run).
public struct ManagedQueue<Element: Codable & Sendable>: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// Puts `element`, waiting while the queue is full, at most `timeout`.
    /// - Throws: ``ManagerError/timedOut`` if it stayed full.
    public func put(_ element: Element, timeout: Duration? = nil) throws(ManagerError) {
        _ = try reference.call("put", [managerArgument(element)], timeout: timeout)
    }

    /// Takes the oldest element, waiting while the queue is empty, at most `timeout`.
    /// - Throws: ``ManagerError/timedOut`` if it stayed empty.
    public func get(timeout: Duration? = nil) throws(ManagerError) -> Element {
        try managerResult(Element.self, try reference.call("get", timeout: timeout))
    }

    /// Puts `element` if there is room. - Throws: ``ManagerError/timedOut`` if full.
    public func putNoWait(_ element: Element) throws(ManagerError) {
        _ = try reference.call("putNoWait", [managerArgument(element)])
    }

    /// Takes the oldest element if there is one. - Throws: ``ManagerError/timedOut`` if empty.
    public func getNoWait() throws(ManagerError) -> Element {
        try managerResult(Element.self, try reference.call("getNoWait"))
    }

    /// The number of elements queued.
    public func count() throws(ManagerError) -> Int { try reference.call("count", as: Int.self) }

    /// Marks one element taken earlier as processed (`JoinableQueue.task_done`).
    public func taskDone() throws(ManagerError) { _ = try reference.call("taskDone") }

    /// Waits until every element put has been marked done (`JoinableQueue.join`).
    public func join(timeout: Duration? = nil) throws(ManagerError) { _ = try reference.call("join", timeout: timeout) }
}

/// A proxy to a lock (or recursive lock) in a ``Manager``'s server, held by
/// one thread of one process at a time. A process that dies holding it
/// releases it.
public struct ManagedLock: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// Takes the lock, waiting at most `timeout`; returns whether it was taken.
    @discardableResult
    public func acquire(timeout: Duration? = nil) throws(ManagerError) -> Bool {
        try reference.call("acquire", timeout: timeout, as: Bool.self)
    }

    /// Lets the lock go. - Throws: ``ManagerError/notOwner`` if this thread does not hold it.
    public func release() throws(ManagerError) { _ = try reference.call("release") }

    /// Runs `body` with the lock held (held by this thread). In async code
    /// the async form, held by the call, is chosen instead.
    @_disfavoredOverload
    public func withLock<Result>(_ body: () throws -> Result) throws -> Result {
        try acquire()
        defer { try? release() }
        return try body()
    }
}

/// A proxy to a condition (with its own recursive lock) in a ``Manager``'s server.
public struct ManagedCondition: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// Takes the condition's lock, waiting at most `timeout`.
    @discardableResult
    public func acquire(timeout: Duration? = nil) throws(ManagerError) -> Bool {
        try reference.call("acquire", timeout: timeout, as: Bool.self)
    }

    /// Lets the condition's lock go.
    public func release() throws(ManagerError) { _ = try reference.call("release") }

    /// With the lock held: lets it go, waits to be notified (at most
    /// `timeout`), takes it back. Returns whether it was notified.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws(ManagerError) -> Bool {
        try reference.call("wait", timeout: timeout, as: Bool.self)
    }

    /// With the lock held: wakes up to `count` waiters.
    public func notify(_ count: Int = 1) throws(ManagerError) { _ = try reference.call("notify", [managerArgument(count)]) }

    /// With the lock held: wakes every waiter.
    public func notifyAll() throws(ManagerError) { _ = try reference.call("notifyAll") }
}

/// A proxy to a semaphore in a ``Manager``'s server.
public struct ManagedSemaphore: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// Takes one unit, waiting at most `timeout`; returns whether it did.
    @discardableResult
    public func acquire(timeout: Duration? = nil) throws(ManagerError) -> Bool {
        try reference.call("acquire", timeout: timeout, as: Bool.self)
    }

    /// Gives one unit back. - Throws: ``ManagerError/invalidArgument(_:)``
    /// past a bounded semaphore's initial value.
    public func release() throws(ManagerError) { _ = try reference.call("release") }

    /// The units available now.
    public func value() throws(ManagerError) -> Int { try reference.call("value", as: Int.self) }
}

/// A proxy to an event in a ``Manager``'s server.
public struct ManagedEvent: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// Sets the flag and wakes every waiter.
    public func set() throws(ManagerError) { _ = try reference.call("set") }

    /// Clears the flag.
    public func clear() throws(ManagerError) { _ = try reference.call("clear") }

    /// Whether the flag is set.
    public func isSet() throws(ManagerError) -> Bool { try reference.call("isSet", as: Bool.self) }

    /// Waits until the flag is set, at most `timeout`; returns whether it is.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws(ManagerError) -> Bool {
        try reference.call("wait", timeout: timeout, as: Bool.self)
    }
}

/// A proxy to a barrier in a ``Manager``'s server.
public struct ManagedBarrier: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// Waits until every party has arrived; returns this caller's arrival
    /// index. - Throws: ``ManagerError/brokenBarrier`` if it was aborted,
    /// reset or a waiter timed out.
    @discardableResult
    public func wait(timeout: Duration? = nil) throws(ManagerError) -> Int {
        try reference.call("wait", timeout: timeout, as: Int.self)
    }

    /// Breaks the barrier: waiters and later callers get ``ManagerError/brokenBarrier``.
    public func abort() throws(ManagerError) { _ = try reference.call("abort") }

    /// Makes a broken barrier usable again.
    public func reset() throws(ManagerError) { _ = try reference.call("reset") }

    /// Whether the barrier is broken.
    public func isBroken() throws(ManagerError) -> Bool { try reference.call("broken", as: Bool.self) }
}

/// A proxy to a ``ManagedObject`` of your own in a ``Manager``'s server.
public struct ManagedObjectProxy<Object: ManagedObject>: Codable, Sendable, ManagedProxy {
    /// The reference it holds.
    public let reference: ManagedReference

    /// Sends `request` to the object and returns its response.
    ///
    /// - Throws: ``ManagerError/objectFailed(errorType:description:)`` if `handle` threw.
    @discardableResult
    public func send(_ request: Object.Request) throws(ManagerError) -> Object.Response {
        try managerResult(Object.Response.self, try reference.call("handle", [managerArgument(request)]))
    }
}
