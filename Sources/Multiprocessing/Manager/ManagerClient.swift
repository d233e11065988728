import Glibc
import Synchronization

/// A process's way to a manager's server: a pool of authenticated
/// connections, one per call in flight, so that a call that waits (a queue's
/// `get`) never holds up another thread's call.
internal final class ManagerClient: @unchecked Sendable {  // mutable state is behind `idle`
    let address: ConnectionAddress
    let authenticationKey: [UInt8]
    /// Idle connections, and the process they belong to: a forked child
    /// must not share its parent's.
    private let idle = Locked((pid: Syscall.currentProcessID, connections: [ManagerChannel]()))

    init(address: ConnectionAddress, authenticationKey: [UInt8]) {
        self.address = address
        self.authenticationKey = authenticationKey
        ManagerClients.shared.register(self)
    }

    deinit {
        ManagerClients.shared.unregister(self)
        idle.withLock { state in
            if state.pid == Syscall.currentProcessID { state.connections.forEach { $0.close() } }
        }
    }

    /// The client of the manager at `address` with `authenticationKey` that
    /// proxies received by this process share (made on first use): their
    /// calls reuse its connections, as Python reuses one per address.
    static func shared(address: ConnectionAddress, authenticationKey: [UInt8]) -> ManagerClient {
        ManagerClients.shared.client(address: address, authenticationKey: authenticationKey)
    }

    /// Closes the idle connections (the manager shut down).
    func closeIdleConnections() {
        let connections = idle.withLock { state -> [ManagerChannel] in
            defer { state.connections = [] }
            return state.pid == Syscall.currentProcessID ? state.connections : []
        }
        connections.forEach { $0.close() }
    }

    // Fork safety (see ``ManagerClients``).
    func lockForFork() { idle.lockForFork() }
    func unlockAfterFork() { idle.unlockAfterFork() }

    /// In a forked child, with the lock still held from before the fork: the
    /// parent's connections are closed here (the parent's stay open).
    func resetInChildWhileLocked() {
        idle.whileHeldForFork { state in
            state.connections.forEach { $0.close() }
            state = (Syscall.currentProcessID, [])
        }
    }

    private func take() throws(ManagerError) -> ManagerChannel {
        let reused = idle.withLock { state -> ManagerChannel? in
            if state.pid != Syscall.currentProcessID {
                // Inherited from the parent: this copy is closed, the parent's stays.
                state.connections.forEach { $0.close() }
                state = (Syscall.currentProcessID, [])
            }
            return state.connections.popLast()
        }
        if let reused { return reused }
        return try ManagerChannel.connect(to: address, authenticationKey: authenticationKey)
    }

    private func giveBack(_ connection: ManagerChannel) {
        idle.withLock { state in
            if state.pid == Syscall.currentProcessID && state.connections.count < 8 {
                state.connections.append(connection)
            } else {
                connection.close()
            }
        }
    }

    /// Calls `method` of object `object` on the server and returns the encoded result.
    func call(_ object: UInt64, _ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil, caller: UInt64? = nil) throws(ManagerError) -> [UInt8] {
        let seconds = timeout.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
        let request = ManagerRequest.fromHere(object: object, method: method, arguments: arguments, timeout: seconds, thread: caller)
        let connection = try take()
        let reply: ManagerReply
        do {
            reply = try ManagerReply(decoding: try connection.call(request.encoded()))
        } catch {
            connection.close()
            // The server is gone: so are the idle connections to it.
            closeIdleConnections()
            if case let error as ManagerError = error { throw error }
            throw .managerUnreachable("\(error)")
        }
        giveBack(connection)
        switch reply {
        case let .value(bytes): return bytes
        case let .failure(error): throw error
        }
    }

    /// A name for one async caller (a task's call, or a lock it holds): a
    /// random token the server tells from threads (``ManagerRequest/asyncCallerBit``).
    static func asyncCaller() -> UInt64 {
        UInt64.random(in: 0...UInt64.max) | ManagerRequest.asyncCallerBit
    }

