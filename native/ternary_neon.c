/* Ternary x int8 rows, aarch64 NEON baseline (ARMv8.0: SMULL / SMLAL2 / SADALP dot products);
 * the kernel body is ternary_arm.h. */
#include "kernels.h"

#if defined(__aarch64__)
#include "ternary_arm.h"
#endif
