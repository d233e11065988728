/* Stopping every other thread of the process before a fork.

   A forked child has one thread. A lock another thread held at the instant
   of the fork stays held in the child for ever; the Swift runtime's locks
   (metadata and conformance caches, type names, once-flags) cannot be taken
   across the fork the way the library's own are. So before it forks, the
   forking thread parks every other thread in a signal handler that only
   waits, each at an instant when it holds none of them: lock_tracking.c
   counts the pthread mutexes each thread holds and the lazy-global
   initializers it runs, and a thread the signal finds holding one is let
   run on and parks itself as it lets go of its last. A thread the signal
   finds running the C library's own code (malloc, whose locks fork itself
   takes and the tracking cannot see) is asked again a moment later. The
   fork happens when every thread is parked; then the parent lets them all
   go. Whatever cannot be stopped within the budget is reported, and the
   fork goes ahead as a plain one.

   The signal is SIGSYS, sent with a cookie: Dispatch's worker threads (and
   so Swift's cooperative pool on Linux) block every signal but the
   synchronous ones and SIGSYS/SIGPIPE. A SIGSYS without the cookie (a
   seccomp trap) goes to the handler that was there before.

   Everything between the first park and the last release is
   async-signal-safe: raw system calls and static buffers, no malloc (a
   parked thread may hold an arena lock). */
#define _GNU_SOURCE
#include "CMultiprocessing.h"
#include "code_ranges.h"
#include "lock_tracking.h"
#include "safe_waits.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define MAX_THREADS 1024
#define PARK_SIGNAL SIGSYS

/* How long one round waits for every thread before it lets them all go and
   starts over (a thread let run may wait for one parked: a lock the
   tracking does not see), and how often a deferred thread is asked again
   (one that took its mutex back at the end of a condition wait at the
   instant of the signal answers "not yet" and then blocks in the wait). */
#define ROUND_NS 20000000LL
#define ASK_AGAIN_NS 2000000LL

/* ---- Parking ---- */

/* IDLE: not part of a stop. REQUESTED: sent the signal, no answer yet.
   PARKED: waiting in the handler, or where it let go of its last lock.
   DEFERRED: it holds a lock or runs an initializer, and parks itself as it
   lets go of the last one. RESAMPLE: it was running the C library's code;
   to be asked again. WAITING: blocked in one of the library's own waits
   (safe_waits.c), counted as parked without a signal; it waits on its way
   out until the stop is over. QUIET: it held nothing, took nothing and ran
   no initializer when looked at (lock_tracking.c), and is not signalled:
   should it come to take a lock before the stop is over, it waits at the
   door. */
enum { SLOT_IDLE = 0, SLOT_REQUESTED = 1, SLOT_PARKED = 2, SLOT_DEFERRED = 3, SLOT_RESAMPLE = 4, SLOT_WAITING = 5, SLOT_QUIET = 6 };

typedef struct {
    _Atomic pid_t tid;
    _Atomic uint32_t state;
    uintptr_t pc;     /* where the signal found it (0: parked at an unlock) */
    long long since;  /* when it was last asked */
} park_slot_t;

static park_slot_t slots[MAX_THREADS];
static _Atomic int slot_count;
static _Atomic uint32_t arrivals;
/* The stopper sleeps until `arrivals` reaches `wake_at`: one wake-up per
   wait, not one per answer. */
static _Atomic uint32_t wake_at;
static _Atomic uint32_t deferred_parks;
/* Counted up each time the stopper lets every thread go: a thread parked in
   a slot that a later attempt gave to another thread still goes, whatever
   that slot's state says now. */
static _Atomic uint32_t release_epoch;
static _Atomic uint32_t deferrals;
static uint32_t cookie;
static pid_t owner_pid;
static struct sigaction previous_action;
static _Atomic int handler_installed;

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CMP_UNDER_THREAD_SANITIZER 1
#endif
#endif

static long futex(_Atomic uint32_t *word, int op, uint32_t value, const struct timespec *timeout) {
    return syscall(SYS_futex, (uint32_t *)word, op, value, timeout, NULL, 0);
}

