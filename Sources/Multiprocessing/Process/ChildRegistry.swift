import Glibc

/// The children this process started and has not yet reaped (Python's
/// `_children`). It keeps each alive until it ends, so none is left a zombie.
internal final class ChildRegistry: Sendable {
    static let shared = ChildRegistry()

    struct State {
        var ownerPID: pid_t = 0
        var children: [ObjectIdentifier: ChildProcess] = [:]
        var exitHandlerInstalled = false
    }

    private let state = Locked(State())

    private init() {}

    /// Its lock, for ``ForkGuard``.
    var forkLock: Locked<State> { state }

    func add(_ child: ChildProcess) {
        state.withLock { state in
            resetIfInherited(&state)
            state.children[ObjectIdentifier(child)] = child
        }
        installExitHandler()
    }

    func remove(_ child: ChildProcess) {
        state.withLock { state in
            resetIfInherited(&state)
            state.children[ObjectIdentifier(child)] = nil
        }
    }

    /// The children, after reaping those that have ended.
    func reapFinished() -> [ChildProcess] {
        let children = state.withLock { state in
            resetIfInherited(&state)
            return Array(state.children.values)
        }
        // `exitCode` reaps (and unregisters) each child that has ended.
        return children.filter { $0.exitCode == nil }
    }

    /// A forked child inherits its parent's registry: its parent's children are not its own.
    private func resetIfInherited(_ state: inout State) {
        if state.ownerPID != getpid() {
            state.ownerPID = getpid()
            // Never released: their deinit would close descriptor numbers that
            // this process may have closed and reused since the fork.
            for child in state.children.values { _ = Unmanaged.passRetained(child) }
            state.children = [:]
            state.exitHandlerInstalled = false
        }
    }

    /// Makes sure `joinAllAtExit` runs when this process exits.
    func installExitHandler() {
        let install = state.withLock { state -> Bool in
            resetIfInherited(&state)
            defer { state.exitHandlerInstalled = true }
            return !state.exitHandlerInstalled
        }
        if install {
            atexit { ChildRegistry.shared.joinAllAtExit() }
        }
    }

    private func joinAllAtExit() {
        let children = reapFinished()
        for child in children where child.daemon {
            try? child.terminate()
        }
        for child in children {
            // A daemon that ignores SIGTERM (or hangs in a crash handler) is
            // killed: the program's exit must not wait on it for ever.
            if child.daemon, (try? child.join(timeout: .seconds(2))) == nil {
                try? child.kill()
            }
            _ = try? child.join()
        }
        // Last, so that nothing it started is still wanted.
        ForkServerClient.shared.shutDown()
    }
}

/// The children of this process that are still running (Python's
/// `active_children()`); those that have ended are reaped on the way.
public func activeChildren() -> [ChildProcess] {
    ChildRegistry.shared.reapFinished()
}
