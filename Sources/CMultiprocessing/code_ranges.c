/* Code ranges the stop-the-world fork judges by: the C and C++ libraries'
   code, which it does not park a thread in (fork itself takes locks that
   code holds: malloc's arenas, stdio's list), and the Swift runtime's,
   whose locks a thread is let finish with before it parks (lock_tracking.c
   tells them by the caller of pthread_mutex_lock). Found at start-up. */
#define _GNU_SOURCE
#include "code_ranges.h"

#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct { uintptr_t start, end; } code_range_t;

static code_range_t system_ranges[16];  /* executable segments of the C and C++ libraries */
static int system_range_count;
static code_range_t runtime_ranges[8];  /* the Swift runtime's and concurrency runtime's */
static int runtime_range_count;
static int runtime_found;

static int scan_image(struct dl_phdr_info *image, size_t size, void *context) {
    (void)size;
    (void)context;
    const char *name = image->dlpi_name ? image->dlpi_name : "";
    int system = strstr(name, "/libc.so") != NULL || strstr(name, "/ld-linux") != NULL ||
                 strstr(name, "/libstdc++.so") != NULL || strstr(name, "/libgcc_s.so") != NULL ||
                 strstr(name, "/libm.so") != NULL;
    int runtime = strstr(name, "/libswiftCore.so") != NULL || strstr(name, "/libswift_Concurrency.so") != NULL;
    if (!system && !runtime) return 0;
    if (strstr(name, "/libswiftCore.so") != NULL) runtime_found = 1;
    for (int i = 0; i < image->dlpi_phnum; i++) {
        const ElfW(Phdr) *segment = &image->dlpi_phdr[i];
        if (segment->p_type != PT_LOAD || !(segment->p_flags & PF_X)) continue;
        code_range_t range = { image->dlpi_addr + segment->p_vaddr, image->dlpi_addr + segment->p_vaddr + segment->p_memsz };
        if (system && system_range_count < 16) system_ranges[system_range_count++] = range;
        if (runtime && runtime_range_count < 8) runtime_ranges[runtime_range_count++] = range;
    }
    return 0;
}

static int ranges_found;

/* At start-up, before main: the libraries a program links are loaded. */
__attribute__((constructor(102))) static void find_code_ranges(void) {
    dl_iterate_phdr(scan_image, NULL);
    __atomic_store_n(&ranges_found, 1, __ATOMIC_RELEASE);
}

int cmp_in_swift_runtime(uintptr_t pc) {
    /* Before the ranges are known, or with the runtime linked statically
       (no libswiftCore.so): every lock counts as the runtime's. */
    if (!__atomic_load_n(&ranges_found, __ATOMIC_ACQUIRE) || !runtime_found) return 1;
    for (int i = 0; i < runtime_range_count; i++) {
        if (pc >= runtime_ranges[i].start && pc < runtime_ranges[i].end) return 1;
    }
    return 0;
}

int cmp_in_system_code(uintptr_t pc) {
    for (int i = 0; i < system_range_count; i++) {
        if (pc >= system_ranges[i].start && pc < system_ranges[i].end) return 1;
    }
    return 0;
}
