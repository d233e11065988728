import Foundation
import SystemPackage
import Testing

@testable import Multiprocessing

/// Connects to a listener from a child process and sends a greeting.
struct Dial: ProcessJob {
    var address: ConnectionAddress
    var key: [UInt8]?
    func run() throws -> Bool {
        let connection = try Client.connect(to: address, authenticationKey: key)
        try connection.send("hello from \(currentProcess().pid)")
        return try connection.receive(Bool.self)
    }
}

/// Runs `body` on a thread of its own and hands back its result.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) -> () throws -> T {
    let result = Locked<Result<T, any Error>?>(nil)
    let done = DispatchSemaphore(value: 0)
    Thread {
        let value = Result { try body() }
        result.withLock { $0 = value }
        done.signal()
    }.start()
    return {
        done.wait()
        return try result.withLock { $0! }.get()
    }
}

/// Accepts one connection on a thread of its own; true if it was refused
/// for failing authentication.
func refusal(by listener: Listener) -> () throws -> Bool {
    onThread {
        do {
            _ = try listener.accept()
            return false
        } catch ConnectionError.authenticationFailed {
            return true
        }
    }
}

@Suite("Listener and Client")
struct ListenerTests {
    @Test("a client reaches a listener at a fresh abstract Unix address")
    func unixRoundTrip() throws {
        let listener = try Listener()
        defer { listener.close() }
        guard case let .unix(path) = listener.address else { Issue.record("not a Unix address"); return }
        #expect(path.hasPrefix("@"))
        let server = onThread { () throws -> Int in
            let connection = try listener.accept()
            let value = try connection.receive(Int.self)
            try connection.send(value + 1)
            return value
        }
        let client = try Client.connect(to: listener.address)
        try client.send(41)
        #expect(try client.receive(Int.self) == 42)
        #expect(try server() == 41)
    }

    @Test("a Unix socket file is removed when the listener closes")
    func unixFile() throws {
        let path = NSTemporaryDirectory() + "mp-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let listener = try Listener(address: .unix(path))
        #expect(FileManager.default.fileExists(atPath: path))
        listener.close()
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("over loopback TCP, the right key is let in, a wrong one refused, and the listener serves on")
    func authentication() throws {
        let key = Array("secret key".utf8)
        let listener = try Listener(address: .tcp(host: "127.0.0.1", port: 0), authenticationKey: key)
        defer { listener.close() }
        guard case let .tcp(_, port) = listener.address, port != 0 else { Issue.record("no port"); return }

        let refused = refusal(by: listener)
        #expect(throws: ConnectionError.authenticationFailed) {
            _ = try Client.connect(to: listener.address, authenticationKey: Array("wrong".utf8))
        }
        #expect(try refused())

        let accepted = onThread { () throws -> String in
            let connection = try listener.accept()
            return try connection.receive(String.self)
        }
        let client = try Client.connect(to: listener.address, authenticationKey: key)
        try client.send("let in")
        #expect(try accepted() == "let in")
    }

    @Test("a client that sends garbage instead of answering is refused without a hang")
    func garbageClient() throws {
        let listener = try Listener(authenticationKey: [1, 2, 3])
        defer { listener.close() }
        let refused = refusal(by: listener)
        let raw = try Client.connect(to: listener.address)
        _ = try raw.receiveBytes()  // the challenge
        try raw.sendRaw(Frame.header(for: 1 << 30))  // claims 1 GiB
        #expect(try refused())
        #expect(throws: WireError.self) { _ = try raw.receiveBytes() }
    }

    @Test("a child process connects with the key, by every start method", arguments: jobStartMethods)
    func childClient(method: StartMethod) throws {
        let key: [UInt8] = Array("k".utf8)
        let listener = try Listener(authenticationKey: key)
        defer { listener.close() }
        let child = try ChildProcess(job: Dial(address: listener.address, key: key), startMethod: method)
        try child.start()
        let connection = try listener.accept()
        let greeting = try connection.receive(String.self)
        #expect(greeting == "hello from \(child.pid!)")
        try connection.send(true)
        #expect(try child.join() == 0)
        #expect(try child.output(as: Bool.self))
    }

    @Test("async accept waits without blocking")
    func asyncAccept() async throws {
        let listener = try Listener()
        defer { listener.close() }
        let address = listener.address
        let dialer = Task.detached { () throws -> Void in
            let client = try Client.connect(to: address)
            try client.send(7)
        }
        let connection = try await listener.accept()
        #expect(try await connection.receive(Int.self) == 7)
        try await dialer.value
    }

    @Test("nobody listening and a bad address are typed errors")
    func badAddresses() throws {
        #expect(throws: Errno.connectionRefused) { _ = try Client.connect(to: .unix("@swift-multiprocessing-nobody-\(getpid())")) }
        #expect(throws: ConnectionError.invalidAddress("no.such.host.invalid:1")) {
            _ = try Client.connect(to: .tcp(host: "no.such.host.invalid", port: 1))
        }
        #expect(throws: ConnectionError.self) { _ = try Listener(address: .unix(String(repeating: "x", count: 200))) }
    }
}
