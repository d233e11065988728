/* Stopping every other thread of the process before a fork.

   A forked child has one thread. A lock another thread held at the instant
   of the fork stays held in the child for ever; the Swift runtime's locks
   (metadata and conformance caches, type names, once-flags) cannot be taken
   across the fork the way the library's own are. So before it forks, the
   forking thread parks every other thread in a signal handler that only
   waits, reads where each one stopped, and forks only when none of them is
   inside the runtime's C++ code (or inside the C library's own locked
   paths, which fork itself needs: malloc's arenas). A thread found inside the
   runtime is let run until its outermost runtime call returns (the return
   address is pointed at a trampoline that parks it); one inside the C
   library is let run a moment and looked at again. The others stay parked
   meanwhile, so they cannot go in. After the fork, the parent lets them all
   go. Whatever cannot be stopped or judged within the budget is reported,
   and the fork goes ahead as a plain one.

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
#include "safe_waits.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#define MAX_THREADS 1024
#define PARK_SIGNAL SIGSYS

/* ---- Parking ---- */

/* IDLE: not part of a stop. REQUESTED: sent the signal, not parked yet.
   PARKED: waiting in the handler (or in the trampoline). HIJACKED: let
   run with the return address of its outermost runtime frame pointed at
   the trampoline, which parks it as it leaves the runtime. WAITING: blocked
   in one of the library's own waits (safe_waits.c), counted as parked
   without a signal; it waits on its way out until the stop is over. */
enum { SLOT_IDLE = 0, SLOT_REQUESTED = 1, SLOT_PARKED = 2, SLOT_HIJACKED = 3, SLOT_WAITING = 4 };

typedef struct {
    pid_t tid;
    _Atomic uint32_t state;
    uintptr_t pc, sp, bp;
    uintptr_t stack_low, stack_high;  /* the mapping that holds sp, once found */
    int verdict;
    uintptr_t hijack;
} park_slot_t;

static park_slot_t slots[MAX_THREADS];
static int slot_count;

/* Each thread's stack mapping, kept from one stop to the next: reading
   /proc/self/maps costs more than the rest of a stop. An entry is trusted
   only if its thread was there at the previous stop too (every stop lists
   every thread, so a gap means the thread ended and the id may be reused). */
typedef struct { pid_t tid; uint32_t seen; uintptr_t low, high; } stack_entry_t;
static stack_entry_t stack_cache[MAX_THREADS];
static uint32_t stop_generation;
static _Atomic uint32_t arrivals;
/* The stopper sleeps until `arrivals` reaches `wake_at`: one wake-up per
   wait, not one per parked thread. */
static _Atomic uint32_t wake_at;
static uint32_t cookie;
static pid_t owner_pid;
static struct sigaction previous_action;
static _Atomic int handler_installed;

/* The functions that read the stacks of other, parked threads word by word
   (and, to hijack, write one word there): AddressSanitizer would call those
   reads out of bounds (a frame's redzones), so they are not instrumented. */
#define CMP_SCANS_FOREIGN_STACKS __attribute__((no_sanitize("address")))

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

/* Parks the calling thread in its slot if the slot is still in `expected`
   (a request, or a hijack), until the stopper lets it go. */
static void park_if(park_slot_t *slot, uint32_t expected) {
    if (!atomic_compare_exchange_strong_explicit(&slot->state, &expected, SLOT_PARKED,
                                                 memory_order_acq_rel, memory_order_acquire)) return;
    announce_arrival();
    while (atomic_load_explicit(&slot->state, memory_order_acquire) == SLOT_PARKED) {
        futex(&slot->state, FUTEX_WAIT_PRIVATE, SLOT_PARKED, NULL);
    }
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
    if (slot->tid != (pid_t)syscall(SYS_gettid)) { errno = saved_errno; return; }
    const ucontext_t *registers = context;
    slot->pc = (uintptr_t)registers->uc_mcontext.gregs[REG_RIP];
    slot->sp = (uintptr_t)registers->uc_mcontext.gregs[REG_RSP];
    slot->bp = (uintptr_t)registers->uc_mcontext.gregs[REG_RBP];
    /* The stopper may have given up on this request: then it is not ours to park. */
    park_if(slot, SLOT_REQUESTED);
    errno = saved_errno;
}

