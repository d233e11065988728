import Glibc
import Synchronization

/// A one-line progress bar for any pool call, in one argument:
///
/// ```swift
/// let sizes = try pool.map(Resize(), over: images, progress: ProgressBar.terminal(title: "resizing"))
/// // resizing  42% |██████████▌              |  420/1000 [00:03<00:04, 140.0/s]
/// ```
///
/// It is drawn on standard error only when that is a terminal, redrawn in
/// place at most ten times a second, and ends with a summary line once
/// every item has ended (`resizing 100% |…| 1000/1000 [00:07, 142.9/s]`).
/// Where standard error is not a terminal, it draws nothing.
public final class ProgressBar: Sendable {
    private struct State {
        var started: ContinuousClock.Instant?
        var lastDrawn: ContinuousClock.Instant?
        var finished = false
    }

    private let title: String?
    private let width: @Sendable () -> Int
    private let now: @Sendable () -> ContinuousClock.Instant
    private let write: @Sendable (String) -> Void
    private let state = Mutex(State())

    /// A bar drawn with `write`, `width` columns wide, timed by `now`: for
    /// tests and for drawing somewhere else than a terminal.
    init(title: String?, width: @escaping @Sendable () -> Int, now: @escaping @Sendable () -> ContinuousClock.Instant,
         write: @escaping @Sendable (String) -> Void) {
        self.title = title
        self.width = width
        self.now = now
        self.write = write
    }

    /// The `progress:` argument of a pool call that draws this bar on
    /// standard error, when it is a terminal; one that does nothing otherwise.
    public static func terminal(title: String? = nil) -> @Sendable (PoolProgress) -> Void {
        guard isatty(STDERR_FILENO) == 1 else { return { _ in } }
        let bar = ProgressBar(title: title, width: { Syscall.terminalColumns(STDERR_FILENO) ?? 80 }, now: { .now }) { text in
            text.withCString { _ = Glibc.write(STDERR_FILENO, $0, strlen($0)) }
        }
        return bar.update
    }

    /// Draws `progress` (called by the pool as items end).
    @Sendable public func update(_ progress: PoolProgress) {
        let instant = now()
        let done = progress.isTotalKnown && progress.completed >= progress.total
        let draw: (elapsed: Duration, final: Bool)? = state.withLock { state in
            guard !state.finished else { return nil }
            let started = state.started ?? instant
            state.started = started
            if !done, let last = state.lastDrawn, instant - last < .milliseconds(100) { return nil }
            state.lastDrawn = instant
            state.finished = done
            return (instant - started, done)
        }
        guard let draw else { return }
        let line = Self.render(progress, elapsed: draw.elapsed, width: width(), title: title, final: draw.final)
        // Back to the line's start, the line, the rest of the old one cleared.
        write("\r" + line + "\u{1B}[K" + (draw.final ? "\n" : ""))
    }

    /// One line of the bar, `width` columns at most.
    static func render(_ progress: PoolProgress, elapsed: Duration, width: Int, title: String?, final: Bool) -> String {
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let rate = seconds > 0 ? Double(progress.completed) / seconds : 0
        let total = progress.isTotalKnown ? "\(progress.total)" : "\(progress.total)+"
        let count = String(repeating: " ", count: max(0, total.count - "\(progress.completed)".count)) + "\(progress.completed)/\(total)"
        var times = clock(seconds)
        if !final {
            if progress.isTotalKnown && rate > 0 {
                times += "<" + clock(Double(progress.total - progress.completed) / rate)
            } else {
                times += "<?"
            }
        }
        let tail = " \(count) [\(times), \(formatRate(rate))/s]"
        let percent = progress.isTotalKnown ? String(repeating: " ", count: 3 - min(3, "\(Int(progress.fraction * 100))".count)) + "\(Int(progress.fraction * 100))%" : "   ?"
        let head = (title.map { $0 + " " } ?? "") + percent + " "
        let barWidth = width - head.count - tail.count - 2
        guard barWidth >= 4 else { return String((head + tail.dropFirst()).prefix(max(0, width))) }
        return head + "|" + bar(progress.isTotalKnown ? progress.fraction : 0, width: barWidth) + "|" + tail
    }

    /// `fraction` of `width` cells filled, to an eighth of a cell.
    private static func bar(_ fraction: Double, width: Int) -> String {
        let eighths = Int((min(1, max(0, fraction)) * Double(width * 8)).rounded(.down))
        let partials = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"]
        var text = String(repeating: "█", count: eighths / 8)
        if eighths % 8 > 0 { text += partials[eighths % 8] }
        return text + String(repeating: " ", count: width - (eighths / 8) - (eighths % 8 > 0 ? 1 : 0))
    }

    /// `mm:ss`, or `h:mm:ss` past an hour.
    private static func clock(_ seconds: Double) -> String {
        let whole = Int(seconds.isFinite ? seconds.rounded(.down) : 0)
        let (hours, minutes, rest) = (whole / 3600, whole / 60 % 60, whole % 60)
        let two = { (n: Int) in n < 10 ? "0\(n)" : "\(n)" }
        return hours > 0 ? "\(hours):\(two(minutes)):\(two(rest))" : "\(two(minutes)):\(two(rest))"
    }

    /// A rate with one decimal, or with k and M past a thousand.
    private static func formatRate(_ rate: Double) -> String {
        func oneDecimal(_ value: Double) -> String {
            let tenths = Int((value * 10).rounded())
            return "\(tenths / 10).\(tenths % 10)"
        }
        if rate >= 1e6 { return oneDecimal(rate / 1e6) + "M" }
        if rate >= 1e3 { return oneDecimal(rate / 1e3) + "k" }
        return oneDecimal(rate)
    }
}
