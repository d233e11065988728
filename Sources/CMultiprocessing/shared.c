#define _GNU_SOURCE
#include "CMultiprocessing.h"
#include "lock_tracking.h"

#include <errno.h>
#include <sched.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>

int cmp_memfd_create(const char *name) { return memfd_create(name, MFD_CLOEXEC); }

int cmp_shm_open(const char *name, int create_exclusive) {
    int flags = O_RDWR | O_CLOEXEC | (create_exclusive ? O_CREAT | O_EXCL : 0);
    return shm_open(name, flags, 0600);
}

int cmp_shm_unlink(const char *name) { return shm_unlink(name); }

void *cmp_map_shared(int fd, size_t size) {
    void *address = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    return address == MAP_FAILED ? NULL : address;
}

long long cmp_descriptor_size(int fd) {
    struct stat info;
    if (fstat(fd, &info) == -1) return -1;
    return (long long)info.st_size;
}

struct timespec cmp_deadline_after(long long timeout_ns) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long total = (long long)now.tv_nsec + timeout_ns % 1000000000LL;
    now.tv_sec += (time_t)(timeout_ns / 1000000000LL + total / 1000000000LL);
    now.tv_nsec = (long)(total % 1000000000LL);
    return now;
}

int cmp_lock_init(cmp_lock_t *lock, int recursive) {
    pthread_mutexattr_t attributes;
    pthread_mutexattr_init(&attributes);
    pthread_mutexattr_setpshared(&attributes, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&attributes, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_settype(&attributes, recursive ? PTHREAD_MUTEX_RECURSIVE : PTHREAD_MUTEX_ERRORCHECK);
    int rc = pthread_mutex_init(&lock->mutex, &attributes);
    pthread_mutexattr_destroy(&attributes);
    return rc;
}

static inline void cpu_relax(unsigned times) {
    for (unsigned i = 0; i < times; i++) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

int cmp_lock_acquire(cmp_lock_t *lock, long long timeout_ns) {
    int rc;
    /* A lock is mostly held for a few instructions: try for a moment before
       sleeping in the kernel (glibc's adaptive mutexes do the same, but a
       mutex cannot be both adaptive and robust). While it is held, only read
       its word, and less often the longer it stays held: every read takes
       the cache line from the holder, and a failing compare-and-swap would
       take it for writing. The first pause is already 16 (about 0.4 us) and
       they grow to 256 (about 6 us): a holder that takes the lock again and
       again keeps it for a while, rather than the two sides handing it (and
       its cache line) back and forth at every turn — throughput bought with
       fairness, as unfair locks do (2x on two processes incrementing a
       shared value). A try with a zero timeout is one try. */
    unsigned delay = 16;
    unsigned budget = timeout_ns == 0 ? 0 : 4000;
    for (unsigned spent = 0; spent < budget; spent += delay) {
        int word = __atomic_load_n(&lock->mutex.__data.__lock, __ATOMIC_RELAXED);
        if (word == 0 || (word & FUTEX_OWNER_DIED)) {
            rc = cmp_untracked_mutex_trylock(&lock->mutex);
            if (rc == 0) return 0;
            if (rc == EOWNERDEAD) {
                pthread_mutex_consistent(&lock->mutex);
                return rc;
            }
            if (rc != EBUSY) break;
        }
        cpu_relax(delay);
        if (delay < 256) delay *= 2;
    }
    if (timeout_ns < 0) {
        rc = cmp_untracked_mutex_lock(&lock->mutex);
    } else {
        struct timespec deadline = cmp_deadline_after(timeout_ns);
        rc = cmp_untracked_mutex_clocklock(&lock->mutex, CLOCK_MONOTONIC, &deadline);
    }
    if (rc == EOWNERDEAD) {
        /* The caller holds it now; mark it usable again and say so. */
        pthread_mutex_consistent(&lock->mutex);
    }
    return rc;
}

int cmp_lock_release(cmp_lock_t *lock) { return cmp_untracked_mutex_unlock(&lock->mutex); }

int cmp_semaphore_init(cmp_semaphore_t *semaphore, unsigned value, int maximum) {
    semaphore->maximum = maximum;
    return sem_init(&semaphore->semaphore, 1, value) == -1 ? errno : 0;
}

int cmp_semaphore_acquire(cmp_semaphore_t *semaphore, long long timeout_ns) {
    int rc;
    if (timeout_ns < 0) {
        do { rc = sem_wait(&semaphore->semaphore); } while (rc == -1 && errno == EINTR);
    } else {
        struct timespec deadline = cmp_deadline_after(timeout_ns);
        do { rc = sem_clockwait(&semaphore->semaphore, CLOCK_MONOTONIC, &deadline); } while (rc == -1 && errno == EINTR);
    }
    return rc == -1 ? errno : 0;
}

int cmp_semaphore_release(cmp_semaphore_t *semaphore) {
    if (semaphore->maximum > 0) {
        int value = 0;
        sem_getvalue(&semaphore->semaphore, &value);
        if (value >= semaphore->maximum) return ERANGE;
    }
    return sem_post(&semaphore->semaphore) == -1 ? errno : 0;
}

int cmp_semaphore_value(cmp_semaphore_t *semaphore) {
    int value = 0;
    sem_getvalue(&semaphore->semaphore, &value);
    return value;
}

static int condition_init(cmp_futex_condition_t *condition) {
    condition->sequence = 0;
    condition->sleepers = 0;
    return 0;
}

int cmp_futex_condition_wait_spinning(cmp_futex_condition_t *condition, cmp_lock_t *lock, const struct timespec *deadline, unsigned spins) {
    uint32_t sequence = __atomic_load_n(&condition->sequence, __ATOMIC_ACQUIRE);
    if (spins > 0) {
        /* Watch for a signal for a moment without sleeping: a waiter that is
           not asleep costs its signaller no wake-up system call. */
        cmp_lock_release(lock);
        for (unsigned i = 0; i < spins; i++) {
            if (__atomic_load_n(&condition->sequence, __ATOMIC_ACQUIRE) != sequence) {
                cmp_lock_acquire(lock, -1);
                return 0;
            }
            cpu_relax(4);
            /* Now and then (every ~6 us) let another thread of this CPU run:
               when the signaller shares the CPU it can go on, and two threads
               that stay runnable are soon moved apart by the scheduler (two
               that sleep and wake each other stay together). Not more often:
               a waiter inside sched_yield notices the signal late (yielding
               every 0.4 us halved a managed dictionary's set rate). */
            if (i % 256 == 255) sched_yield();
        }
        cmp_lock_acquire(lock, -1);
        /* The caller's predicate may have changed while the lock was free. */
        if (__atomic_load_n(&condition->sequence, __ATOMIC_ACQUIRE) != sequence) return 0;
    }
    return cmp_futex_condition_wait(condition, lock, deadline);
}

int cmp_futex_condition_wait(cmp_futex_condition_t *condition, cmp_lock_t *lock, const struct timespec *deadline) {
    uint32_t sequence = __atomic_load_n(&condition->sequence, __ATOMIC_ACQUIRE);
    __atomic_add_fetch(&condition->sleepers, 1, __ATOMIC_ACQ_REL);
    cmp_lock_release(lock);
    /* Shared (not private) futex: the word is in memory other processes map. */
    /* A signal (the library's own, stopping threads for a fork) is not a
       wake-up: wait again for the same sequence until the absolute deadline. */
    long rc;
    do {
        rc = syscall(SYS_futex, &condition->sequence, FUTEX_WAIT_BITSET, sequence, deadline, NULL, FUTEX_BITSET_MATCH_ANY);
    } while (rc == -1 && errno == EINTR && __atomic_load_n(&condition->sequence, __ATOMIC_ACQUIRE) == sequence);
    int timed_out = rc == -1 && errno == ETIMEDOUT;
    cmp_lock_acquire(lock, -1);
    __atomic_sub_fetch(&condition->sleepers, 1, __ATOMIC_ACQ_REL);
    return timed_out ? ETIMEDOUT : 0;
}

void cmp_futex_condition_signal(cmp_futex_condition_t *condition, int all) {
    __atomic_add_fetch(&condition->sequence, 1, __ATOMIC_ACQ_REL);
    /* A sleeper that died leaves the count high: only extra wake-ups follow. */
    if (__atomic_load_n(&condition->sleepers, __ATOMIC_ACQUIRE) > 0) {
        syscall(SYS_futex, &condition->sequence, FUTEX_WAKE, all ? INT32_MAX : 1, NULL, NULL, 0);
    }
}

/* Waits on `condition` with `lock` held; a dead previous holder is not an
   error here (the protected fields are plain words, always consistent). */
static int condition_wait(cmp_futex_condition_t *condition, cmp_lock_t *lock, const struct timespec *deadline) {
    return cmp_futex_condition_wait(condition, lock, deadline);
}

static void internal_lock(cmp_lock_t *lock) {
    /* Internal locks guard a few words that are never left half-written. */
    cmp_lock_acquire(lock, -1);
}

int cmp_event_init(cmp_event_t *event) {
    event->flag = 0;
    int rc = cmp_lock_init(&event->lock, 0);
    return rc ? rc : condition_init(&event->changed);
}

int cmp_event_set(cmp_event_t *event, int value) {
    internal_lock(&event->lock);
    event->flag = value;
    if (value) cmp_futex_condition_signal(&event->changed, 1);
    return cmp_lock_release(&event->lock);
}

int cmp_event_is_set(cmp_event_t *event) {
    return __atomic_load_n(&event->flag, __ATOMIC_ACQUIRE);
}

int cmp_event_wait(cmp_event_t *event, long long timeout_ns) {
    struct timespec deadline;
    if (timeout_ns >= 0) deadline = cmp_deadline_after(timeout_ns);
    internal_lock(&event->lock);
    int rc = 0;
    while (!event->flag && rc == 0) {
        rc = condition_wait(&event->changed, &event->lock, timeout_ns >= 0 ? &deadline : NULL);
    }
    int set = event->flag;
    cmp_lock_release(&event->lock);
    return set ? 0 : ETIMEDOUT;
}

int cmp_condition_init(cmp_condition_t *condition) { return condition_init(&condition->condition); }

int cmp_condition_wait(cmp_condition_t *condition, cmp_lock_t *lock, long long timeout_ns) {
    struct timespec deadline;
    if (timeout_ns >= 0) deadline = cmp_deadline_after(timeout_ns);
    return condition_wait(&condition->condition, lock, timeout_ns >= 0 ? &deadline : NULL);
}

int cmp_condition_notify(cmp_condition_t *condition, int all) {
    cmp_futex_condition_signal(&condition->condition, all);
    return 0;
}

int cmp_barrier_init(cmp_barrier_t *barrier, int parties) {
    barrier->parties = parties;
    barrier->waiting = 0;
    barrier->generation = 0;
    barrier->resets = 0;
    barrier->broken = 0;
    int rc = cmp_lock_init(&barrier->lock, 0);
    return rc ? rc : condition_init(&barrier->changed);
}

int cmp_barrier_wait(cmp_barrier_t *barrier, long long timeout_ns, int *index) {
    struct timespec deadline;
    if (timeout_ns >= 0) deadline = cmp_deadline_after(timeout_ns);
    internal_lock(&barrier->lock);
    if (barrier->broken) {
        cmp_lock_release(&barrier->lock);
        return EPIPE;
    }
    unsigned generation = barrier->generation;
    unsigned resets = barrier->resets;
    *index = barrier->parties - 1 - barrier->waiting;
    barrier->waiting += 1;
    if (barrier->waiting == barrier->parties) {
        barrier->waiting = 0;
        barrier->generation += 1;
        cmp_futex_condition_signal(&barrier->changed, 1);
        cmp_lock_release(&barrier->lock);
        return 0;
    }
    int rc = 0;
    while (barrier->generation == generation && barrier->resets == resets && !barrier->broken && rc == 0) {
        rc = condition_wait(&barrier->changed, &barrier->lock, timeout_ns >= 0 ? &deadline : NULL);
    }
    int result = 0;
    if (barrier->resets != resets) {
        result = EPIPE;
    } else if (barrier->generation != generation) {
        result = 0;
    } else if (barrier->broken) {
        result = EPIPE;
    } else {
        /* Timed out: the barrier breaks, releasing everyone with an error. */
        barrier->broken = 1;
        barrier->waiting = 0;
        cmp_futex_condition_signal(&barrier->changed, 1);
        result = ETIMEDOUT;
    }
    cmp_lock_release(&barrier->lock);
    return result;
}

int cmp_barrier_abort(cmp_barrier_t *barrier) {
    internal_lock(&barrier->lock);
    barrier->broken = 1;
    barrier->waiting = 0;
    cmp_futex_condition_signal(&barrier->changed, 1);
    return cmp_lock_release(&barrier->lock);
}

int cmp_barrier_reset(cmp_barrier_t *barrier) {
    internal_lock(&barrier->lock);
    /* Those waiting are released with an error, as in Python. */
    barrier->resets += 1;
    barrier->waiting = 0;
    barrier->broken = 0;
    cmp_futex_condition_signal(&barrier->changed, 1);
    return cmp_lock_release(&barrier->lock);
}

int cmp_barrier_waiting(cmp_barrier_t *barrier) {
    return __atomic_load_n(&barrier->waiting, __ATOMIC_ACQUIRE);
}

int cmp_barrier_is_broken(cmp_barrier_t *barrier) {
    return __atomic_load_n(&barrier->broken, __ATOMIC_ACQUIRE);
}