static int install_handler(void) {
    if (atomic_load_explicit(&handler_installed, memory_order_acquire)) return 0;
    uint32_t random_cookie = 0;
    if (syscall(SYS_getrandom, &random_cookie, sizeof random_cookie, 0) != sizeof random_cookie) {
        random_cookie = (uint32_t)getpid() * 2654435761u ^ (uint32_t)time(NULL);
    }
    cookie = random_cookie | 1;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = park_handler;
    action.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigfillset(&action.sa_mask);
    if (sigaction(PARK_SIGNAL, &action, &previous_action) == -1) return -1;
    atomic_store_explicit(&handler_installed, 1, memory_order_release);
    return 0;
}

static int request_park(int index) {
    park_slot_t *slot = &slots[index];
    atomic_store_explicit(&slot->state, SLOT_REQUESTED, memory_order_release);
    siginfo_t info;
    memset(&info, 0, sizeof info);
    info.si_signo = PARK_SIGNAL;
    info.si_code = SI_QUEUE;
    info.si_pid = owner_pid;
    info.si_uid = getuid();
    info.si_value.sival_ptr = (void *)(uintptr_t)(((uint64_t)cookie << 32) | (uint32_t)index);
    if (syscall(SYS_rt_tgsigqueueinfo, owner_pid, slot->tid, PARK_SIGNAL, &info) == -1) {
        atomic_store_explicit(&slot->state, SLOT_IDLE, memory_order_release);
        return -1;   /* ESRCH: the thread has ended */
    }
    return 0;
}

static void release_slot(int index) {
    park_slot_t *slot = &slots[index];
    uint32_t state = atomic_exchange_explicit(&slot->state, SLOT_IDLE, memory_order_acq_rel);
    if (state == SLOT_PARKED) futex(&slot->state, FUTEX_WAKE_PRIVATE, 1, NULL);
    /* HIJACKED: it lands later and, finding no stop, goes on. */
}

/* Gives up on a request not answered yet; 1 if it was still pending (the
   thread never parked), 0 if it parked meanwhile (and is now released). */
static int withdraw_slot(int index) {
    uint32_t expected = SLOT_REQUESTED;
    if (atomic_compare_exchange_strong_explicit(&slots[index].state, &expected, SLOT_IDLE,
                                                memory_order_acq_rel, memory_order_acquire)) return 1;
    release_slot(index);
    return 0;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
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
            int known = 0;
            for (int i = 0; i < slot_count; i++) if (slots[i].tid == tid) { known = 1; break; }
            if (known) continue;
            if (slot_count == MAX_THREADS) { close(fd); return -1; }
            int index = slot_count++;
            slots[index].tid = tid;
            slots[index].stack_low = slots[index].stack_high = 0;
            if (cmp_in_safe_wait(tid)) {
                atomic_store_explicit(&slots[index].state, SLOT_WAITING, memory_order_relaxed);
                continue;
            }
            for (int c = 0; c < MAX_THREADS; c++) {
                stack_entry_t *entry = &stack_cache[c];
                if (entry->tid != tid) continue;
                if (entry->seen + 1 == stop_generation || entry->seen == stop_generation) {
                    slots[index].stack_low = entry->low;
                    slots[index].stack_high = entry->high;
                }
                entry->seen = stop_generation;
                break;
            }
            if (request_park(index) == 0) added++;
        }
    }
    close(fd);
    return added;
}

/* Waits until every requested slot has parked or `deadline` passes. Returns
   the number still pending. */
