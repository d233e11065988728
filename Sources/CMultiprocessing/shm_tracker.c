// The shared-memory tracker: a process of its own that outlives the program
// and unlinks the named segments the program created and did not unlink,
// once every process of the program is gone — killed ones too.
//
// The program holds one end of a socket pair (SOCK_SEQPACKET: each message
// whole); its forked children inherit it. The tracker holds the other end;
// when the last holder is gone it reads end of file and unlinks what is left.
//
// The tracker is forked from a multi-threaded process, so it runs only what
// is safe after fork: raw system calls, no malloc, no locks, no stdio.

#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
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
    // Nothing else of the program's stays open here.
    if (socket > 0) syscall(SYS_close_range, 0U, (unsigned)socket - 1, 0U);
    syscall(SYS_close_range, (unsigned)socket + 1, ~0U, 0U);
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

int cmp_shm_tracker_start(void) {
    int ends[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ends) != 0) return -1;
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
        if (tracker == 0) serve(ends[1]);
        syscall(SYS_exit_group, tracker < 0 ? 1 : 0);
    }
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