static void announce_arrival(void) {
    uint32_t now = atomic_fetch_add_explicit(&arrivals, 1, memory_order_seq_cst) + 1;
    if ((int32_t)(now - atomic_load_explicit(&wake_at, memory_order_seq_cst)) >= 0) {
        futex(&arrivals, FUTEX_WAKE_PRIVATE, 1, NULL);
    }
}

/* Parks the calling thread in its slot if the slot is still in `expected`,
   until the stopper lets it go; `count` (if any) is counted up first.
   Returns whether it parked. */
static int park_if(park_slot_t *slot, uint32_t expected, _Atomic uint32_t *count) {
    uint32_t epoch = atomic_load_explicit(&release_epoch, memory_order_acquire);
    if (!atomic_compare_exchange_strong_explicit(&slot->state, &expected, SLOT_PARKED,
                                                 memory_order_acq_rel, memory_order_acquire)) return 0;
    if (count) atomic_fetch_add_explicit(count, 1, memory_order_relaxed);
    announce_arrival();
    while (atomic_load_explicit(&slot->state, memory_order_acquire) == SLOT_PARKED &&
           atomic_load_explicit(&release_epoch, memory_order_acquire) == epoch) {
        futex(&slot->state, FUTEX_WAIT_PRIVATE, SLOT_PARKED, NULL);
    }
    return 1;
}

/* Called by lock_tracking.c on a thread whose park was deferred, as it lets
   go of its last lock: it parks now, if the stop still wants it. */
static void park_deferred(int index) {
    if (index < 0 || index >= MAX_THREADS) return;
    park_slot_t *slot = &slots[index];
    if (atomic_load_explicit(&slot->tid, memory_order_acquire) != (pid_t)syscall(SYS_gettid)) return;
    int saved_errno = errno;
    slot->pc = 0;
    if (!park_if(slot, SLOT_DEFERRED, &deferred_parks)) park_if(slot, SLOT_REQUESTED, &deferred_parks);
    errno = saved_errno;
}

