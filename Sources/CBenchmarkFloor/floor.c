#define _GNU_SOURCE
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

#include <stdint.h>

static int read_exactly(int fd, void *buffer, size_t count) {
    size_t done = 0;
    while (done < count) {
        ssize_t n = read(fd, (char *)buffer + done, count - done);
        if (n == 0) return 0;
        if (n < 0) { if (errno == EINTR) continue; return -1; }
        done += (size_t)n;
    }
    return 1;
}

int cbf_pipe_pingpong(int count) {
    int to_child[2], to_parent[2];
    if (pipe(to_child) == -1 || pipe(to_parent) == -1) return -1;
    pid_t pid = fork();
    if (pid == -1) return -1;
    if (pid == 0) {
        close(to_child[1]);
        close(to_parent[0]);
        uint64_t value;
        while (read_exactly(to_child[0], &value, sizeof value) == 1) {
            if (write(to_parent[1], &value, sizeof value) != sizeof value) break;
        }
        _exit(0);
    }
    close(to_child[0]);
    close(to_parent[1]);
    for (uint64_t i = 0; i < (uint64_t)count; i++) {
        if (write(to_child[1], &i, sizeof i) != sizeof i) return -1;
        uint64_t back;
        if (read_exactly(to_parent[0], &back, sizeof back) != 1 || back != i) return -1;
    }
    close(to_child[1]);
    close(to_parent[0]);
    int status;
    while (waitpid(pid, &status, 0) == -1 && errno == EINTR) {}
    return 0;
}

#include <dirent.h>
#include <sched.h>
#include <stdlib.h>

int cbf_pin_all_threads(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (cpu >= 0) {
        CPU_SET(cpu, &set);
    } else {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        for (long i = 0; i < n; i++) CPU_SET(i, &set);
    }
    DIR *tasks = opendir("/proc/self/task");
    if (tasks == NULL) return -1;
    struct dirent *entry;
    int result = 0;
    while ((entry = readdir(tasks)) != NULL) {
        if (entry->d_name[0] == '.') continue;
        pid_t tid = (pid_t)atoi(entry->d_name);
        if (sched_setaffinity(tid, sizeof set, &set) == -1) result = -1;
    }
    closedir(tasks);
    return result;
}

#include <malloc.h>

void cbf_trim_heap(void) { malloc_trim(0); }
