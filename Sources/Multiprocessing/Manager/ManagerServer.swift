import CMultiprocessing
import Glibc

/// The manager's server process: started as a job, it listens, tells its
/// parent where, and serves each client connection on a thread of its own
/// (so a call that waits — a queue's `get`, a lock — blocks only its caller).
internal struct ManagerServerJob: ProcessJob {
    var address: ConnectionAddress?
    var authenticationKey: [UInt8]
    /// Where the server reports the address it listens at (or why it cannot).
    var ready: Connection
    /// Whether it goes on telling its parent, there, of the clients it
    /// serves and refuses (the parent logs them).
    var reportsClients = false

    func run() throws -> Bool {
        let listener: Listener
        do {
            // Clients authenticate on their own threads, so that one that
            // stalls mid-handshake never holds up the others.
            listener = try Listener(address: address)
        } catch {
            try? ready.send(ServerStart.failed("cannot listen: \(error)"))
            throw error
        }
        try ready.send(ServerStart.listening(listener.address))
        let reporter = reportsClients ? Locked(ready) : nil
        if reporter == nil { ready.close() }
        ManagerServer(listener: listener, authenticationKey: authenticationKey, reporter: reporter).serve()
        return true
    }
}

/// What the server tells its parent once it runs.
internal enum ServerStart: Codable {
    case listening(ConnectionAddress)
    case failed(String)
}

/// What the server goes on telling its parent, when asked to: the parent
/// logs each (``Manager/init(address:authenticationKey:startMethod:logger:)``).
internal enum ServerEvent: Codable, Equatable {
    /// A client proved it knows the key; `process` is what it calls itself.
    case clientConnected(process: String)
    /// A connection was refused: why.
    case clientRefused(reason: String)
    /// A client process's last connection closed.
    case clientLeft(process: String)
}

internal final class ManagerServer: @unchecked Sendable {  // mutable state is behind `state`
    private struct State {
        var objects: [UInt64: any ServedObject] = [:]
        var nextID: UInt64 = 1
        /// Open connections per client process, to release its locks when the last closes.
        var connections: [String: Int] = [:]
        /// Who holds each object: per client process, how many of its
        /// references (holds in transit included). An object nobody holds is freed.
        var holds: [UInt64: [String: Int]] = [:]
        /// Holds in transit (a proxy encoded, not yet decoded): by token, the
        /// object, the process that encoded it and, once that process is
        /// gone, when the hold ends if nobody decoded the proxy by then. Each
        /// is a hold of its own, by ``transitHolder(_:)``.
        var transits: [UInt64: (object: UInt64, encoder: String, expires: ContinuousClock.Instant?)] = [:]
        var nextToken: UInt64 = 1
        /// Objects freed under the lock, let go after it: a freed object's
        /// deinit may call this server (a proxy inside a shared value).
        var freed: [any ServedObject] = []
        /// Async callers ("pid:token") whose waiting call was cancelled, and when.
        var cancellations: [String: ContinuousClock.Instant] = [:]

        /// Adds `count` to `holder`'s holds on `object`; frees the object when nobody holds it.
        mutating func adjust(_ object: UInt64, by count: Int, for holder: String) {
            guard var holders = holds[object] else { return }
            let now = holders[holder, default: 0] + count
            holders[holder] = now > 0 ? now : nil
            if holders.isEmpty {
                holds[object] = nil
                if let gone = objects.removeValue(forKey: object) { freed.append(gone) }
            } else {
                holds[object] = holders
            }
        }

        static func transitHolder(_ token: UInt64) -> String { "transit \(token)" }

        /// How long a hold in transit outlives the process that encoded it:
        /// a child's output holding a proxy is decoded after the child is gone.
        static let transitGrace = Duration.seconds(60)

        /// `holder` is gone: its holds end; its holds in transit end after
        /// ``transitGrace`` unless decoded first.
        mutating func dropHolds(of holder: String) {
            let expires = ContinuousClock.now + Self.transitGrace
            for (token, transit) in transits where transit.encoder == holder && transit.expires == nil {
                transits[token]?.expires = expires
            }
            for object in holds.keys where holds[object]?[holder] != nil {
                adjust(object, by: -holds[object]![holder]!, for: holder)
            }
        }

        /// Ends the holds in transit whose time is over.
        mutating func sweepTransits() {
            let now = ContinuousClock.now
            for (token, transit) in transits {
                if let expires = transit.expires, expires <= now {
                    transits[token] = nil
                    adjust(transit.object, by: -1, for: Self.transitHolder(token))
                }
            }
        }
    }

    /// Nil for a server that only answers requests handed to ``handle(_:callerGone:)``
    /// (the fuzzer's).
    private let listener: Listener?
    private let authenticationKey: [UInt8]
    private let state = Locked(State())

