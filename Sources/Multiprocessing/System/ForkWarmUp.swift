import Glibc
import Synchronization

/// Runs, once per process and before its first fork, the library's code
/// paths that forked children run: framing, encoding and decoding of the
/// messages children exchange, authentication.
///
/// The Swift runtime makes type metadata lazily, under locks and once-flags
/// of its own. A forked child has one thread; if another thread of the
/// parent was making some metadata at the instant of the fork, a child that
/// needs the same metadata waits for ever (seen: children stuck in
/// `swift_getGenericMetadata` and in a metadata once-flag while
/// authenticating). Metadata the parent has already made is simply there in
/// the child. This cannot cover a user's own types; it covers ours.
internal enum ForkWarmUp {
    private static let done = Atomic<Bool>(false)

    static func runOnce() {
        guard !done.exchange(true, ordering: .acquiringAndReleasing) else { return }
        do {
            let (here, there) = try Connection.pipe()
            defer {
                here.close()
                there.close()
            }
            try here.send(1)
            _ = try there.receive(Int.self)
            try here.send("text")
            _ = try there.receive(String.self)
            try here.sendBytes([1, 2, 3])
            _ = try there.receiveBytes()
            try here.sendBytes(head: [1], body: [2])
            _ = try there.receiveBytes()
            // Both sides of authentication, the serving side on a thread of its own.
            let key: [UInt8] = [1, 2, 3, 4]
            let served = Atomic<Bool>(false)
            _ = SystemThread.start {
                _ = try? Authentication.serve(there, key: key)
                served.store(true, ordering: .releasing)
            }
            try? Authentication.client(here, key: key)
            while !served.load(ordering: .acquiring) { sched_yield() }
            poolMessages()
            _ = ChunkRunner.run([1]) { (x: Int) -> Int in x }.wire()
            // Manager messages, both ways.
            _ = try ManagerRequest(decoding: ManagerRequest.fromHere(object: 1, method: "m", arguments: [[1]], timeout: 1).encoded())
            for reply in [ManagerReply.value([1]), .failure(.timedOut)] {
                _ = try ManagerReply(decoding: reply.encoded())
            }
            // A manager channel's rings (a forked client opens its own).
            let ring = try Queue<[UInt8]>(bufferSize: 4096)
            try ring.putEncoded([1])
            _ = try ring.getEncoded(timeout: .zero)
            _ = try Queue<[UInt8]>(sharing: ring.memory)
            ring.close()
        } catch {
            // A warm-up that fails only leaves some metadata to be made later.
        }
    }

    /// Pool messages, both ways (also run by the forkserver for its children).
    static func poolMessages() {
        if let request = try? UnitRequest(kind: .functionChunk, id: 1, typeName: "T", payload: [1], inputs: [2]).wire() {
            _ = try? UnitRequest.decode(request.head + request.body)
        }
        for outcome in [UnitOutcome.values([1], offset: 0), .mixed([.value([1]), .failed(.cancelled)]), .failed(.cancelled)] {
            let (tag, body) = outcome.wire()
            _ = try? UnitReply.decode(UnitReply.head(id: 1, tag: tag) + body)
        }
    }
}
