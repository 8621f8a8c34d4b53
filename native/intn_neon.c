/* Group-wise int-N x int8 rows, aarch64 NEON baseline (ARMv8.0: SMULL / SMLAL2 / SADALP dot products);
 * the kernel body is intn_arm.h. */
#include "kernels.h"

#if defined(__aarch64__)
#include "intn_arm.h"
#endif
