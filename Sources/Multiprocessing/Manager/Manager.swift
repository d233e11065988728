import Glibc
import Logging

/// A server process that owns shared objects, and the factory of proxies
/// to them: Python's `multiprocessing.Manager()` and `BaseManager`.
///
/// Each method makes an object in the server and returns a typed proxy
/// (``ManagedDictionary``, ``ManagedList``, ``ManagedQueue``, …). Proxies are
/// `Codable` and `Sendable`: they pass to child processes and pool workers
/// by every start method, and every call goes to the server, so all
/// processes see one object. Keys and values are `Codable`; the server keeps
/// them encoded and never needs their types.
///
/// The server listens on a fresh abstract Unix socket, or at `address` (a
/// TCP address for use from other hosts with ``connect(to:authenticationKey:logger:)``);
/// every connection proves it knows the authentication key. On a Unix
/// address, each connection then moves its calls onto two rings of shared
/// memory (no system call per call; the socket stays open so that each side
/// sees the other die). The server dies
/// with this process, and ``shutdown()`` (or dropping the manager, or the end
/// of ``withManager(address:authenticationKey:startMethod:logger:_:)``) ends it. A
/// proxy whose server is gone throws ``ManagerError/managerUnreachable(_:)``
/// at once; it never hangs.
public final class Manager: Sendable {
    /// Where the server listens.
    public let address: ConnectionAddress
    let client: ManagerClient
    /// The server process, when this manager started it.
    private let server: ChildProcess?
    /// Where the manager's life and its server's clients are logged; nil: nowhere.
    private let logger: Logger?

    /// Starts a manager's server process.
    ///
    /// - Parameters:
    ///   - address: where to listen; nil for a fresh abstract Unix address.
    ///     A TCP address with port 0 gets a free port (see ``address``).
    ///   - authenticationKey: the key clients must know; nil for 32 random bytes.
    ///   - startMethod: how the server process starts. The default,
    ///     forkserver, gives it a clean single-threaded parent: a server forked
    ///     from a busy multi-threaded process can inherit a lock another
    ///     thread held.
    ///   - logger: where the manager logs, through swift-log: its server
    ///     started (`debug`, with `manager.address` and `manager.pid`) and shut
    ///     down (`debug`), each client process its server served and left
    ///     (`debug`, `manager.client`), and each connection it refused
    ///     (`warning`, `manager.reason`: a wrong key, say). Nil, the default:
    ///     nothing is logged and the server tells nothing.
    /// - Throws: ``ManagerError/managerUnreachable(_:)`` if it cannot listen.
    public init(address: ConnectionAddress? = nil, authenticationKey: [UInt8]? = nil, startMethod: StartMethod = .forkserver, logger: Logger? = nil) throws {
        let key = authenticationKey ?? (0..<32).map { _ in UInt8.random(in: 0...255) }
        let (here, there) = try Connection.pipe()
        let job = ManagerServerJob(address: address, authenticationKey: key, ready: there, reportsClients: logger != nil)
        let server = try ChildProcess(job: job, startMethod: startMethod, name: "Manager", daemon: true)
        try server.start()
        there.close()
        let start: ServerStart
        do {
            start = try here.receive(ServerStart.self)
        } catch {
            here.close()
            try? server.kill()
            _ = try? server.join()
            logger?.warning("a manager's server did not start", metadata: ["error": "\(error)"])
            throw ManagerError.managerUnreachable("the server did not start: \(error)")
        }
        guard case let .listening(address) = start else {
            here.close()
            _ = try? server.join()
            let reason: String
            if case let .failed(why) = start { reason = why } else { reason = "the server did not start" }
            logger?.warning("a manager's server did not start", metadata: ["error": "\(reason)"])
            throw ManagerError.managerUnreachable(reason)
        }
        self.address = address
        self.client = ManagerClient(address: address, authenticationKey: key)
        self.server = server
        self.logger = logger
        if let logger {
            var metadata: Logger.Metadata = ["manager.address": "\(address)"]
            if let pid = server.pid { metadata["manager.pid"] = "\(pid)" }
            logger.debug("manager started", metadata: metadata)
            // The server's reports, logged as they come, until it ends.
            _ = SystemThread.start {
                while let event = try? here.receive(ServerEvent.self) {
                    switch event {
                    case let .clientConnected(process):
                        logger.debug("manager client connected", metadata: metadata.merging(["manager.client": "\(process)"]) { $1 })
                    case let .clientLeft(process):
                        logger.debug("manager client left", metadata: metadata.merging(["manager.client": "\(process)"]) { $1 })
                    case let .clientRefused(reason):
                        logger.warning("manager refused a connection", metadata: metadata.merging(["manager.reason": "\(reason)"]) { $1 })
                    }
                }
                here.close()
            }
        } else {
            here.close()
        }
    }

