/* Group-wise int-N x int8 rows, aarch64 dot-product path (ARMv8.2 SDOT); the kernel body is intn_arm.h.
 * Only this file is compiled for +dotprod, and it runs only where HWCAP_ASIMDDP is set. */
#include "kernels.h"

#if defined(__aarch64__)
#include "arm_dotprod_begin.h"
#include "intn_arm.h"
#include "arm_dotprod_end.h"
#endif
