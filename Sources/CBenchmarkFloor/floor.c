#include "CBenchmarkFloor.h"

#include <errno.h>
#include <sys/wait.h>
#include <unistd.h>

int cbf_fork_exit_wait(int count) {
    for (int i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid == -1) return -1;
        if (pid == 0) _exit(0);
        int status;
        while (waitpid(pid, &status, 0) == -1) {
            if (errno != EINTR) return -1;
        }
    }
    return 0;
}