    /// Runs `body` on the state with its lock held; the objects it freed are
    /// let go after the lock.
    private func withHolds<Result>(_ body: (inout State) throws(ManagerError) -> Result) throws(ManagerError) -> Result {
        var freed: [any ServedObject] = []
        let result = try state.withLock { state throws(ManagerError) -> Result in
            defer {
                freed = state.freed
                state.freed = []
            }
            return try body(&state)
        }
        freed.removeAll()  // their deinits run here, the lock free
        return result
    }

    /// Where clients served and refused are told, if anywhere.
    private let reporter: Locked<Connection>?

    init(listener: Listener?, authenticationKey: [UInt8], reporter: Locked<Connection>? = nil) {
        self.listener = listener
        self.authenticationKey = authenticationKey
        self.reporter = reporter
    }

    private func report(_ event: ServerEvent) {
        reporter?.withLock { try? $0.send(event) }
    }

    /// Accepts clients until the process is asked to shut down (it then exits).
    func serve() {
        guard let listener else { return }
        while true {
            guard let connection = try? listener.accept() else { return }
            _ = SystemThread.start { [self] in
                // A client without the key is refused; the others go on.
                do {
                    try Authentication.serve(connection, key: authenticationKey)
                } catch {
                    connection.close()
                    report(.clientRefused(reason: "\(error)"))
                    return
                }
                serve(connection)
            }
        }
    }

    private func serve(_ connection: Connection) {
        var client: String? = nil
        var channel = ManagerChannel.overSocket(connection)
        defer {
            channel.close()
            if let client { disconnected(client) }
        }
        while true {
            guard let bytes = channel.nextRequest() else { return }
            let reply: ManagerReply
            var openRings = false
            var shuttingDown = false
            do {
                let request = try ManagerRequest(decoding: bytes)
                if client == nil {
                    client = String(request.process)
                    let first = state.withLock { state in
                        state.connections[client!, default: 0] += 1
                        return state.connections[client!] == 1
                    }
                    if first { report(.clientConnected(process: client!)) }
                }
                if request.object == 0 && request.method == ManagerRequest.openRings && !channel.isShared {
                    openRings = true
                    reply = .value(Served.none)
                } else if request.object == 0 && request.method == "shutdown" {
                    shuttingDown = true
                    reply = .value(Served.none)
                } else {
                    reply = .value(try handle(request, callerGone: { [channel] in channel.peerGone() }))
                }
            } catch let error as ManagerError {
                reply = .failure(error)
            } catch {
                reply = .failure(.badRequest("unreadable request: \(error)"))
            }
            guard channel.reply(reply.encoded()) else { return }
            if shuttingDown {
                // Answered first, so the caller need not wait to see the server gone.
                listener?.close()
                cmp_exit_now(0)
            }
            if openRings {
                // The client sends the rings' descriptors once it has the answer.
                guard let shared = try? ManagerChannel.accept(connection) else { return }
                channel = shared
            }
        }
    }

    /// Releases what the client process held once its last connection closed.
    func disconnected(_ client: String) {
        let (last, objects) = state.withLock { state -> (Bool, [any ServedObject]) in
            state.connections[client, default: 1] -= 1
            guard state.connections[client] == 0 else { return (false, []) }
            state.connections[client] = nil
            return (true, Array(state.objects.values))
        }
        // A client keeps its connections until it ends: when the last one
        // closes, the process is gone (done, or killed) and holds no locks.
        if last {
            objects.forEach { $0.release(ownersOf: client) }
            // Its proxies are gone with it: what only it held is freed.
            try? withHolds { state throws(ManagerError) in
                state.dropHolds(of: client)
                state.sweepTransits()
            }
            report(.clientLeft(process: client))
        }
    }

    /// Answers one request for an object, or for the manager (object 0).
    func handle(_ request: ManagerRequest, callerGone: @escaping @Sendable () -> Bool) throws(ManagerError) -> [UInt8] {
        var context = CallContext(process: request.process, thread: request.thread, deadline: request.timeout.map { .now + .nanoseconds(Int64(max(0, $0) * 1e9)) }, callerGone: callerGone)
        if request.thread & ManagerRequest.asyncCallerBit != 0 {
            // An async caller can cancel its call from another connection.
            let owner = context.owner
            context.cancelled = { [state] in state.withLock { $0.cancellations[owner] != nil } }
            defer { state.withLock { _ = $0.cancellations.removeValue(forKey: owner) } }
            return try handle(request, context)
        }
        return try handle(request, context)
    }

    private func handle(_ request: ManagerRequest, _ context: CallContext) throws(ManagerError) -> [UInt8] {
        guard request.object != 0 else { return try handleManager(request) }
        guard let object = state.withLock({ $0.objects[request.object] }) else { throw .unknownObject(request.object) }
        return try object.call(request.method, request.arguments, context)
    }