static void chain_previous(int sig, siginfo_t *info, void *context) {
    if (previous_action.sa_flags & SA_SIGINFO) {
        if (previous_action.sa_sigaction != NULL) previous_action.sa_sigaction(sig, info, context);
        return;
    }
    if (previous_action.sa_handler == SIG_IGN) return;
    if (previous_action.sa_handler == SIG_DFL) {
        /* What SIGSYS would have done: end the process. */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    previous_action.sa_handler(sig);
}

static void release_all(void);
static _Atomic int watchdog_fired;
/* The watchdog's timer and period, for its second stage (set before it is armed). */
static int watchdog_timer = -1;
static long long watchdog_period_ns;
static void release_in_system_code(void);
static _Atomic uint32_t watchdog_generation;

/* In the C library's code, at a system call: stopped on a `syscall`
   instruction that will run again (a restarted wait) or right after one.
   Not in the middle of malloc's or the loader's own code, whose locks fork
   takes. (A thread blocked in the kernel while holding one of those is what
   the watchdog is for.) */
static int at_system_call(uintptr_t pc) {
#if defined(__x86_64__)
    if (pc < 2 || !cmp_in_system_code(pc - 2)) return 0;
    const unsigned char *code = (const unsigned char *)pc;
    if (cmp_in_system_code(pc + 1) && code[0] == 0x0f && code[1] == 0x05) return 1;
    return code[-2] == 0x0f && code[-1] == 0x05;
#elif defined(__aarch64__)
    if (pc < 4 || !cmp_in_system_code(pc - 4)) return 0;
    const uint32_t *code = (const uint32_t *)pc;
    return code[0] == 0xd4000001u || code[-1] == 0xd4000001u;  /* svc #0 */
#else
    (void)pc;
    return 0;
#endif
}

static uintptr_t interrupted_pc(const void *context) {
    const ucontext_t *registers = context;
#if defined(__x86_64__)
    return (uintptr_t)registers->uc_mcontext.gregs[REG_RIP];
#elif defined(__aarch64__)
    return (uintptr_t)registers->uc_mcontext.pc;
#else
    (void)registers;
    return 0;
#endif
}

static void park_handler(int sig, siginfo_t *info, void *context) {
    int saved_errno = errno;
    uint64_t value = (uint64_t)(uintptr_t)info->si_value.sival_ptr;
    if (info->si_code == SI_TIMER && (uint32_t)(value >> 32) == cookie && (uint32_t)value == (0x80000000u | atomic_load_explicit(&watchdog_generation, memory_order_relaxed))) {
        /* The forking thread's watchdog: the fork is stuck on a lock a
           parked thread holds (malloc's, stdio's list). First the threads
           parked in the C library's code go, as only they can hold one; if
           the fork is still stuck a period later, or there were none, all. */
        if (atomic_fetch_add_explicit(&watchdog_fired, 1, memory_order_relaxed) == 0) {
            release_in_system_code();
            struct itimerspec again = { { 0, 0 }, { (time_t)(watchdog_period_ns / 1000000000LL), (long)(watchdog_period_ns % 1000000000LL) } };
            if (watchdog_timer != -1 && syscall(SYS_timer_settime, watchdog_timer, 0, &again, NULL) == 0) {
                errno = saved_errno;
                return;
            }
        }
        release_all();
        errno = saved_errno;
        return;
    }
    if (info->si_code != SI_QUEUE || (uint32_t)(value >> 32) != cookie || info->si_pid != owner_pid) {
        errno = saved_errno;
        chain_previous(sig, info, context);
        return;
    }
    uint32_t index = (uint32_t)value & 0xffff;
    if (index >= MAX_THREADS) { errno = saved_errno; return; }
    park_slot_t *slot = &slots[index];
    if (atomic_load_explicit(&slot->tid, memory_order_acquire) != (pid_t)syscall(SYS_gettid) ||
        atomic_load_explicit(&slot->state, memory_order_acquire) != SLOT_REQUESTED) {
        errno = saved_errno;
        return;
    }
    uintptr_t pc = interrupted_pc(context);
    slot->pc = pc;
    if (cmp_lock_verdict()) {
        /* Holding a lock: it parks as it lets go of its last one. */
        uint32_t expected = SLOT_REQUESTED;
        if (atomic_compare_exchange_strong_explicit(&slot->state, &expected, SLOT_DEFERRED,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            cmp_lock_state.deferred_slot = (int)index + 1;
            atomic_fetch_add_explicit(&deferrals, 1, memory_order_relaxed);
        }
    } else if (cmp_in_system_code(pc) && !at_system_call(pc)) {
        uint32_t expected = SLOT_REQUESTED;
        if (atomic_compare_exchange_strong_explicit(&slot->state, &expected, SLOT_RESAMPLE,
                                                    memory_order_acq_rel, memory_order_acquire)) {
            announce_arrival();
        }
    } else {
        cmp_lock_state.deferred_slot = 0;
        park_if(slot, SLOT_REQUESTED, NULL);
    }
    errno = saved_errno;
}

static int install_handler(void) {
    if (atomic_load_explicit(&handler_installed, memory_order_acquire)) {
        /* Still ours? A sandbox set up since (in a worker forked from this
           process, say) may have put its own in place: ours goes back,
           chaining to it. */
        struct sigaction current;
        if (sigaction(PARK_SIGNAL, NULL, &current) == 0 && (current.sa_flags & SA_SIGINFO) && current.sa_sigaction == park_handler) return 0;
        atomic_store_explicit(&handler_installed, 0, memory_order_release);
    }
    uint32_t random_cookie = 0;
    if (syscall(SYS_getrandom, &random_cookie, sizeof random_cookie, 0) != sizeof random_cookie) {
        random_cookie = (uint32_t)getpid() * 2654435761u ^ (uint32_t)time(NULL);
    }
    cookie = random_cookie | 1;
    cmp_lock_tracking_set_park(park_deferred);
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = park_handler;
    action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigfillset(&action.sa_mask);
    if (sigaction(PARK_SIGNAL, &action, &previous_action) == -1) return -1;
    atomic_store_explicit(&handler_installed, 1, memory_order_release);
    return 0;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int request_park(int index) {
    park_slot_t *slot = &slots[index];
    slot->since = now_ns();
    atomic_store_explicit(&slot->state, SLOT_REQUESTED, memory_order_release);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    info.si_signo = PARK_SIGNAL;
    info.si_code = SI_QUEUE;
    info.si_pid = owner_pid;
    info.si_uid = getuid();
    info.si_value.sival_ptr = (void *)(uintptr_t)(((uint64_t)cookie << 32) | (uint32_t)index);
    if (syscall(SYS_rt_tgsigqueueinfo, owner_pid, slot->tid, PARK_SIGNAL, &info) == -1) {
        /* ESRCH: the thread has ended. Anything else (EAGAIN: too many
           signals queued): it stays asked, and the round looks again. */
        if (errno != ESRCH) return 0;
        atomic_store_explicit(&slot->state, SLOT_IDLE, memory_order_release);
        return -1;
    }
    return 0;
}

static void release_slot(int index) {
    park_slot_t *slot = &slots[index];
    uint32_t state = atomic_exchange_explicit(&slot->state, SLOT_IDLE, memory_order_acq_rel);
    /* Every waiter: two threads may wait on one slot (see release_epoch). */
    if (state == SLOT_PARKED) futex(&slot->state, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL);
    /* DEFERRED: it finds the slot idle as it lets go, and goes on. */
}

/* Adds a slot for every thread of the process not yet in one (and not the
   caller) and asks it to park. Returns how many were added, -1 on error.
   Raw getdents64: no malloc, no stdio. */
static int enlist_new_threads(pid_t self) {
    static char buffer[8192];
    int fd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd == -1) return -1;
    int added = 0;
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buffer, sizeof buffer);
        if (n <= 0) break;
        for (long offset = 0; offset < n;) {
            struct { uint64_t ino; int64_t off; unsigned short reclen; unsigned char type; char name[]; } *entry = (void *)(buffer + offset);
            offset += entry->reclen;
            if (entry->name[0] < '0' || entry->name[0] > '9') continue;
            pid_t tid = 0;
            for (const char *c = entry->name; *c >= '0' && *c <= '9'; c++) tid = tid * 10 + (*c - '0');
            if (tid == self) continue;
            int count = atomic_load_explicit(&slot_count, memory_order_relaxed);
            int known = 0;
            for (int i = 0; i < count; i++) if (slots[i].tid == tid) { known = 1; break; }
            if (known) continue;
            if (count == MAX_THREADS) { close(fd); return -1; }
            atomic_store_explicit(&slots[count].tid, tid, memory_order_release);
            atomic_store_explicit(&slot_count, count + 1, memory_order_release);
            if (cmp_in_safe_wait(tid)) {
                atomic_store_explicit(&slots[count].state, SLOT_WAITING, memory_order_relaxed);
                continue;
            }
            if (cmp_lock_thread_is_quiet(tid)) {
                atomic_store_explicit(&slots[count].state, SLOT_QUIET, memory_order_relaxed);
                continue;
            }
            if (request_park(count) == 0) added++;
        }
    }
    close(fd);
    return added;
}

