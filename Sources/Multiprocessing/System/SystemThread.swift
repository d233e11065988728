import Dispatch
import Glibc

/// A long-lived POSIX thread of the library's own, outside the cooperative pool.
package enum SystemThread {
    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts a detached thread running `body`; returns its `pthread_t`, or
    /// nil (and `body` never runs) if no thread can be made now (`EAGAIN`:
    /// the process's or the system's limit). The C function is `pthread_create`.
    package static func tryStart(_ body: @escaping () -> Void) -> pthread_t? {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { argument in
            let box = Unmanaged<Box>.fromOpaque(argument!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        guard rc == 0 else {
            Unmanaged<Box>.fromOpaque(box).release()
            return nil
        }
        pthread_detach(thread)
        return thread
    }

    /// ``tryStart(_:)`` where a thread must start: stops the process if none can.
    package static func start(_ body: @escaping () -> Void) -> pthread_t {
        guard let thread = tryStart(body) else { preconditionFailure("pthread_create failed") }
        return thread
    }
}
