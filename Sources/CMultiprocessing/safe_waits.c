/* The library's own blocking waits, which a stop of the world need not
   interrupt.

   Stopping a thread costs two wake-ups of it (the park signal, then the
   release), each a trip through the scheduler, and on a small VM a halted
   CPU woken. A thread blocked in one of the waits below holds nothing a
   child needs (it is inside this file's code or the kernel), so the
   forking thread counts it as parked without a signal. On its way out of
   the wait, before returning to any other code, the thread checks whether a
   stop is under way and waits until it is over.

   The forking thread sets `world_stopping`, then reads a thread's
   `blocked`; the thread clears `blocked`, then reads `world_stopping`. Both
   sequentially consistent: either the forker sees the thread gone from the
   wait (and signals it as any other), or the thread sees the stop (and
   waits for its end). */
#define _GNU_SOURCE
#include "CMultiprocessing.h"
#include "safe_waits.h"

#include <errno.h>
#include <poll.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_WAITERS 256

typedef struct {
    _Atomic pid_t tid;       /* 0: free */
    _Atomic int blocked;
} waiter_t;

static waiter_t waiters[MAX_WAITERS];
_Atomic uint32_t cmp_world_stopping;
#define world_stopping cmp_world_stopping
static _Atomic int held_waiters;

/* This thread's entry: -1 not registered yet, -2 none free. */
static __thread int my_entry = -1;
static __thread pid_t my_process;
static pthread_key_t exit_key;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;

static long futex(_Atomic uint32_t *word, int op, uint32_t value) {
    return syscall(SYS_futex, word, op, value, NULL, NULL, 0);
}

/* A thread that ends frees its entry (its id may be reused). One cancelled
   inside a wait ends with `blocked` still set: cleared first. */
static void thread_exit(void *entry) {
    waiter_t *waiter = &waiters[(intptr_t)entry - 1];
    atomic_store_explicit(&waiter->blocked, 0, memory_order_seq_cst);
    atomic_store_explicit(&waiter->tid, 0, memory_order_release);
}

static void make_exit_key(void) { pthread_key_create(&exit_key, thread_exit); }

static waiter_t *my_waiter(void) {
    pid_t process = cmp_current_pid();
    if (my_entry >= 0 && my_process == process) return &waiters[my_entry];
    if (my_entry == -2 && my_process == process) return NULL;
    my_process = process;
    my_entry = -2;
    pthread_once(&exit_key_once, make_exit_key);
    pid_t tid = (pid_t)syscall(SYS_gettid);
    for (int i = 0; i < MAX_WAITERS; i++) {
        pid_t expected = 0;
        if (atomic_compare_exchange_strong_explicit(&waiters[i].tid, &expected, tid, memory_order_acq_rel, memory_order_relaxed)) {
            my_entry = i;
            pthread_setspecific(exit_key, (void *)(intptr_t)(i + 1));
            return &waiters[i];
        }
    }
    return NULL;
}

static void enter(waiter_t *waiter) {
    if (waiter) atomic_store_explicit(&waiter->blocked, 1, memory_order_seq_cst);
}

/* Keeps errno as the wait left it. */
static void leave(waiter_t *waiter) {
    if (!waiter) return;
    int saved_errno = errno;
    atomic_store_explicit(&waiter->blocked, 0, memory_order_seq_cst);
    if (atomic_load_explicit(&world_stopping, memory_order_seq_cst) == 0) { errno = saved_errno; return; }
    atomic_fetch_add_explicit(&held_waiters, 1, memory_order_seq_cst);
    while (atomic_load_explicit(&world_stopping, memory_order_seq_cst) != 0) {
        futex(&world_stopping, FUTEX_WAIT_PRIVATE, 1);
    }
    atomic_fetch_sub_explicit(&held_waiters, 1, memory_order_seq_cst);
    errno = saved_errno;
}

void cmp_wait_while_world_stops(void) {
    int saved_errno = errno;
    atomic_fetch_add_explicit(&held_waiters, 1, memory_order_seq_cst);
    while (atomic_load_explicit(&world_stopping, memory_order_seq_cst) != 0) {
        futex(&world_stopping, FUTEX_WAIT_PRIVATE, 1);
    }
    atomic_fetch_sub_explicit(&held_waiters, 1, memory_order_seq_cst);
    errno = saved_errno;
}

void cmp_world_stop_begin(void) {
    atomic_store_explicit(&world_stopping, 1, memory_order_seq_cst);
}

void cmp_world_stop_end(void) {
    atomic_store_explicit(&world_stopping, 0, memory_order_seq_cst);
    if (atomic_load_explicit(&held_waiters, memory_order_seq_cst) != 0) {
        futex(&world_stopping, FUTEX_WAKE_PRIVATE, INT32_MAX);
    }
}

void cmp_safe_waits_prepare(void) {
    pthread_once(&exit_key_once, make_exit_key);
}

int cmp_in_safe_wait(pid_t tid) {
    for (int i = 0; i < MAX_WAITERS; i++) {
        if (atomic_load_explicit(&waiters[i].tid, memory_order_acquire) == tid) {
            return atomic_load_explicit(&waiters[i].blocked, memory_order_seq_cst);
        }
    }
    return 0;
}

void cmp_safe_waits_forked_child(void) {
    atomic_store_explicit(&world_stopping, 0, memory_order_relaxed);
    atomic_store_explicit(&held_waiters, 0, memory_order_relaxed);
    /* Only entries in use are written: a write copies a page shared with the parent. */
    for (int i = 0; i < MAX_WAITERS; i++) {
        if (atomic_load_explicit(&waiters[i].tid, memory_order_relaxed) != 0) {
            atomic_store_explicit(&waiters[i].tid, 0, memory_order_relaxed);
            atomic_store_explicit(&waiters[i].blocked, 0, memory_order_relaxed);
        }
    }
}

/* ---- The waits ---- */

void cmp_word_event_wait(uint32_t *word) {
    _Atomic uint32_t *event = (_Atomic uint32_t *)word;
    waiter_t *waiter = my_waiter();
    while (atomic_load_explicit(event, memory_order_acquire) == 0) {
        enter(waiter);
        futex(event, FUTEX_WAIT_PRIVATE, 0);
        leave(waiter);
    }
}

void cmp_word_event_set(uint32_t *word) {
    _Atomic uint32_t *event = (_Atomic uint32_t *)word;
    atomic_store_explicit(event, 1, memory_order_release);
    futex(event, FUTEX_WAKE_PRIVATE, INT32_MAX);
}

int cmp_safe_cond_wait(pthread_cond_t *condition, pthread_mutex_t *mutex, const struct timespec *deadline) {
    waiter_t *waiter = my_waiter();
    enter(waiter);
    int result = deadline ? pthread_cond_timedwait(condition, mutex, deadline) : pthread_cond_wait(condition, mutex);
    leave(waiter);
    return result;
}

int cmp_safe_poll(struct pollfd *fds, unsigned long count, int timeout_ms) {
    waiter_t *waiter = my_waiter();
    enter(waiter);
    int result = poll(fds, (nfds_t)count, timeout_ms);
    leave(waiter);
    return result;
}