/* Reads /proc/self/task/TID/NAME into `buffer`, NUL-terminated; its
   length, or -1 (ENOENT: the thread is gone). */
static ssize_t read_task_file(pid_t tid, const char *name, char *buffer, size_t size) {
    char path[64] = "/proc/self/task/";
    char digits[16];
    int count = 0;
    for (unsigned value = (unsigned)tid; count == 0 || value > 0; value /= 10) digits[count++] = (char)('0' + value % 10);
    size_t at = strlen(path);
    while (count > 0) path[at++] = digits[--count];
    path[at++] = '/';
    size_t name_length = strlen(name);
    memcpy(path + at, name, name_length + 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1) return -1;
    ssize_t length = read(fd, buffer, size - 1);
    close(fd);
    if (length < 0) return -1;
    buffer[length] = 0;
    return length;
}

/* Whether thread `tid` has ended (gone, or a zombie): it runs no code and
   never answers. */
static int thread_ended(pid_t tid) {
    static char buffer[1024];
    if (read_task_file(tid, "stat", buffer, sizeof buffer) <= 0) return errno == ENOENT || errno == ESRCH;
    const char *close_paren = strrchr(buffer, ')');
    if (close_paren == NULL || close_paren[1] == 0) return 0;
    char state = close_paren[2];
    return state == 'Z' || state == 'X';
}

/* Whether thread `tid` has the park signal blocked (its SigBlk line in
   /proc/self/task/TID/status). Raw reads into a static buffer. */