static int await_parked(long long deadline) {
    for (;;) {
        uint32_t seen = atomic_load_explicit(&arrivals, memory_order_seq_cst);
        int pending = 0;
        for (int i = 0; i < slot_count; i++) {
            uint32_t state = atomic_load_explicit(&slots[i].state, memory_order_acquire);
            if (state == SLOT_REQUESTED || state == SLOT_HIJACKED) pending++;
        }
        if (pending == 0) return 0;
        atomic_store_explicit(&wake_at, seen + (uint32_t)pending, memory_order_seq_cst);
        if (atomic_load_explicit(&arrivals, memory_order_seq_cst) != seen) continue;
        long long left = deadline - now_ns();
        if (left <= 0) return pending;
        if (left > 1000000) left = 1000000;
        struct timespec wait = { 0, (long)left };
        futex(&arrivals, FUTEX_WAIT_PRIVATE, seen, &wait);
    }
}

/* Whether thread `tid` has the park signal blocked (its SigBlk line in
   /proc/self/task/TID/status). Raw reads into a static buffer. */
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
    if (read_task_file(tid, "stat", buffer, sizeof buffer) <= 0) return 1;
    const char *close_paren = strrchr(buffer, ')');
    if (close_paren == NULL || close_paren[1] == 0) return 0;
    char state = close_paren[2];
    return state == 'Z' || state == 'X';
}

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

/* ---- Judging a parked thread ---- */

/* The stack mapping (from /proc/self/maps) of every parked slot whose sp
   is outside the range found for it before. Static buffer, raw reads. */
static void remember_stack(pid_t tid, uintptr_t low, uintptr_t high) {
    stack_entry_t *free_entry = NULL, *oldest = &stack_cache[0];
    for (int c = 0; c < MAX_THREADS; c++) {
        stack_entry_t *entry = &stack_cache[c];
        if (entry->tid == tid) { free_entry = entry; break; }
        if (free_entry == NULL && entry->tid == 0) free_entry = entry;
        if (entry->seen < oldest->seen) oldest = entry;
    }
    if (free_entry == NULL) free_entry = oldest;
    free_entry->tid = tid;
    free_entry->seen = stop_generation;
    free_entry->low = low;
    free_entry->high = high;
}

static void find_stacks(void) {
    int missing = 0;
    for (int i = 0; i < slot_count; i++) {
        park_slot_t *slot = &slots[i];
        if (atomic_load_explicit(&slot->state, memory_order_acquire) != SLOT_PARKED) continue;
        if (slot->sp < slot->stack_low || slot->sp >= slot->stack_high) { slot->stack_low = slot->stack_high = 0; missing++; }
    }
    if (missing == 0) return;
    static char buffer[16384];
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd == -1) return;
    size_t kept = 0;
    for (;;) {
        ssize_t n = read(fd, buffer + kept, sizeof buffer - 1 - kept);
        if (n <= 0) break;
        size_t length = kept + (size_t)n;
        size_t start = 0;
        for (size_t i = 0; i < length; i++) {
            if (buffer[i] != '\n') continue;
            /* "low-high perms ..." */
            uintptr_t low = 0, high = 0;
            size_t j = start;
            for (; j < i && buffer[j] != '-'; j++) {
                char c = buffer[j];
                low = low * 16 + (uintptr_t)(c <= '9' ? c - '0' : c - 'a' + 10);
            }
            for (j++; j < i && buffer[j] != ' '; j++) {
                char c = buffer[j];
                high = high * 16 + (uintptr_t)(c <= '9' ? c - '0' : c - 'a' + 10);
            }
            int writable = j + 2 < i && buffer[j + 1] == 'r' && buffer[j + 2] == 'w';
            if (writable) {
                for (int s = 0; s < slot_count; s++) {
                    park_slot_t *slot = &slots[s];
                    if (slot->stack_high == 0 && slot->sp >= low && slot->sp < high) {
                        slot->stack_low = low;
                        slot->stack_high = high;
                        remember_stack(slot->tid, low, high);
                    }
                }
            }
            start = i + 1;
        }
        kept = length - start;
        memmove(buffer, buffer + start, kept);
        if (kept == sizeof buffer - 1) kept = 0;  /* a line that long is not a mapping */
    }
    close(fd);
}

/* In the C library, at a system call: stopped on a `syscall` instruction
   that will run again (a restarted wait) or right after one. Not in the
   middle of malloc's or the loader's own code, whose locks fork takes. (A
   parked thread blocked in the kernel while holding one of those is what
   the watchdog is for.) */
