import Glibc

/// What a call on a served object knows of its caller.
internal struct CallContext {
    /// The calling process and thread.
    var process: Int32
    var thread: UInt64
    var deadline: ContinuousClock.Instant?

    /// Whether the caller is gone (its connection closed): a call that waits
    /// looks now and then, and gives up rather than take an item or a count
    /// that nobody would receive.
    var callerGone: @Sendable () -> Bool = { false }

    /// Whether the caller cancelled the call (an async caller's task was
    /// cancelled): a call that waits looks now and then, and gives up.
    var cancelled: @Sendable () -> Bool = { false }

    /// `pid:tid` of the calling thread: who owns a lock.
    var owner: String { "\(process):\(thread)" }
}

extension Monitor {
    /// ``wait(until:_:)`` for a call: in slices, between which it checks that
    /// the caller is still there (else ``ManagerError/managerUnreachable(_:)``,
    /// an answer nobody reads).
    func wait<Result>(for context: CallContext, until deadline: ContinuousClock.Instant?, _ ready: (inout Value) -> Result?) throws(ManagerError) -> Result? {
        var gone = false
        var cancelled = false
        while true {
            let slice = ContinuousClock.now + .milliseconds(100)
            let end = deadline.map { min($0, slice) } ?? slice
            let result = wait(until: end) { value -> Result? in
                // The caller may have died (or cancelled) since it asked (its
                // request waited in the ring, or here): look before taking
                // what it wanted.
                if !gone && context.callerGone() { gone = true }
                if gone { return nil }
                // What is ready is taken even if the caller cancelled since:
                // its answer is still read (a cancelled call that had
                // already been answered returns as it ended), and a
                // condition's notification is not lost.
                if let result = ready(&value) { return result }
                if !cancelled && context.cancelled() { cancelled = true }
                return nil
            }
            if let result { return result }
            if gone || context.callerGone() { throw .managerUnreachable("the caller is gone") }
            if cancelled || context.cancelled() { throw .cancelled }
            if let deadline, ContinuousClock.now >= deadline { return nil }
        }
    }
}

/// An object the manager's server owns. It holds encoded values only: the
/// server never needs the proxies' types.
internal protocol ServedObject: AnyObject, Sendable {
    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8]
    /// The process `pid` is gone: let go of whatever its threads held.
    func release(ownersOf pid: String)
}

extension ServedObject {
    func release(ownersOf pid: String) {}
}

/// Encoding and argument helpers for served objects.
internal enum Served {
    static func encode<T: Encodable>(_ value: T) throws(ManagerError) -> [UInt8] {
        do { return try ValueCodec.encode(value) } catch { throw .badRequest("the result did not encode: \(error)") }
    }

    static func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws(ManagerError) -> T {
        do { return try ValueCodec.decode(T.self, from: bytes) } catch { throw .badRequest("an argument did not decode as \(T.self): \(error)") }
    }

    static func argument(_ arguments: [[UInt8]], _ index: Int, _ method: String) throws(ManagerError) -> [UInt8] {
        guard index < arguments.count else { throw .badRequest("\(method) needs \(index + 1) arguments, got \(arguments.count)") }
        return arguments[index]
    }

    static func index(_ arguments: [[UInt8]], _ position: Int, _ method: String, count: Int, inserting: Bool = false) throws(ManagerError) -> Int {
        let index = try decode(Int.self, argument(arguments, position, method))
        let limit = inserting ? count : count - 1
        guard index >= 0, index <= limit else { throw .invalidArgument("index \(index) out of range 0..<\(count)") }
        return index
    }

    static func noSuchMethod(_ method: String, _ kind: String) -> ManagerError {
        .badRequest("a \(kind) has no method '\(method)'")
    }

    static var none: [UInt8] { [] }
}

/// A dictionary of encoded keys and values, in insertion order.
internal final class ServedDictionary: ServedObject, @unchecked Sendable {  // state behind its monitor
    private struct State {
        var entries: [[UInt8]: [UInt8]] = [:]
        var order: [[UInt8]] = []
    }