static int blocks_park_signal(pid_t tid) {
    static char buffer[4096];
    if (read_task_file(tid, "status", buffer, sizeof buffer) <= 0) return 0;
    const char *line = strstr(buffer, "SigBlk:");
    if (line == NULL) return 0;
    line += 7;
    while (*line == ' ' || *line == '\t') line++;
    unsigned long long mask = 0;
    for (; (*line >= '0' && *line <= '9') || (*line >= 'a' && *line <= 'f'); line++) {
        mask = mask * 16 + (unsigned long long)(*line <= '9' ? *line - '0' : *line - 'a' + 10);
    }
    return (int)((mask >> (PARK_SIGNAL - 1)) & 1);
}

/* ---- The stop ---- */

static void release_all(void) {
    atomic_fetch_add_explicit(&release_epoch, 1, memory_order_acq_rel);
    int count = atomic_load_explicit(&slot_count, memory_order_acquire);
    for (int i = 0; i < count; i++) release_slot(i);
    cmp_world_stop_end();
}

/* The watchdog's first stage: lets go the threads parked in the C library's
   code (at a system call); returns with the others still parked, unless
   there was none, when it lets every thread go. Async-signal-safe. */
static void release_in_system_code(void) {
    int released = 0;
    int count = atomic_load_explicit(&slot_count, memory_order_acquire);
    for (int i = 0; i < count; i++) {
        if (atomic_load_explicit(&slots[i].state, memory_order_acquire) == SLOT_PARKED && slots[i].pc != 0 && cmp_in_system_code(slots[i].pc)) {
            release_slot(i);
            released++;
        }
    }
    if (released == 0) release_all();
}

static void pause_ns(long long ns) {
    struct timespec t = { (time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL) };
    while (clock_nanosleep(CLOCK_MONOTONIC, 0, &t, &t) == EINTR) {}
}

/* Sleeps until some thread answers, or `until`. */
static void await_answer(uint32_t seen, long long until) {
    atomic_store_explicit(&wake_at, seen + 1, memory_order_seq_cst);
    if (atomic_load_explicit(&arrivals, memory_order_seq_cst) != seen) return;
    long long left = until - now_ns();
    if (left <= 0) return;
    struct timespec wait = { (time_t)(left / 1000000000LL), (long)(left % 1000000000LL) };
    futex(&arrivals, FUTEX_WAIT_PRIVATE, seen, &wait);
}

/* One round: asks every thread to park and waits until all have, or the
   round ends. Returns CMP_QUIESCE_STOPPED, CMP_QUIESCE_UNSTOPPABLE (a thread
   blocks the signal), CMP_QUIESCE_FAILED, or -1 (the round ran out). */
static int stop_round(pid_t self, long long round_end, cmp_quiesce_report_t *report) {
    for (;;) {
        uint32_t seen = atomic_load_explicit(&arrivals, memory_order_seq_cst);
        int added = enlist_new_threads(self);
        if (added < 0) return CMP_QUIESCE_FAILED;
        long long now = now_ns();
        int settled = 1;
        int count = atomic_load_explicit(&slot_count, memory_order_acquire);
        for (int i = 0; i < count; i++) {
            park_slot_t *slot = &slots[i];
            switch (atomic_load_explicit(&slot->state, memory_order_acquire)) {
            case SLOT_RESAMPLE:
                /* In the C library: asked again after a moment's run. */
                settled = 0;
                report->retries++;
                pause_ns(2000);
                if (request_park(i) != 0) atomic_store_explicit(&slot->tid, 0, memory_order_release);
                break;
            case SLOT_DEFERRED:
                settled = 0;
                if (now - slot->since >= ASK_AGAIN_NS) {
                    uint32_t expected = SLOT_DEFERRED;
                    /* Asked again: the answer is looked at afresh. */
                    if (atomic_compare_exchange_strong_explicit(&slot->state, &expected, SLOT_IDLE, memory_order_acq_rel, memory_order_acquire)) {
                        report->retries++;
                        if (request_park(i) != 0) atomic_store_explicit(&slot->tid, 0, memory_order_release);
                    }
                }
                break;
            case SLOT_REQUESTED:
                settled = 0;
                if (now - slot->since >= ROUND_NS / 2) {
                    if (thread_ended(slot->tid)) {
                        uint32_t expected = SLOT_REQUESTED;
                        atomic_compare_exchange_strong_explicit(&slot->state, &expected, SLOT_IDLE, memory_order_acq_rel, memory_order_acquire);
                    } else if (blocks_park_signal(slot->tid)) {
                        report->unstoppable_thread = slot->tid;
                        return CMP_QUIESCE_UNSTOPPABLE;
                    }
                }
                break;
            default:
                break;
            }
        }
        if (settled && added == 0) return CMP_QUIESCE_STOPPED;
        if (now_ns() >= round_end) {
            for (int i = 0; i < count; i++) {
                uint32_t state = atomic_load_explicit(&slots[i].state, memory_order_acquire);
                if (state == SLOT_REQUESTED && report->unstoppable_thread == 0) report->unstoppable_thread = slots[i].tid;
                if (state == SLOT_DEFERRED) report->deferred_at_end++;
            }
            return -1;
        }
        long long until = now_ns() + 1000000LL;
        if (until > round_end) until = round_end;
        await_answer(seen, until);
    }
}

