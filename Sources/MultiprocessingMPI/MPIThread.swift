#if MPI
import CMultiprocessing
import Glibc
import Multiprocessing

/// The one thread of a process that calls MPI. It runs a loop: commands
/// other threads hand it, messages that arrived, the owner's `pump` (what
/// to send now), and sends in progress. MPI gives nothing to block on for
/// a message, so with nothing to do it yields (`sched_yield`: any other
/// runnable thread goes first) for a couple of milliseconds after the last
/// message, then sleeps in growing spells up to a millisecond — woken at
/// once by ``poke()`` — so that an idle rank never busy-spins a core.
final class MPIThread: @unchecked Sendable {  // the fields below `control` are touched only on the MPI thread
    private struct Control {
        var commands: [() -> Void] = []
        var poked = false
    }

    private let control = Monitor(Control())
    /// The communicators probed for messages.
    var communicators: [MPI.Communicator] = []
    /// Handles a message: its arrival, bytes and communicator.
    var onMessage: (MPI.Arrival, [UInt8], MPI.Communicator) -> Void = { _, _, _ in }
    /// Sends what is due; returns whether it did anything.
    var pump: () -> Bool = { false }
    /// Cleared to leave the loop (then sends in progress are finished).
    var running = true
    private var sends: [MPI.Send] = []
    /// The longest idle sleep.
    var longestSleep: Duration = .milliseconds(1)
    /// How long after the last message or send the loop yields rather than sleeps.
    var spinWindow: Duration = .milliseconds(2)

    /// Runs `body` on the MPI thread, soon.
    func perform(_ body: @escaping () -> Void) {
        control.update { control in
            control.commands.append(body)
            control.poked = true
        }
    }

    /// Wakes the loop: something for `pump` to do.
    func poke() {
        control.update { $0.poked = true }
    }

    /// Starts sending `bytes`; on failure, says so on standard error (the
    /// job is ending: MPI errors here are a dead peer).
    func send(_ bytes: [UInt8], to rank: Int32, tag: Int32, on communicator: MPI.Communicator) {
        do {
            sends.append(try MPI.Send(bytes, to: rank, tag: tag, on: communicator))
        } catch {
            MPIRuntime.report("sending to rank \(rank): \(error)")
        }
    }

    /// Sends `value` encoded.
    func send<Value: Encodable>(_ value: Value, to rank: Int32, tag: Int32, on communicator: MPI.Communicator) {
        guard let bytes = try? WireCodec.encode(value) else {
            MPIRuntime.report("a message for rank \(rank) did not encode")
            return
        }
        send(bytes, to: rank, tag: tag, on: communicator)
    }

    /// The loop, on the calling thread (the one that initialized MPI).
    func run() {
        var idle = 0
        var lastBusy = ContinuousClock.now
        while running {
            var busy = false
            let commands = control.withLock { control -> [() -> Void] in
                defer {
                    control.commands = []
                    control.poked = false
                }
                return control.commands
            }
            commands.forEach { $0() }
            busy = !commands.isEmpty
            for communicator in communicators {
                // A handler may disconnect a communicator (spawned ranks that left).
                while running, communicators.contains(communicator), let arrival = try? MPI.probe(communicator) {
                    busy = true
                    do {
                        onMessage(arrival, try MPI.receive(arrival, on: communicator), communicator)
                    } catch {
                        MPIRuntime.report("receiving from rank \(arrival.source): \(error)")
                    }
                }
            }
            if running, pump() { busy = true }
            sends.removeAll { (try? $0.isComplete()) ?? true }
            if busy {
                lastBusy = .now
                idle = 0
                continue
            }
            // A message often follows soon after the last one (a reply to
            // what was just sent): yield for a short while, so that the
            // round trip is not a sleep, then sleep in growing spells.
            if lastBusy.duration(to: .now) < spinWindow {
                sched_yield()
                continue
            }
            idle += 1
            let spell = min(longestSleep, .microseconds(10) * (1 << min(idle, 10)))
            _ = control.wait(until: .now + spell) { control in control.poked ? true : nil }
        }
        finishSends(within: .seconds(10))
    }

    /// Waits until every send in progress is done, at most `limit`.
    func finishSends(within limit: Duration) {
        let deadline = ContinuousClock.now + limit
        while !sends.isEmpty, ContinuousClock.now < deadline {
            sends.removeAll { (try? $0.isComplete()) ?? true }
            if !sends.isEmpty { usleep(100) }
        }
    }
}
#endif
