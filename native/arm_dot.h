/* The one primitive that differs between the two aarch64 paths: a 16-byte int8 dot product added
 * into four int32 lanes. Included by the per-path files after they set (or not) MOTE_ARM_DOTPROD:
 *   dotprod (ARMv8.2 +dotprod): SDOT, lane j += a[4j..4j+3] . b[4j..4j+3]               1 instruction
 *   neon (ARMv8.0):  SMULL + SMLAL2 (int16 lane j = a_j b_j + a_{j+8} b_{j+8}) + SADALP   3 instructions
 * The lanes partition the 16 products differently; only the sum of the four lanes is defined (exact).
 * dot16_small needs |a_j b_j + a_{j+8} b_{j+8}| <= 32767 (ternary digits <= 2 or scaled <= 32, int-N
 * values <= 15: at most 2 * 32 * 128); dot16 is exact for every int8 pair (int8: -128 * -128 twice). */
#ifndef MOTE_ARM_DOT_H
#define MOTE_ARM_DOT_H

#include <arm_neon.h>

#if defined(MOTE_ARM_DOTPROD)
#define MOTE_ARM_PATH(name) name##_dotprod
static inline int32x4_t dot16_small(int32x4_t acc, int8x16_t a, int8x16_t b) { return vdotq_s32(acc, a, b); }
static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) { return vdotq_s32(acc, a, b); }
#else
#define MOTE_ARM_PATH(name) name##_neon
static inline int32x4_t dot16_small(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int16x8_t p = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    return vpadalq_s16(acc, vmlal_high_s8(p, a, b));
}
static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
}
#endif

#endif
