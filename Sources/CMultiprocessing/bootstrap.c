#include "CMultiprocessing.h"

#include <stdlib.h>
#include <unistd.h>

/* Defined in Swift (`@_cdecl`) by the Multiprocessing module. Weak, so that a
   binary which links this C target alone still loads. */
extern void swift_multiprocessing_bootstrap(int channel) __attribute__((weak));

/* The MPI pool's entry, defined by the MultiprocessingMPI module (built with
   the package's MPI trait), and the marker a program defines to have its
   ranks other than 0 become workers before `main`. Both weak: a program
   without them never enters. */
extern void swift_multiprocessing_mpi_entry(void) __attribute__((weak));
extern void swift_multiprocessing_mpi_workers(void) __attribute__((weak));

/* Runs before `main` in every image that links the library. In an image that
   was re-executed as a spawned worker, it enters the worker and never
   returns to `main`. In a program started by Open MPI's `mpirun` that
   carries the MPI marker, it starts MPI: rank 0 goes on to `main`, the
   other ranks serve the MPI pool and never return. A spawned worker (the
   bootstrap variable set) is never an MPI rank, even though it inherits
   the rank's environment. */
__attribute__((constructor)) static void cmp_bootstrap(void) {
    // The shared-memory tracker, executed anew (shm_tracker.c): never main.
    if (getenv("SWIFT_MULTIPROCESSING_SHM_TRACKER") != NULL) cmp_shm_tracker_main();
    const char *marker = getenv(CMP_BOOTSTRAP_ENV);
    if (marker == NULL) {
        if (getenv("OMPI_COMM_WORLD_SIZE") != NULL && swift_multiprocessing_mpi_workers != NULL &&
            swift_multiprocessing_mpi_entry != NULL) {
            swift_multiprocessing_mpi_entry();
        }
        return;
    }
    int channel = atoi(marker);
    unsetenv(CMP_BOOTSTRAP_ENV);
    if (swift_multiprocessing_bootstrap == NULL) _exit(126);
    swift_multiprocessing_bootstrap(channel);
    _exit(0);
}
