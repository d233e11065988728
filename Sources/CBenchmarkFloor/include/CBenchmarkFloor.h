#ifndef C_BENCHMARK_FLOOR_H
#define C_BENCHMARK_FLOOR_H

/// The floor under every process benchmark: `count` times fork, `_exit(0)` in
/// the child, `waitpid` in the parent. Returns 0, or -1 with errno set.
int cbf_fork_exit_wait(int count);

#endif
