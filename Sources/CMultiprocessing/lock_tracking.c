/* Which threads hold a lock, so that a fork can happen when none does.

   The Swift runtime (metadata and conformance caches, type names, the
   wait queues of metadata being made) takes `pthread_mutex_lock` and
   nothing else, and its lazy globals run their initializers inside
   `swift_once` with the once-flag's own lock held. This file defines those
   functions in the program itself: the dynamic linker binds every library's
   calls (the runtime's, Foundation's, the C++ library's) to a definition in
   the executable before the C library's, so each lock and unlock passes
   through here, counts in a word of the thread's own, and goes on to the C
   library's own function (found with dlsym's RTLD_NEXT). The definitions
   are weak: a program linked with a static Swift runtime or C library
   keeps theirs, and then nothing is counted (`cmp_lock_tracking_active`
   says so).

   Every thread that passes through here is in a registry, so the forking
   thread can read what each one holds. During a stop of the world:
   - a thread that holds nothing, takes nothing and runs no initializer is
     not signalled at all: if it comes to take a lock or run an
     initializer before the stop is over, it waits at the door until the
     stop ends (the thread announces what it takes, then reads whether a
     stop is under way; the forking thread announces the stop, then reads
     what each thread takes: one of the two sees the other);
   - a thread that holds one, or is taking one, is signalled: if it holds
     one of the Swift runtime's (taken by the runtime's own code) it runs on
     and parks itself as it lets go of its last one (quiesce.c); one that
     holds only other libraries' parks at once, as a thread blocked on
     something the forking thread holds (stdout, say) could otherwise never
     let go; and while a thread holds any, it is never held at the door. */
#define _GNU_SOURCE
#include "lock_tracking.h"
#include "code_ranges.h"
#include "safe_waits.h"
#include "CMultiprocessing.h"

#include <dlfcn.h>
#include <errno.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
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

/* ---- The registry of threads ---- */

#define MAX_TRACKED 1024

typedef struct {
    _Atomic pid_t tid;   /* 0: free */
    cmp_lock_state_t *_Atomic state;
} tracked_thread_t;

static tracked_thread_t registry[MAX_TRACKED];
static pthread_key_t exit_key;
static pthread_once_t exit_key_once = PTHREAD_ONCE_INIT;

/* A thread that ends leaves the registry (its id may be reused), and never
   joins it again on its way out. */
static void thread_exit(void *entry) {
    tracked_thread_t *thread = &registry[(intptr_t)entry - 1];
    atomic_store_explicit(&thread->state, NULL, memory_order_seq_cst);
    atomic_store_explicit(&thread->tid, 0, memory_order_release);
    cmp_lock_state.registered_in = -1;
}

static void make_exit_key(void) { pthread_key_create(&exit_key, thread_exit); }

static void join_registry(cmp_lock_state_t *state) {
    pid_t process = cmp_current_pid();
    if (state->registered_in == process || state->registered_in == -1) return;
    state->registered_in = process;
    pthread_once(&exit_key_once, make_exit_key);
    pid_t tid = (pid_t)syscall(SYS_gettid);
    for (int i = 0; i < MAX_TRACKED; i++) {
        pid_t expected = 0;
        if (atomic_compare_exchange_strong_explicit(&registry[i].tid, &expected, tid, memory_order_acq_rel, memory_order_relaxed)) {
            atomic_store_explicit(&registry[i].state, state, memory_order_seq_cst);
            pthread_setspecific(exit_key, (void *)(intptr_t)(i + 1));
            return;
        }
    }
    /* No room: this thread is not seen, so it is always signalled. */
}

int cmp_lock_thread_is_quiet(pid_t tid) {
    for (int i = 0; i < MAX_TRACKED; i++) {
        if (atomic_load_explicit(&registry[i].tid, memory_order_acquire) != tid) continue;
        cmp_lock_state_t *state = atomic_load_explicit(&registry[i].state, memory_order_seq_cst);
        if (state == NULL) return 0;
        /* What it is taking first: it counts what it took before it says it is done taking. */
        if (atomic_load_explicit(&state->acquiring, memory_order_seq_cst) != NULL) return 0;
        if (atomic_load_explicit(&state->held, memory_order_seq_cst) != 0) return 0;
        return atomic_load_explicit(&state->onces, memory_order_seq_cst) == 0;
    }
    /* Not registered (never took a lock, or no room): signalled. */
    return 0;
}