static int at_system_call(const park_slot_t *slot) {
    uintptr_t pc = slot->pc;
    if (pc < 2 || !cmp_in_system_code(pc - 2)) return 0;
    const unsigned char *code = (const unsigned char *)pc;
    /* A wait the kernel will restart: blocked, holding nothing fork takes. */
    if (cmp_in_system_code(pc + 1) && code[0] == 0x0f && code[1] == 0x05) return 1;
    /* Right after one. (One that completed under a lock fork needs, malloc's
       mmap under an arena lock, is what the watchdog is for.) */
    return code[-2] == 0x0f && code[-1] == 0x05;
}

/* Whether `word` looks like a return address: inside some image's code,
   right after a call instruction. */
static int looks_like_return_address(uintptr_t word) {
    uintptr_t start = cmp_code_start_of(word);
    if (start == 0 || word < start + 7) return 0;
    const unsigned char *c = (const unsigned char *)word;
    return c[-5] == 0xe8                                   /* call rel32 */
        || (c[-2] == 0xff && (c[-1] & 0xf8) == 0xd0)       /* call *%reg */
        || (c[-2] == 0xff && (c[-1] & 0xf8) == 0x10)       /* call *(%reg) */
        || (c[-3] == 0xff && (c[-2] & 0xf8) == 0x50)       /* call *disp8(%reg) */
        || (c[-3] == 0xff && c[-2] == 0x14)                /* call *(sib) */
        || (c[-4] == 0xff && c[-3] == 0x54)                /* call *disp8(sib) */
        || (c[-6] == 0xff && c[-5] == 0x15)                /* call *disp32(%rip) */
        || (c[-6] == 0xff && (c[-5] & 0xf8) == 0x90)       /* call *disp32(%reg) */
        || (c[-7] == 0xff && c[-6] == 0x94);               /* call *disp32(sib) */
}

/* The verdict on one parked thread: 0 safe; CMP_QUIESCE_IN_RUNTIME if its
   pc or a return address on its frame-pointer chain is in the runtime's
   C++ code; CMP_QUIESCE_IN_SYSTEM if it was running C library code. */
/* Whether the frame-pointer chain from `frame` runs, every link higher
   and every return address a return address, to its end: a zero link, or
   a link that leaves the stack from a frame of the C library's (the
   thread's first frames, which keep no frame pointers). */
CMP_SCANS_FOREIGN_STACKS
static int whole_chain(uintptr_t frame, uintptr_t high) {
    for (int n = 0; n < 4096; n++) {
        const uintptr_t *record = (const uintptr_t *)frame;
        uintptr_t next = record[0], ret = record[1];
        if (!looks_like_return_address(ret)) return 0;
        if (next == 0) return 1;
        if (next <= frame || next > high - 2 * sizeof(uintptr_t) || (next & (sizeof(uintptr_t) - 1))) {
            return cmp_in_system_code(ret);
        }
        frame = next;
    }
    return 0;
}

/* The verdict on one parked thread: 0 safe; CMP_QUIESCE_IN_RUNTIME if its
   pc or a return address on its frame-pointer chain is in the runtime's
   C++ code; CMP_QUIESCE_IN_SYSTEM if it was running C library code;
   CMP_QUIESCE_UNKNOWN if its stack could not be read. For a thread in the
   runtime, `hijack` is the stack slot holding the return address of its
   outermost runtime frame (0 if not found). A frame of swift_once's slow
   path does not count: it runs a lazy global's initializer holding nothing
   but that global's flag (a child that touches that very global waits). */
