import CMultiprocessing
import Dispatch
import Glibc

/// The one thread that forks.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked a child ends, not
/// the process. Swift's cooperative pool and Dispatch retire idle threads, so
/// a child forked from one of them would be killed seconds later. Every fork
/// therefore happens on this thread, which lives as long as the process.
internal final class Launcher: Sendable {
    static let shared = Launcher()

    struct Request {
        let body: @Sendable () -> Void
    }

    struct State {
        /// The process that started `thread`; in a forked child it is stale.
        var ownerPID: pid_t = 0
        var thread: pthread_t = pthread_t()
        var pending: [Request] = []
        var wakeUp = DispatchSemaphore(value: 0)
    }

    // Mutable state guarded by the mutex; the thread's body only reads what
    // it captured when it started.
    private let state = Locked(State())

    private init() {}

    /// Its lock, for ``ForkGuard``.
    var forkLock: Locked<State> { state }

    /// Runs `body` on the launcher thread and returns its result; inline when
    /// called from that thread (or its copy in a forked child).
    ///
    /// - Parameter forksSwift: whether `body` forks a child that runs Swift
    ///   (so the library's child paths are warmed first: ``ForkWarmUp``). A
    ///   fork that only executes an image (`cmp_fork_exec`: async-signal-safe
    ///   C until `execve`) needs no warm-up, and a program whose children all
    ///   come from a forkserver never pays for it.
    func perform<T>(forksSwift: Bool = true, _ body: @escaping () throws -> T) throws -> T {
        // On the launcher thread itself, or on its copy in a forked child.
        let inline = state.withLock { state in
            state.ownerPID != 0 && pthread_equal(state.thread, pthread_self()) != 0
        }
        if inline { return try body() }
        if forksSwift { ForkWarmUp.runOnce() }

        do {
            let done = WordEvent()
            nonisolated(unsafe) var result: Result<T, any Error>? = nil  // written by the launcher before `done` is set
            nonisolated(unsafe) let work = body  // runs once, on the launcher thread, while this frame waits
            let request = Request {
                result = Result { try work() }
                done.set()
            }
            let wakeUp: DispatchSemaphore = state.withLock { state in
                if state.ownerPID != getpid() {
                    state.ownerPID = getpid()
                    state.pending = []
                    state.wakeUp = DispatchSemaphore(value: 0)
                    let wakeUp = state.wakeUp
                    state.thread = SystemThread.start { [self] in self.serve(wakeUp) }
                }
                state.pending.append(request)
                return state.wakeUp
            }
            wakeUp.signal()
            done.wait()
            return try result!.get()
        }
    }

    private func serve(_ wakeUp: DispatchSemaphore) {
        while true {
            wakeUp.wait()
            let requests = state.withLock { state -> [Request] in
                defer { state.pending = [] }
                return state.pending
            }
            for request in requests { request.body() }
        }
    }
}

/// A one-shot event whose wait a stop-the-world fork need not interrupt
/// (see `cmp_word_event_wait`): the caller waiting for the launcher is not
/// sent the park signal. A class, so that the word outlives the setter's
/// wake-up as well as the waiter.
private final class WordEvent: @unchecked Sendable {  // the word is only touched through atomic C calls
    private let word: UnsafeMutablePointer<UInt32>

    init() {
        word = .allocate(capacity: 1)
        word.initialize(to: 0)
    }

    deinit { word.deallocate() }

    func wait() { cmp_word_event_wait(word) }

    func set() { cmp_word_event_set(word) }
}
