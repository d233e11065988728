import Glibc

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
    }

    deinit {
        idle.withLock { state in
            if state.pid == Syscall.currentProcessID { state.connections.forEach { $0.close() } }
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
    func call(_ object: UInt64, _ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil) throws(ManagerError) -> [UInt8] {
        let seconds = timeout.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
        let request = ManagerRequest.fromHere(object: object, method: method, arguments: arguments, timeout: seconds)
        let connection = try take()
        let reply: ManagerReply
        do {
            reply = try ManagerReply(decoding: try connection.call(request.encoded()))
        } catch {
            connection.close()
            if case let error as ManagerError = error { throw error }
            throw .managerUnreachable("\(error)")
        }
        giveBack(connection)
        switch reply {
        case let .value(bytes): return bytes
        case let .failure(error): throw error
        }
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
public struct ManagedReference: Codable, Sendable {
    let client: ManagerClient
    let id: UInt64

    init(client: ManagerClient, id: UInt64) {
        self.client = client
        self.id = id
    }

    private enum CodingKeys: String, CodingKey {
        case address, key, id
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        client = ManagerClient(address: try container.decode(ConnectionAddress.self, forKey: .address), authenticationKey: try container.decode([UInt8].self, forKey: .key))
        id = try container.decode(UInt64.self, forKey: .id)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(client.address, forKey: .address)
        try container.encode(client.authenticationKey, forKey: .key)
        try container.encode(id, forKey: .id)
    }

    func call(_ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil) throws(ManagerError) -> [UInt8] {
        try client.call(id, method, arguments, timeout: timeout)
    }

    func call<T: Decodable>(_ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil, as type: T.Type) throws(ManagerError) -> T {
        try client.call(id, method, arguments, timeout: timeout, as: T.self)
    }
}

/// Encodes a proxy's argument.
internal func managerArgument<T: Encodable>(_ value: T) throws(ManagerError) -> [UInt8] {
    do { return try ValueCodec.encode(value) } catch { throw .invalidArgument("the value did not encode: \(error)") }
}

/// Decodes a value a proxy got back.
internal func managerResult<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) throws(ManagerError) -> T {
    do { return try ValueCodec.decode(T.self, from: bytes) } catch { throw .badRequest("a stored value did not decode as \(T.self): \(error)") }
}