CMP_SCANS_FOREIGN_STACKS
static int judge(const park_slot_t *slot, int *frames, uintptr_t *hijack) {
    *frames = 0;
    *hijack = 0;
    int verdict = 0;
    int candidate_pending = 0;  /* the next frame record found belongs to a runtime function */
    if (cmp_in_runtime(slot->pc)) {
        verdict = CMP_QUIESCE_IN_RUNTIME;
        candidate_pending = 1;
    }
    int in_system = cmp_in_system_code(slot->pc);
    if (in_system && !at_system_call(slot)) return CMP_QUIESCE_IN_SYSTEM;
    if (slot->stack_high == 0) return verdict ? verdict : CMP_QUIESCE_UNKNOWN;
    uintptr_t low = slot->sp, high = slot->stack_high, frame = slot->bp;
    if (in_system) {
        /* The C library keeps no frame pointers: rbp may be any value, and
           its frames hold stale words of earlier calls (return addresses
           too). Take rbp if a whole chain runs from it, else the first frame
           record above sp from which one does: its chain is the thread's
           callers (and the caller of the C library function, when that one
           saved rbp first). Good for a verdict, never for a hijack. */
        if (!(frame >= low && frame <= high - 2 * sizeof(uintptr_t) && !(frame & (sizeof(uintptr_t) - 1)) &&
              whole_chain(frame, high))) {
            const uintptr_t *record = (const uintptr_t *)low;
            const uintptr_t *limit = (const uintptr_t *)(low + 16384 < high ? low + 16384 : high - 2 * sizeof(uintptr_t));
            frame = 0;
            for (; record < limit; record++) {
                if (record[0] > (uintptr_t)record && record[0] < high && !(record[0] & (sizeof(uintptr_t) - 1)) &&
                    looks_like_return_address(record[1]) && whole_chain((uintptr_t)record, high)) {
                    frame = (uintptr_t)record;
                    break;
                }
            }
        }
        /* No chain at all: code without frame pointers all the way down
           (Foundation's C threads), so no runtime frame either (the
           runtime and Swift code keep frame pointers). */
        if (frame == 0) return verdict;
        low = frame;
    }
    for (int n = 0; n < 4096; n++) {
        if (frame < low || frame > high - 2 * sizeof(uintptr_t) || (frame & (sizeof(uintptr_t) - 1))) break;
        const uintptr_t *record = (const uintptr_t *)frame;
        uintptr_t next = record[0], ret = record[1];
        (*frames)++;
        if (candidate_pending) {
            *hijack = frame + sizeof(uintptr_t);
            candidate_pending = 0;
        }
        if (cmp_is_runtime_return(ret)) {
            verdict = CMP_QUIESCE_IN_RUNTIME;
            candidate_pending = 1;
        }
        if (next <= frame) break;
        low = frame + 2 * sizeof(uintptr_t);
        frame = next;
    }
    /* The outermost runtime frame's record was not reached, or the chain
       was found by a guess: no hijack. */
    if (candidate_pending || in_system) *hijack = 0;
    return verdict;
}

/* ---- Hijacking the return from the runtime ----

   A thread inside the runtime is let run until its outermost runtime
   function returns: that return address, on its stack, is pointed at
   `cmp_hijack_trampoline`, which saves every register a return can carry,
   parks the thread, and goes on to the original address. Looking again at
   random moments would rarely find a thread that lives in the runtime (a
   conformance look-up scans every record of the process) outside it. */

typedef struct {
    _Atomic pid_t tid;
    uintptr_t *slot;
    uintptr_t original;
} hijack_t;

static hijack_t hijacks[MAX_THREADS];
static int hijacking_allowed = -1;

extern void cmp_hijack_trampoline(void);
uintptr_t cmp_hijack_landed(uintptr_t sp, uintptr_t bp);