    /// ``call(_:_:_:timeout:caller:)`` without blocking the awaiting task's
    /// thread: it runs on a thread of its own. If the task is cancelled, the
    /// server is told (on another connection): a call still waiting there
    /// ends with ``ManagerError/cancelled`` and takes nothing; one that had
    /// already ended returns as it ended.
    func callAsync(_ object: UInt64, _ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil, caller: UInt64? = nil) async throws(ManagerError) -> [UInt8] {
        if Task.isCancelled { throw .cancelled }
        let caller = caller ?? Self.asyncCaller()
        let result: Result<[UInt8], ManagerError> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let started = SystemThread.tryStart { [self] in
                    continuation.resume(returning: Result { () throws(ManagerError) in try call(object, method, arguments, timeout: timeout, caller: caller) })
                }
                if started == nil { continuation.resume(returning: .failure(.managerUnreachable("no thread could be started for the call"))) }
            }
        } onCancel: { [self] in
            // Not here: this runs on the cancelling thread, which must not
            // wait. (No thread to send it on: the call runs to its end.)
            _ = SystemThread.tryStart { [self] in
                _ = try? call(0, ManagerRequest.cancel, [ReferenceHold.argument(caller)])
            }
        }
        return try result.get()
    }

    /// Calls and decodes the result as `T`.
    func call<T: Decodable>(_ object: UInt64, _ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil, as type: T.Type) throws(ManagerError) -> T {
        let bytes = try call(object, method, arguments, timeout: timeout)
        do {
            return try ValueCodec.decode(T.self, from: bytes)
        } catch {
            throw .badRequest("the answer did not decode as \(T.self): \(error)")
        }
    }
}

/// What a proxy holds: the server's address and key, and the object's id.
/// It crosses to other processes by every start method.
///
/// The server frees an object once no process holds a proxy to it (Python's
/// `incref`/`decref`). Each decoded or created reference is one hold, which
/// every copy of the proxy in this process shares and which ends when the
/// last copy is gone, when ``ManagedProxy/releaseReference()`` is called, or
/// when this process ends (the server sees its connections close). An
/// encoded proxy is held "in transit" by the process that encoded it until a
/// process decodes it, or until the encoding process ends.
public struct ManagedReference: Codable, Sendable {
    let hold: ReferenceHold

    var client: ManagerClient { hold.client }
    var id: UInt64 { hold.id }

    /// A reference to an object this process just made (its creation is its hold).
    init(client: ManagerClient, id: UInt64) {
        hold = ReferenceHold(client: client, id: id, heldBy: Syscall.currentProcessID)
    }

    private enum CodingKeys: String, CodingKey {
        case address, key, id, transit
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let client = ManagerClient.shared(address: try container.decode(ConnectionAddress.self, forKey: .address), authenticationKey: try container.decode([UInt8].self, forKey: .key))
        let id = try container.decode(UInt64.self, forKey: .id)
        let transit = try container.decodeIfPresent(UInt64.self, forKey: .transit) ?? 0
        hold = ReferenceHold(client: client, id: id, heldBy: 0)
        // A decoding that only warms up the types (a pool's, before it
        // forks) leaves the hold in transit to the real one.
        if Self.warmingUp { return }
        // Takes over the hold in transit (or makes one); if the server cannot
        // be reached now, the first call tries again and fails as it must.
        hold.take(transit: transit)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(client.address, forKey: .address)
        try container.encode(client.authenticationKey, forKey: .key)
        try container.encode(id, forKey: .id)
        let forked = (encoder.userInfo[DescriptorAttachments.userInfoKey] as? DescriptorAttachments)?.forForkedChild ?? false
        if !forked, let transit = hold.transit() { try container.encode(transit, forKey: .transit) }
    }

