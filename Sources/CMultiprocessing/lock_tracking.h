/* Private to the C target: which locks this thread holds (lock_tracking.c). */
#ifndef CMP_LOCK_TRACKING_H
#define CMP_LOCK_TRACKING_H

#include <pthread.h>

typedef struct {
    /* pthread mutexes held (taken and not yet let go). */
    int held;
    /* swift_once initializers running. */
    int onces;
    /* A mutex being taken, or taken back at the end of a condition wait. */
    pthread_mutex_t *acquiring;
    /* 1 + the park slot to park in when the last lock is let go; 0: none. */
    int deferred_slot;
} cmp_lock_state_t;

extern __thread cmp_lock_state_t cmp_lock_state __attribute__((tls_model("initial-exec")));

/* Called on the thread itself (from the park signal's handler): 0 if it
   holds no lock and runs no initializer, so it may park; 1 if not yet. */
int cmp_lock_verdict(void);

/* What a thread whose park was deferred calls as it lets go of its last lock. */
void cmp_lock_tracking_set_park(void (*park)(int slot));

/* Whether this process's locks go through the tracking (not if a static C
   library or Swift runtime kept their own definitions, or under TSan). */
int cmp_lock_tracking_active(void);

#endif