__asm__(
    ".text\n"
    ".p2align 4\n"
    ".globl cmp_hijack_trampoline\n"
    ".hidden cmp_hijack_trampoline\n"
    ".type cmp_hijack_trampoline,@function\n"
    "cmp_hijack_trampoline:\n"
    /* Entered by a `ret`: rsp is as the caller expects it after its call
       (16-byte aligned). Keep a slot for the original return address. */
    "    subq $8, %rsp\n"
    "    pushq %rax\n    pushq %rdx\n    pushq %rcx\n    pushq %rsi\n    pushq %rdi\n"
    "    pushq %r8\n    pushq %r9\n    pushq %r10\n    pushq %r11\n"
    "    subq $128, %rsp\n"
    "    movdqu %xmm0, 0(%rsp)\n    movdqu %xmm1, 16(%rsp)\n    movdqu %xmm2, 32(%rsp)\n    movdqu %xmm3, 48(%rsp)\n"
    "    movdqu %xmm4, 64(%rsp)\n    movdqu %xmm5, 80(%rsp)\n    movdqu %xmm6, 96(%rsp)\n    movdqu %xmm7, 112(%rsp)\n"
    "    leaq 208(%rsp), %rdi\n"   /* the caller's sp */
    "    movq %rbp, %rsi\n"
    "    call cmp_hijack_landed\n"
    "    movq %rax, 200(%rsp)\n"   /* the slot kept above */
    "    movdqu 0(%rsp), %xmm0\n    movdqu 16(%rsp), %xmm1\n    movdqu 32(%rsp), %xmm2\n    movdqu 48(%rsp), %xmm3\n"
    "    movdqu 64(%rsp), %xmm4\n    movdqu 80(%rsp), %xmm5\n    movdqu 96(%rsp), %xmm6\n    movdqu 112(%rsp), %xmm7\n"
    "    addq $128, %rsp\n"
    "    popq %r11\n    popq %r10\n    popq %r9\n    popq %r8\n"
    "    popq %rdi\n    popq %rsi\n    popq %rcx\n    popq %rdx\n    popq %rax\n"
    "    ret\n"
    ".size cmp_hijack_trampoline, .-cmp_hijack_trampoline\n"
);

static hijack_t *hijack_of(pid_t tid) {
    for (int i = 0; i < MAX_THREADS; i++) {
        if (atomic_load_explicit(&hijacks[i].tid, memory_order_acquire) == tid) return &hijacks[i];
    }
    return NULL;
}

/* Called by the trampoline: parks the thread if a stop still waits for
   it, and returns where it was going. */
uintptr_t cmp_hijack_landed(uintptr_t sp, uintptr_t bp) {
    int saved_errno = errno;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    hijack_t *hijack = hijack_of(tid);
    if (hijack == NULL) abort();  /* cannot happen: only a hijack leads here */
    uintptr_t original = hijack->original;
    atomic_store_explicit(&hijack->tid, 0, memory_order_release);
    for (int i = 0; i < slot_count && i < MAX_THREADS; i++) {
        park_slot_t *slot = &slots[i];
        if (slot->tid != tid) continue;
        slot->pc = original;
        slot->sp = sp;
        slot->bp = bp;
        park_if(slot, SLOT_HIJACKED);
        break;
    }
    errno = saved_errno;
    return original;
}

/* Points the return address at `slot_address` (on the parked thread
   `index`'s stack) at the trampoline and lets the thread run. 0 on success. */
CMP_SCANS_FOREIGN_STACKS
static int hijack_and_release(int index, uintptr_t slot_address) {
    park_slot_t *slot = &slots[index];
    if (hijacking_allowed == 0 || slot_address == 0) return -1;
    if (slot_address < slot->sp || slot_address + sizeof(uintptr_t) > slot->stack_high) return -1;
    if (hijack_of(slot->tid) != NULL) return -1;  /* one at a time per thread */
    uintptr_t *where = (uintptr_t *)slot_address;
    if (*where == (uintptr_t)cmp_hijack_trampoline || !looks_like_return_address(*where)) return -1;
    hijack_t *free_entry = hijack_of(0);
    if (free_entry == NULL) return -1;
    free_entry->slot = where;
    free_entry->original = *where;
    atomic_store_explicit(&free_entry->tid, slot->tid, memory_order_release);
    *where = (uintptr_t)cmp_hijack_trampoline;
    uint32_t state = atomic_exchange_explicit(&slot->state, SLOT_HIJACKED, memory_order_acq_rel);
    if (state == SLOT_PARKED) futex(&slot->state, FUTEX_WAKE_PRIVATE, 1, NULL);
    return 0;
}

/* Whether return addresses may be rewritten: not under a shadow stack
   (CET), where a return that does not match would be fatal. */
