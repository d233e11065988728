#ifndef C_BENCHMARK_FLOOR_H
#define C_BENCHMARK_FLOOR_H

/// The floor under every process benchmark: `count` times fork, `_exit(0)` in
/// the child, `waitpid` in the parent. Returns 0, or -1 with errno set.
int cbf_fork_exit_wait(int count);

/// The floor under pipe ping-pong: a forked child echoes 8-byte messages on
/// two pipes, `count` round trips. Returns 0, or -1 with errno set.
int cbf_pipe_pingpong(int count);
/// Sets the CPU affinity of every thread of this process: to `cpu` alone,
/// or to every CPU when `cpu` is -1. Children inherit it. Returns 0 or -1.
int cbf_pin_all_threads(int cpu);

/// The floor under a queue of numbers: a forked child puts 0..<count into a
/// single-producer single-consumer ring in shared memory, this process reads
/// them. Returns 0, or -1 (errno set, or a number out of order).
int cbf_shm_ring_ints(int count);

/// The floor under spawn: `count` times start this executable anew and wait;
/// it exits before `main`. Returns 0, or -1 with errno set.
int cbf_spawn_self_exit(int count);

/// Gives memory malloc kept back to the system (between scenarios).
void cbf_trim_heap(void);

#endif
