#define _GNU_SOURCE
#include "CMultiprocessing.h"
#include "safe_waits.h"
#include "lock_tracking.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/close_range.h>
#include <time.h>
#include <unistd.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

int cmp_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

int cmp_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

static int exit_code_of(const siginfo_t *info) {
    switch (info->si_code) {
    case CLD_EXITED: return info->si_status;
    case CLD_KILLED:
    case CLD_DUMPED: return -info->si_status;
    default: return info->si_status;
    }
}

int cmp_waitid_pidfd(int pidfd, int nohang, int *exit_code) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    int rc = waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | (nohang ? WNOHANG : 0));
    if (rc == -1) return -1;
    if (info.si_pid == 0) return 0;
    *exit_code = exit_code_of(&info);
    return 1;
}

pid_t cmp_reap_any(int *exit_code) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
        if (WIFEXITED(status)) *exit_code = WEXITSTATUS(status);
        else if (WIFSIGNALED(status)) *exit_code = -WTERMSIG(status);
        else *exit_code = 0;
    }
    return pid;
}

int cmp_set_child_subreaper(void) {
    return prctl(PR_SET_CHILD_SUBREAPER, 1UL, 0, 0, 0);
}

int cmp_set_parent_death_signal(int sig) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0, 0, 0);
}

/* The Swift runtime's hooks called on every `throw`. A framework of the
   parent may have set one (swift-testing records a backtrace for each thrown
   error under a lock of its own); in a forked child that lock may be held
   for ever by a thread the child does not have, so the child clears them. */
extern void *_swift_willThrow;
extern void *_swift_willThrowTypedImpl;

/* The process id, read once and again in every forked child (an atfork
   handler): getpid is a system call, and a manager's proxy names its
   process in every request. */
static pid_t cached_pid;
static pthread_once_t cached_pid_once = PTHREAD_ONCE_INIT;
static void refresh_cached_pid(void) { __atomic_store_n(&cached_pid, getpid(), __ATOMIC_RELAXED); }
static void start_caching_pid(void) {
    refresh_cached_pid();
    pthread_atfork(NULL, NULL, refresh_cached_pid);
}

pid_t cmp_current_pid(void) {
    pthread_once(&cached_pid_once, start_caching_pid);
    return __atomic_load_n(&cached_pid, __ATOMIC_RELAXED);
}

pid_t cmp_fork(int death_signal) {
    cmp_flush_stdio();
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        /* None of the parent's threads, in a library wait or not, exists here. */
        cmp_safe_waits_forked_child();
        cmp_lock_tracking_forked_child();
        __atomic_store_n(&_swift_willThrow, NULL, __ATOMIC_RELAXED);
        __atomic_store_n(&_swift_willThrowTypedImpl, NULL, __ATOMIC_RELAXED);
    }
    if (pid == 0 && death_signal != 0) {
        /* The forking thread may have signals blocked (Dispatch's threads
           do); a new child starts with none, as a spawned one does. */
        sigset_t none;
        sigemptyset(&none);
        pthread_sigmask(SIG_SETMASK, &none, NULL);
        prctl(PR_SET_PDEATHSIG, (unsigned long)death_signal, 0, 0, 0);
        if (getppid() != parent) _exit(1);
    }
    return pid;
}

/* What the executing child of cmp_fork_exec is given, and what it says back
   (it shares the parent's memory until it executes or exits). */
struct cmp_exec_request {
    const char *path;
    char *const *argv;
    char *const *envp;
    const int *fds;
    int nfds;
    int death_signal;
    pid_t parent;
    int error; /* written by the child if it cannot execute */
};

/* The kernel's own layout of a signal action (not the C library's). */
struct cmp_kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

/* The child: it runs on a stack of its own in the parent's memory, while the
   thread that started it waits (CLONE_VFORK), so it makes raw system calls
   only and writes nothing of the parent's but `error`. Other threads of the
   parent run on meanwhile: it takes no lock and allocates nothing. Not
   instrumented by sanitizers: the stack is borrowed and it never returns. */