/* Parks every other thread while it holds no lock; see the header. */
static int stop_world(long long budget_ns, cmp_quiesce_report_t *report) {
    pid_t self = (pid_t)syscall(SYS_gettid);
    long long start = now_ns(), deadline = start + budget_ns;
    uint32_t deferred_before = atomic_load_explicit(&deferred_parks, memory_order_relaxed);
    for (int attempt = 0;; attempt++) {
        atomic_store_explicit(&slot_count, 0, memory_order_release);
        report->unstoppable_thread = 0;
        report->deferred_at_end = 0;
        cmp_world_stop_begin();
        long long round_end = now_ns() + ROUND_NS;
        if (round_end > deadline) round_end = deadline;
        int outcome = stop_round(self, round_end, report);
        if (outcome == CMP_QUIESCE_STOPPED) {
            int count = atomic_load_explicit(&slot_count, memory_order_acquire);
            report->threads = 0;
            report->waiting = 0;
            report->quiet = 0;
            for (int i = 0; i < count; i++) {
                uint32_t state = atomic_load_explicit(&slots[i].state, memory_order_acquire);
                if (state == SLOT_PARKED) report->threads++;
                else if (state == SLOT_WAITING) report->waiting++;
                else if (state == SLOT_QUIET) report->quiet++;
            }
            report->deferred = (int)(atomic_load_explicit(&deferred_parks, memory_order_relaxed) - deferred_before);
            return outcome;
        }
        release_all();
        if (outcome != -1) return outcome;
        report->restarts++;
        if (now_ns() >= deadline) {
            /* A thread that never answered, or one that held a lock all along. */
            return report->deferred_at_end > 0 || report->unstoppable_thread == 0 ? CMP_QUIESCE_BUSY : CMP_QUIESCE_UNSTOPPABLE;
        }
        /* Everyone runs a moment: whatever a thread let run waited for is let go. */
        pause_ns(20000LL << (attempt < 5 ? attempt : 5));
    }
}

uint32_t cmp_quiesce_deferrals(void) { return atomic_load_explicit(&deferrals, memory_order_relaxed); }

static pthread_mutex_t stopping = PTHREAD_MUTEX_INITIALIZER;

/* A timer that sends the forking thread the park signal, marked, if the
   fork has not returned by then; -1 if none could be made. */
static int arm_watchdog(long long after_ns) {
    struct sigevent event;
    memset(&event, 0, sizeof event);
    event.sigev_notify = SIGEV_THREAD_ID;
    event.sigev_signo = PARK_SIGNAL;
    uint32_t generation = (atomic_load_explicit(&watchdog_generation, memory_order_relaxed) + 1) & 0x7fffffffu;
    atomic_store_explicit(&watchdog_generation, generation, memory_order_relaxed);
    event.sigev_value.sival_ptr = (void *)(uintptr_t)(((uint64_t)cookie << 32) | 0x80000000u | generation);
    event._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    int timer = -1;
    if (syscall(SYS_timer_create, CLOCK_MONOTONIC, &event, &timer) == -1) return -1;
    struct itimerspec when = { { 0, 0 }, { (time_t)(after_ns / 1000000000LL), (long)(after_ns % 1000000000LL) } };
    if (syscall(SYS_timer_settime, timer, 0, &when, NULL) == -1) {
        syscall(SYS_timer_delete, timer);
        return -1;
    }
    return timer;
}

