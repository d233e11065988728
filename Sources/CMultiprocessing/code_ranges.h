/* Private to the C target: code ranges the stop-the-world fork judges
   threads by (code_ranges.c). */
#ifndef CMP_CODE_RANGES_H
#define CMP_CODE_RANGES_H

#include <stdint.h>

/* Whether `pc` is in the Swift runtime's code (libswiftCore,
   libswift_Concurrency); 1 as well when the runtime is linked statically or
   before the ranges are found. */
int cmp_in_swift_runtime(uintptr_t pc);

/* Whether `pc` is in the C or C++ library's code. */
int cmp_in_system_code(uintptr_t pc);

#endif
