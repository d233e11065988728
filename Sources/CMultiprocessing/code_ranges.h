/* Private to the C target: the code ranges the stop-the-world fork judges
   parked threads by (code_ranges.c). */
#ifndef CMP_CODE_RANGES_H
#define CMP_CODE_RANGES_H

#include <stdint.h>

/* Finds the ranges once (later calls return at once); returns whether the
   runtime library's symbol table was read (else all its code counts). */
int cmp_load_code_ranges(void);

/* Whether `address` is in the runtime's C++ code that may hold a lock. */
int cmp_in_runtime(uintptr_t address);

/* Whether `ret`, a return address, is in such code (swift_once's slow path
   does not count). */
int cmp_is_runtime_return(uintptr_t ret);

/* Whether `pc` is in the C or C++ library's code (no frame pointers). */
int cmp_in_system_code(uintptr_t pc);

/* The start of the executable segment holding `address`, of any image
   loaded at the first fork; 0 if none. */
uintptr_t cmp_code_start_of(uintptr_t address);

#endif