    /// Set while values are decoded only to warm their types up, and dropped.
    @TaskLocal static var warmingUp = false

    func call(_ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil) throws(ManagerError) -> [UInt8] {
        try hold.holdHere()
        return try client.call(id, method, arguments, timeout: timeout)
    }

    func call<T: Decodable>(_ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil, as type: T.Type) throws(ManagerError) -> T {
        try hold.holdHere()
        return try client.call(id, method, arguments, timeout: timeout, as: T.self)
    }

    func call(_ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil, caller: UInt64) throws(ManagerError) -> [UInt8] {
        try hold.holdHere()
        return try client.call(id, method, arguments, timeout: timeout, caller: caller)
    }

    /// An async call (see ``ManagerClient/callAsync(_:_:_:timeout:caller:)``).
    func callAsync(_ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil, caller: UInt64? = nil) async throws(ManagerError) -> [UInt8] {
        try hold.holdHere()
        return try await client.callAsync(id, method, arguments, timeout: timeout, caller: caller)
    }

    func callAsync<T: Decodable>(_ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil, caller: UInt64? = nil, as type: T.Type) async throws(ManagerError) -> T {
        try managerResult(T.self, try await callAsync(method, arguments, timeout: timeout, caller: caller))
    }
}

/// One hold of this process on a served object, shared by every copy of the
/// proxies made from one reference; let go when the last is gone.
internal final class ReferenceHold: Sendable {
    let client: ManagerClient
    let id: UInt64
    /// The process that holds the object on the server through this (0:
    /// none yet; -1: released). A forked child inherits its parent's and
    /// holds the object itself at its first call.
    private let heldBy: Atomic<Int32>

    init(client: ManagerClient, id: UInt64, heldBy: Int32) {
        self.client = client
        self.id = id
        self.heldBy = Atomic(heldBy)
    }

    deinit {
        // Only the process that holds lets go; a forked child's copy of its
        // parent's hold is the parent's.
        if heldBy.load(ordering: .acquiring) == Syscall.currentProcessID {
            _ = try? client.call(0, ManagerRequest.decref, [Self.argument(id)])
        }
    }

    static func argument(_ value: UInt64) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian) { Array($0) }
    }

    /// Makes sure this process holds the object before a call.
    func holdHere() throws(ManagerError) {
        let here = Syscall.currentProcessID
        let holder = heldBy.load(ordering: .acquiring)
        if holder == here { return }
        if holder == -1 { throw .referenceReleased }
        _ = try client.call(0, ManagerRequest.incref, [Self.argument(id)])
        if !heldBy.compareExchange(expected: holder, desired: here, ordering: .acquiringAndReleasing).exchanged {
            // Another thread took a hold first (or released): this one goes back.
            _ = try? client.call(0, ManagerRequest.decref, [Self.argument(id)])
            if heldBy.load(ordering: .acquiring) == -1 { throw .referenceReleased }
        }
    }

    /// When decoded: takes over the hold in transit `token` (0: none, a new hold).
    func take(transit token: UInt64) {
        guard (try? client.call(0, ManagerRequest.adopt, [Self.argument(id), Self.argument(token)])) != nil else { return }
        heldBy.store(Syscall.currentProcessID, ordering: .releasing)
    }

    /// When encoded: a hold in transit, in this process's name, that the
    /// decoding process takes over; nil if the server cannot make one.
    func transit() -> UInt64? {
        guard (try? holdHere()) != nil else { return nil }
        return try? client.call(0, ManagerRequest.transit, [Self.argument(id)], as: UInt64.self)
    }

    /// Lets go of the hold now (``ManagedProxy/releaseReference()``).
    func release() throws(ManagerError) {
        let here = Syscall.currentProcessID
        let holder = heldBy.exchange(-1, ordering: .acquiringAndReleasing)
        if holder == here { _ = try client.call(0, ManagerRequest.decref, [Self.argument(id)]) }
    }
}

