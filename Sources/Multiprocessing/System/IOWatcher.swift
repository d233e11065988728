import CMultiprocessing
import Glibc
import SystemPackage

/// Lets async code wait for descriptors to become readable without blocking
/// the cooperative thread pool: one thread of the library's own sleeps in
/// `epoll_wait` for everybody.
internal final class IOWatcher: Sendable {
    static let shared = IOWatcher()

    struct Waiter {
        var continuation: CheckedContinuation<Void, any Error>
        /// Duplicates registered with epoll, so that two waits on one
        /// descriptor never collide.
        var registered: [FileDescriptor]
    }

    struct State {
        var ownerPID: pid_t = 0
        var epoll = FileDescriptor(rawValue: -1)
        var nextToken: UInt64 = 1
        var waiters: [UInt64: Waiter] = [:]
        var cancelled: Set<UInt64> = []
    }

    private let state = Locked(State())

    private init() {}

    /// Its lock, for ``ForkGuard``.
    var forkLock: Locked<State> { state }

    /// Returns once any of `descriptors` is readable (or hung up).
    /// Throws `CancellationError` if the task is cancelled first.
    func waitUntilReadable(_ descriptors: [FileDescriptor]) async throws {
        let token = state.withLock { state -> UInt64 in
            defer { state.nextToken += 1 }
            return state.nextToken
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                do {
                    try register(token, descriptors, continuation)
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            finish(token, with: .failure(CancellationError()), markCancelled: true)
        }
    }

    private func register(_ token: UInt64, _ descriptors: [FileDescriptor], _ continuation: CheckedContinuation<Void, any Error>) throws {
        try state.withLock { state throws in
            if state.cancelled.remove(token) != nil {
                continuation.resume(throwing: CancellationError())
                return
            }
            if state.ownerPID != getpid() {
                // First use in this process (a forked child inherits a stale copy).
                state.ownerPID = getpid()
                state.waiters = [:]
                state.cancelled = []
                state.epoll = FileDescriptor(rawValue: try valueOrErrno { cmp_epoll_create() })
                let epoll = state.epoll
                _ = SystemThread.start { [self] in self.serve(epoll) }
            }
            var registered: [FileDescriptor] = []
            do {
                for fd in descriptors {
                    let copy = try Syscall.duplicate(fd)
                    registered.append(copy)
                    let epoll = state.epoll
                    _ = try valueOrErrno { cmp_epoll_add_readable(epoll.rawValue, copy.rawValue, token) }
                }
            } catch {
                for copy in registered {
                    _ = cmp_epoll_remove(state.epoll.rawValue, copy.rawValue)
                    Syscall.close(copy)
                }
                throw error
            }
            state.waiters[token] = Waiter(continuation: continuation, registered: registered)
        }
    }

    private func finish(_ token: UInt64, with result: Result<Void, any Error>, markCancelled: Bool = false) {
        let waiter = state.withLock { state -> Waiter? in
            guard let waiter = state.waiters.removeValue(forKey: token) else {
                if markCancelled { state.cancelled.insert(token) }
                return nil
            }
            for copy in waiter.registered {
                _ = cmp_epoll_remove(state.epoll.rawValue, copy.rawValue)
                Syscall.close(copy)
            }
            return waiter
        }
        waiter?.continuation.resume(with: result)
    }

    private func serve(_ epoll: FileDescriptor) {
        var tokens = [UInt64](repeating: 0, count: 64)
        while true {
            let count = tokens.withUnsafeMutableBufferPointer { buffer in
                cmp_epoll_wait(epoll.rawValue, buffer.baseAddress, Int32(buffer.count), -1)
            }
            guard count > 0 else { continue }
            for token in tokens[..<Int(count)] {
                finish(token, with: .success(()))
            }
        }
    }
}