__attribute__((no_sanitize("address", "thread", "undefined")))
static int exec_child(void *argument) {
    struct cmp_exec_request *request = argument;
    int err = 0;
    /* The parent's signal handlers must never run here, in its memory: every
       caught signal goes back to its default before the mask (all blocked by
       the parent around the clone) is lifted. */
    for (int sig = 1; sig < 65; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        struct cmp_kernel_sigaction current;
        if (syscall(SYS_rt_sigaction, sig, NULL, &current, sizeof current.mask) != 0) continue;
        if (current.handler == SIG_DFL || current.handler == SIG_IGN) continue;
        struct cmp_kernel_sigaction fallback = {SIG_DFL, 0, NULL, 0};
        syscall(SYS_rt_sigaction, sig, &fallback, NULL, sizeof fallback.mask);
    }
    uint64_t none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof none);
    if (request->death_signal != 0) {
        syscall(SYS_prctl, PR_SET_PDEATHSIG, (unsigned long)request->death_signal, 0, 0, 0);
        if (syscall(SYS_getppid) != request->parent) syscall(SYS_exit_group, 127);
    }
    /* Lift the descriptors above every target slot first, so that moving
       them down cannot overwrite one that is still to be moved. */
    int lifted[64];
    int nfds = request->nfds;
    if (nfds > 64) { err = EINVAL; goto fail; }
    for (int i = 0; i < nfds; i++) {
        lifted[i] = (int)syscall(SYS_fcntl, request->fds[i], F_DUPFD_CLOEXEC, 3 + nfds);
        if (lifted[i] < 0) { err = errno; goto fail; }
    }
    for (int i = 0; i < nfds; i++) {
        if (syscall(SYS_dup2, lifted[i], 3 + i) < 0) { err = errno; goto fail; }
    }
    /* Whatever else is open (a descriptor somebody opened without
       O_CLOEXEC) closes on exec: the child inherits only what it is given. */
    syscall(SYS_close_range, (unsigned)(3 + nfds), ~0U, CLOSE_RANGE_CLOEXEC);
    syscall(SYS_execve, request->path, request->argv, request->envp);
    err = errno;
fail:
    request->error = err ? err : EINVAL;
    syscall(SYS_exit_group, 127);
    return 127;
}

/* Starts `path` in a new process: clone(CLONE_VM | CLONE_VFORK), as
   posix_spawn does, so that the parent's page tables are not copied (a fork
   of a large parent costs milliseconds) and this thread resumes once the
   child has executed the image or failed to. */
pid_t cmp_fork_exec(const char *path, char *const argv[], char *const envp[],
                    const int *fds, int nfds, int death_signal) {
    size_t stack_size = 64 * 1024;
    char *stack = mmap(NULL, stack_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return -1;
    struct cmp_exec_request request = {path, argv, envp, fds, nfds, death_signal, getpid(), 0};
    sigset_t all, saved;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &saved);
    pid_t pid = clone(exec_child, stack + stack_size, CLONE_VM | CLONE_VFORK | SIGCHLD, &request);
    int clone_errno = errno;
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    munmap(stack, stack_size);
    if (pid == -1) {
        errno = clone_errno;
        return -1;
    }
    if (request.error != 0) {
        int status;
        while (waitpid(pid, &status, 0) == -1 && errno == EINTR) {}
        errno = request.error;
        return -1;
    }
    return pid;
}

int cmp_isolate_descriptors(const int *keep, int nkeep) {
    if (nkeep > 64) { errno = EINVAL; return -1; }
    int floor = 3 + nkeep;
    for (int i = 0; i < nkeep; i++) if (keep[i] >= floor) floor = keep[i] + 1;
    int lifted[64];
    for (int i = 0; i < nkeep; i++) {
        lifted[i] = fcntl(keep[i], F_DUPFD_CLOEXEC, floor);
        if (lifted[i] == -1) return -1;
    }
    for (int i = 0; i < nkeep; i++) {
        /* dup2 clears close-on-exec on the copy, which is what a child wants. */
        if (dup2(lifted[i], 3 + i) == -1) return -1;
    }
    return (int)syscall(SYS_close_range, (unsigned)(3 + nkeep), ~0U, 0);
}

static int compare_ints(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int cmp_close_all_except(const int *keep, int nkeep) {
    if (nkeep > 64) { errno = EINVAL; return -1; }
    int sorted[64];
    memcpy(sorted, keep, sizeof(int) * (size_t)nkeep);
    qsort(sorted, (size_t)nkeep, sizeof(int), compare_ints);
    unsigned next = 3;
    for (int i = 0; i < nkeep; i++) {
        if (sorted[i] < (int)next) continue;
        if ((unsigned)sorted[i] > next &&
            syscall(SYS_close_range, next, (unsigned)sorted[i] - 1, 0) == -1) return -1;
        next = (unsigned)sorted[i] + 1;
    }
    return (int)syscall(SYS_close_range, next, ~0U, 0);
}

ssize_t cmp_send_with_fds(int socket, const void *buf, size_t len,
                          const int *fds, int nfds) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    char control[CMSG_SPACE(sizeof(int) * 64)];
    if (nfds > 64) { errno = EINVAL; return -1; }
    if (nfds > 0) {
        memset(control, 0, sizeof control);
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
    }
    return sendmsg(socket, &msg, MSG_NOSIGNAL);
}

