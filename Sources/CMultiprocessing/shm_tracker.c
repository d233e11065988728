// The shared-memory tracker: a process of its own that outlives the program
// and unlinks the named segments the program created and did not unlink,
// once every process of the program is gone — killed ones too.
//
// The program holds one end of a socket pair (SOCK_SEQPACKET: each message
// whole); its forked children inherit it. The tracker holds the other end;
// when the last holder is gone it reads end of file and unlinks what is left.
//
// The tracker is cloned from a multi-threaded process and at once executes
// this program's image anew (`/proc/self/exe`), so that it holds none of the
// program's memory; the library's constructor (bootstrap.c) sees the
// variable below and runs `cmp_shm_tracker_main`. Until the exec, and in
// place if the exec fails, it runs only what is safe after fork: raw system
// calls, no malloc, no locks, no stdio.

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "CMultiprocessing.h"

enum { TRACKED_MAX = 4096, NAME_MAX_BYTES = 256 };

// The tracker's table; in the program it is never touched (its pages stay
// the shared zero page).
static char tracked[TRACKED_MAX][NAME_MAX_BYTES];
static char tracked_used[TRACKED_MAX];

static void track(const char *name, int add) {
    int free_slot = -1;
    for (int i = 0; i < TRACKED_MAX; i++) {
        if (tracked_used[i] && strcmp(tracked[i], name) == 0) {
            if (!add) tracked_used[i] = 0;
            return;
        }
        if (!tracked_used[i] && free_slot < 0) free_slot = i;
    }
    if (add && free_slot >= 0) {
        strcpy(tracked[free_slot], name);
        tracked_used[free_slot] = 1;
    }
}

static void unlink_tracked(void) {
    // "/dev/shm" + "/name": what shm_unlink does, without its setup.
    char path[NAME_MAX_BYTES + 16];
    for (int i = 0; i < TRACKED_MAX; i++) {
        if (!tracked_used[i]) continue;
        memcpy(path, "/dev/shm", 8);
        strcpy(path + 8, tracked[i]);
        syscall(SYS_unlink, path);
        tracked_used[i] = 0;
    }
}