    private let state = Monitor(State())

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        try state.withLock { state throws(ManagerError) -> [UInt8] in
            switch method {
            case "get":
                return try Served.encode(state.entries[try Served.argument(arguments, 0, method)])
            case "set":
                let key = try Served.argument(arguments, 0, method)
                if state.entries.updateValue(try Served.argument(arguments, 1, method), forKey: key) == nil { state.order.append(key) }
                return Served.none
            case "update":
                guard arguments.count % 2 == 0 else { throw .badRequest("update needs key-value pairs") }
                for pair in stride(from: 0, to: arguments.count, by: 2) {
                    if state.entries.updateValue(arguments[pair + 1], forKey: arguments[pair]) == nil { state.order.append(arguments[pair]) }
                }
                return Served.none
            case "remove":
                let key = try Served.argument(arguments, 0, method)
                let removed = state.entries.removeValue(forKey: key)
                if removed != nil { state.order.removeAll { $0 == key } }
                return try Served.encode(removed)
            case "contains":
                return try Served.encode(state.entries[try Served.argument(arguments, 0, method)] != nil)
            case "count":
                return try Served.encode(state.entries.count)
            case "items":
                return try Served.encode(state.order.flatMap { [$0, state.entries[$0]!] })
            case "clear":
                state = State()
                return Served.none
            default:
                throw Served.noSuchMethod(method, "dictionary")
            }
        }
    }
}

/// A list of encoded values; fixed in length when it serves an array.
internal final class ServedList: ServedObject, @unchecked Sendable {  // state behind its monitor
    private struct State {
        var elements: [[UInt8]]
        /// Counts the changes, so that a client's read-modify-write (a
        /// sort) can tell whether the list changed in between.
        var version = 0
    }

    private let state: Monitor<State>
    private let fixedLength: Bool

    init(_ elements: [[UInt8]], fixedLength: Bool) {
        state = Monitor(State(elements: elements))
        self.fixedLength = fixedLength
    }

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        try state.withLock { state throws(ManagerError) -> [UInt8] in
            if fixedLength, ["append", "extend", "insert", "remove", "clear", "reverse", "replace"].contains(method) {
                throw .badRequest("an array's length is fixed: it has no method '\(method)'")
            }
            if !["get", "count", "all", "versioned", "index", "occurrences"].contains(method) { state.version += 1 }
            switch method {
            case "get":
                return state.elements[try Served.index(arguments, 0, method, count: state.elements.count)]
            case "set":
                let index = try Served.index(arguments, 0, method, count: state.elements.count)
                state.elements[index] = try Served.argument(arguments, 1, method)
                return Served.none
            case "append", "extend":
                state.elements.append(contentsOf: arguments)
                return Served.none
            case "insert":
                let index = try Served.index(arguments, 0, method, count: state.elements.count, inserting: true)
                state.elements.insert(try Served.argument(arguments, 1, method), at: index)
                return Served.none
            case "remove":
                return state.elements.remove(at: try Served.index(arguments, 0, method, count: state.elements.count))
            case "count":
                return try Served.encode(state.elements.count)
            case "all":
                return try Served.encode(state.elements)
            case "clear":
                state.elements.removeAll()
                return Served.none
            case "reverse":
                state.elements.reverse()
                return Served.none
            case "index":
                let element = try Served.argument(arguments, 0, method)
                return try Served.encode(state.elements.firstIndex(of: element))
            case "occurrences":
                let element = try Served.argument(arguments, 0, method)
                return try Served.encode(state.elements.count { $0 == element })
            case "versioned":
                // The version first, then the elements.
                return try Served.encode([try Served.encode(state.version)] + state.elements)
            case "replace":
                // The version the caller read, then the new elements: replaced only if unchanged since.
                let read = try Served.decode(Int.self, Served.argument(arguments, 0, method))
                guard read == state.version - 1 else {
                    state.version -= 1  // nothing changed
                    return try Served.encode(false)
                }
                state.elements = Array(arguments.dropFirst())
                return try Served.encode(true)
            default:
                throw Served.noSuchMethod(method, fixedLength ? "array" : "list")
            }
        }
    }
}