void cmp_lock_tracking_forked_child(void) {
    /* One thread is left, whose entry is found again on its next lock.
       Only entries in use are written: a write copies a shared page. */
    for (int i = 0; i < MAX_TRACKED; i++) {
        if (atomic_load_explicit(&registry[i].tid, memory_order_relaxed) != 0) {
            atomic_store_explicit(&registry[i].state, NULL, memory_order_relaxed);
            atomic_store_explicit(&registry[i].tid, 0, memory_order_relaxed);
        }
    }
    cmp_lock_state.registered_in = 0;
    cmp_lock_state.deferred_slot = 0;
    cmp_lock_state.stopper = 0;
}

/* A fork made by anyone, not only the library (whose cmp_fork does the same):
   the child has one thread and no stop under way. */
static void forked_child(void) {
    cmp_safe_waits_forked_child();
    cmp_lock_tracking_forked_child();
}

__attribute__((constructor)) static void reset_in_every_child(void) { pthread_atfork(NULL, NULL, forked_child); }

/* ---- Parking later ---- */

/* What a thread whose park was deferred does as it lets go of its last lock. */
static void (*deferred_park)(int slot);

void cmp_lock_tracking_set_park(void (*park)(int slot)) { deferred_park = park; }

static inline void after_release(cmp_lock_state_t *state) {
    if (state->deferred_slot == 0) return;
    if (atomic_load_explicit(&state->runtime_held, memory_order_relaxed) == 0 &&
        atomic_load_explicit(&state->onces, memory_order_relaxed) == 0 && deferred_park != NULL) {
        int slot = state->deferred_slot - 1;
        state->deferred_slot = 0;
        atomic_signal_fence(memory_order_seq_cst);
        deferred_park(slot);
    }
}

/* Before taking `mutex` (announced in `acquiring`) for code at `caller`:
   a thread that holds nothing waits at the door while a stop is under way. */
static inline void enter(cmp_lock_state_t *state, pthread_mutex_t *mutex, void *caller) {
    join_registry(state);
    state->acquiring_runtime = cmp_in_swift_runtime((uintptr_t)caller);
    atomic_store_explicit(&state->acquiring, mutex, memory_order_seq_cst);
    while (atomic_load_explicit(&cmp_world_stopping, memory_order_seq_cst) != 0 && !state->stopper &&
           atomic_load_explicit(&state->held, memory_order_relaxed) == 0 &&
           atomic_load_explicit(&state->onces, memory_order_relaxed) == 0) {
        atomic_store_explicit(&state->acquiring, NULL, memory_order_seq_cst);
        cmp_wait_while_world_stops();
        atomic_store_explicit(&state->acquiring, mutex, memory_order_seq_cst);
    }
}