// Closes every descriptor but `keep` (close_range, or one by one before Linux 5.9).
static void close_all_but(int keep) {
    int ranged = 1;
    if (keep > 0 && syscall(SYS_close_range, 0U, (unsigned)keep - 1, 0U) != 0) ranged = 0;
    if (syscall(SYS_close_range, (unsigned)keep + 1, ~0U, 0U) != 0) ranged = 0;
    if (ranged) return;
    struct rlimit limit;
    long top = syscall(SYS_getrlimit, RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < 1048576 ? (long)limit.rlim_cur : 65536;
    for (long fd = 0; fd < top; fd++) {
        if (fd != keep) syscall(SYS_close, (int)fd);
    }
}

static void serve(int socket) __attribute__((noreturn));
static void serve(int socket) {
    // Immune to the terminal's signals (Ctrl-C reaches the whole process
    // group) and to hang-ups: it ends only when the program has.
    syscall(SYS_setsid);
    struct sigaction ignore;
    memset(&ignore, 0, sizeof ignore);
    ignore.sa_handler = SIG_IGN;
    int ignored[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2};
    for (unsigned i = 0; i < sizeof ignored / sizeof ignored[0]; i++) sigaction(ignored[i], &ignore, NULL);
    // Nothing else of the program's stays open here (a pipe's write end
    // kept would keep its reader waiting).
    close_all_but(socket);
    char message[NAME_MAX_BYTES + 2];
    while (1) {
        ssize_t count = recv(socket, message, sizeof message - 1, 0);
        if (count < 0 && errno == EINTR) continue;
        if (count <= 0) break;  // every holder is gone
        message[count] = 0;
        // "+/name" or "-/name".
        if ((message[0] == '+' || message[0] == '-') && message[1] == '/' && count < NAME_MAX_BYTES) {
            track(message + 1, message[0] == '+');
        }
    }
    unlink_tracked();
    syscall(SYS_exit_group, 0);
    __builtin_unreachable();
}

#define TRACKER_ENV "SWIFT_MULTIPROCESSING_SHM_TRACKER"
#define TRACKER_GROUP_ENV "SWIFT_MULTIPROCESSING_SHM_TRACKER_GROUP"
enum { TRACKER_FD = 3 };

// The exec'd tracker (bootstrap.c calls it first thing when TRACKER_ENV is
// set): leaves a memory control group of the library's own (which is killed
// whole when its worker ends), then serves.
void cmp_shm_tracker_main(void) {
    const char *group = getenv(TRACKER_GROUP_ENV);
    if (group != NULL && group[0] == '/') {
        char path[4096];
        snprintf(path, sizeof path, "%s/cgroup.procs", group);
        FILE *procs = fopen(path, "w");
        if (procs != NULL) {
            fprintf(procs, "%d\n", (int)getpid());
            fclose(procs);
        }
    }
    serve(TRACKER_FD);
}

// Exec'd image's argument and environment: made before the clone (the
// children may not allocate).
static char *const tracker_argv[] = {"swift-multiprocessing-shm-tracker", NULL};

int cmp_shm_tracker_start(const char *leave_group) {
    int ends[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ends) != 0) return -1;
    // The environment: this one's, and the tracker's variables.
    static char marker[] = TRACKER_ENV "=3";
    static char group_variable[4200];
    size_t count = 0;
    for (char **entry = environ; entry != NULL && *entry != NULL; entry++) count++;
    char **environment = calloc(count + 3, sizeof(char *));
    if (environment == NULL) {
        close(ends[0]);
        close(ends[1]);
        return -1;
    }
    size_t used = 0;
    for (size_t i = 0; i < count; i++) {
        if (strncmp(environ[i], TRACKER_ENV, strlen(TRACKER_ENV)) != 0) environment[used++] = environ[i];
    }
    environment[used++] = marker;
    if (leave_group != NULL && strlen(leave_group) < 4096) {
        snprintf(group_variable, sizeof group_variable, "%s=%s", TRACKER_GROUP_ENV, leave_group);
        environment[used++] = group_variable;
    }
    environment[used] = NULL;
    // A raw clone: no fork handlers run, and the children run only the code above.
    long middle = syscall(SYS_clone, (unsigned long)SIGCHLD, 0UL, 0UL, 0UL, 0UL);
    if (middle < 0) {
        int saved = errno;
        close(ends[0]);
        close(ends[1]);
        errno = saved;
        return -1;
    }
    if (middle == 0) {
        // The middle child starts the tracker and leaves at once: the tracker
        // is nobody's child here, and never a zombie of the program.
        syscall(SYS_close, ends[0]);
        long tracker = syscall(SYS_clone, (unsigned long)SIGCHLD, 0UL, 0UL, 0UL, 0UL);
        if (tracker == 0) {
            // The socket as descriptor 3, kept across exec.
            int socket = ends[1];
            if (socket != TRACKER_FD) {
                if (syscall(SYS_dup2, socket, TRACKER_FD) < 0) syscall(SYS_exit_group, 1);
                socket = TRACKER_FD;
            } else {
                syscall(SYS_fcntl, socket, F_SETFD, 0);
            }
            syscall(SYS_execve, "/proc/self/exe", tracker_argv, environment);
            serve(socket);  // no exec: serve from this copy
        }
        syscall(SYS_exit_group, tracker < 0 ? 1 : 0);
    }
    free(environment);
    close(ends[1]);
    int status = 0;
    while (waitpid((pid_t)middle, &status, 0) < 0 && errno == EINTR) {}
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        close(ends[0]);
        errno = ECHILD;
        return -1;
    }
    return ends[0];
}

int cmp_shm_tracker_send(int socket, const char *message) {
    ssize_t sent;
    do {
        sent = send(socket, message, strlen(message), MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    return sent < 0 ? -1 : 0;
}