    private init(address: ConnectionAddress, client: ManagerClient, logger: Logger?) {
        self.address = address
        self.client = client
        self.server = nil
        self.logger = logger
    }

    /// Connects to a manager started elsewhere (another process or host).
    ///
    /// - Parameter logger: where the connection is logged (`debug`) or its
    ///   failure (`warning`, with `error`); nil: nowhere.
    /// - Throws: ``ManagerError/authenticationFailed`` if it refuses the
    ///   key, ``ManagerError/managerUnreachable(_:)`` if it cannot be reached.
    public static func connect(to address: ConnectionAddress, authenticationKey: [UInt8], logger: Logger? = nil) throws(ManagerError) -> Manager {
        let client = ManagerClient.shared(address: address, authenticationKey: authenticationKey)
        do {
            _ = try client.call(0, "ping")
        } catch {
            logger?.warning("could not connect to a manager", metadata: ["manager.address": "\(address)", "error": "\(error)"])
            throw error
        }
        logger?.debug("connected to a manager", metadata: ["manager.address": "\(address)"])
        return Manager(address: address, client: client, logger: logger)
    }

    deinit { shutdown() }

    /// Ends the server (if this manager started it) and waits for it; every
    /// proxy then throws ``ManagerError/managerUnreachable(_:)``. Idempotent.
    public func shutdown() {
        guard let server, server.exitCode == nil else { return }
        _ = try? client.call(0, "shutdown")
        if (try? server.join(timeout: .seconds(2))) == nil {
            try? server.kill()
            _ = try? server.join()
        }
        // Connections to a server that is gone: closed now, not at exit.
        client.closeIdleConnections()
        ManagerClients.shared.forget(address: address)
        logger?.debug("manager shut down", metadata: ["manager.address": "\(address)", "manager.status": "\(server.exitCode.map(String.init) ?? "?")"])
    }

    /// How many objects the server holds now (Python's
    /// `_number_of_objects()`): each lives while some process holds a proxy
    /// to it (see ``ManagedReference``).
    public func servedObjectCount() throws(ManagerError) -> Int {
        try client.call(0, "objects", as: Int.self)
    }

    /// The server's process identifier, when this manager started it.
    public var serverPID: Int32? { server?.pid }

    private func make(_ kind: String, _ arguments: [[UInt8]] = []) throws(ManagerError) -> ManagedReference {
        let id = try client.call(0, "create", [try managerArgument(kind)] + arguments, as: UInt64.self)
        return ManagedReference(client: client, id: id)
    }

    /// A shared dictionary (Python's `manager.dict()`).
    public func dictionary<Key: Codable & Hashable & Sendable, Value: Codable & Sendable>(_ initial: [Key: Value] = [:]) throws(ManagerError) -> ManagedDictionary<Key, Value> {
        let dictionary = ManagedDictionary<Key, Value>(reference: try make("dict"))
        if !initial.isEmpty { try dictionary.merge(initial) }
        return dictionary
    }

    /// A shared dictionary whose keys are `keys`, each with `value` (Python's
    /// `dict.fromkeys(keys, value)`, served).
    public func dictionary<Key: Codable & Hashable & Sendable, Value: Codable & Sendable>(fromKeys keys: some Sequence<Key>, value: Value) throws(ManagerError) -> ManagedDictionary<Key, Value> {
        var initial: [Key: Value] = [:]
        for key in keys { initial[key] = value }
        return try dictionary(initial)
    }

    /// A shared set (Python 3.14's `manager.set()`).
    ///
    /// The server compares elements by their encodings: two values are the
    /// same element when they encode alike, which holds for the standard
    /// library's integers, strings (as written: not Unicode-normalised) and
    /// types whose encoding follows their equality.
    public func set<Element: Codable & Hashable & Sendable>(_ initial: Set<Element> = []) throws(ManagerError) -> ManagedSet<Element> {
        ManagedSet(reference: try make("set", try initial.map { value throws(ManagerError) in try managerArgument(value) }))
    }