/* After the attempt: counted if taken, then no longer taking. */
static inline int leave(cmp_lock_state_t *state, int result) {
    if (result == 0 || result == EOWNERDEAD) {
        if (state->acquiring_runtime) atomic_fetch_add_explicit(&state->runtime_held, 1, memory_order_seq_cst);
        atomic_fetch_add_explicit(&state->held, 1, memory_order_seq_cst);
    }
    atomic_store_explicit(&state->acquiring, NULL, memory_order_seq_cst);
    return result;
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

/* In a statically linked program dlsym finds nothing; the C library's own
   names for its functions are there instead (weak: a dynamic link leaves
   them out). */
extern int __pthread_mutex_lock(pthread_mutex_t *) __attribute__((weak));
extern int __pthread_mutex_trylock(pthread_mutex_t *) __attribute__((weak));
extern int __pthread_mutex_unlock(pthread_mutex_t *) __attribute__((weak));
extern int __pthread_cond_wait(pthread_cond_t *, pthread_mutex_t *) __attribute__((weak));
extern int __pthread_cond_timedwait(pthread_cond_t *, pthread_mutex_t *, const struct timespec *) __attribute__((weak));
extern int __pthread_mutex_timedlock(pthread_mutex_t *, const struct timespec *) __attribute__((weak));

static void *next_symbol(_Atomic(void *) *cache, const char *name, const char *version) {
    void *found = atomic_load_explicit(cache, memory_order_acquire);
    if (found) return found;
    found = version ? dlvsym(RTLD_NEXT, name, version) : NULL;
    if (found == NULL) found = dlsym(RTLD_NEXT, name);
    if (found == NULL) {
        if (strcmp(name, "pthread_mutex_lock") == 0) found = (void *)__pthread_mutex_lock;
        else if (strcmp(name, "pthread_mutex_trylock") == 0) found = (void *)__pthread_mutex_trylock;
        else if (strcmp(name, "pthread_mutex_unlock") == 0) found = (void *)__pthread_mutex_unlock;
        else if (strcmp(name, "pthread_cond_wait") == 0) found = (void *)__pthread_cond_wait;
        else if (strcmp(name, "pthread_cond_timedwait") == 0) found = (void *)__pthread_cond_timedwait;
        else if (strcmp(name, "pthread_mutex_timedlock") == 0) found = (void *)__pthread_mutex_timedlock;
    }
    if (found == NULL && strcmp(name, "swift_once") != 0) {
        /* Nothing to go on to: the program cannot take a lock. */
        static const char message[] = "swift-multiprocessing: the C library's pthread functions cannot be found (a static link?)\n";
        (void)!write(2, message, sizeof message - 1);
        abort();
    }
    atomic_store_explicit(cache, found, memory_order_release);
    return found;
}

/* swift_once with no runtime's to go on to: a program linked with a static
   Swift runtime whose own swift_once this one displaced. The same token:
   0 not run, 1 running (waiters sleep on it), negative done. */
static void private_once(void *predicate, void (*initializer)(void *), void *context) {
    _Atomic int32_t *flag = predicate;
    int32_t expected = 0;
    if (atomic_compare_exchange_strong_explicit(flag, &expected, 1, memory_order_acq_rel, memory_order_acquire)) {
        initializer(context);
        atomic_store_explicit(flag, -1, memory_order_release);
        syscall(SYS_futex, (int32_t *)flag, FUTEX_WAKE_PRIVATE, INT32_MAX, NULL, NULL, 0);
        return;
    }
    while ((expected = atomic_load_explicit(flag, memory_order_acquire)) >= 0) {
        syscall(SYS_futex, (int32_t *)flag, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
    }
}

__attribute__((weak)) int pthread_mutex_lock(pthread_mutex_t *mutex) {
    mutex_fn next = (mutex_fn)next_symbol(&next_mutex_lock, "pthread_mutex_lock", NULL);
    cmp_lock_state_t *state = &cmp_lock_state;
    enter(state, mutex, __builtin_return_address(0));
    return leave(state, next(mutex));
}

__attribute__((weak)) int pthread_mutex_trylock(pthread_mutex_t *mutex) {
    mutex_fn next = (mutex_fn)next_symbol(&next_mutex_trylock, "pthread_mutex_trylock", NULL);
    cmp_lock_state_t *state = &cmp_lock_state;
    enter(state, mutex, __builtin_return_address(0));
    return leave(state, next(mutex));
}

__attribute__((weak)) int pthread_mutex_timedlock(pthread_mutex_t *mutex, const struct timespec *deadline) {
    mutex_timedlock_fn next = (mutex_timedlock_fn)next_symbol(&next_mutex_timedlock, "pthread_mutex_timedlock", "GLIBC_2.2.5");
    cmp_lock_state_t *state = &cmp_lock_state;
    enter(state, mutex, __builtin_return_address(0));
    return leave(state, next(mutex, deadline));
}

__attribute__((weak)) int pthread_mutex_clocklock(pthread_mutex_t *mutex, clockid_t clock, const struct timespec *deadline) {
    mutex_clocklock_fn next = (mutex_clocklock_fn)next_symbol(&next_mutex_clocklock, "pthread_mutex_clocklock", "GLIBC_2.30");
    cmp_lock_state_t *state = &cmp_lock_state;
    enter(state, mutex, __builtin_return_address(0));
    return leave(state, next(mutex, clock, deadline));
}

__attribute__((weak)) int pthread_mutex_unlock(pthread_mutex_t *mutex) {
    mutex_fn next = (mutex_fn)next_symbol(&next_mutex_unlock, "pthread_mutex_unlock", NULL);
    cmp_lock_state_t *state = &cmp_lock_state;
    int result = next(mutex);
    if (result == 0 && atomic_load_explicit(&state->held, memory_order_relaxed) > 0) {
        if (atomic_load_explicit(&state->runtime_held, memory_order_relaxed) > 0 && cmp_in_swift_runtime((uintptr_t)__builtin_return_address(0))) {
            atomic_fetch_sub_explicit(&state->runtime_held, 1, memory_order_seq_cst);
        }
        /* Holding none at all, it holds none of the runtime's (should a
           lock and its unlock have been told apart differently). */
        if (atomic_fetch_sub_explicit(&state->held, 1, memory_order_seq_cst) == 1) {
            atomic_store_explicit(&state->runtime_held, 0, memory_order_seq_cst);
        }
        after_release(state);
    }
    return result;
}

/* A condition wait lets go of the mutex and takes it again inside the C
   library, past the functions above: while it waits the thread holds it
   not, and `acquiring` says it will take it back (so a stop signals it,
   and its handler looks whether it has it back yet). */
/* Before a condition wait: it will take `mutex` back; it holds it not meanwhile. */
static inline void begin_condition_wait(cmp_lock_state_t *state, pthread_mutex_t *mutex) {
    join_registry(state);
    state->acquiring_runtime = 0;  /* the runtime waits on no condition */
    atomic_store_explicit(&state->acquiring, mutex, memory_order_seq_cst);
    if (atomic_load_explicit(&state->held, memory_order_relaxed) > 0) atomic_fetch_sub_explicit(&state->held, 1, memory_order_seq_cst);
}

/* After it: woken, timed out or interrupted, it has the mutex back. */
static inline int end_condition_wait(cmp_lock_state_t *state, int result) {
    atomic_fetch_add_explicit(&state->held, 1, memory_order_seq_cst);
    atomic_store_explicit(&state->acquiring, NULL, memory_order_seq_cst);
    return result;
}

__attribute__((weak)) int pthread_cond_wait(pthread_cond_t *condition, pthread_mutex_t *mutex) {
    cond_wait_fn next = (cond_wait_fn)next_symbol(&next_cond_wait, "pthread_cond_wait", "GLIBC_2.3.2");
    cmp_lock_state_t *state = &cmp_lock_state;
    begin_condition_wait(state, mutex);
    return end_condition_wait(state, next(condition, mutex));
}

__attribute__((weak)) int pthread_cond_timedwait(pthread_cond_t *condition, pthread_mutex_t *mutex, const struct timespec *deadline) {
    cond_timedwait_fn next = (cond_timedwait_fn)next_symbol(&next_cond_timedwait, "pthread_cond_timedwait", "GLIBC_2.3.2");
    cmp_lock_state_t *state = &cmp_lock_state;
    begin_condition_wait(state, mutex);
    return end_condition_wait(state, next(condition, mutex, deadline));
}

__attribute__((weak)) int pthread_cond_clockwait(pthread_cond_t *condition, pthread_mutex_t *mutex, clockid_t clock, const struct timespec *deadline) {
    cond_clockwait_fn next = (cond_clockwait_fn)next_symbol(&next_cond_clockwait, "pthread_cond_clockwait", "GLIBC_2.30");
    cmp_lock_state_t *state = &cmp_lock_state;
    begin_condition_wait(state, mutex);
    return end_condition_wait(state, next(condition, mutex, clock, deadline));
}

/* A lazy global's initializer runs with its once-flag locked: a child that
   touched that global would wait for ever. Counted like a lock, and held
   at the door like one. */
__attribute__((weak)) void swift_once(void *predicate, void (*initializer)(void *), void *context) {
    if (once_fast_path && atomic_load_explicit((_Atomic int32_t *)predicate, memory_order_acquire) < 0) return;
    once_fn next = (once_fn)next_symbol(&next_swift_once, "swift_once", NULL);
    cmp_lock_state_t *state = &cmp_lock_state;
    join_registry(state);
    atomic_fetch_add_explicit(&state->onces, 1, memory_order_seq_cst);
    while (atomic_load_explicit(&cmp_world_stopping, memory_order_seq_cst) != 0 && !state->stopper &&
           atomic_load_explicit(&state->held, memory_order_relaxed) == 0 &&
           atomic_load_explicit(&state->onces, memory_order_relaxed) == 1) {
        atomic_fetch_sub_explicit(&state->onces, 1, memory_order_seq_cst);
        cmp_wait_while_world_stops();
        atomic_fetch_add_explicit(&state->onces, 1, memory_order_seq_cst);
    }
    if (next != NULL) next(predicate, initializer, context); else private_once(predicate, initializer, context);
    atomic_fetch_sub_explicit(&state->onces, 1, memory_order_seq_cst);
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
    if (next == NULL) {
        once_fast_path = 1;  /* private_once's own token */
        return;
    }
    _Alignas(8) int64_t token = 0;
    int ran = 0;
    next(&token, note_ran, &ran);
    once_fast_path = ran == 1 && *(int32_t *)&token < 0;
}

int cmp_lock_tracking_active(void) {
    /* One lock and unlock of a mutex of our own through the public names:
       counted if these definitions are the ones bound. */
    static pthread_mutex_t probe = PTHREAD_MUTEX_INITIALIZER;
    int before = atomic_load_explicit(&cmp_lock_state.held, memory_order_relaxed);
    pthread_mutex_lock(&probe);
    int counted = atomic_load_explicit(&cmp_lock_state.held, memory_order_relaxed) == before + 1;
    pthread_mutex_unlock(&probe);
    return counted;
}

/* The library's own locks in shared memory (cmp_lock_t) go to the C library
   directly: they are process-shared, so one held at a fork is let go by its
   holder in the parent and a child that waits for it is woken; counting them
   bought no safety and cost a fifth of a queue's time. A thread that holds
   one and nothing else is quiet to a stop: it runs on, and waits at the door
   should it come to take another lock. */
int cmp_untracked_mutex_trylock(pthread_mutex_t *mutex) {
    return ((mutex_fn)next_symbol(&next_mutex_trylock, "pthread_mutex_trylock", NULL))(mutex);
}

int cmp_untracked_mutex_lock(pthread_mutex_t *mutex) {
    return ((mutex_fn)next_symbol(&next_mutex_lock, "pthread_mutex_lock", NULL))(mutex);
}

int cmp_untracked_mutex_clocklock(pthread_mutex_t *mutex, clockid_t clock, const struct timespec *deadline) {
    return ((mutex_clocklock_fn)next_symbol(&next_mutex_clocklock, "pthread_mutex_clocklock", "GLIBC_2.30"))(mutex, clock, deadline);
}

int cmp_untracked_mutex_unlock(pthread_mutex_t *mutex) {
    return ((mutex_fn)next_symbol(&next_mutex_unlock, "pthread_mutex_unlock", NULL))(mutex);
}

#else

int cmp_lock_tracking_active(void) { return 0; }

int cmp_untracked_mutex_trylock(pthread_mutex_t *mutex) { return pthread_mutex_trylock(mutex); }
int cmp_untracked_mutex_lock(pthread_mutex_t *mutex) { return pthread_mutex_lock(mutex); }
int cmp_untracked_mutex_clocklock(pthread_mutex_t *mutex, clockid_t clock, const struct timespec *deadline) {
    return pthread_mutex_clocklock(mutex, clock, deadline);
}
int cmp_untracked_mutex_unlock(pthread_mutex_t *mutex) { return pthread_mutex_unlock(mutex); }

#endif

int cmp_lock_verdict(void) {
    cmp_lock_state_t *state = &cmp_lock_state;
    if (atomic_load_explicit(&state->runtime_held, memory_order_relaxed) > 0 ||
        atomic_load_explicit(&state->onces, memory_order_relaxed) > 0) return 1;
    pthread_mutex_t *mutex = atomic_load_explicit(&state->acquiring, memory_order_relaxed);
    if (mutex == NULL || !state->acquiring_runtime) return 0;
    /* Taking it, or taking it back after a condition wait: already its own
       (the owner is this thread), or at the instant between taking the lock
       word and writing the owner (either thread's): not yet. Waiting for
       another thread to let go: it holds nothing. */
    pid_t owner = __atomic_load_n(&mutex->__data.__owner, __ATOMIC_RELAXED);
    int word = __atomic_load_n(&mutex->__data.__lock, __ATOMIC_RELAXED);
    if (owner == (pid_t)syscall(SYS_gettid)) return 1;
    return word != 0 && owner == 0;
}
