import Synchronization
import Testing
@testable import Multiprocessing

/// A clock that moves only when told, and what a bar wrote.
private final class FakeTerminal: Sendable {
    let base = ContinuousClock.now
    let offset = Mutex<Duration>(.zero)
    let written = Mutex<[String]>([])

    func advance(to time: Duration) { offset.withLock { $0 = time } }

    func bar(title: String? = nil, width: Int = 80) -> ProgressBar {
        ProgressBar(title: title, width: { width }, now: { [self] in base + offset.withLock { $0 } }, write: { [self] text in written.withLock { $0.append(text) } })
    }
}

@Suite("The terminal progress bar")
struct ProgressBarTests {
    @Test("a line fills its width: title, percent, bar to an eighth of a cell, count, elapsed<left and rate")
    func rendering() {
        let line = ProgressBar.render(PoolProgress(completed: 420, total: 1000), elapsed: .seconds(3), width: 80, title: "resizing", final: false)
        #expect(line.count == 80)
        #expect(line.hasPrefix("resizing  42% |"))
        #expect(line.hasSuffix("|  420/1000 [00:03<00:04, 140.0/s]"))
        let cells = line.split(separator: "|")[1]
        #expect(cells.count == 80 - "resizing  42% ".count - "  420/1000 [00:03<00:04, 140.0/s]".count - 2)
        #expect(cells.filter { $0 == "█" }.count == Int(0.42 * Double(cells.count)))
        // The summary line: no time left; rates in k.
        #expect(ProgressBar.render(PoolProgress(completed: 5000, total: 5000), elapsed: .seconds(2), width: 60, title: nil, final: true)
            .hasSuffix("| 5000/5000 [00:02, 2.5k/s]"))
        // An input still being read: no percentage, no time left.
        let open = ProgressBar.render(PoolProgress(completed: 5, total: 7, isTotalKnown: false), elapsed: .seconds(1), width: 50, title: nil, final: false)
        #expect(open.hasPrefix("   ? |     "))
        #expect(open.hasSuffix("|  5/7+ [00:01<?, 5.0/s]"))
        // Too narrow for a bar: the numbers, cut to the width.
        #expect(ProgressBar.render(PoolProgress(completed: 1, total: 2), elapsed: .seconds(3661), width: 30, title: nil, final: false).count <= 30)
        #expect(ProgressBar.render(PoolProgress(completed: 1, total: 2), elapsed: .seconds(3661), width: 120, title: nil, final: false).contains("[1:01:01<1:01:01, 0.0/s]"))
    }

    @Test("redrawn in place at most ten times a second, then one summary line, then nothing")
    func redrawing() {
        let terminal = FakeTerminal()
        let bar = terminal.bar(title: "t", width: 40)
        bar.update(PoolProgress(completed: 1, total: 10))
        terminal.advance(to: .milliseconds(50))
        bar.update(PoolProgress(completed: 2, total: 10))  // too soon: not drawn
        terminal.advance(to: .milliseconds(200))
        bar.update(PoolProgress(completed: 3, total: 10))
        terminal.advance(to: .milliseconds(210))
        bar.update(PoolProgress(completed: 10, total: 10))  // the end is always drawn
        terminal.advance(to: .seconds(5))
        bar.update(PoolProgress(completed: 10, total: 10))
        let written = terminal.written.withLock { $0 }
        #expect(written.count == 3)
        #expect(written.allSatisfy { $0.hasPrefix("\r") && $0.contains("\u{1B}[K") })
        #expect(written[0].contains(" 1/10 ") && written[1].contains(" 3/10 "))
        #expect(written[2].hasSuffix("\u{1B}[K\n") && written[2].contains("10/10 [00:00, 47.6/s]"))
        #expect(!written[0].hasSuffix("\n") && !written[1].hasSuffix("\n"))
    }

    @Test("a map given a bar's update draws it to its summary line")
    func withAMap() throws {
        let terminal = FakeTerminal()
        let bar = terminal.bar()
        try withProcessPool(processes: 2) { (pool: ProcessPool) throws -> Void in
            #expect(try pool.map(SquareFunction(), over: 0..<100, chunkSize: 10, progress: bar.update).count == 100)
        }
        let written = terminal.written.withLock { $0 }
        #expect(written.last?.hasSuffix("\n") == true)
        #expect(written.last?.contains("100/100") == true)
        #expect(written.last?.contains("100% |████") == true)
    }

    @Test("with standard error not a terminal (a pipe), the built-in bar draws nothing")
    func notATerminal() async {
        let result = await #expect(processExitsWith: .success, observing: [\.standardErrorContent]) {
            let progress = ProgressBar.terminal(title: "x")
            for done in 0...3 { progress(PoolProgress(completed: done, total: 3)) }
        }
        #expect(result?.standardErrorContent.contains(UInt8(ascii: "\r")) == false)
        #expect(result.map { String(decoding: $0.standardErrorContent, as: UTF8.self).contains("3/3") } == false)
    }
}

@Suite("The pool's relay of a worker's output")
struct OutputRelayTests {
    @Test("the runtime's message is kept however long the stack trace after it; lines cut across reads arrive whole")
    func relayKeepsTheMessage() throws {
        let output = try Syscall.pipe()
        let pipe = try Syscall.pipe()
        let relay = OutputRelay(source: pipe.readEnd, destination: output.writeEnd.rawValue, prefix: "W")
        func send(_ text: String) throws {
            _ = try Array(text.utf8).withUnsafeBytes { try Syscall.write(pipe.writeEnd, $0) }
        }
        try send("before\nSwift/Array.swift:1: Fatal error: Index out of range\nCurrent stack trace:\n")
        for frame in 0..<40 { try send("\(frame) libswiftCore.so 0x0 frame\n") }
        try send("half a li")
        relay.drain()
        try send("ne\n")
        relay.drain()
        Syscall.close(pipe.writeEnd)
        // A fork made by another test at this moment holds a copy of the write
        // end until its child closes what it does not keep: EOF may come late.
        #expect(eventually(within: .seconds(30)) { relay.drain(); return relay.ended })
        #expect(relay.runtimeMessage == "Swift/Array.swift:1: Fatal error: Index out of range")
        // The stack after it, to 64 frames; the lines after the stack are not frames.
        #expect(relay.runtimeBacktrace == (0..<40).map { "\($0) libswiftCore.so 0x0 frame" })
        relay.close()
        Syscall.close(output.writeEnd)
        var bytes = [UInt8](repeating: 0, count: 1 << 16)
        let count = try bytes.withUnsafeMutableBytes { try Syscall.read(output.readEnd, into: $0) }
        Syscall.close(output.readEnd)
        let lines = String(decoding: bytes[..<count], as: UTF8.self).split(separator: "\n")
        #expect(lines.count == 44)
        #expect(lines.allSatisfy { $0.hasPrefix("[W] ") })
        #expect(lines.last == "[W] half a line")
    }
}
