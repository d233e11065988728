/// How many workers in a row may die before they are ready — before their
/// initializer has finished — within a time window, before a pool stops
/// starting them: a crash loop (an initializer that aborts, a limit too low
/// for a worker to start) ends with ``ProcessError/restartBudgetExceeded(deaths:seconds:last:)``
/// for the work those workers would have run, instead of respawning for ever.
///
/// Only deaths before a worker is ready count, and a worker that becomes
/// ready starts the count again: a task that crashes its worker fails that
/// task alone, as always. A worker that dies before it is ready has run
/// none of its units, so they go to the next worker.
public struct RestartBudget: Sendable, Hashable {
    /// Deaths in a row that end the restarts.
    public var deaths: Int
    /// The window they must fall within.
    public var window: Duration

    /// A budget of `deaths` deaths in a row within `window`.
    public init(deaths: Int, within window: Duration) {
        self.deaths = deaths
        self.window = window
    }

    /// Five deaths in a row within a minute.
    public static let `default` = RestartBudget(deaths: 5, within: .seconds(60))

    func validate() throws(PoolError) {
        guard deaths >= 1 else { throw .invalidArgument("a restart budget needs at least 1 death, not \(deaths)") }
        guard window > .zero else { throw .invalidArgument("a restart budget's window must be positive") }
    }
}