pid_t cmp_fork_quiesced(int death_signal, long long budget_ns, long long watchdog_ns, cmp_quiesce_report_t *report) {
    memset(report, 0, sizeof *report);
#ifdef CMP_UNDER_THREAD_SANITIZER
    /* ThreadSanitizer runs SIGSYS at once wherever a thread is, inside its
       own runtime too, and its fork handler takes the locks such a parked
       thread holds (measured: a hang in ForkBefore); its background thread
       has no TSan state and fails a CHECK when signalled. So under TSan the
       world is not stopped: a plain fork, reported as such. Fork safety is
       proven by the plain and ASan builds; TSan looks at the threads. */
    (void)budget_ns;
    (void)watchdog_ns;
    report->outcome = CMP_QUIESCE_FAILED;
    return cmp_fork(death_signal);
#endif
    cmp_safe_waits_prepare();
    pthread_mutex_lock(&stopping);
    static int tracking = -1;
    if (tracking == -1) tracking = cmp_lock_tracking_active();
    report->lock_tracking = tracking;
    owner_pid = getpid();
    if (install_handler() == -1) {
        pthread_mutex_unlock(&stopping);
        report->outcome = CMP_QUIESCE_FAILED;
        return cmp_fork(death_signal);
    }
    /* Only stdout and stderr are flushed (by cmp_fork_flushing), and the
       caller holds their locks. fflush(NULL) takes every stream's lock, and a
       thread blocked in fread holds its stream's for as long as the read
       lasts: seen, swift-testing's exit-test back channel held one while the
       exit test waited on a child this fork would have made — a hang for
       ever. Other streams' unwritten output may be written by both
       processes, as in Python, which flushes sys.stdout and sys.stderr only. */
    long long start = now_ns();
    /* This thread is never held at the door of a lock (the fork's own
       handlers take some). */
    cmp_lock_state.stopper = 1;
    report->outcome = stop_world(budget_ns, report);
    report->elapsed_ns = now_ns() - start;
    /* A watchdog only when some thread is parked or left alone (one in a
       library wait holds nothing fork needs); its signal must reach this
       thread. */
    int timer = -1, unblocked = 0;
    sigset_t park, saved_mask;
    atomic_store_explicit(&watchdog_fired, 0, memory_order_relaxed);
    /* A new generation at every fork, armed or not: a watchdog signal still
       pending from an earlier fork is then never taken for this one's. */
    atomic_store_explicit(&watchdog_generation, (atomic_load_explicit(&watchdog_generation, memory_order_relaxed) + 1) & 0x7fffffffu, memory_order_relaxed);
    /* Also when threads were only left alone: one waiting at the door of a
       lock may hold something the fork's own handlers take. */
    if (report->outcome == CMP_QUIESCE_STOPPED && (report->threads > 0 || report->quiet > 0)) {
        sigemptyset(&park);
        sigaddset(&park, PARK_SIGNAL);
        pthread_sigmask(SIG_UNBLOCK, &park, &saved_mask);
        unblocked = 1;
        watchdog_period_ns = watchdog_ns;
        timer = arm_watchdog(watchdog_ns);
        watchdog_timer = timer;
    }
    pid_t pid = cmp_fork(death_signal);
    int saved_errno = errno;
    if (pid == 0) {
        /* The child has none of those threads, and no timer. */
        atomic_store_explicit(&slot_count, 0, memory_order_relaxed);
        cmp_lock_state.deferred_slot = 0;
    } else {
        if (timer != -1) {
            watchdog_timer = -1;
            syscall(SYS_timer_delete, timer);
        }
        if (report->outcome == CMP_QUIESCE_STOPPED) release_all();
        if (atomic_load_explicit(&watchdog_fired, memory_order_relaxed)) report->outcome = CMP_QUIESCE_RELEASED_EARLY;
        atomic_store_explicit(&slot_count, 0, memory_order_release);
    }
    /* A child bound to its parent starts with no signal blocked (cmp_fork);
       otherwise it keeps the caller's mask, as the parent does. */
    if (unblocked && (pid != 0 || death_signal == 0)) pthread_sigmask(SIG_SETMASK, &saved_mask, NULL);
    cmp_lock_state.stopper = 0;
    pthread_mutex_unlock(&stopping);
    errno = saved_errno;
    return pid;
}