ssize_t cmp_recv_with_fds(int socket, void *buf, size_t len, int *fds,
                          int max_fds, int *nfds) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    char control[CMSG_SPACE(sizeof(int) * 64)];
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
    *nfds = 0;
    if (n == -1) return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int *received = (int *)CMSG_DATA(c);
            for (int i = 0; i < count; i++) {
                if (*nfds < max_fds) fds[(*nfds)++] = received[i];
                else close(received[i]);
            }
        }
    }
    return n;
}

int cmp_pipe_cloexec(int fds[2]) {
    if (pipe2(fds, O_CLOEXEC) == -1) return -1;
    /* A larger ring (up to pipe-max-size, 1 MiB by default) lets bulk
       messages cross in fewer wake-ups; without it, 64 KiB. */
    fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
    return 0;
}

int cmp_pipe_capacity(int fd) {
    return fcntl(fd, F_GETPIPE_SZ);
}

void cmp_ignore_sigpipe_if_default(void) {
    struct sigaction current;
    if (sigaction(SIGPIPE, NULL, &current) == 0 && current.sa_handler == SIG_DFL) {
        signal(SIGPIPE, SIG_IGN);
    }
}

void cmp_default_fault_signals(void) {
    const int faults[] = { SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGXCPU };
    for (unsigned i = 0; i < sizeof faults / sizeof faults[0]; i++) {
        signal(faults[i], SIG_DFL);
    }
}

static volatile sig_atomic_t stop_requested;

static void note_stop_request(int signal_number) {
    (void)signal_number;
    stop_requested = 1;
}

void cmp_handle_stop_requests(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = note_stop_request;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
}

int cmp_stop_requested(void) { return stop_requested; }

int cmp_set_cpu_affinity(const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) { errno = EINVAL; return -1; }
        CPU_SET(cpus[i], &set);
    }
    return sched_setaffinity(0, sizeof set, &set);
}

int cmp_set_niceness(int niceness) {
    return setpriority(PRIO_PROCESS, 0, niceness);
}

int cmp_set_resource_limit(int resource, unsigned long long soft, unsigned long long hard) {
    struct rlimit limit = { .rlim_cur = (rlim_t)soft, .rlim_max = (rlim_t)hard };
    return setrlimit(resource, &limit);
}

unsigned long long cmp_hard_resource_limit(int resource) {
    struct rlimit limit;
    if (getrlimit(resource, &limit) != 0) return (unsigned long long)RLIM_INFINITY;
    return (unsigned long long)limit.rlim_max;
}

long long cmp_process_cpu_time_ns(void) {
    struct timespec now;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now) != 0) return 0;
    return (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
}

static volatile sig_atomic_t allocation_failure_status;

static void exit_if_out_of_memory(int signal_number) {
    (void)signal_number;
    // Async-signal-safe: errno is read, _exit called. Otherwise the handler
    // returns with the default action back (SA_RESETHAND): abort() raises
    // again, a segfault recurs; the process dies by its signal.
    if (errno == ENOMEM) _exit(allocation_failure_status);
}

void cmp_exit_on_allocation_failure(int status) {
    allocation_failure_status = status;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = exit_if_out_of_memory;
    action.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGABRT, &action, NULL);
    sigaction(SIGSEGV, &action, NULL);
}

void cmp_exit_now(int code) {
    cmp_flush_stdio();
    _exit(code);
}

/* stdout and stderr only: fflush(NULL) takes every stream's lock, and one
   held by a thread blocked in fread (or, in a forked child, by a thread that
   is not there) would block it for as long, or for ever. */
void cmp_flush_stdio(void) {
    fflush(stdout);
    fflush(stderr);
}

void cmp_line_buffer_stdout(void) { setvbuf(stdout, NULL, _IOLBF, BUFSIZ); }

int cmp_terminal_columns(int fd) {
    struct winsize size;
    if (ioctl(fd, TIOCGWINSZ, &size) != 0) return -1;
    return size.ws_col;
}

void cmp_lock_stdio(void) {
    flockfile(stdout);
    flockfile(stderr);
}

void cmp_unlock_stdio(void) {
    funlockfile(stderr);
    funlockfile(stdout);
}

size_t cmp_heap_in_use(void) { return mallinfo2().uordblks; }

int cmp_affinity_cpu_count(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == -1) return -1;
    return CPU_COUNT(&set);
}

void cmp_segfault(void) {
    volatile int *nowhere = (volatile int *)(uintptr_t)8;
    *nowhere = 1;
    __builtin_trap();
}

#include <sys/epoll.h>

int cmp_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int cmp_epoll_add_readable(int epfd, int fd, uint64_t token) {
    struct epoll_event event;
    memset(&event, 0, sizeof event);
    event.events = EPOLLIN | EPOLLONESHOT;
    event.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event);
}

int cmp_epoll_remove(int epfd, int fd) {
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
}

