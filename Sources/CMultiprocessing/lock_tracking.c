/* Which threads hold a lock, so that a fork can wait until none does.

   The Swift runtime (metadata and conformance caches, type names, the
   wait queues of metadata being made) takes `pthread_mutex_lock` and
   nothing else, and its lazy globals run their initializers inside
   `swift_once` with the once-flag's own lock held. This file defines those
   functions in the program itself: the dynamic linker binds every library's
   calls (the runtime's, Foundation's, the C++ library's) to a definition in
   the executable before the C library's, so each lock and unlock passes
   through here, counts in a thread-local word, and goes on to the C
   library's own function (found with dlsym's RTLD_NEXT). The definitions are weak: a program linked with
   a static Swift runtime or C library keeps theirs, and then nothing is
   counted (`cmp_lock_tracking_active` says so).

   A thread that the stop-the-world signal finds holding a lock, or
   running a lazy global's initializer, is not parked: it runs on, and parks
   itself right after it lets go of its last one (quiesce.c). So the world
   stops only at instants when no thread holds any such lock, whatever the
   threads were doing, and without reading their stacks.

   What is read from a signal handler on the same thread is only written by
   that thread: compiler barriers order it, no atomics are needed. */
#define _GNU_SOURCE
#include "lock_tracking.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CMP_NO_LOCK_TRACKING 1
#endif
#endif

__thread cmp_lock_state_t cmp_lock_state __attribute__((tls_model("initial-exec")));

#define BARRIER() atomic_signal_fence(memory_order_seq_cst)

/* What a parked-later thread does when it lets go of its last lock. */
static void (*deferred_park)(int slot);

void cmp_lock_tracking_set_park(void (*park)(int slot)) { deferred_park = park; }

static inline void after_release(cmp_lock_state_t *state) {
    BARRIER();
    if (state->held == 0 && state->onces == 0 && state->deferred_slot != 0 && deferred_park != NULL) {
        int slot = state->deferred_slot - 1;
        state->deferred_slot = 0;
        BARRIER();
        deferred_park(slot);
    }
}

#ifndef CMP_NO_LOCK_TRACKING

/* The C library's own functions, found once with dlsym (the first call
   may come from another library's constructor, before ours has run). */
typedef int (*mutex_fn)(pthread_mutex_t *);
typedef int (*cond_wait_fn)(pthread_cond_t *, pthread_mutex_t *);
typedef int (*cond_timedwait_fn)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
typedef int (*cond_clockwait_fn)(pthread_cond_t *, pthread_mutex_t *, clockid_t, const struct timespec *);
typedef int (*mutex_timedlock_fn)(pthread_mutex_t *, const struct timespec *);
typedef int (*mutex_clocklock_fn)(pthread_mutex_t *, clockid_t, const struct timespec *);
typedef void (*once_fn)(void *, void (*)(void *), void *);

static _Atomic(void *) next_mutex_lock, next_mutex_trylock, next_mutex_unlock;
static _Atomic(void *) next_cond_wait, next_cond_timedwait, next_cond_clockwait;
static _Atomic(void *) next_mutex_timedlock, next_mutex_clocklock, next_swift_once;
/* Whether `swift_once`'s token reads negative once its initializer has run,
   as the runtime's own fast path assumes: checked at start-up. */
static int once_fast_path;

static void *next_symbol(_Atomic(void *) *cache, const char *name, const char *version) {
    void *found = atomic_load_explicit(cache, memory_order_acquire);
    if (found) return found;
    found = version ? dlvsym(RTLD_NEXT, name, version) : NULL;
    if (found == NULL) found = dlsym(RTLD_NEXT, name);
    atomic_store_explicit(cache, found, memory_order_release);
    return found;
}

static inline int acquired(int result) { return result == 0 || result == EOWNERDEAD; }

__attribute__((weak)) int pthread_mutex_lock(pthread_mutex_t *mutex) {
    cmp_lock_state_t *state = &cmp_lock_state;
    state->acquiring = mutex;
    BARRIER();
    mutex_fn next = (mutex_fn)next_symbol(&next_mutex_lock, "pthread_mutex_lock", NULL);
    int result = next(mutex);
    if (acquired(result)) state->held++;
    BARRIER();
    state->acquiring = NULL;
    return result;
}

__attribute__((weak)) int pthread_mutex_trylock(pthread_mutex_t *mutex) {
    cmp_lock_state_t *state = &cmp_lock_state;
    state->acquiring = mutex;
    BARRIER();
    mutex_fn next = (mutex_fn)next_symbol(&next_mutex_trylock, "pthread_mutex_trylock", NULL);
    int result = next(mutex);
    if (acquired(result)) state->held++;
    BARRIER();
    state->acquiring = NULL;
    return result;
}

__attribute__((weak)) int pthread_mutex_timedlock(pthread_mutex_t *mutex, const struct timespec *deadline) {
    mutex_timedlock_fn next = (mutex_timedlock_fn)next_symbol(&next_mutex_timedlock, "pthread_mutex_timedlock", "GLIBC_2.2.5");
    cmp_lock_state_t *state = &cmp_lock_state;
    state->acquiring = mutex;
    BARRIER();
    int result = next(mutex, deadline);
    if (acquired(result)) state->held++;
    BARRIER();
    state->acquiring = NULL;
    return result;
}

