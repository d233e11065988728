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

/* The floor under queue.int: a single-producer, single-consumer ring of
   8-byte slots in shared memory, a forked producer, a reader here; a side
   that finds the ring full or empty yields. No lock, no futex, no message
   framing: what moving numbers between processes costs at the least. */
#include <sys/mman.h>

enum { CBF_RING_SLOTS = 4096 };

struct cbf_ring {
    _Alignas(64) uint64_t head; /* written by the producer */
    _Alignas(64) uint64_t tail; /* written by the consumer */
    _Alignas(64) uint64_t slots[CBF_RING_SLOTS];
};

int cbf_shm_ring_ints(int count) {
    struct cbf_ring *ring = mmap(NULL, sizeof *ring, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (ring == MAP_FAILED) return -1;
    pid_t pid = fork();
    if (pid == -1) return -1;
    if (pid == 0) {
        for (uint64_t i = 0; i < (uint64_t)count; i++) {
            uint64_t head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
            while (head - __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE) == CBF_RING_SLOTS) sched_yield();
            ring->slots[head % CBF_RING_SLOTS] = i;
            __atomic_store_n(&ring->head, head + 1, __ATOMIC_RELEASE);
        }
        _exit(0);
    }
    int result = 0;
    for (uint64_t i = 0; i < (uint64_t)count; i++) {
        uint64_t tail = __atomic_load_n(&ring->tail, __ATOMIC_RELAXED);
        while (__atomic_load_n(&ring->head, __ATOMIC_ACQUIRE) == tail) sched_yield();
        if (ring->slots[tail % CBF_RING_SLOTS] != i) result = -1;
        __atomic_store_n(&ring->tail, tail + 1, __ATOMIC_RELEASE);
    }
    int status;
    while (waitpid(pid, &status, 0) == -1 && errno == EINTR) {}
    munmap(ring, sizeof *ring);
    return result;
}

/* The floor under process.spawn: `count` times start this executable anew
   (posix_spawn of /proc/self/exe) and wait for it. The new image exits in
   the constructor below, after the dynamic loader and every library's
   initializers ran, before `main`: what starting this program costs before
   it does anything. */
#include <spawn.h>

#define CBF_EXIT_AT_ONCE "MULTIPROCESSING_BENCHMARK_EXIT_AT_ONCE"

extern char **environ;

__attribute__((constructor)) static void cbf_exit_if_asked(void) {
    if (getenv(CBF_EXIT_AT_ONCE) != NULL) _exit(0);
}

int cbf_spawn_self_exit(int count) {
    /* This environment and the marker, for the children only (no setenv in
       a process whose other threads may read the environment). */
    size_t entries = 0;
    while (environ[entries] != NULL) entries++;
    char **envp = malloc((entries + 2) * sizeof *envp);
    if (envp == NULL) return -1;
    for (size_t i = 0; i < entries; i++) envp[i] = environ[i];
    envp[entries] = CBF_EXIT_AT_ONCE "=1";
    envp[entries + 1] = NULL;
    char *argv[] = {"multiprocessing-benchmarks", NULL};
    int result = 0;
    for (int i = 0; i < count && result == 0; i++) {
        pid_t pid;
        int rc = posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, envp);
        if (rc != 0) { errno = rc; result = -1; break; }
        int status;
        while (waitpid(pid, &status, 0) == -1) {
            if (errno != EINTR) { result = -1; break; }
        }
        if (result == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0)) result = -1;
    }
    free(envp);
    return result;
}