    private func handleManager(_ request: ManagerRequest) throws(ManagerError) -> [UInt8] {
        let caller = String(request.process)
        /// The raw little-endian UInt64 argument at `index`.
        func raw(_ index: Int) throws(ManagerError) -> UInt64 {
            let bytes = try Served.argument(request.arguments, index, request.method)
            guard bytes.count == 8 else { throw .badRequest("\(request.method) needs an 8-byte argument, got \(bytes.count) bytes") }
            return bytes.reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }
        switch request.method {
        case "ping":
            return Served.none
        case "create":
            let kind = try Served.decode(String.self, Served.argument(request.arguments, 0, "create"))
            let object = try make(kind, Array(request.arguments.dropFirst()))
            let id = state.withLock { state -> UInt64 in
                defer { state.nextID += 1 }
                state.objects[state.nextID] = object
                state.holds[state.nextID] = [caller: 1]
                return state.nextID
            }
            return try Served.encode(id)
        case ManagerRequest.incref:
            let id = try raw(0)
            try withHolds { state throws(ManagerError) in
                guard state.objects[id] != nil else { throw .unknownObject(id) }
                state.adjust(id, by: 1, for: caller)
            }
            return Served.none
        case ManagerRequest.decref:
            let id = try raw(0)
            // A process lets go only of what it holds.
            try withHolds { state throws(ManagerError) in
                if state.holds[id]?[caller] != nil { state.adjust(id, by: -1, for: caller) }
                state.sweepTransits()
            }
            return Served.none
        case ManagerRequest.transit:
            let id = try raw(0)
            let token = try withHolds { state throws(ManagerError) -> UInt64 in
                guard state.objects[id] != nil else { throw .unknownObject(id) }
                let token = state.nextToken
                state.nextToken += 1
                state.adjust(id, by: 1, for: State.transitHolder(token))
                state.transits[token] = (id, caller, nil)
                return token
            }
            return try Served.encode(token)
        case ManagerRequest.adopt:
            let (id, token) = (try raw(0), try raw(1))
            try withHolds { state throws(ManagerError) in
                guard state.objects[id] != nil else { throw .unknownObject(id) }
                // Its hold in transit becomes the caller's; decoded twice (or
                // never sent), the caller holds on its own.
                state.adjust(id, by: 1, for: caller)
                if let transit = state.transits[token], transit.object == id {
                    state.transits[token] = nil
                    state.adjust(id, by: -1, for: State.transitHolder(token))
                }
            }
            return Served.none
        case ManagerRequest.cancel:
            let owner = "\(caller):\(try raw(0))"
            state.withLock { state in
                // A cancellation that came after its call ended names no
                // later call (tokens are not reused); forgotten after a minute.
                let now = ContinuousClock.now
                state.cancellations = state.cancellations.filter { now - $0.value < .seconds(60) }
                state.cancellations[owner] = now
            }
            return Served.none
        case "objects":
            return try Served.encode(state.withLock { $0.objects.count })
        default:
            throw Served.noSuchMethod(request.method, "manager")
        }
    }

    private func make(_ kind: String, _ arguments: [[UInt8]]) throws(ManagerError) -> any ServedObject {
        func integer(_ name: String) throws(ManagerError) -> Int {
            try Served.decode(Int.self, Served.argument(arguments, 0, name))
        }
        switch kind {
        case "dict", "namespace": return ServedDictionary()
        case "list": return ServedList(arguments, fixedLength: false)
        case "array": return ServedList(arguments, fixedLength: true)
        case "set": return ServedSet(arguments)
        case "value": return ServedValue(try Served.argument(arguments, 0, kind))
        case "queue": return ServedQueue(maxSize: try integer(kind))
        case "lock": return ServedLock(recursive: false, kind: kind)
        case "rlock": return ServedLock(recursive: true, kind: kind)
        case "condition": return ServedLock(recursive: true, kind: kind)
        case "semaphore", "boundedSemaphore":
            let value = try integer(kind)
            guard value >= 0 else { throw .invalidArgument("a semaphore's value must be at least 0, not \(value)") }
            return ServedSemaphore(value: value, bounded: kind == "boundedSemaphore")
        case "event": return ServedEvent()
        case "barrier":
            let parties = try integer(kind)
            guard parties >= 1 else { throw .invalidArgument("a barrier needs at least 1 party, not \(parties)") }
            return ServedBarrier(parties: parties)
        case "instance":
            return ServedInstance(encoded: try Served.argument(arguments, 0, kind), key: authenticationKey)
        case "object":
            let typeName = try Served.decode(String.self, Served.argument(arguments, 0, kind))
            guard let type = _typeByName(typeName) as? any ManagedObject.Type else {
                throw .badRequest("'\(typeName)' is not a ManagedObject type")
            }
            return ServedUserObject(try type._decodeServed(Served.argument(arguments, 1, kind)))
        default:
            throw .badRequest("no kind of object '\(kind)'")
        }
    }
}
