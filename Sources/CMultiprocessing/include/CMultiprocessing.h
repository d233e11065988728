#ifndef C_MULTIPROCESSING_H
#define C_MULTIPROCESSING_H

#include <sys/types.h>
#include <stdint.h>
#include <pthread.h>
#include <semaphore.h>
#include <time.h>

/// Environment variable that marks a re-executed image as a spawned worker;
/// its value is the descriptor number of the bootstrap channel.
#define CMP_BOOTSTRAP_ENV "SWIFT_MULTIPROCESSING_BOOTSTRAP"

/// The bootstrap channel's descriptor number in a spawned child.
#define CMP_BOOTSTRAP_FD 3

/// `pidfd_open(2)`: returns a close-on-exec pidfd or -1 with errno set.
int cmp_pidfd_open(pid_t pid);

/// `pidfd_send_signal(2)`.
int cmp_pidfd_send_signal(int pidfd, int sig);

/// `waitid(P_PIDFD, ...)`, converted to Python's exit-code convention.
/// Returns 1 and stores the exit code (negative signal number when killed) if
/// the process has ended and was reaped, 0 if it is still running (only when
/// `nohang` is set), and -1 with errno set on failure.
int cmp_waitid_pidfd(int pidfd, int nohang, int *exit_code);

/// `waitpid(pid, ..., WNOHANG)` for any child; returns the pid reaped (with its
/// exit code in Python's convention), 0 if none, -1 with errno set.
pid_t cmp_reap_any(int *exit_code);

/// This process's id without a system call (refreshed in forked children).
pid_t cmp_current_pid(void);

/// `fork(2)` after flushing stdout and stderr. If `death_signal` is not 0,
/// the child clears its signal mask, sets `PR_SET_PDEATHSIG` to it and exits
/// at once if the parent is already gone. Returns like `fork`.
pid_t cmp_fork(int death_signal);

/// Outcomes of `cmp_fork_quiesced`.
enum {
    /// Every other thread was parked holding no lock at the fork.
    CMP_QUIESCE_STOPPED = 0,
    /// A thread did not answer the park signal (it blocks it, or is stuck in
    /// the kernel): forked without stopping the others.
    CMP_QUIESCE_UNSTOPPABLE = 1,
    /// Some thread held a lock (or ran a lazy global's initializer) until the
    /// budget ran out: forked without stopping the others.
    CMP_QUIESCE_BUSY = 2,
    /// The fork waited past the watchdog for a lock a parked thread held
    /// (the C library's), so the threads were let go before it completed.
    CMP_QUIESCE_RELEASED_EARLY = 3,
    /// The park signal's handler could not be installed.
    CMP_QUIESCE_FAILED = 4,
};

typedef struct {
    int outcome;
    /// Threads parked at the fork.
    int threads;
    /// Threads blocked in one of the library's own waits at the fork,
    /// counted as parked without a signal (cmp_word_event_wait, cmp_safe_cond_wait).
    int waiting;
    /// Threads that held, took and ran nothing when looked at: not
    /// signalled (one that came to take a lock waited until the fork was done).
    int quiet;
    /// Threads asked again: found in the C library's code, or still
    /// holding a lock a while after they were first asked.
    int retries;
    /// Threads that held a lock when asked and parked as they let go of it.
    int deferred;
    /// Rounds given up (every thread let go a moment) before the last.
    int restarts;
    /// At a round given up: threads still holding a lock.
    int deferred_at_end;
    /// With CMP_QUIESCE_UNSTOPPABLE: a thread that did not answer.
    pid_t unstoppable_thread;
    /// Whether this process's locks are counted (lock_tracking.c): not under
    /// ThreadSanitizer, nor with a static C library or Swift runtime.
    int lock_tracking;
    /// Time spent stopping the others, in nanoseconds.
    long long elapsed_ns;
} cmp_quiesce_report_t;