    /// A shared list (Python's `manager.list()`).
    public func list<Element: Codable & Sendable>(_ initial: [Element] = []) throws(ManagerError) -> ManagedList<Element> {
        ManagedList(reference: try make("list", try initial.map { value throws(ManagerError) in try managerArgument(value) }))
    }

    /// A shared array of fixed length (Python's `manager.Array()`).
    public func array<Element: Codable & Sendable>(_ initial: [Element]) throws(ManagerError) -> ManagedArray<Element> {
        ManagedArray(reference: try make("array", try initial.map { value throws(ManagerError) in try managerArgument(value) }))
    }

    /// A shared value (Python's `manager.Value()`).
    public func value<Value: Codable & Sendable>(_ initial: Value) throws(ManagerError) -> ManagedValue<Value> {
        ManagedValue(reference: try make("value", [try managerArgument(initial)]))
    }

    /// A namespace of named values (Python's `manager.Namespace()`).
    public func namespace() throws(ManagerError) -> ManagedNamespace {
        ManagedNamespace(reference: try make("namespace"))
    }

    /// A shared queue, bounded when `maxSize` > 0 (Python's `manager.Queue()`,
    /// joinable like `manager.JoinableQueue()`).
    public func queue<Element: Codable & Sendable>(of type: Element.Type = Element.self, maxSize: Int = 0) throws(ManagerError) -> ManagedQueue<Element> {
        ManagedQueue(reference: try make("queue", [try managerArgument(maxSize)]))
    }

    /// A lock held by one thread of one process at a time (`manager.Lock()`).
    public func lock() throws(ManagerError) -> ManagedLock { ManagedLock(reference: try make("lock")) }

    /// A lock its holder may take again (`manager.RLock()`).
    public func recursiveLock() throws(ManagerError) -> ManagedLock { ManagedLock(reference: try make("rlock")) }

    /// A condition with its own recursive lock (`manager.Condition()`).
    public func condition() throws(ManagerError) -> ManagedCondition { ManagedCondition(reference: try make("condition")) }

    /// A counting semaphore (`manager.Semaphore(value)`; `bounded`: `BoundedSemaphore`).
    public func semaphore(value: Int = 1, bounded: Bool = false) throws(ManagerError) -> ManagedSemaphore {
        ManagedSemaphore(reference: try make(bounded ? "boundedSemaphore" : "semaphore", [try managerArgument(value)]))
    }

    /// An event (`manager.Event()`).
    public func event() throws(ManagerError) -> ManagedEvent { ManagedEvent(reference: try make("event")) }

    /// A barrier for `parties` threads (`manager.Barrier(parties)`).
    public func barrier(parties: Int) throws(ManagerError) -> ManagedBarrier {
        ManagedBarrier(reference: try make("barrier", [try managerArgument(parties)]))
    }

    /// Serves `object`, a value of any `Codable` type of yours, whose
    /// methods any process calls with closures run in the server (see
    /// ``ManagedInstance``).
    public func share<Object: Codable & Sendable>(_ object: Object) throws(ManagerError) -> ManagedInstance<Object> {
        ManagedInstance(reference: try make("instance", [try managerArgument(object)]))
    }

    /// Serves `object`, a type of your own (Python's `BaseManager.register`).
    public func serve<Object: ManagedObject>(_ object: Object) throws(ManagerError) -> ManagedObjectProxy<Object> {
        let typeName = _mangledTypeName(Object.self) ?? String(reflecting: Object.self)
        return ManagedObjectProxy(reference: try make("object", [try managerArgument(typeName), try managerArgument(object)]))
    }
}

/// Runs `body` with a new manager and shuts it down after, whatever happens.
public func withManager<Result>(address: ConnectionAddress? = nil, authenticationKey: [UInt8]? = nil, startMethod: StartMethod = .forkserver, logger: Logger? = nil, _ body: (Manager) throws -> Result) throws -> Result {
    let manager = try Manager(address: address, authenticationKey: authenticationKey, startMethod: startMethod, logger: logger)
    defer { manager.shutdown() }
    return try body(manager)
}
