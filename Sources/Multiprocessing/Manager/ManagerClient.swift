import Glibc

/// A process's way to a manager's server: a pool of authenticated
/// connections, one per call in flight, so that a call that waits (a queue's
/// `get`) never holds up another thread's call.
internal final class ManagerClient: @unchecked Sendable {  // mutable state is behind `idle`
    let address: ConnectionAddress
    let authenticationKey: [UInt8]
    /// Idle connections, and the process they belong to: a forked child
    /// must not share its parent's.
    private let idle = Locked((pid: getpid(), connections: [Connection]()))

    init(address: ConnectionAddress, authenticationKey: [UInt8]) {
        self.address = address
        self.authenticationKey = authenticationKey
    }

    deinit {
        idle.withLock { state in
            if state.pid == getpid() { state.connections.forEach { $0.close() } }
        }
    }

    private func take() throws(ManagerError) -> Connection {
        let reused = idle.withLock { state -> Connection? in
            if state.pid != getpid() {
                // Inherited from the parent: this copy is closed, the parent's stays.
                state.connections.forEach { $0.close() }
                state = (getpid(), [])
            }
            return state.connections.popLast()
        }
        if let reused { return reused }
        do {
            return try Client.connect(to: address, authenticationKey: authenticationKey)
        } catch {
            throw .managerUnreachable("connecting to \(address): \(error)")
        }
    }

    private func giveBack(_ connection: Connection) {
        idle.withLock { state in
            if state.pid == getpid() && state.connections.count < 8 {
                state.connections.append(connection)
            } else {
                connection.close()
            }
        }
    }

    /// Calls `method` of object `object` on the server and returns the encoded result.
    func call(_ object: UInt64, _ method: String, _ arguments: [[UInt8]] = [], timeout: Duration? = nil) throws(ManagerError) -> [UInt8] {
        let owner = "\(getpid()):\(UInt(bitPattern: Int(bitPattern: pthread_self())))"
        let seconds = timeout.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
        let request = ManagerRequest(object: object, method: method, arguments: arguments, owner: owner, timeout: seconds)
        let connection = try take()
        let reply: ManagerReply
        do {
            try connection.send(request)
            connection.spinUntilReadable(for: .microseconds(50))
            reply = try connection.receive(ManagerReply.self)
        } catch {
            connection.close()
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
