#if MPI
import Foundation
import Testing

/// The MPI pool across real ranks: each test runs a scenario of the
/// `MultiprocessingMPIScenarios` executable under `mpirun` (3 ranks on this
/// machine), bounded in time, and judges the lines it printed; then checks
/// that no rank, `orted` or namespace is left.
@Suite("MPI pool", .serialized)
struct MPIPoolTests {
    @Test("across 3 ranks, every chunk size gives the local pool's results for 100,000 items")
    func results() throws {
        let run = try MPIRun.mpirun(["results"])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.lines.contains("ranks 2 processes 4"))
        for chunk in ["1", "7", "auto"] {
            #expect(run.lines.contains("map chunk \(chunk): equal 100000"), "\(run.output)")
        }
        #expect(run.lines.contains("jobs 1000"))
        #expect(run.lines.contains("imap streamed: equal"))
        #expect(run.lines.contains("progress last 1000/1000"))
        #expect(run.lines.last == "done")
    }

    @Test("imap keeps input order and imapUnordered gives completion order, with tasks of different lengths")
    func order() throws {
        let run = try MPIRun.mpirun(["order"])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.lines.contains("imap 4,3,2,1"), "\(run.output)")
        #expect(run.lines.contains("imapUnordered 1,2,3,4"), "\(run.output)")
    }

    @Test("a trap, a throw, a time limit, a cancellation and a SIGKILL of a worker process fail only their unit")
    func faults() throws {
        let run = try MPIRun.mpirun(["faults"])
        #expect(run.status == 0, "\(run.output)")
        // The crash report names the item in the whole call, and what the runtime said on the rank.
        #expect(run.lines.contains("trap: 1 failed, at 13: error the child was killed by SIGILL (a Swift runtime trap: a fatalError, a failed precondition, an index out of range, an arithmetic overflow or a nil unwrapped) running item 13 of MultiprocessingMPIScenarios.TrapOn13: MultiprocessingMPIScenarios/main.swift:32: Precondition failed: thirteen"), "\(run.output)")
        #expect(run.lines.contains("throw: error the job threw MultiprocessingMPIScenarios.Threw: threw on purpose; 9 ok"), "\(run.output)")
        #expect(run.lines.contains("timeout: the task ran past its limit of 0.3 s; its worker was killed"), "\(run.output)")
        #expect(run.lines.contains("cancel: the work was cancelled after less than 10 s"), "\(run.output)")
        #expect(run.lines.contains("task cancel: the work was cancelled"), "\(run.output)")
        #expect(run.lines.contains("kill: error the child was killed by SIGKILL (killed: by the kernel (out of memory), by the pool, or by someone) running MultiprocessingMPIScenarios.KillMe"), "\(run.output)")
        #expect(run.lines.contains("others: [1, 1, 1, 1]"), "\(run.output)")
        #expect(run.lines.contains("after: works"), "\(run.output)")
    }

    @Test("limits, the sandbox and the environment reach every rank's local processes, with the same typed errors")
    func limits() throws {
        let run = try MPIRun.mpirun(["limits"])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.lines.contains("memory: the worker passed its memory limit of 134217728 bytes"), "\(run.output)")
        #expect(run.lines.contains("sandbox: the worker made a call its sandbox denies (noNewProcesses) and was ended"), "\(run.output)")
        #expect(run.lines.contains("environment: set in /tmp"), "\(run.output)")
        #expect(!run.lines.contains("square: wrong"), "\(run.output)")
    }

    @Test("retries and a soft timeout's grace period reach every rank's local pool")
    func retriesAndGrace() throws {
        let run = try MPIRun.mpirun(["retries"])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.lines.contains("retried: 42"), "\(run.output)")
        // A timeout ends the worker too, so the unit ran twice, each time asked to stop and cleaning up.
        let timedOut = "the task ran past its limit of 0.3 s; its worker was killed"
        #expect(run.lines.contains("grace: the task failed all 2 attempts: \(timedOut); \(timedOut); cleaned up: true"), "\(run.output)")
    }

    @Test("pools follow one another on the same ranks; a second pool at once is refused; a terminated pool takes no work")
    func sessions() throws {
        let run = try MPIRun.mpirun(["sessions"])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.lines.contains("second: another MPIPool of this process is running: the worker ranks serve one pool at a time"), "\(run.output)")
        #expect(run.lines.contains("first: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"))
        #expect(run.lines.contains("then: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81] processes 4"))
        #expect(run.lines.contains("terminated: the pool is closed or terminated"), "\(run.output)")
    }

    @Test("a whole worker rank SIGKILLed ends the job within seconds, non-zero, naming the rank, leaving nothing")
    func rankKilled() throws {
        let started = Date()
        let run = try MPIRun.mpirun(["kill-rank"], expectFailure: true)
        #expect(Date().timeIntervalSince(started) < 30)
        #expect(run.status != 0)
        #expect(run.lines.contains { $0.hasPrefix("killing rank process") }, "\(run.output)")
        #expect(!run.lines.contains("unreachable: the job went on"))
        #expect(run.output.contains("process rank 1") && run.output.contains("exited on signal 9"), "\(run.output)")
    }

    @Test("rank 0 SIGKILLed ends the job within seconds, non-zero, naming it, leaving no worker rank or local process")
    func masterKilled() throws {
        let started = Date()
        let run = try MPIRun.mpirun(["kill-master"], expectFailure: true)
        #expect(Date().timeIntervalSince(started) < 30)
        #expect(run.status != 0)
        #expect(run.lines.contains("killing rank 0"), "\(run.output)")
        #expect(run.output.contains("process rank 0") && run.output.contains("exited on signal 9"), "\(run.output)")
    }

    @Test("ranks of another build are refused with a typed error on rank 0, and every rank exits cleanly")
    func mismatch() throws {
        let other = try MPIRun.copyWithOtherBuildID()
        defer { unlink(other) }
        let run = try MPIRun.mpirun(["-n", "1", MPIRun.scenarios, "mismatch", ":", "-n", "2", other, "mismatch"], raw: true, others: [other])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.lines.contains { $0.hasPrefix("mismatch: rank 1 runs another build") && $0.hasSuffix("the pool was refused and the worker ranks left") }, "\(run.output)")
        #expect(run.output.components(separatedBy: "rank 0 refused this rank").count - 1 == 2, "\(run.output)")
    }

    @Test("a program started alone spawns its worker ranks (MPI_Comm_spawn)")
    func spawned() throws {
        let run = try MPIRun.alone(["spawned"])
        #expect(run.status == 0, "\(run.output)")
        #expect(run.lines.contains("spawned ranks 2 processes 2"), "\(run.output)")
        #expect(run.lines.contains("spawned map: equal"), "\(run.output)")
    }

    @Test("two hosts (network namespaces joined by a veth): ranks on both, the traffic crossed the veth")
    func twoHosts() throws {
        let hosts = try #require(try TwoHosts.up(), "network namespaces cannot be made here (not root, or no iproute2)")
        defer { hosts.down() }
        let before = try hosts.vethBytes()
        let run = try hosts.mpirun(["hosts"])
        let after = try hosts.vethBytes()
        #expect(run.status == 0, "\(run.output)")
        // Rank 0 (host A) runs no units: both worker ranks are on host B.
        #expect(run.lines.contains("hosts \(hosts.prefix)-hostB"), "\(run.output)")
        #expect(run.lines.contains("hosts map: equal"), "\(run.output)")
        // 20,000 inputs and outputs crossed: far more than the start-up's few KiB.
        #expect(after.received - before.received > 100_000 && after.sent - before.sent > 100_000, "veth bytes \(before) → \(after)")
    }
}
#endif