int cmp_epoll_wait(int epfd, uint64_t *tokens, int max, int timeout) {
    struct epoll_event events[64];
    if (max > 64) max = 64;
    int n = epoll_wait(epfd, events, max, timeout);
    for (int i = 0; i < n; i++) tokens[i] = events[i].data.u64;
    return n;
}

/* The sandbox: no_new_privs and a seccomp filter, written for the kernel's
   interface directly (a dozen BPF instructions; libseccomp would be a new
   system dependency for every user of the package, for no more than this). */

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>

#if defined(__x86_64__)
#define CMP_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define CMP_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif

/* A denied socket, when violations kill: the worker says so and leaves
   with the status that names the profile. */
static void sandbox_violation(int signal_number, siginfo_t *info, void *context) {
    (void)signal_number;
    (void)context;
    /* Only the filter's trap (SYS_SECCOMP): a SIGSYS of another kind, such
       as a stop of the world's park signal, is not a violation. */
    if (info->si_code != 1) return;
    static const char message[] = "sandbox: a network socket denied (noNetwork)\n";
    (void)!write(2, message, sizeof message - 1);
    _exit(CMP_SANDBOX_NETWORK_STATUS);
}

int cmp_install_sandbox(int deny_processes, int deny_network, int kill_on_violation) {
#ifndef CMP_AUDIT_ARCH
    (void)deny_processes; (void)deny_network; (void)kill_on_violation;
    errno = ENOTSUP;
    return -1;
#else
    /* Killing: a new process by the kernel at once (SIGSYS, whatever the
       signal mask: posix_spawn blocks every signal around its clone); a
       socket by a trap whose handler leaves with the network status. */
    const unsigned refuse = SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA);
    const unsigned deny = kill_on_violation ? SECCOMP_RET_KILL_PROCESS : refuse;
    const unsigned deny_socket = kill_on_violation ? SECCOMP_RET_TRAP : refuse;
    struct sock_filter program[48];
    unsigned n = 0;
#define CMP_PUT(instruction) (program[n++] = (struct sock_filter)instruction)
    CMP_PUT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    CMP_PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, CMP_AUDIT_ARCH, 1, 0));
    CMP_PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));
    CMP_PUT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
#if defined(__x86_64__)
    /* The x32 ABI's numbers would go round every check below. */
    CMP_PUT(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1));
    CMP_PUT(BPF_STMT(BPF_RET | BPF_K, deny));
#endif
    if (deny_processes) {
        const unsigned denied[] = {
            SYS_execve, SYS_execveat,
#ifdef SYS_fork
            SYS_fork,
#endif
#ifdef SYS_vfork
            SYS_vfork,
#endif
        };
        for (unsigned i = 0; i < sizeof denied / sizeof denied[0]; i++) {
            CMP_PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, denied[i], 0, 1));
            CMP_PUT(BPF_STMT(BPF_RET | BPF_K, deny));
        }
        /* clone3 takes its flags in memory a filter cannot read: ENOSYS,
           and the C library falls back to clone. */
        CMP_PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1));
        CMP_PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (ENOSYS & SECCOMP_RET_DATA)));
        /* clone: threads (CLONE_THREAD) only. */
        CMP_PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 4));
        CMP_PUT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])));
        CMP_PUT(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 0, 1));
        CMP_PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
        CMP_PUT(BPF_STMT(BPF_RET | BPF_K, deny));
    }
    if (deny_network) {
        /* socket: AF_UNIX only (what the library's own channels use). */
        CMP_PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_socket, 0, 4));
        CMP_PUT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])));
        CMP_PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AF_UNIX, 0, 1));
        CMP_PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
        CMP_PUT(BPF_STMT(BPF_RET | BPF_K, deny_socket));
    }
    CMP_PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
#undef CMP_PUT
    if (kill_on_violation && deny_network) {
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_sigaction = sandbox_violation;
        action.sa_flags = SA_SIGINFO;
        sigemptyset(&action.sa_mask);
        if (sigaction(SIGSYS, &action, NULL) == -1) return -1;
        sigset_t sys;
        sigemptyset(&sys);
        sigaddset(&sys, SIGSYS);
        pthread_sigmask(SIG_UNBLOCK, &sys, NULL);
    }
    struct sock_fprog filter = { .len = (unsigned short)n, .filter = program };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == -1) return -1;
    /* Every thread of the process, not only this one (TSYNC). */
    long synced = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &filter);
    if (synced > 0) { errno = EBUSY; return -1; }  /* the thread that could not be synced */
    return (int)synced;
#endif
}

void cmp_keep_freed_memory(int bytes) {
    mallopt(M_TRIM_THRESHOLD, bytes);
    mallopt(M_MMAP_THRESHOLD, bytes / 2);
}
