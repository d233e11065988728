/* The C and C++ libraries' code, which the stop-the-world fork (quiesce.c)
   does not park a thread in: fork itself takes locks that code holds
   (malloc's arenas, stdio's list) and that the lock tracking cannot see.
   Found once, at the first fork, before any thread is parked. */
#define _GNU_SOURCE
#include "code_ranges.h"

#include <link.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

typedef struct { uintptr_t start, end; } code_range_t;

static code_range_t system_ranges[16];  /* executable segments of the C and C++ libraries */
static int system_range_count;

static int scan_image(struct dl_phdr_info *image, size_t size, void *context) {
    (void)size;
    (void)context;
    const char *name = image->dlpi_name ? image->dlpi_name : "";
    int system = strstr(name, "/libc.so") != NULL || strstr(name, "/ld-linux") != NULL ||
                 strstr(name, "/libstdc++.so") != NULL || strstr(name, "/libgcc_s.so") != NULL ||
                 strstr(name, "/libm.so") != NULL;
    if (!system) return 0;
    for (int i = 0; i < image->dlpi_phnum && system_range_count < 16; i++) {
        const ElfW(Phdr) *segment = &image->dlpi_phdr[i];
        if (segment->p_type != PT_LOAD || !(segment->p_flags & PF_X)) continue;
        system_ranges[system_range_count].start = image->dlpi_addr + segment->p_vaddr;
        system_ranges[system_range_count].end = image->dlpi_addr + segment->p_vaddr + segment->p_memsz;
        system_range_count++;
    }
    return 0;
}

static pthread_once_t code_ranges_once = PTHREAD_ONCE_INIT;

static void find_code_ranges(void) { dl_iterate_phdr(scan_image, NULL); }

void cmp_load_code_ranges(void) { pthread_once(&code_ranges_once, find_code_ranges); }

int cmp_in_system_code(uintptr_t pc) {
    for (int i = 0; i < system_range_count; i++) {
        if (pc >= system_ranges[i].start && pc < system_ranges[i].end) return 1;
    }
    return 0;
}