/// A set of encoded values (equal when their encodings are).
internal final class ServedSet: ServedObject, @unchecked Sendable {  // state behind its monitor
    private let state: Monitor<Set<[UInt8]>>

    init(_ elements: [[UInt8]]) { state = Monitor(Set(elements)) }

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        try state.withLock { elements throws(ManagerError) -> [UInt8] in
            switch method {
            case "add":
                return try Served.encode(elements.insert(try Served.argument(arguments, 0, method)).inserted)
            case "discard":
                return try Served.encode(elements.remove(try Served.argument(arguments, 0, method)) != nil)
            case "contains":
                return try Served.encode(elements.contains(try Served.argument(arguments, 0, method)))
            case "count":
                return try Served.encode(elements.count)
            case "all":
                return try Served.encode(Array(elements))
            case "clear":
                elements.removeAll()
                return Served.none
            case "pop":
                return try Served.encode(elements.popFirst())
            case "update":
                elements.formUnion(arguments)
                return Served.none
            case "differenceUpdate":
                elements.subtract(arguments)
                return Served.none
            case "intersectionUpdate":
                elements.formIntersection(arguments)
                return Served.none
            case "symmetricDifferenceUpdate":
                elements.formSymmetricDifference(Set(arguments))
                return Served.none
            case "isSubset":
                return try Served.encode(elements.isSubset(of: arguments))
            case "isSuperset":
                return try Served.encode(elements.isSuperset(of: arguments))
            case "isDisjoint":
                return try Served.encode(elements.isDisjoint(with: arguments))
            default:
                throw Served.noSuchMethod(method, "set")
            }
        }
    }
}

/// One encoded value.
internal final class ServedValue: ServedObject, @unchecked Sendable {  // state behind its monitor
    private let state: Monitor<[UInt8]>

    init(_ value: [UInt8]) { state = Monitor(value) }

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        try state.withLock { value throws(ManagerError) -> [UInt8] in
            switch method {
            case "get": return value
            case "set":
                value = try Served.argument(arguments, 0, method)
                return Served.none
            default: throw Served.noSuchMethod(method, "value")
            }
        }
    }
}

/// A FIFO of encoded items, bounded when `maxSize` > 0, joinable.
internal final class ServedQueue: ServedObject, @unchecked Sendable {  // state behind its monitor
    private struct State {
        var items: [[UInt8]] = []
        var head = 0
        var unfinished = 0
        var count: Int { items.count - head }
    }

    private let state = Monitor(State())
    private let maxSize: Int

    init(maxSize: Int) { self.maxSize = maxSize }

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        switch method {
        case "put", "putNoWait":
            let item = try Served.argument(arguments, 0, method)
            let deadline = method == "putNoWait" ? .now : context.deadline
            let put = try state.wait(for: context, until: deadline) { state -> Bool? in
                guard maxSize <= 0 || state.count < maxSize else { return nil }
                state.items.append(item)
                state.unfinished += 1
                return true
            }
            guard put != nil else { throw .timedOut }
            state.update { _ in }  // wake getters
            return Served.none
        case "get", "getNoWait":
            let deadline = method == "getNoWait" ? .now : context.deadline
            let item = try state.wait(for: context, until: deadline) { state -> [UInt8]? in
                guard state.count > 0 else { return nil }
                let item = state.items[state.head]
                state.head += 1
                if state.head > 1024 && state.head * 2 > state.items.count {
                    state.items.removeFirst(state.head)
                    state.head = 0
                }
                return item
            }
            guard let item else { throw .timedOut }
            state.update { _ in }  // wake putters
            return item
        case "count":
            return try Served.encode(state.withLock(\.count))
        case "taskDone":
            let done = state.update { state -> Bool in
                guard state.unfinished > 0 else { return false }
                state.unfinished -= 1
                return true
            }
            guard done else { throw .invalidArgument("taskDone() called more times than items were put") }
            return Served.none
        case "join":
            guard try state.wait(for: context, until: context.deadline, { $0.unfinished == 0 ? true : nil }) != nil else { throw .timedOut }
            return Served.none
        default:
            throw Served.noSuchMethod(method, "queue")
        }
    }
}

