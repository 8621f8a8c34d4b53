/* Compile what follows (up to arm_dotprod_end.h) for ARMv8.2-A +dotprod, in this file only: the build
 * itself stays ARMv8.0, and these functions run only where HWCAP_ASIMDDP is set (dispatch.c; dotprod is
 * an ARMv8.2 extension, so such a CPU implements ARMv8.2). GCC's arm_neon.h defines vdotq_s32 for
 * arch=armv8.2-a+dotprod, and an always_inline intrinsic only inlines into a superset of its target. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("dotprod"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#endif
#define MOTE_ARM_DOTPROD 1
