import Glibc

/// One client's line to the manager's server: an authenticated socket, and,
/// when both ends are on one machine, two rings of shared memory that carry
/// the requests and replies themselves.
///
/// A call over the socket costs four system calls and, as often as not, two
/// wake-ups; over the rings it costs none while both sides are busy (each
/// watches its ring for a moment before it sleeps). The socket stays open
/// beside the rings: its end of file is how each side learns that the other
/// died, so a waiting side looks at it between slices of its wait.
internal final class ManagerChannel: @unchecked Sendable {  // used by one thread at a time (the client's pool hands it out)
    let socket: Connection
    private let rings: (requests: Queue<[UInt8]>, replies: Queue<[UInt8]>)?

    /// How long the first slice of a wait on a ring lasts before the socket
    /// is looked at again; each later slice of the same wait is twice as
    /// long, up to ``longestSlice``. Every slice begins with a moment of
    /// spinning, so an idle connection must not wake often: a dead peer is
    /// noticed within 50 ms during a call, within a second when idle.
    static var firstSlice: Duration { .milliseconds(50) }
    static var longestSlice: Duration { .seconds(1) }

    /// The ring size: a message larger than this crosses in pieces.
    static var ringSize: Int { 256 << 10 }

    private init(socket: Connection, rings: (Queue<[UInt8]>, Queue<[UInt8]>)?) {
        self.socket = socket
        self.rings = rings
    }

    /// A channel over the socket alone (the server's, until the client asks for rings).
    static func overSocket(_ socket: Connection) -> ManagerChannel {
        ManagerChannel(socket: socket, rings: nil)
    }

    /// Whether calls go through shared memory.
    var isShared: Bool { rings != nil }

    func close() {
        socket.close()
        rings?.requests.close()
        rings?.replies.close()
    }

    // MARK: - Client side

    /// Connects and authenticates; asks for rings when the server is on a
    /// Unix socket (so on this machine), else calls go over the socket.
    static func connect(to address: ConnectionAddress, authenticationKey: [UInt8]) throws(ManagerError) -> ManagerChannel {
        let socket: Connection
        do {
            socket = try Client.connect(to: address, authenticationKey: authenticationKey)
        } catch ConnectionError.authenticationFailed {
            throw .authenticationFailed
        } catch {
            throw .managerUnreachable("connecting to \(address): \(error)")
        }
        guard case .unix = address else { return ManagerChannel(socket: socket, rings: nil) }
        do {
            let requests = try Queue<[UInt8]>(ringBytes: ringSize, maxSize: 0, sparse: false)
            let replies = try Queue<[UInt8]>(ringBytes: ringSize, maxSize: 0, sparse: false)
            try socket.sendBytes(ManagerRequest.fromHere(object: 0, method: ManagerRequest.openRings).encoded())
            guard case .value = try ManagerReply(decoding: try socket.receiveBytes()) else {
                // A server that cannot take rings: stay on the socket.
                return ManagerChannel(socket: socket, rings: nil)
            }
            // Sent only now: the server reads it with recvmsg, not through
            // the connection's buffer, which would drop the descriptors.
            _ = try Syscall.sendWithDescriptors(socket.fileDescriptor, [1], [requests.memory.descriptor, replies.memory.descriptor])
            return ManagerChannel(socket: socket, rings: (requests, replies))
        } catch {
            socket.close()
            throw .managerUnreachable("setting up a channel to \(address): \(error)")
        }
    }

    /// Sends a request and waits for its reply.
    func call(_ request: [UInt8]) throws(ManagerError) -> [UInt8] {
        do {
            guard let rings else {
                try socket.sendBytes(request)
                socket.spinUntilReadable(for: .microseconds(50))
                return try socket.receiveBytes()
            }
            try put(request, on: rings.requests)
            return try get(from: rings.replies)
        } catch let error as ManagerError {
            throw error
        } catch {
            throw .managerUnreachable("\(error)")
        }
    }

    // MARK: - Server side

    /// The server's side of a client's ``connect(to:authenticationKey:)``,
    /// after it answered the request for rings: takes the rings' memory.
    static func accept(_ socket: Connection) throws -> ManagerChannel {
        var byte: UInt8 = 0
        let (count, descriptors) = try withUnsafeMutableBytes(of: &byte) { buffer in
            try Syscall.receiveWithDescriptors(socket.fileDescriptor, into: buffer, maxDescriptors: 2)
        }
        guard count == 1, descriptors.count == 2 else {
            descriptors.forEach(Syscall.close)
            throw ManagerError.badRequest("expected the descriptors of two rings")
        }
        let memories = try descriptors.map { descriptor in
            try SharedMemory(descriptor: descriptor, size: try Syscall.descriptorSize(descriptor), name: nil, owner: nil, resize: false)
        }
        return ManagerChannel(socket: socket, rings: (try Queue(sharing: memories[0]), try Queue(sharing: memories[1])))
    }

    /// The next request, or nil once the client is gone.
    func nextRequest() -> [UInt8]? {
        guard let rings else {
            socket.spinUntilReadable(for: .microseconds(50))
            return try? socket.receiveBytes()
        }
        return try? get(from: rings.requests)
    }

    /// Sends a reply; false once the client is gone.
    func reply(_ bytes: [UInt8]) -> Bool {
        guard let rings else { return (try? socket.sendBytes(bytes)) != nil }
        return (try? put(bytes, on: rings.replies)) != nil
    }

    // MARK: - Rings

    /// Whether the peer is gone: its socket reads end of file (or, on a
    /// socket that carries nothing else once rings are in use, anything).
    /// Over a plain socket, only a closed one counts.
    func peerGone() -> Bool {
        guard rings != nil else {
            guard let events = try? Syscall.poll([socket.fileDescriptor], events: 0x2000 /* POLLRDHUP: the peer closed */, timeout: 0) else { return true }
            return events[0] != 0
        }
        guard let events = try? Syscall.poll([socket.fileDescriptor], timeout: 0) else { return true }
        return events[0] != 0
    }

    private func put(_ bytes: [UInt8], on ring: Queue<[UInt8]>) throws {
        try inSlices(until: .full) { try ring.putEncoded(bytes, timeout: $0) }
    }

    private func get(from ring: Queue<[UInt8]>) throws -> [UInt8] {
        try inSlices(until: .empty) { try ring.getEncoded(timeout: $0) }
    }

    /// Runs a ring operation in slices of growing length, looking at the
    /// peer's socket each time one ends with `stillWaiting`.
    private func inSlices<Result>(until stillWaiting: QueueError, _ attempt: (Duration) throws -> Result) throws -> Result {
        var slice = Self.firstSlice
        while true {
            do {
                return try attempt(slice)
            } catch let error as QueueError where error == stillWaiting {
                if peerGone() { throw ManagerError.managerUnreachable("the other end of the channel is gone") }
                slice = min(slice * 2, Self.longestSlice)
            }
        }
    }
}