/// `cmp_fork`, with every other thread of the process parked at an instant
/// when it holds no lock (see quiesce.c and lock_tracking.c), so that the
/// child inherits none of the runtime's locks held. Gives up after
/// `budget_ns` and forks anyway (the report says why). Returns like `fork`.
pid_t cmp_fork_quiesced(int death_signal, long long budget_ns, long long watchdog_ns, cmp_quiesce_report_t *report);

/// How many times, so far in this process, a thread asked to park answered
/// that it held a lock (and parked later, as it let go). For tests.
uint32_t cmp_quiesce_deferrals(void);

/// Forks and executes `path` with `argv` and `envp`. In the child, the
/// descriptors in `fds` become 3, 4, … (all others close on exec), the signal
/// mask is cleared and `PR_SET_PDEATHSIG` is set. Returns the child's pid, or
/// -1 with errno set (including the child's `execve` errno).
pid_t cmp_fork_exec(const char *path, char *const argv[], char *const envp[],
                    const int *fds, int nfds, int death_signal);

/// In a forked child: moves the descriptors in `keep` to 3, 4, … and closes
/// every other descriptor from 3 on. Returns 0, or -1 with errno set.
int cmp_isolate_descriptors(const int *keep, int nkeep);

/// Closes every descriptor from 3 on except those in `keep`. Returns 0, or
/// -1 with errno set.
int cmp_close_all_except(const int *keep, int nkeep);

/// Sends `len` bytes with `MSG_NOSIGNAL` and the descriptors in `fds` as
/// `SCM_RIGHTS`. Returns bytes sent or -1 with errno set.
ssize_t cmp_send_with_fds(int socket, const void *buf, size_t len,
                          const int *fds, int nfds);

