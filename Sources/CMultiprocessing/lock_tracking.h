/* Private to the C target: which locks this thread holds (lock_tracking.c). */
#ifndef CMP_LOCK_TRACKING_H
#define CMP_LOCK_TRACKING_H

#include <pthread.h>

#include <stdatomic.h>
#include <sys/types.h>

/* A thread's own; the forking thread reads the three atomics. */
typedef struct {
    /* pthread mutexes held (taken and not yet let go). */
    _Atomic int held;
    /* Those of them the Swift runtime took (its code called the lock). */
    _Atomic int runtime_held;
    /* Whether the mutex being taken is taken by the runtime's code. */
    int acquiring_runtime;
    /* swift_once initializers running. */
    _Atomic int onces;
    /* A mutex being taken, or taken back at the end of a condition wait. */
    pthread_mutex_t *_Atomic acquiring;
    /* 1 + the park slot to park in when the last lock is let go; 0: none. */
    int deferred_slot;
    /* The process this thread is in the registry of (-1: ending, never again). */
    pid_t registered_in;
    /* This thread stops the world now: never held at the door. */
    int stopper;
} cmp_lock_state_t;

extern __thread cmp_lock_state_t cmp_lock_state __attribute__((tls_model("initial-exec")));

/* Called on the thread itself (from the park signal's handler): 0 if it
   holds none of the Swift runtime's locks and runs no initializer, so it
   may park; 1 if not yet. (A lock of another library's that a parked thread
   holds is what the fork's watchdog is for, as before.) */
int cmp_lock_verdict(void);

/* What a thread whose park was deferred calls as it lets go of its last lock. */
void cmp_lock_tracking_set_park(void (*park)(int slot));

/* Whether thread `tid` holds nothing, takes nothing and runs no
   initializer now: during a stop it need not be signalled (it waits at the
   door if it comes to take something). Read after cmp_world_stop_begin. */
int cmp_lock_thread_is_quiet(pid_t tid);

/* In a forked child: none of the registered threads but this one exists. */
void cmp_lock_tracking_forked_child(void);

/* Whether this process's locks go through the tracking (not if a static C
   library or Swift runtime kept their own definitions, or under TSan). */
int cmp_lock_tracking_active(void);

/* The C library's mutex functions, past the tracking: for the library's
   process-shared locks (shared.c). */
int cmp_untracked_mutex_trylock(pthread_mutex_t *mutex);
int cmp_untracked_mutex_lock(pthread_mutex_t *mutex);
int cmp_untracked_mutex_clocklock(pthread_mutex_t *mutex, clockid_t clock, const struct timespec *deadline);
int cmp_untracked_mutex_unlock(pthread_mutex_t *mutex);

#endif
