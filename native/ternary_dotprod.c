/* Ternary x int8 rows, aarch64 dot-product path (ARMv8.2 SDOT); the kernel body is ternary_arm.h.
 * Only this file is compiled for +dotprod (the pragma below), and it runs only where HWCAP_ASIMDDP is set. */
#include "kernels.h"

#if defined(__aarch64__)
#include "arm_dotprod_begin.h"
#include "ternary_arm.h"
#include "arm_dotprod_end.h"
#endif