/// A proxy to an object in a ``Manager``'s server.
public protocol ManagedProxy: Sendable {
    /// The reference it holds.
    var reference: ManagedReference { get }
}

extension ManagedProxy {
    /// Lets go of this process's hold on the object now, rather than when
    /// the last copy of the proxy is gone: once no process holds it, the
    /// server frees it. Later calls through this proxy and its copies here
    /// throw ``ManagerError/referenceReleased``. Idempotent.
    public func releaseReference() throws(ManagerError) { try reference.hold.release() }
}

/// Encodes a proxy's argument.
internal func managerArgument<T: Encodable>(_ value: T) throws(ManagerError) -> [UInt8] {
    do { return try ValueCodec.encode(value) } catch { throw .invalidArgument("the value did not encode: \(error)") }
}

/// Decodes a value a proxy got back.
internal func managerResult<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws(ManagerError) -> T {
    do { return try ValueCodec.decode(T.self, from: bytes) } catch { throw .badRequest("a stored value did not decode as \(T.self): \(error)") }
}

/// Every manager client of this process, for two reasons.
///
/// Fork safety: a client's lock guards its idle connections; a child forked
/// while another thread held it would wait for it for ever. ``ForkGuard``
/// holds every client's lock (and this registry's) across each fork, and the
/// child then drops what it inherited.
///
/// Sharing: proxies decoded in this process (a job's, a pool task's) use one
/// client per manager, kept for the life of the process, so that a worker's
/// later tasks reuse its connections instead of each opening its own.
internal final class ManagerClients: Sendable {
    static let shared = ManagerClients()

    private struct Key: Hashable {
        var address: ConnectionAddress
        var authenticationKey: [UInt8]
    }

    private struct Weak {
        weak var client: ManagerClient?
    }

    private struct State {
        var all: [ObjectIdentifier: Weak] = [:]
        var shared: [Key: ManagerClient] = [:]
    }

    private let state = Locked(State())

    func register(_ client: ManagerClient) {
        state.withLock { $0.all[ObjectIdentifier(client)] = Weak(client: client) }
    }

    func unregister(_ client: ManagerClient) {
        state.withLock { _ = $0.all.removeValue(forKey: ObjectIdentifier(client)) }
    }

    func client(address: ConnectionAddress, authenticationKey: [UInt8]) -> ManagerClient {
        let key = Key(address: address, authenticationKey: authenticationKey)
        if let client = state.withLock({ $0.shared[key] }) { return client }
        // Made outside the lock: making one registers it.
        let made = ManagerClient(address: address, authenticationKey: authenticationKey)
        return state.withLock { state in
            if let raced = state.shared[key] { return raced }
            state.shared[key] = made
            return made
        }
    }

    /// Forgets the shared client of a manager that shut down, and closes its
    /// idle connections.
    func forget(address: ConnectionAddress) {
        let gone = state.withLock { state -> [ManagerClient] in
            let keys = state.shared.keys.filter { $0.address == address }
            return keys.compactMap { state.shared.removeValue(forKey: $0) }
        }
        gone.forEach { $0.closeIdleConnections() }
    }

    /// Before a fork: this registry's lock, then every live client's.
    func lockForFork() -> [ManagerClient] {
        state.lockForFork()
        let clients = state.whileHeldForFork { state in state.all.values.compactMap { $0.client } }
        clients.forEach { $0.lockForFork() }
        return clients
    }

    /// After a fork, on both sides, with what ``lockForFork()`` returned.
    /// Nothing here may make type metadata or a key path the parent has not
    /// made (a child that must make some can wait for ever on a runtime lock
    /// another parent thread held at the fork): a plain loop, no `reversed()`.
    func unlockAfterFork(_ clients: [ManagerClient], inChild: Bool) {
        for client in clients {
            if inChild { client.resetInChildWhileLocked() }
            client.unlockAfterFork()
        }
        state.unlockAfterFork()
    }
}