static void decide_hijacking(void) {
    if (hijacking_allowed != -1) return;
    unsigned long features = 0;
    /* ARCH_SHSTK_STATUS; kernels without shadow stacks refuse it. */
    long rc = syscall(SYS_arch_prctl, 0x5005, &features);
    hijacking_allowed = !(rc == 0 && (features & 1));
    if (getenv("SWIFT_MULTIPROCESSING_NO_HIJACK")) hijacking_allowed = 0;
}

/* ---- The stop ---- */

static void release_all(void) {
    for (int i = 0; i < slot_count; i++) release_slot(i);
    cmp_world_stop_end();
}

/* The watchdog's first stage: lets go the threads parked in the C library's
   code (at a system call); returns with the others still parked, unless
   there was none, when it lets every thread go. Async-signal-safe. */
static void release_in_system_code(void) {
    int released = 0;
    for (int i = 0; i < slot_count; i++) {
        if (atomic_load_explicit(&slots[i].state, memory_order_acquire) == SLOT_PARKED && cmp_in_system_code(slots[i].pc)) {
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

/* Parks every other thread with none in the runtime; see the header. */
static int stop_world(long long budget_ns, cmp_quiesce_report_t *report) {
    pid_t self = (pid_t)syscall(SYS_gettid);
    long long start = now_ns(), deadline = start + budget_ns;
    slot_count = 0;
    stop_generation++;
    for (int attempt = 0;; attempt++) {
        cmp_world_stop_begin();
        /* Everyone, until no new thread appears (a running one may start one). */
        for (;;) {
            int added = enlist_new_threads(self);
            if (added < 0) { release_all(); return CMP_QUIESCE_FAILED; }
            /* 20 ms to answer; then a thread that blocks the signal is given
               up on at once, and one that is only slow (no CPU to spare, or
               in the kernel) is waited for until the budget runs out. */
            long long park_deadline = now_ns() + 20000000LL;
            if (park_deadline > deadline) park_deadline = deadline;
            int pending = await_parked(park_deadline);
            while (pending > 0) {
                int given_up = 0;
                for (int i = 0; i < slot_count; i++) {
                    if (atomic_load_explicit(&slots[i].state, memory_order_acquire) != SLOT_REQUESTED) continue;
                    if (thread_ended(slots[i].tid)) {
                        withdraw_slot(i);
                    } else if (blocks_park_signal(slots[i].tid)) {
                        report->unstoppable_thread = slots[i].tid;
                        given_up = 1;
                    }
                }
                if (given_up) { pending = -1; break; }
                if (now_ns() >= deadline) break;
                long long next_check = now_ns() + 20000000LL;
                pending = await_parked(next_check < deadline ? next_check : deadline);
            }
            if (pending != 0) {
                for (int i = 0; i < slot_count; i++) {
                    if (atomic_load_explicit(&slots[i].state, memory_order_acquire) == SLOT_REQUESTED && withdraw_slot(i)) {
                        if (report->unstoppable_thread == 0) report->unstoppable_thread = slots[i].tid;
                    }
                }
                release_all();
                return CMP_QUIESCE_UNSTOPPABLE;
            }
            if (added == 0) break;
        }
        /* Look at each; let the ones inside the runtime run a little, park
           them again, and look again, a few times, before starting over. */
        for (int look = 0; look < 64; look++) {
            if (look > 0) {
                /* A thread let run may have started another. */
                int added = enlist_new_threads(self);
                if (added < 0) { release_all(); return CMP_QUIESCE_FAILED; }
                if (added > 0 && await_parked(now_ns() + 20000000LL) > 0) break;
            }
            find_stacks();
            int unsafe = 0;
            for (int i = 0; i < slot_count; i++) {
                park_slot_t *slot = &slots[i];
                if (atomic_load_explicit(&slot->state, memory_order_acquire) != SLOT_PARKED) continue;
                int frames = 0;
                uintptr_t hijack = 0;
                slot->verdict = judge(slot, &frames, &hijack);
                slot->hijack = hijack;
                if (frames > report->deepest_stack) report->deepest_stack = frames;
                if (slot->verdict != 0) {
                    unsafe++;
                    if (slot->verdict == CMP_QUIESCE_IN_RUNTIME) report->seen_in_runtime++;
                    else report->seen_in_system++;
                }
            }
            report->threads = 0;
            report->waiting = 0;
            for (int i = 0; i < slot_count; i++) {
                uint32_t state = atomic_load_explicit(&slots[i].state, memory_order_acquire);
                if (state == SLOT_PARKED) report->threads++;
                else if (state == SLOT_WAITING) report->waiting++;
            }
            if (unsafe == 0) return CMP_QUIESCE_STOPPED;
            if (now_ns() >= deadline) { release_all(); return CMP_QUIESCE_BUSY; }
            report->retries++;
            /* Inside the runtime: run until its outermost runtime function
               returns. Otherwise: run a moment and look again. */
            int resample = 0;
            for (int i = 0; i < slot_count; i++) {
                if (slots[i].verdict == 0) continue;
                if (slots[i].verdict == CMP_QUIESCE_IN_RUNTIME && hijack_and_release(i, slots[i].hijack) == 0) {
                    report->hijacks++;
                } else {
                    release_slot(i);
                    resample = 1;
                }
            }
            if (resample) {
                pause_ns(look < 4 ? 2000 : 20000);
                for (int i = 0; i < slot_count; i++) {
                    if (slots[i].verdict != 0 && atomic_load_explicit(&slots[i].state, memory_order_acquire) == SLOT_IDLE) {
                        request_park(i);
                    }
                }
            }
            for (int i = 0; i < slot_count; i++) slots[i].verdict = 0;
            long long wait_until = now_ns() + 20000000LL;
            if (wait_until > deadline) wait_until = deadline;
            int pending = await_parked(wait_until);
            if (pending > 0) break;  /* start over: it may be waiting for a parked one */
        }
        release_all();
        slot_count = 0;
        if (now_ns() >= deadline) return CMP_QUIESCE_BUSY;
        pause_ns(20000LL << (attempt < 5 ? attempt : 5));
    }
}

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
    report->runtime_symbols = cmp_load_code_ranges();
    cmp_safe_waits_prepare();
    pthread_mutex_lock(&stopping);
    decide_hijacking();
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
    report->outcome = stop_world(budget_ns, report);
    report->elapsed_ns = now_ns() - start;
    /* A watchdog only when some thread is parked (one in a library wait holds
       nothing fork needs); its signal must reach this thread. */
    int timer = -1, unblocked = 0;
    sigset_t park, saved_mask;
    atomic_store_explicit(&watchdog_fired, 0, memory_order_relaxed);
    /* A new generation at every fork, armed or not: a watchdog signal still
       pending from an earlier fork is then never taken for this one's. */
    atomic_store_explicit(&watchdog_generation, (atomic_load_explicit(&watchdog_generation, memory_order_relaxed) + 1) & 0x7fffffffu, memory_order_relaxed);
    if (report->outcome == CMP_QUIESCE_STOPPED && report->threads > 0) {
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
        /* The child has none of those threads, and no timer. Only entries in
           use are cleared: a write to a page shared with the parent copies it. */
        slot_count = 0;
        for (int i = 0; i < MAX_THREADS; i++) {
            if (atomic_load_explicit(&hijacks[i].tid, memory_order_relaxed) != 0) atomic_store_explicit(&hijacks[i].tid, 0, memory_order_relaxed);
            if (stack_cache[i].tid != 0) memset(&stack_cache[i], 0, sizeof stack_cache[i]);
        }
    } else {
        if (timer != -1) {
            watchdog_timer = -1;
            syscall(SYS_timer_delete, timer);
        }
        if (report->outcome == CMP_QUIESCE_STOPPED) release_all();
        if (atomic_load_explicit(&watchdog_fired, memory_order_relaxed)) report->outcome = CMP_QUIESCE_RELEASED_EARLY;
        slot_count = 0;
    }
    /* A child bound to its parent starts with no signal blocked (cmp_fork);
       otherwise it keeps the caller's mask, as the parent does. */
    if (unblocked && (pid != 0 || death_signal == 0)) pthread_sigmask(SIG_SETMASK, &saved_mask, NULL);
    pthread_mutex_unlock(&stopping);
    errno = saved_errno;
    return pid;
}
