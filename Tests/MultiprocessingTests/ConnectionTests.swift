import Foundation
import Testing

@testable import Multiprocessing

/// Sends a name on the connection it was given (the seed's producer).
struct Producer: ProcessJob {
    var connection: Connection
    var name: String
    func run() throws -> Bool {
        try connection.send(name)
        connection.close()
        return true
    }
}

/// Receives one value and returns it (the seed's consumer).
struct Consumer: ProcessJob {
    var connection: Connection
    func run() throws -> String {
        try connection.receive(String.self)
    }
}

/// Echoes values back until the peer closes.
struct Echo: ProcessJob {
    var connection: Connection
    func run() throws -> Int {
        var count = 0
        while true {
            do {
                let bytes = try connection.receiveBytes()
                try connection.sendBytes(bytes)
                count += 1
            } catch WireError.endOfFile {
                return count
            }
        }
    }
}

@Suite("Pipes and connections")
struct ConnectionTests {
    @Test("a duplex pipe carries values and bytes both ways")
    func duplex() throws {
        let (a, b) = try Connection.pipe()
        try a.send(WireTests.sample)
        #expect(try b.receive(Nested.self) == WireTests.sample)
        try b.sendBytes([1, 2, 3])
        try b.sendBytes([UInt8]())
        #expect(try a.receiveBytes() == [1, 2, 3])
        #expect(try a.receiveBytes() == [])
        let big = [UInt8]((0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        let sender = Thread { try? a.sendBytes(big) }
        sender.start()
        #expect(try b.receiveBytes() == big)
    }

    @Test("numbers cross by their short cut; a message that is not one is a typed error and the next still arrives")
    func numbers() throws {
        let (here, there) = try Connection.pipe()
        defer { here.close(); there.close() }
        let values = [0, -1, Int.max, Int.min, 300, -(1 << 50)]
        for value in values { try here.send(value) }
        for value in values { #expect(try there.receive(Int.self) == value) }
        try here.sendBytes([7, 1, 0x78])  // a one-letter String: short, but no number
        try here.sendBytes([3, 0x80])  // a varint cut short
        try here.send("a String too long for a number")
        try here.send(42)
        for _ in 0..<3 { #expect(throws: WireError.self) { try there.receive(Int.self) } }
        #expect(try there.receive(Int.self) == 42)
    }

    @Test("a one-way pipe refuses the wrong direction")
    func oneWay() throws {
        let (reader, writer) = try Connection.pipe(duplex: false)
        #expect(throws: ConnectionError.notWritable) { try reader.send(1) }
        #expect(throws: ConnectionError.notReadable) { try writer.receive(Int.self) }
        try writer.send(5)
        #expect(try reader.receive(Int.self) == 5)
    }

    @Test("the seed's Pipe program: a producer sends 'scott', a consumer prints it", arguments: jobStartMethods)
    func producerConsumer(method: StartMethod) throws {
        let (consumerEnd, producerEnd) = try Connection.pipe()
        let producer = try ChildProcess(job: Producer(connection: producerEnd, name: "scott"), startMethod: method)
        let consumer = try ChildProcess(job: Consumer(connection: consumerEnd), startMethod: method)
        try producer.start()
        try consumer.start()
        producerEnd.close()
        consumerEnd.close()
        #expect(try producer.join() == 0)
        #expect(try consumer.join() == 0)
        #expect(try consumer.output(as: String.self) == "scott")
    }

    @Test("a connection passed to a child by every start method echoes, and EOF ends it", arguments: jobStartMethods)
    func echoChild(method: StartMethod) throws {
        let (here, there) = try Connection.pipe()
        let echo = try ChildProcess(job: Echo(connection: there), startMethod: method)
        try echo.start()
        there.close()
        for round in 0..<50 {
            let message = [UInt8](repeating: UInt8(round), count: round * 100)
            try here.sendBytes(message)
            #expect(try here.receiveBytes() == message)
        }
        here.close()
        #expect(try echo.join() == 0)
        #expect(try echo.output(as: Int.self) == 50)
    }

    @Test("a peer that closes gives a typed end of file")
    func endOfFile() throws {
        let (a, b) = try Connection.pipe()
        try a.send("last")
        a.close()
        #expect(try b.receive(String.self) == "last")
        #expect(throws: WireError.endOfFile) { try b.receive(String.self) }
        #expect(throws: ConnectionError.closed) { try a.send(1) }
    }

    @Test("truncated frames, absurd lengths and random bytes are typed errors, without allocating the claim")
    func badFrames() throws {
        do {
            let (a, b) = try Connection.pipe()
            try a.sendRaw(Frame.header(for: 1000) + [1, 2, 3])
            a.close()
            #expect(throws: WireError.truncated(expected: 1000, received: 3)) { try b.receiveBytes() }
        }
        do {
            // Claims 1 TiB: refused from the header alone.
            let (a, b) = try Connection.pipe()
            try a.sendRaw(Frame.header(for: 1 << 40))
            #expect(throws: WireError.frameTooLarge(claimed: 1 << 40, limit: Frame.maximumLength)) { try b.receiveBytes() }
        }
        do {
            // Claims 8 GiB but sends 10 bytes: storage grows only as bytes arrive.
            let (a, b) = try Connection.pipe()
            try a.sendRaw(Frame.header(for: 8 << 30) + [UInt8](repeating: 9, count: 10))
            a.close()
            #expect(throws: WireError.truncated(expected: 8 << 30, received: 10)) { try b.receiveBytes() }
        }
        var random = SplitMix(state: 42)
        for _ in 0..<500 {
            let (a, b) = try Connection.pipe()
            let noise = (0..<Int.random(in: 1..<40, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            try a.sendRaw(Frame.encode(noise))
            a.close()
            do {
                _ = try b.receive(Nested.self)
                Issue.record("noise decoded")
            } catch is WireError {
            }
        }
    }

    @Test("a buffer too small is refused and the message stays queued")
    func receiveInto() throws {
        let (a, b) = try Connection.pipe()
        try a.sendBytes([UInt8](repeating: 7, count: 100))
        var small = [UInt8](repeating: 0, count: 10)
        #expect(throws: ConnectionError.bufferTooSmall(needed: 100)) {
            try small.withUnsafeMutableBytes { try b.receiveBytes(into: $0) }
        }
        #expect(throws: ConnectionError.bufferTooSmall(needed: 100)) { try b.receiveBytes(maxLength: 99) }
        var large = [UInt8](repeating: 0, count: 200)
        let count = try large.withUnsafeMutableBytes { try b.receiveBytes(into: $0) }
        #expect(count == 100)
        #expect(large.prefix(100).allSatisfy { $0 == 7 })
    }

    @Test("poll waits at most its timeout and sees data and end of file")
    func poll() throws {
        let (a, b) = try Connection.pipe()
        let start = ContinuousClock.now
        #expect(try b.poll(timeout: .milliseconds(100)) == false)
        #expect(ContinuousClock.now - start >= .milliseconds(100))
        try a.send(1)
        #expect(try b.poll() == true)
        _ = try b.receive(Int.self)
        #expect(try b.poll() == false)
        a.close()
        // A child forked meanwhile by another test inherits every descriptor,
        // this write end too, and holds it until it ends: EOF comes then.
        #expect(eventually(within: .seconds(20)) { (try? b.poll()) == true })
    }

    @Test("wait returns the connections and processes that are ready")
    func waitForMany() throws {
        let pairs = try (0..<4).map { _ in try Connection.pipe() }
        let sleeper = try ChildProcess(job: Crash(kind: .sleep), startMethod: .fork)
        try sleeper.start()
        var ready = try Connection.wait(pairs.map(\.1), processes: [sleeper], timeout: .milliseconds(50))
        #expect(ready.connections.isEmpty && ready.processes.isEmpty)
        try pairs[2].0.send("x")
        ready = try Connection.wait(pairs.map(\.1), processes: [sleeper], timeout: .seconds(10))
        #expect(ready.connections.map(\.fileDescriptor) == [pairs[2].1.fileDescriptor])
        try sleeper.kill()
        ready = try Connection.wait([pairs[0].1], processes: [sleeper], timeout: .seconds(10))
        #expect(ready.processes.count == 1)
        #expect(sleeper.exitCode == -SIGKILL)
    }

    @Test("async receive waits without blocking and can be cancelled")
    func asyncReceive() async throws {
        let (a, b) = try Connection.pipe()
        let receiver = Task { try await b.receive(String.self) }
        try await Task.sleep(for: .milliseconds(20))
        try await Task.detached { try a.send("hello") }.value
        #expect(try await receiver.value == "hello")
        let cancelled = Task { try await b.receive(String.self) }
        cancelled.cancel()
        await #expect(throws: CancellationError.self) { try await cancelled.value }
    }

    @Test("a connection cannot be encoded outside a job")
    func encodeOutsideJob() throws {
        let (a, _) = try Connection.pipe()
        #expect(throws: EncodingError.self) { try ValueCodec.encode(a) }
    }
}
