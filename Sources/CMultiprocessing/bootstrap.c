#include "CMultiprocessing.h"

#include <stdlib.h>
#include <unistd.h>

/* Defined in Swift (`@_cdecl`) by the Multiprocessing module. Weak, so that a
   binary which links this C target alone still loads. */
extern void swift_multiprocessing_bootstrap(int channel) __attribute__((weak));

/* Runs before `main` in every image that links the library. In an image that
   was re-executed as a spawned worker, it enters the worker and never
   returns to `main`. */
__attribute__((constructor)) static void cmp_bootstrap(void) {
    const char *marker = getenv(CMP_BOOTSTRAP_ENV);
    if (marker == NULL) return;
    int channel = atoi(marker);
    unsetenv(CMP_BOOTSTRAP_ENV);
    if (swift_multiprocessing_bootstrap == NULL) _exit(126);
    swift_multiprocessing_bootstrap(channel);
    _exit(0);
}