__attribute__((weak)) int pthread_mutex_clocklock(pthread_mutex_t *mutex, clockid_t clock, const struct timespec *deadline) {
    mutex_clocklock_fn next = (mutex_clocklock_fn)next_symbol(&next_mutex_clocklock, "pthread_mutex_clocklock", "GLIBC_2.30");
    cmp_lock_state_t *state = &cmp_lock_state;
    state->acquiring = mutex;
    BARRIER();
    int result = next(mutex, clock, deadline);
    if (acquired(result)) state->held++;
    BARRIER();
    state->acquiring = NULL;
    return result;
}

__attribute__((weak)) int pthread_mutex_unlock(pthread_mutex_t *mutex) {
    cmp_lock_state_t *state = &cmp_lock_state;
    mutex_fn next = (mutex_fn)next_symbol(&next_mutex_unlock, "pthread_mutex_unlock", NULL);
    int result = next(mutex);
    if (result == 0 && state->held > 0) {
        state->held--;
        after_release(state);
    }
    return result;
}

/* A condition wait lets go of the mutex and takes it again inside the C
   library, past the functions above: while it waits the thread holds it
   not, and `acquiring` tells a signal handler to look whether it has it
   back yet. */
#define CONDITION_WAIT(call)                      \
    cmp_lock_state_t *state = &cmp_lock_state;    \
    if (state->held > 0) state->held--;           \
    state->acquiring = mutex;                     \
    BARRIER();                                    \
    int result = call;                            \
    state->held++;                                \
    BARRIER();                                    \
    state->acquiring = NULL;                      \
    return result;

__attribute__((weak)) int pthread_cond_wait(pthread_cond_t *condition, pthread_mutex_t *mutex) {
    cond_wait_fn next = (cond_wait_fn)next_symbol(&next_cond_wait, "pthread_cond_wait", "GLIBC_2.3.2");
    CONDITION_WAIT(next(condition, mutex))
}

__attribute__((weak)) int pthread_cond_timedwait(pthread_cond_t *condition, pthread_mutex_t *mutex, const struct timespec *deadline) {
    cond_timedwait_fn next = (cond_timedwait_fn)next_symbol(&next_cond_timedwait, "pthread_cond_timedwait", "GLIBC_2.3.2");
    CONDITION_WAIT(next(condition, mutex, deadline))
}

__attribute__((weak)) int pthread_cond_clockwait(pthread_cond_t *condition, pthread_mutex_t *mutex, clockid_t clock, const struct timespec *deadline) {
    cond_clockwait_fn next = (cond_clockwait_fn)next_symbol(&next_cond_clockwait, "pthread_cond_clockwait", "GLIBC_2.30");
    CONDITION_WAIT(next(condition, mutex, clock, deadline))
}

/* A lazy global's initializer runs with its once-flag locked: a child that
   touched that global would wait for ever. Counted like a lock. */
__attribute__((weak)) void swift_once(void *predicate, void (*initializer)(void *), void *context) {
    if (once_fast_path && atomic_load_explicit((_Atomic int32_t *)predicate, memory_order_acquire) < 0) return;
    once_fn next = (once_fn)next_symbol(&next_swift_once, "swift_once", NULL);
    cmp_lock_state_t *state = &cmp_lock_state;
    state->onces++;
    BARRIER();
    next(predicate, initializer, context);
    BARRIER();
    state->onces--;
    after_release(state);
}

static void note_ran(void *context) { *(int *)context = 1; }

__attribute__((constructor(101))) static void find_next_symbols(void) {
    next_symbol(&next_mutex_lock, "pthread_mutex_lock", NULL);
    next_symbol(&next_mutex_trylock, "pthread_mutex_trylock", NULL);
    next_symbol(&next_mutex_unlock, "pthread_mutex_unlock", NULL);
}

__attribute__((constructor)) static void check_once_layout(void) {
    once_fn next = (once_fn)next_symbol(&next_swift_once, "swift_once", NULL);
    if (next == NULL) return;
    _Alignas(8) int64_t token = 0;
    int ran = 0;
    next(&token, note_ran, &ran);
    once_fast_path = ran == 1 && *(int32_t *)&token < 0;
}

int cmp_lock_tracking_active(void) {
    /* One lock and unlock of a mutex of our own through the public names:
       counted if these definitions are the ones bound. */
    static pthread_mutex_t probe = PTHREAD_MUTEX_INITIALIZER;
    int before = cmp_lock_state.held;
    pthread_mutex_lock(&probe);
    int counted = cmp_lock_state.held == before + 1;
    pthread_mutex_unlock(&probe);
    return counted;
}

#else

int cmp_lock_tracking_active(void) { return 0; }

#endif

int cmp_lock_verdict(void) {
    cmp_lock_state_t *state = &cmp_lock_state;
    if (state->held > 0 || state->onces > 0) return 1;
    pthread_mutex_t *mutex = state->acquiring;
    if (mutex == NULL) return 0;
    /* Acquiring, or taking it back after a condition wait: already its own
       (the owner is this thread), or at the instant between taking the lock
       word and writing the owner (either thread's): not yet. Waiting for
       another thread to let go: it holds nothing. */
    pid_t owner = __atomic_load_n(&mutex->__data.__owner, __ATOMIC_RELAXED);
    int word = __atomic_load_n(&mutex->__data.__lock, __ATOMIC_RELAXED);
    if (owner == (pid_t)syscall(SYS_gettid)) return 1;
    return word != 0 && owner == 0;
}
