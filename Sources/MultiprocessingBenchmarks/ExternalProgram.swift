import Glibc

/// Runs another program (python3, mpirun, a script) and reads its standard
/// output: `posix_spawnp` and a pipe (the benchmarks start one program at a time), so that the benchmarks need no
/// Foundation `Process` — and so no full Foundation, whose loading would
/// otherwise be measured in every row that starts this executable anew
/// (`process.spawn`, the forkserver).
enum ExternalProgram {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Runs `arguments` (the first found on `PATH`) with this environment
    /// changed by `setting`; its standard output is read to the end when
    /// `capturingOutput`, else thrown away. Returns its exit status (128 +
    /// the signal if one ended it) and what it wrote.
    static func run(_ arguments: [String], setting: [String: String] = [:], capturingOutput: Bool = true) throws -> (status: Int32, output: [UInt8]) {
        var pipe: [Int32] = [-1, -1]
        guard Glibc.pipe(&pipe) == 0 else { throw Failure(description: "pipe: errno \(errno)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if capturingOutput {
            posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        posix_spawn_file_actions_addclose(&actions, pipe[0])
        posix_spawn_file_actions_addclose(&actions, pipe[1])
        var environment: [String] = []
        var index = 0
        while let entry = environ[index] {
            let text = String(cString: entry)
            let name = text.split(separator: "=", maxSplits: 1).first.map(String.init) ?? text
            if setting[name] == nil { environment.append(text) }
            index += 1
        }
        environment += setting.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let spawned = withCStrings(arguments) { argv in
            withCStrings(environment) { envp in posix_spawnp(&pid, arguments[0], &actions, nil, argv, envp) }
        }
        close(pipe[1])
        guard spawned == 0 else {
            close(pipe[0])
            throw Failure(description: "posix_spawnp \(arguments[0]): errno \(spawned)")
        }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(pipe[0], $0.baseAddress, $0.count) }
            if count > 0 {
                output += chunk[..<count]
            } else if count == 0 || errno != EINTR {
                break
            }
        }
        close(pipe[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = status & 0x7f == 0
        return (exited ? (status >> 8) & 0xff : 128 + (status & 0x7f), output)
    }

    /// `strings` as a NULL-terminated array of C strings, for the span of `body`.
    private static func withCStrings<R>(_ strings: [String], _ body: ([UnsafeMutablePointer<CChar>?]) -> R) -> R {
        let pointers = strings.map { strdup($0) } + [nil]
        defer { pointers.forEach { free($0) } }
        return body(pointers)
    }
}
