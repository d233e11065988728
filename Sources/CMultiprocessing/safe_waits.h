/* Private to the C target: the library's own blocking waits, as the
   stop-the-world fork (quiesce.c) sees them (safe_waits.c). */
#ifndef CMP_SAFE_WAITS_H
#define CMP_SAFE_WAITS_H

#include <stdatomic.h>
#include <stdint.h>
#include <sys/types.h>

/* Non-zero while a stop of the world is under way (between
   cmp_world_stop_begin and cmp_world_stop_end). */
extern _Atomic uint32_t cmp_world_stopping;

/* Waits until the stop under way, if any, is over. */
void cmp_wait_while_world_stops(void);

/* A stop begins: from here on, a thread leaving a safe wait waits until it
   ends. Sequentially consistent, before any cmp_in_safe_wait. */
void cmp_world_stop_begin(void);

/* The stop is over: the threads held on their way out of a safe wait go on.
   Async-signal-safe (the watchdog ends a stop from a signal handler). */
void cmp_world_stop_end(void);

/* Done in the parent before a fork: what a child's first safe wait needs. */
void cmp_safe_waits_prepare(void);

/* Whether thread `tid` is blocked in a safe wait now. */
int cmp_in_safe_wait(pid_t tid);

/* In a forked child: no stop is under way, and none of the registered
   threads exists. */
void cmp_safe_waits_forked_child(void);

#endif
