import CMultiprocessing
import Glibc
import Synchronization
import SystemPackage

/// A block of memory shared between processes (Python's `SharedMemory`).
///
/// Anonymous by default: backed by `memfd_create`, handed to children with
/// their jobs (or inherited by fork) and freed by the kernel when the last
/// process lets go — nothing can leak. With a name, it is POSIX shared memory
/// (`/dev/shm/NAME`) that unrelated processes can ``attach(name:)`` to; the
/// process that created it unlinks it at ``close()``, at ``unlink()``, or when
/// it exits — and if it is killed, a tracker process unlinks it once the
/// program (the creator and the children it forked) is gone, unless it was
/// created with `track: false`.
public final class SharedMemory: @unchecked Sendable {  // the mapping is fixed; its bytes are shared by design
    /// The size in bytes.
    public let size: Int
    /// The POSIX name, or nil for anonymous memory.
    public let name: String?
    /// The start of the mapping in this process.
    public let baseAddress: UnsafeMutableRawPointer
    internal let descriptor: FileDescriptor
    /// The process that created a named segment: only it unlinks the name.
    private let ownerPID: pid_t?
    private let isClosed = Atomic<Bool>(false)

    /// Anonymous shared memory of `size` bytes, zeroed.
    public convenience init(size: Int) throws {
        guard size > 0 else { throw SharedMemoryError.invalidSize(size) }
        let fd = try Syscall.memfdCreate("swift-multiprocessing")
        try self.init(descriptor: fd, size: size, name: nil, owner: nil, resize: true)
    }

    /// Creates named shared memory of `size` bytes, zeroed.
    ///
    /// - Parameter track: whether the name is unlinked when this process
    ///   closes the memory or exits, or — if it is killed — by the tracker
    ///   once the program is gone (Python's `track=True`). False: the
    ///   segment outlives the program until someone calls ``unlink()``.
    /// - Throws: ``SharedMemoryError/alreadyExists(_:)`` if the name is taken.
    public convenience init(name: String, size: Int, track: Bool = true) throws {
        guard size > 0 else { throw SharedMemoryError.invalidSize(size) }
        let path = try Self.posixName(name)
        let fd = try Self.open(path, name: name, create: true)
        // Tracked once made (a name another process made is not ours to
        // untrack): from here on, a kill leaves nothing behind.
        if track { NamedSegments.shared.add(path) }
        do {
            try self.init(descriptor: fd, size: size, name: name, owner: track ? getpid() : nil, resize: true)
        } catch {
            NamedSegments.shared.remove(path)
            _ = cmp_shm_unlink(path)
            throw error
        }
    }

    /// Attaches to named shared memory another process created.
    ///
    /// - Throws: ``SharedMemoryError/notFound(_:)`` if there is none.
    public static func attach(name: String) throws -> SharedMemory {
        let path = try posixName(name)
        let fd = try open(path, name: name, create: false)
        let size = try Syscall.descriptorSize(fd)
        return try SharedMemory(descriptor: fd, size: size, name: name, owner: nil, resize: false)
    }

    internal init(descriptor: FileDescriptor, size: Int, name: String?, owner: pid_t?, resize: Bool) throws {
        do {
            if resize { try Syscall.resize(descriptor, to: size) }
            baseAddress = try Syscall.mapShared(descriptor, size: size)
        } catch {
            Syscall.close(descriptor)
            throw error
        }
        self.descriptor = descriptor
        self.size = size
        self.name = name
        self.ownerPID = owner
    }

    deinit { close() }

    private static func open(_ path: String, name: String, create: Bool) throws -> FileDescriptor {
        let result = Result { () throws(Errno) in try Syscall.sharedMemoryOpen(path, create: create) }
        switch result {
        case let .success(fd): return fd
        case .failure(.fileExists): throw SharedMemoryError.alreadyExists(name)
        case .failure(.noSuchFileOrDirectory): throw SharedMemoryError.notFound(name)
        case let .failure(error): throw error
        }
    }

    private static func posixName(_ name: String) throws(SharedMemoryError) -> String {
        guard !name.isEmpty, !name.contains("/"), name.utf8.count < 250 else { throw .invalidName(name) }
        return "/" + name
    }

    /// The bytes, for reading and writing. Other processes see every write.
    public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: baseAddress, count: size)
    }

    /// Whether ``close()`` was called in this process.
    internal var isClosedHere: Bool { isClosed.load(ordering: .acquiring) }

    /// Unmaps the memory in this process; the creator of a named segment also
    /// unlinks its name. Idempotent.
    public func close() {
        guard !isClosed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        munmap(baseAddress, size)
        Syscall.close(descriptor)
        if ownerPID == getpid() { try? unlink() }
    }

    /// Removes the name now; processes attached keep their mappings.
    public func unlink() throws {
        guard let name else { return }
        let path = try Self.posixName(name)
        NamedSegments.shared.remove(path)
        _ = try valueOrErrno { cmp_shm_unlink(path) }
    }
}