/// A lock (recursive or not) owned by a thread of a client process; also
/// the lock of a condition.
internal final class ServedLock: ServedObject, @unchecked Sendable {  // state behind its monitor
    struct State {
        var owner: String?
        var depth = 0
        /// Condition waiters: ticket → notified.
        var waiters: [Int: Bool] = [:]
        var nextTicket = 0
    }

    let state = Monitor(State())
    private let recursive: Bool
    private let kind: String

    init(recursive: Bool, kind: String) {
        self.recursive = recursive
        self.kind = kind
    }

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        switch method {
        case "acquire":
            let blocking = arguments.isEmpty ? true : try Served.decode(Bool.self, arguments[0])
            return try Served.encode(acquire(context, until: blocking ? context.deadline : .now))
        case "release":
            try release(context.owner)
            return Served.none
        case "locked":
            return try Served.encode(state.withLock { $0.owner != nil })
        case "wait" where kind == "condition":
            return try Served.encode(try wait(context))
        case "notify" where kind == "condition", "notifyAll" where kind == "condition":
            let count = method == "notifyAll" ? Int.max : (arguments.isEmpty ? 1 : try Served.decode(Int.self, arguments[0]))
            try state.update { state throws(ManagerError) in
                guard state.owner == context.owner else { throw .notOwner }
                for ticket in state.waiters.keys.sorted().filter({ state.waiters[$0] == false }).prefix(count) {
                    state.waiters[ticket] = true
                }
            }
            return Served.none
        default:
            throw Served.noSuchMethod(method, kind)
        }
    }

    private func acquire(_ context: CallContext, until deadline: ContinuousClock.Instant?) throws(ManagerError) -> Bool {
        let owner = context.owner
        return try state.wait(for: context, until: deadline) { state -> Bool? in
            if state.owner == nil {
                state.owner = owner
                state.depth = 1
                return true
            }
            if recursive && state.owner == owner {
                state.depth += 1
                return true
            }
            return nil
        } ?? false
    }

    private func release(_ owner: String) throws(ManagerError) {
        try state.update { state throws(ManagerError) in
            guard state.owner == owner else { throw .notOwner }
            state.depth -= 1
            if state.depth == 0 { state.owner = nil }
        }
    }

    /// A condition's wait: lets the lock go, waits to be notified (or the
    /// deadline), takes the lock back. Returns whether it was notified.
    private func wait(_ context: CallContext) throws(ManagerError) -> Bool {
        let (ticket, depth) = try state.update { state throws(ManagerError) -> (Int, Int) in
            guard state.owner == context.owner else { throw .notOwner }
            let ticket = state.nextTicket
            state.nextTicket += 1
            state.waiters[ticket] = false
            let depth = state.depth
            state.owner = nil
            state.depth = 0
            return (ticket, depth)
        }
        let notified = (try? state.wait(for: context, until: context.deadline) { $0.waiters[ticket] == true ? true : nil }) ?? false
        state.withLock { _ = $0.waiters.removeValue(forKey: ticket) }
        _ = state.wait(until: nil) { state -> Bool? in
            guard state.owner == nil else { return nil }
            state.owner = context.owner
            state.depth = depth
            return true
        }
        return notified
    }

    func release(ownersOf pid: String) {
        state.update { state in
            if let owner = state.owner, owner.hasPrefix(pid + ":") {
                state.owner = nil
                state.depth = 0
            }
        }
    }
}

