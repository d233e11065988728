import CBenchmarkFloor
import FoundationEssentials
import Multiprocessing

/// Ping-pong of an `Int` with a forked child that echoes it back.
@Sendable func connectionPingPong(_ count: Int) throws {
    let (here, there) = try Connection.pipe()
    let echo = ChildProcess {
        here.close()  // a forked child inherits both ends
        while let value = try? there.receive(Int.self) { try there.send(value) }
    }
    try echo.start()
    there.close()
    for i in 0..<count {
        try here.send(i)
        guard try here.receive(Int.self) == i else { throw BenchmarkFailure(description: "echo mismatch") }
    }
    here.close()
    try echo.join()
}

/// The floor: the same ping-pong with 8-byte `write`/`read` on two raw pipes.
@Sendable func rawPipePingPong(_ count: Int) throws {
    guard cbf_pipe_pingpong(Int32(count)) == 0 else { throw BenchmarkFailure(description: "raw ping-pong failed") }
}

let mebibyte = [UInt8](repeating: 0x78, count: 1 << 20)

/// 1 MiB messages to a forked child that receives and drops them.
@Sendable func connectionBulk(_ count: Int) throws {
    let (here, there) = try Connection.pipe()
    let drain = ChildProcess {
        here.close()  // a forked child inherits both ends
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while (try? buffer.withUnsafeMutableBytes({ try there.receiveBytes(into: $0) })) != nil {}
    }
    try drain.start()
    there.close()
    for _ in 0..<count { try here.sendBytes(mebibyte) }
    here.close()
    try drain.join()
}

let million = Array(0..<1_000_000)

/// Encodes and decodes an array of a million `Int`s.
@Sendable func codecIntArray(_ count: Int) throws {
    for _ in 0..<count {
        let decoded = try WireCodec.decode([Int].self, from: try WireCodec.encode(million))
        guard decoded.count == million.count else { throw BenchmarkFailure(description: "lost elements") }
    }
}

/// The floor: copying the array's bytes twice (out and back), into fresh
/// arrays as encoding and decoding must.
@Sendable func memcpyIntArray(_ count: Int) throws {
    for _ in 0..<count {
        let out = [UInt8](unsafeUninitializedCapacity: million.count * 8) { buffer, initialized in
            million.withUnsafeBytes { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: $0) }
            initialized = million.count * 8
        }
        let back = [Int](unsafeUninitializedCapacity: million.count) { buffer, initialized in
            out.withUnsafeBytes { UnsafeMutableRawBufferPointer(buffer).copyMemory(from: $0) }
            initialized = million.count
        }
        guard back[999_999] == 999_999 else { throw BenchmarkFailure(description: "copy failed") }
    }
}

struct Reading: Codable, Equatable {
    var sensor: Int
    var value: Double
    var label: String
    var ok: Bool
}

let readings = (0..<100_000).map { Reading(sensor: $0, value: Double($0) / 7, label: "s\($0 % 100)", ok: $0 % 2 == 0) }

@Sendable func codecStructs(_ count: Int) throws {
    for _ in 0..<count {
        let decoded = try WireCodec.decode([Reading].self, from: try WireCodec.encode(readings))
        guard decoded.count == readings.count else { throw BenchmarkFailure(description: "lost structs") }
    }
}

@Sendable func jsonStructs(_ count: Int) throws {
    for _ in 0..<count {
        let decoded = try JSONDecoder().decode([Reading].self, from: try JSONEncoder().encode(readings))
        guard decoded.count == readings.count else { throw BenchmarkFailure(description: "lost structs") }
    }
}

let wireScenarios: [Scenario] = [
    Scenario(name: "pipe.pingpong", unit: "round trips", count: 20000, quickCount: 200, baseline: .python("pipe.pingpong"), pinned: true, run: connectionPingPong),
    Scenario(name: "pipe.pingpong.floor", unit: "round trips", count: 20000, quickCount: 200, baseline: .swift("raw pipes", rawPipePingPong), pinned: true, run: connectionPingPong),
    // Unpinned: the two processes on different CPUs, as a pool's caller and
    // its worker mostly are; each message wakes the other side across CPUs.
    // The floor under a round trip to a worker that sleeps between tasks.
    Scenario(name: "pipe.pingpong.cross-cpu", unit: "round trips", count: 20000, quickCount: 200, baseline: .swift("raw pipes", rawPipePingPong), run: connectionPingPong),
    Scenario(name: "pipe.bytes.1MiB", unit: "bytes", count: 1000, quickCount: 20, operationsPerIteration: 1 << 20, baseline: .python("pipe.bytes"), run: connectionBulk),
    Scenario(name: "codec.int-array", unit: "bytes (1M Int, encode+decode)", count: 50, quickCount: 2, operationsPerIteration: 8_000_000, baseline: .swift("memcpy ×2", memcpyIntArray), run: codecIntArray),
    Scenario(name: "codec.structs", unit: "structs (encode+decode)", count: 5, quickCount: 1, operationsPerIteration: 100_000, baseline: .swift("JSONEncoder/Decoder", jsonStructs), run: codecStructs),
]
