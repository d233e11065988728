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

#endif

/// Gives memory malloc kept back to the system (between scenarios).
void cbf_trim_heap(void);
