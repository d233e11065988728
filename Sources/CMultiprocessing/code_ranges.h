/* Private to the C target: the C library's code ranges, which the
   stop-the-world fork does not park a thread in (code_ranges.c). */
#ifndef CMP_CODE_RANGES_H
#define CMP_CODE_RANGES_H

#include <stdint.h>

/* Finds the ranges once (later calls return at once). */
void cmp_load_code_ranges(void);

/* Whether `pc` is in the C or C++ library's code. */
int cmp_in_system_code(uintptr_t pc);

#endif
