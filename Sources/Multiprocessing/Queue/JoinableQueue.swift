/// A queue whose consumers report each item done, so that a producer can
/// wait for all of them (Python's `JoinableQueue`).
public final class JoinableQueue<Element: Codable>: Sendable, Codable {
    /// The queue itself.
    public let queue: Queue<Element>

    /// See ``Queue/init(maxSize:bufferSize:)``.
    public init(maxSize: Int = 0, bufferSize: Int? = nil) throws {
        queue = try Queue(maxSize: maxSize, bufferSize: bufferSize)
    }

    /// See ``Queue/put(_:timeout:)-(_,_)``; every item put counts as a task.
    public func put(_ item: Element, timeout: Duration? = nil) throws { try queue.put(item, timeout: timeout) }

    /// See ``Queue/get(timeout:)-(_)``.
    public func get(timeout: Duration? = nil) throws -> Element { try queue.get(timeout: timeout) }

    /// Tells the queue that an item taken with `get` is done.
    ///
    /// - Throws: ``QueueError/taskDoneTooOften``.
    public func taskDone() throws { try queue.taskDone() }

    /// Waits until every item put has been reported done, at most `timeout`;
    /// returns whether they all were.
    @discardableResult
    public func join(timeout: Duration? = nil) throws -> Bool { try queue.join(timeout: timeout) }

    /// See ``Queue/count``.
    public var count: Int { queue.count }

    /// See ``Queue/close()``.
    public func close() { queue.close() }
}

/// A simple unbounded queue (Python's `SimpleQueue`): `put`, `get`, `isEmpty`.
public final class SimpleQueue<Element: Codable>: Sendable, Codable {
    let queue: Queue<Element>

    /// An unbounded queue whose pending items may take up to `bufferSize`
    /// bytes (see ``Queue/init(maxSize:bufferSize:)``).
    public init(bufferSize: Int? = nil) throws {
        queue = try Queue(maxSize: 0, bufferSize: bufferSize)
    }

    /// Puts `item` at the back; never waits.
    ///
    /// - Throws: ``QueueError/outOfMemory(ceiling:)`` past the queue's ceiling.
    public func put(_ item: Element) throws { try queue.put(item) }

    /// Takes the front item, waiting for one.
    public func get() throws -> Element { try queue.get() }

    /// Whether the queue is empty (approximate).
    public var isEmpty: Bool { queue.isEmpty }

    /// See ``Queue/close()``.
    public func close() { queue.close() }
}