/// Receives up to `len` bytes and up to `max_fds` descriptors (made
/// close-on-exec). Stores the number of descriptors received in `nfds`.
ssize_t cmp_recv_with_fds(int socket, void *buf, size_t len, int *fds,
                          int max_fds, int *nfds);

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`: orphaned descendants come back to this process.
int cmp_set_child_subreaper(void);

/// `prctl(PR_SET_PDEATHSIG, sig)`.
int cmp_set_parent_death_signal(int sig);

/// Flushes stdio and leaves with `_exit(code)`: no atexit handlers run.
void cmp_exit_now(int code) __attribute__((noreturn));

/// `flockfile` on stdout and stderr: held across a fork so that the child
/// never inherits them locked by a thread it does not have.
void cmp_lock_stdio(void);
/// `funlockfile` on stdout and stderr.
void cmp_unlock_stdio(void);

/// Flushes stdout and stderr (not every stream: another's lock may be held
/// by a thread blocked in `fread`, or by one a fork left behind).
void cmp_flush_stdio(void);

/// Makes C's `stdout` write each line as it ends (`setvbuf(_IOLBF)`), even to a pipe.
void cmp_line_buffer_stdout(void);

/// The columns of the terminal `fd` is (`ioctl(TIOCGWINSZ)`); -1 (errno set) if it is none.
int cmp_terminal_columns(int fd);

/// Number of CPUs in this process's affinity mask, or -1.
int cmp_affinity_cpu_count(void);
/* Bytes of the heap in use (mallinfo2's uordblks): what leak tests watch. */
size_t cmp_heap_in_use(void);

/// Memory barrier-free `raise` used by tests to crash on purpose.
void cmp_segfault(void) __attribute__((noreturn));

/// Sets `SIGPIPE` to ignored if it is at its default (as CPython does at
/// start-up), so that a write to a closed pipe fails with `EPIPE` instead of
/// killing the process. A handler someone installed is left alone.
void cmp_ignore_sigpipe_if_default(void);

/// Puts the fault signals (SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE,
/// SIGSEGV, and SIGXCPU, a CPU-time limit reached) back to their default
/// action: the process dies at once, without the Swift runtime's backtracer.
void cmp_default_fault_signals(void);

/// Makes SIGTERM set a flag (`cmp_stop_requested`) instead of ending the
/// process: a pool worker whose task is asked to stop (SA_RESTART).
void cmp_handle_stop_requests(void);

/// Whether SIGTERM arrived since `cmp_handle_stop_requests`.
int cmp_stop_requested(void);

/// The exit status of a sandboxed worker that opened a network socket,
/// when violations kill.
#define CMP_SANDBOX_NETWORK_STATUS 250

/// Sets `no_new_privs` and installs a seccomp filter on every thread of
/// the process (and those they make): `deny_processes` refuses exec and
/// every clone that is not a thread, `deny_network` every socket but
/// AF_UNIX. A denied call fails with EPERM, or — `kill_on_violation` —
/// ends the process: SIGSYS for a new process, the status above for a
/// socket (SIGSYS too if that signal is blocked or its handler replaced).
/// -1 with errno on failure (ENOTSUP on an architecture it does not know).
int cmp_install_sandbox(int deny_processes, int deny_network, int kill_on_violation);

/// `sched_setaffinity(0)` to the `count` CPUs numbered in `cpus`.
int cmp_set_cpu_affinity(const int *cpus, int count);

/// `setpriority(PRIO_PROCESS, 0, niceness)`.
int cmp_set_niceness(int niceness);

/// `setrlimit(resource, {soft, hard})`; `RLIM_INFINITY` for no limit.
int cmp_set_resource_limit(int resource, unsigned long long soft, unsigned long long hard);

/// The hard limit of `resource` (`getrlimit`); `RLIM_INFINITY` for none.
unsigned long long cmp_hard_resource_limit(int resource);

/// The CPU time this process has used, all its threads, in nanoseconds
/// (`CLOCK_PROCESS_CPUTIME_ID`, what `RLIMIT_CPU` counts).
long long cmp_process_cpu_time_ns(void);

/// Makes an allocation failure end the process with `_exit(status)`: a
/// SIGABRT or SIGSEGV raised while `errno` is `ENOMEM` (the Swift runtime
/// aborts when `malloc` fails, and `malloc` sets `ENOMEM`). Any other such
/// signal keeps its default action. For a worker under a data-size limit.
void cmp_exit_on_allocation_failure(int status);

/// `pipe2(fds, O_CLOEXEC)` (Glibc's Swift overlay does not import `pipe2`),
/// with the pipe's buffer raised to 1 MiB where the system allows.
int cmp_pipe_cloexec(int fds[2]);

/// The capacity of the pipe `fd` belongs to, in bytes; -1 with errno on failure.
int cmp_pipe_capacity(int fd);

/// `epoll_create1(EPOLL_CLOEXEC)`.
int cmp_epoll_create(void);

/// Adds `fd` to `epfd` for one-shot readability, tagged with `token`.
int cmp_epoll_add_readable(int epfd, int fd, uint64_t token);

/// `EPOLL_CTL_DEL`.
int cmp_epoll_remove(int epfd, int fd);

/// `epoll_wait`, returning the tokens of ready descriptors in `tokens`.
int cmp_epoll_wait(int epfd, uint64_t *tokens, int max, int timeout);

/// A listening Unix stream socket at `path` (a leading '@' names the abstract
/// namespace: no file, nothing to clean up). Returns the descriptor or -1.
int cmp_listen_unix(const char *path, int backlog);

/// A listening TCP socket on `host`:`port` (0: any free port); stores the
/// port bound in `bound_port`. Returns the descriptor or -1 (errno set; for
/// an unresolvable host, EADDRNOTAVAIL).
int cmp_listen_tcp(const char *host, int port, int backlog, int *bound_port);

/// A stream socket connected to the Unix `path` ('@': abstract). Returns the
/// descriptor or -1.
int cmp_connect_unix(const char *path);

/// A stream socket connected to `host`:`port`, with `TCP_NODELAY`. Returns
/// the descriptor or -1.
int cmp_connect_tcp(const char *host, int port);

/// `accept4(SOCK_CLOEXEC)`, with `TCP_NODELAY` on TCP. Returns the descriptor or -1.
int cmp_accept(int listener);

/// `memfd_create(name, MFD_CLOEXEC)`: anonymous shared memory, freed by the
/// kernel when the last descriptor and mapping are gone.
int cmp_memfd_create(const char *name);

/// `shm_open(name, flags | O_CLOEXEC, 0600)`.
int cmp_shm_open(const char *name, int create_exclusive);

/// `shm_unlink(name)`.
int cmp_shm_unlink(const char *name);

/// Starts the shared-memory tracker (shm_tracker.c): a process that unlinks
/// the names it is told of once every holder of the returned descriptor (this
/// process and its forked children) is gone. -1 and errno on failure.
/// `leave_group`: a memory control group directory the tracker moves itself
/// into (out of a limited worker's group), or NULL.
int cmp_shm_tracker_start(const char *leave_group);
/// The tracker's entry in an image executed anew for it (bootstrap.c).
void cmp_shm_tracker_main(void) __attribute__((noreturn));
/// Tells the tracker on `socket` "+/name" (created) or "-/name" (unlinked).
int cmp_shm_tracker_send(int socket, const char *message);

/// `mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)`; NULL and
/// errno on failure.
void *cmp_map_shared(int fd, size_t size);

/// The size of the object behind `fd` (`fstat`), or -1.
long long cmp_descriptor_size(int fd);

/* Synchronization primitives that live in shared memory. Timeouts are in
   nanoseconds, -1 for none. Results are 0, or an errno value: ETIMEDOUT,
   EOWNERDEAD (the lock is held by the caller; the previous holder died
   holding it), EDEADLK, EPERM. */

/// The absolute CLOCK_MONOTONIC time `timeout_ns` from now.
struct timespec cmp_deadline_after(long long timeout_ns);

typedef struct { pthread_mutex_t mutex; } cmp_lock_t;

/// A condition variable on a futex: a sequence number that wakers bump.
/// glibc's process-shared `pthread_cond_t` is not used: a process killed
/// while waiting on one can make every later signal block for ever.
typedef struct { uint32_t sequence; uint32_t sleepers; } cmp_futex_condition_t;

/// Waits on `condition`, releasing `lock` meanwhile and taking it again
/// after (a dead previous holder is not reported). 0 when woken (or
/// spuriously), ETIMEDOUT once `deadline` (absolute, CLOCK_MONOTONIC; NULL:
/// none) passes.
int cmp_futex_condition_wait(cmp_futex_condition_t *condition, cmp_lock_t *lock, const struct timespec *deadline);

/// The same, but first watches for a signal for `spins` short pauses with
/// the lock released (returning 0 at once if one came), and only then sleeps.
int cmp_futex_condition_wait_spinning(cmp_futex_condition_t *condition, cmp_lock_t *lock, const struct timespec *deadline, unsigned spins);

/// Wakes one waiter, or all.
void cmp_futex_condition_signal(cmp_futex_condition_t *condition, int all);

int cmp_lock_init(cmp_lock_t *lock, int recursive);
int cmp_lock_acquire(cmp_lock_t *lock, long long timeout_ns);
int cmp_lock_release(cmp_lock_t *lock);

typedef struct { sem_t semaphore; int maximum; } cmp_semaphore_t;
int cmp_semaphore_init(cmp_semaphore_t *semaphore, unsigned value, int maximum);
int cmp_semaphore_acquire(cmp_semaphore_t *semaphore, long long timeout_ns);
/// ERANGE when a bounded semaphore would go past its maximum.
int cmp_semaphore_release(cmp_semaphore_t *semaphore);
int cmp_semaphore_value(cmp_semaphore_t *semaphore);

typedef struct { cmp_lock_t lock; cmp_futex_condition_t changed; int flag; } cmp_event_t;
int cmp_event_init(cmp_event_t *event);
int cmp_event_set(cmp_event_t *event, int value);
int cmp_event_is_set(cmp_event_t *event);
/// 0 once set, ETIMEDOUT otherwise.
int cmp_event_wait(cmp_event_t *event, long long timeout_ns);

/// A condition variable bound to a cmp_lock_t the caller holds.
typedef struct { cmp_futex_condition_t condition; } cmp_condition_t;
int cmp_condition_init(cmp_condition_t *condition);
int cmp_condition_wait(cmp_condition_t *condition, cmp_lock_t *lock, long long timeout_ns);
int cmp_condition_notify(cmp_condition_t *condition, int all);

typedef struct {
    cmp_lock_t lock;
    cmp_futex_condition_t changed;
    int parties;
    int waiting;
    unsigned generation;
    unsigned resets;
    int broken;
} cmp_barrier_t;
int cmp_barrier_init(cmp_barrier_t *barrier, int parties);
/// 0 and the arrival index in `index` (parties - 1 … 0), ETIMEDOUT (the
/// barrier is then broken), or EPIPE if the barrier is broken.
int cmp_barrier_wait(cmp_barrier_t *barrier, long long timeout_ns, int *index);
int cmp_barrier_abort(cmp_barrier_t *barrier);
int cmp_barrier_reset(cmp_barrier_t *barrier);
int cmp_barrier_waiting(cmp_barrier_t *barrier);
int cmp_barrier_is_broken(cmp_barrier_t *barrier);

/// A bounded multi-producer, multi-consumer queue of byte messages in shared
/// memory: a header followed by a byte ring of `capacity` bytes. Messages are
/// [8-byte length][payload][1 trailer byte: 1 whole, 0 abandoned]; one that
/// does not fit the ring crosses in pieces while its writer holds `writer`
/// and its reader holds `reader`, so messages never interleave. Counters only
/// grow, each published by one store, so a process killed anywhere leaves
/// the queue usable: the next writer (or reader) finishes an abandoned
/// message for it.
///
/// A *sparse* queue (unbounded) has a ring far larger than what is pending,
/// of which only the part between `released` and `committed` has memory:
/// a writer allocates the pages ahead of it (`fallocate`, so that running
/// out of memory is ENOMEM from the put, never a SIGBUS on a page fault),
/// and readers give back the pages behind them (punching holes). Its puts
/// never wait: a message is written whole under the mutex, or refused with
/// ENOSPC (the ring's bytes, the queue's ceiling, are all pending) or
/// ENOMEM (the system has no memory for it). The functions that move the
/// ring take the descriptor of the shared memory for it (-1 if not sparse).
typedef struct {
    cmp_lock_t mutex;
    cmp_futex_condition_t not_empty;
    cmp_futex_condition_t not_full;
    cmp_futex_condition_t all_done;
    cmp_lock_t writer;
    cmp_lock_t reader;
    uint64_t capacity;
    uint64_t max_messages;
    uint64_t written;
    uint64_t read;
    uint64_t messages_written;
    uint64_t messages_read;
    uint64_t writer_length;
    uint64_t writer_remaining;
    uint64_t reader_remaining;
    int64_t unfinished;
    /// Set (under the mutex) while a writer or reader holds its lock: whole
    /// messages then go through the locks, so none interleaves with one
    /// that crosses in pieces or is being repaired. Clear, a message that
    /// fits the ring is put or taken under the mutex alone.
    uint32_t writer_busy;
    uint32_t reader_busy;
    /// Sparse only: the ring positions up to which pages were allocated,
    /// and up to which pages were given back (never more than `capacity` apart).
    uint32_t sparse;
    uint64_t committed;
    uint64_t released;
    /// Sparse only: the ring's first bytes, whose pages always have memory.
    uint64_t keep;
} cmp_queue_t;

/// A sparse queue's ring is this much larger than its ceiling (see `sparse_limit`).
#define CMP_QUEUE_SPARSE_SLACK 8192

/// The bytes needed for a queue whose ring holds `capacity` bytes.
size_t cmp_queue_size(uint64_t capacity);
/// `sparse`: an unbounded queue whose ring has memory only for what is pending (see above).
int cmp_queue_init(cmp_queue_t *queue, int fd, uint64_t capacity, uint64_t max_messages, int sparse);
/// 0, ETIMEDOUT when the queue stayed full (0 timeout: at once), or an
/// error; a sparse queue never waits: ENOSPC or ENOMEM instead.
int cmp_queue_put(cmp_queue_t *queue, int fd, const void *bytes, uint64_t length, long long timeout_ns);
/// Takes the next message's length, holding the reader lock until
/// `cmp_queue_get_finish`. 0, ETIMEDOUT when the queue stayed empty, or an error.
int cmp_queue_get_begin(cmp_queue_t *queue, int fd, long long timeout_ns, uint64_t *length);
/// Takes the next message in one step if it is whole in the ring and fits
/// `capacity` bytes: 0 (its length in `*length`), ECANCELED if its writer
/// abandoned it, ETIMEDOUT when the queue stayed empty, or EAGAIN: use
/// `cmp_queue_get_begin` (a large message, or a reader streaming one).
int cmp_queue_get_small(cmp_queue_t *queue, int fd, void *bytes, uint64_t capacity, uint64_t *length, long long timeout_ns);
/// Reads the payload begun with `cmp_queue_get_begin` into `bytes` and lets
/// the reader lock go. 0, or ECANCELED if its writer abandoned it.
int cmp_queue_get_finish(cmp_queue_t *queue, int fd, void *bytes, uint64_t length);
/// Messages put and not yet taken (approximate).
uint64_t cmp_queue_count(cmp_queue_t *queue);
/// JoinableQueue: one task done; ERANGE if more than were put.
int cmp_queue_task_done(cmp_queue_t *queue);
/// JoinableQueue: waits until every task put is done; 0 or ETIMEDOUT.
int cmp_queue_join(cmp_queue_t *queue, long long timeout_ns);

/// Where a code address is: the GNU build ID of the image (executable or
/// library) that holds it, and its offset from where that image is loaded.
typedef struct {
    uint8_t build_id[32];
    uint32_t build_id_length;
    uint64_t offset;
} cmp_code_location_t;

/// Finds the image holding the code at `address`; returns 1 and fills
/// `location`, or 0 if no loaded image with a build ID has code there.
int cmp_code_locate(const void *address, cmp_code_location_t *location);

/// The address of the code at `location` in this process, or NULL if no
/// loaded image has that build ID or the offset is not in its code.
const void *cmp_code_resolve(const cmp_code_location_t *location);

/// A one-shot event in a 32-bit word (0: not set): waits until it is set.
/// A thread blocked here is not stopped by a stop-the-world fork (it holds
/// nothing a child needs, and waits on its way out until the fork is done).
void cmp_word_event_wait(uint32_t *word);

/// Sets the event and wakes its waiters.
void cmp_word_event_set(uint32_t *word);

/// `pthread_cond_wait`, or `pthread_cond_timedwait` until `deadline`
/// (CLOCK_MONOTONIC, for a condition made so) when it is not NULL, as a wait
/// a stop-the-world fork need not interrupt. Returns what they return.
int cmp_safe_cond_wait(pthread_cond_t *condition, pthread_mutex_t *mutex, const struct timespec *deadline);

struct pollfd;
/// `poll(2)`, as a wait a stop-the-world fork need not interrupt. Returns
/// what it returns, with errno.
int cmp_safe_poll(struct pollfd *fds, unsigned long count, int timeout_ms);

/* mallopt: keep up to `bytes` of freed memory (M_TRIM_THRESHOLD), and serve
   requests below half of it from the heap (M_MMAP_THRESHOLD). */
void cmp_keep_freed_memory(int bytes);

#endif