/// Why shared memory could not be made or found.
public enum SharedMemoryError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidSize(Int)
    case invalidName(String)
    case alreadyExists(String)
    case notFound(String)
    /// A value or array would not fit the memory it was given.
    case outOfRange(index: Int, count: Int)
    /// An item of a ``ShareableList`` longer than the room of the item it replaces.
    case itemTooLarge(index: Int, room: Int)

    public var description: String {
        switch self {
        case let .invalidSize(size): "invalid shared memory size \(size)"
        case let .invalidName(name): "invalid shared memory name '\(name)'"
        case let .alreadyExists(name): "shared memory '\(name)' already exists"
        case let .notFound(name): "no shared memory named '\(name)'"
        case let .outOfRange(index, count): "index \(index) out of range 0..<\(count)"
        case let .itemTooLarge(index, room): "the item does not fit the \(room) bytes of item \(index)"
        }
    }
}

/// Names this process created and has not unlinked: unlinked at exit, and
/// told to the program's tracker (`shm_tracker.c`), which unlinks them if
/// the program is killed.
internal final class NamedSegments: Sendable {
    static let shared = NamedSegments()

    struct State {
        var pid: pid_t = 0
        var names: Set<String> = []
        var installed = false
        /// This program's end of the tracker's socket, and what it is (a
        /// forked child inherits it; one that closed its descriptors holds
        /// another file under that number).
        var tracker: (socket: FileDescriptor, identity: (device: UInt, inode: UInt))?
    }

    private let names = Locked(State())

    /// Its lock, for ``ForkGuard``.
    var forkLock: Locked<State> { names }

    func add(_ path: String) {
        let install = names.withLock { state -> Bool in
            if state.pid != getpid() {
                state.pid = getpid()
                state.names = []
                state.installed = false
            }
            state.names.insert(path)
            tell("+" + path, &state)
            defer { state.installed = true }
            return !state.installed
        }
        if install {
            atexit { NamedSegments.shared.unlinkAll() }
        }
    }

    func remove(_ path: String) {
        names.withLock { state in
            guard state.pid == getpid() else { return }
            state.names.remove(path)
            tell("-" + path, &state)
        }
    }

    /// Tells the tracker `message`, starting one if this process has none
    /// (the tracker's trouble costs only its backstop: at exit the names are
    /// unlinked anyway).
    private func tell(_ message: String, _ state: inout State) {
        if let tracker = state.tracker, Syscall.identity(of: tracker.socket).map({ $0 == tracker.identity }) != true {
            state.tracker = nil  // closed here, its number reused
        }
        // Only a new name needs a tracker; one that is going needs none.
        if state.tracker == nil && message.hasPrefix("+") {
            let socket = cmp_shm_tracker_start(MemoryGroup.trackerGroup)
            guard socket >= 0, let identity = Syscall.identity(of: FileDescriptor(rawValue: socket)) else { return }
            state.tracker = (FileDescriptor(rawValue: socket), identity)
        }
        if let tracker = state.tracker, cmp_shm_tracker_send(tracker.socket.rawValue, message) != 0 {
            // The tracker is gone (killed): the next name starts another.
            Syscall.close(tracker.socket)
            state.tracker = nil
        }
    }

    private func unlinkAll() {
        let paths = names.withLock { state -> Set<String> in
            guard state.pid == getpid() else { return [] }
            defer { state.names = [] }
            // The tracker lets go of each first: nothing is unlinked twice.
            for path in state.names { tell("-" + path, &state) }
            return state.names
        }
        for path in paths { _ = cmp_shm_unlink(path) }
    }
}

extension SharedMemory: Codable {
    private enum CodingKeys: String, CodingKey { case descriptor, size, name }

    /// Encodes the memory for a child this process starts: its descriptor
    /// travels beside the job, and the child maps the same pages.
    public func encode(to encoder: any Encoder) throws {
        let attachments = try DescriptorAttachments.of(encoder, encoding: self, what: "shared memory")
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(try attachments.attach(descriptor), forKey: .descriptor)
        try container.encode(size, forKey: .size)
        try container.encodeIfPresent(name, forKey: .name)
    }

    public convenience init(from decoder: any Decoder) throws {
        let attachments = try DescriptorAttachments.of(decoder, what: "shared memory")
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let fd = try attachments.take(try container.decode(Int.self, forKey: .descriptor))
        let size = try container.decode(Int.self, forKey: .size)
        guard size > 0, size == (try? Syscall.descriptorSize(fd)) else {
            Syscall.close(fd)
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "shared memory of the wrong size"))
        }
        try self.init(descriptor: fd, size: size, name: try container.decodeIfPresent(String.self, forKey: .name), owner: nil, resize: false)
    }
}