/// A counting semaphore, bounded or not.
internal final class ServedSemaphore: ServedObject, @unchecked Sendable {  // state behind its monitor
    private let state: Monitor<Int>
    private let bound: Int?

    init(value: Int, bounded: Bool) {
        state = Monitor(value)
        bound = bounded ? value : nil
    }

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        switch method {
        case "acquire":
            let blocking = arguments.isEmpty ? true : try Served.decode(Bool.self, arguments[0])
            let taken = try state.wait(for: context, until: blocking ? context.deadline : .now) { value -> Bool? in
                guard value > 0 else { return nil }
                value -= 1
                return true
            } ?? false
            return try Served.encode(taken)
        case "release":
            try state.update { value throws(ManagerError) in
                if let bound, value >= bound { throw .invalidArgument("a bounded semaphore released too many times") }
                value += 1
            }
            return Served.none
        case "value":
            return try Served.encode(state.withLock { $0 })
        default:
            throw Served.noSuchMethod(method, "semaphore")
        }
    }
}

/// An event: a flag that threads wait for.
internal final class ServedEvent: ServedObject, @unchecked Sendable {  // state behind its monitor
    private let state = Monitor(false)

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        switch method {
        case "set": state.update { $0 = true }
        case "clear": state.update { $0 = false }
        case "isSet": return try Served.encode(state.withLock { $0 })
        case "wait": return try Served.encode(try state.wait(for: context, until: context.deadline) { $0 ? true : nil } ?? false)
        default: throw Served.noSuchMethod(method, "event")
        }
        return Served.none
    }
}

/// A barrier for `parties` waiters.
internal final class ServedBarrier: ServedObject, @unchecked Sendable {  // state behind its monitor
    private struct State {
        var waiting = 0
        var generation = 0
        var broken = false
    }

    private let state = Monitor(State())
    private let parties: Int

    init(parties: Int) { self.parties = parties }

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        switch method {
        case "wait":
            let (index, generation) = try state.update { state throws(ManagerError) -> (Int, Int) in
                if state.broken { throw .brokenBarrier }
                let index = state.waiting
                state.waiting += 1
                if state.waiting == parties {
                    state.waiting = 0
                    state.generation += 1
                }
                return (index, state.generation)
            }
            if index == parties - 1 { return try Served.encode(index) }
            let outcome: Bool?
            do {
                outcome = try state.wait(for: context, until: context.deadline) { state -> Bool? in
                    if state.generation != generation { return true }
                    if state.broken { return false }
                    return nil
                }
            } catch {
                // A waiter that leaves (gone, cancelled) breaks it, as a timeout does.
                state.update { if $0.generation == generation { $0.broken = true } }
                throw error
            }
            if outcome == true { return try Served.encode(index) }
            state.update { $0.broken = true }
            throw .brokenBarrier
        case "abort":
            state.update { $0.broken = true }
        case "reset":
            state.update { state in
                state.broken = false
                state.waiting = 0
                state.generation += 1
            }
        case "broken":
            return try Served.encode(state.withLock(\.broken))
        default:
            throw Served.noSuchMethod(method, "barrier")
        }
        return Served.none
    }
}

/// A user's ``ManagedObject``, found by type name when it was made.
internal final class ServedUserObject: ServedObject, @unchecked Sendable {  // the object is only touched under `lock`
    private let lock = Monitor(())
    private var object: any ManagedObject

    init(_ object: any ManagedObject) { self.object = object }

    func call(_ method: String, _ arguments: [[UInt8]], _ context: CallContext) throws(ManagerError) -> [UInt8] {
        guard method == "handle" else { throw Served.noSuchMethod(method, "managed object") }
        let request = try Served.argument(arguments, 0, method)
        return try lock.withLock { _ throws(ManagerError) -> [UInt8] in
            try object._handleEncoded(request)
        }
    }
}
