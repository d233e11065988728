import Glibc
import Synchronization
import SystemPackage

/// Where a ``Listener`` listens and a ``Client`` connects.
public enum ConnectionAddress: Sendable, Hashable, Codable, CustomStringConvertible {
    /// A Unix socket. A path starting with `@` is in Linux's abstract
    /// namespace: no file is made, so nothing is left behind.
    case unix(String)
    /// A TCP socket (`host` a name or a numeric IPv4/IPv6 address).
    case tcp(host: String, port: UInt16)

    public var description: String {
        switch self {
        case let .unix(path): path
        case let .tcp(host, port): host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        }
    }
}

/// Accepts connections (Python's `multiprocessing.connection.Listener`).
///
/// With an authentication key, every connection must prove it knows the key
/// (and the listener proves it too) before ``accept()`` returns it; a client
/// that fails is closed and `accept()` throws
/// ``ConnectionError/authenticationFailed`` — call it again to serve others.
public final class Listener: Sendable {
    /// The address clients connect to (with the port chosen, for TCP port 0).
    public let address: ConnectionAddress
    private let authenticationKey: [UInt8]?
    private let socket: FileDescriptor
    private let isClosed = Atomic<Bool>(false)

    private static let counter = Atomic<Int>(0)

    /// Listens at `address`; by default at a fresh abstract Unix address.
    ///
    /// - Parameter authenticationKey: if given, clients must know it.
    public init(address: ConnectionAddress? = nil, backlog: Int = 128, authenticationKey: [UInt8]? = nil) throws {
        (socket, self.address) = try Self.open(address ?? Self.freshAddress(), backlog: Int32(clamping: backlog))
        self.authenticationKey = authenticationKey
        // Non-blocking, so that a client gone between readiness and accept
        // (or another thread's accept) cannot leave a caller stuck.
        do {
            try Syscall.setNonBlocking(socket, true)
        } catch {
            Syscall.close(socket)
            throw error
        }
    }

    deinit { close() }

    private static func freshAddress() -> ConnectionAddress {
        let serial = counter.add(1, ordering: .relaxed).newValue
        return .unix("@swift-multiprocessing-\(getpid())-\(serial)-\(UInt32.random(in: 0...UInt32.max))")
    }

    private static func open(_ address: ConnectionAddress, backlog: Int32) throws -> (FileDescriptor, ConnectionAddress) {
        switch address {
        case let .unix(path):
            guard !path.isEmpty, path.utf8.count < 108 else { throw ConnectionError.invalidAddress(path) }
            return (try Syscall.listenUnix(path, backlog: backlog), address)
        case let .tcp(host, port):
            do {
                let (fd, bound) = try Syscall.listenTCP(host: host, port: port, backlog: backlog)
                return (fd, .tcp(host: host, port: bound))
            } catch where error == .addressNotAvailable {
                throw ConnectionError.invalidAddress(address.description)
            }
        }
    }

    /// Stops listening. A Unix socket file (not an abstract address) is removed.
    public func close() {
        guard !isClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        Syscall.close(socket)
        if case let .unix(path) = address, !path.hasPrefix("@") { unlink(path) }
    }

    /// Waits for a client and returns the connection to it, authenticated if
    /// the listener has a key.
    ///
    /// - Throws: ``ConnectionError/authenticationFailed`` for a client that
    ///   does not know the key (it is disconnected); ``ConnectionError/closed``.
    @available(*, noasync, message: "use the async accept()")
    public func accept() throws -> Connection {
        while true {
            guard !isClosed.load(ordering: .acquiring) else { throw ConnectionError.closed }
            let fd: FileDescriptor
            do {
                fd = try Syscall.accept(socket)
            } catch .wouldBlock {
                _ = try Syscall.poll([socket], timeout: -1)
                continue
            }
            let connection = Connection(fileDescriptor: fd)
            try authenticate(connection)
            return connection
        }
    }

    /// Waits for a client without blocking a thread; see ``accept()``.
    public func accept() async throws -> Connection {
        guard !isClosed.load(ordering: .acquiring) else { throw ConnectionError.closed }
        while true {
            try await IOWatcher.shared.waitUntilReadable([socket])
            let fd: FileDescriptor
            do {
                fd = try Syscall.accept(socket)
            } catch .wouldBlock {
                continue
            }
            let connection = Connection(fileDescriptor: fd)
            try authenticate(connection)
            return connection
        }
    }

    private func authenticate(_ connection: Connection) throws {
        guard let authenticationKey else { return }
        do {
            try Authentication.serve(connection, key: authenticationKey)
        } catch {
            connection.close()
            throw ConnectionError.authenticationFailed
        }
    }
}

/// Connects to a ``Listener`` (Python's `multiprocessing.connection.Client`).
public enum Client {
    /// Connects to `address`, proving (and checking) the key if one is given.
    ///
    /// - Throws: ``ConnectionError/authenticationFailed`` if either side does
    ///   not know the key; `Errno` if nobody listens there;
    ///   ``WireError/endOfFile`` (or `Errno`) if the listener went away
    ///   during the handshake.
    public static func connect(to address: ConnectionAddress, authenticationKey: [UInt8]? = nil) throws -> Connection {
        let fd: FileDescriptor
        switch address {
        case let .unix(path):
            guard !path.isEmpty, path.utf8.count < 108 else { throw ConnectionError.invalidAddress(path) }
            fd = try Syscall.connectUnix(path)
        case let .tcp(host, port):
            do {
                fd = try Syscall.connectTCP(host: host, port: port)
            } catch where error == .addressNotAvailable {
                throw ConnectionError.invalidAddress(address.description)
            }
        }
        let connection = Connection(fileDescriptor: fd)
        if let authenticationKey {
            do {
                try Authentication.client(connection, key: authenticationKey)
            } catch {
                // A refused key is `authenticationFailed`; a listener that
                // went away mid-handshake is its own error (end of file, a reset).
                connection.close()
                throw error
            }
        }
        return connection
    }
}
