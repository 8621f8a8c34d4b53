/* Ternary digit decode of 16 packed bytes in NEON registers (ARMv8.0), shared by the aarch64 rows
 * functions (ternary_arm.h) and the file -> slab re-lay (ternary_relayout_neon.c).
 *
 * digits16(q, tpb, d) gives the operands the dot products take; digit i belongs to accumulator i % 3:
 *   file layout (tpb 5): q_i = 3^i q mod 256 (MUL), i.e. q after i rounds of q = 3q & 255, and
 *     -d_i = [q_i >= 86] + [q_i >= 171] as 0 / -1 bytes (CMHS, CMHS, ADD), since (3 q_i) >> 8 counts
 *     the thresholds 256/3 and 512/3: the accumulators hold -sum d x;
 *   2-bit slab layout (tpb 4): q & 0x03 = d0, q & 0x0C = 4 d1, q & 0x30 = 16 d2, q >> 6 = d3 (one AND or
 *     USHR each, all <= 48, so signed bytes): accumulator 1 holds 4 sum d1 x, accumulator 2 16 sum d2 x.
 * digit_total() undoes the sign and the scales of the three int32 accumulators (exact: every lane of
 * accumulator 1 / 2 is a sum of multiples of 4 / 16). digits16_plain() gives the digits 0..2 themselves. */
#ifndef MOTE_TERN_DIGITS_NEON_H
#define MOTE_TERN_DIGITS_NEON_H

#include <arm_neon.h>

#include "kernels.h"

#define MOTE_NEON_INLINE static inline __attribute__((always_inline))

/* the multipliers 3^i (i = 1..4) and the thresholds, built once per call of a kernel. The empty asm
 * hides the multipliers' values, so that each q_i stays one MUL (GCC otherwise rewrites 3 q and 9 q
 * as SHL + ADD: two instructions instead of one). */
typedef struct {
    uint8x16_t pow3[5], c86, c171;
} tern_consts;

MOTE_NEON_INLINE tern_consts tern_consts_init(void) {
    tern_consts k;
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    for (int i = 0; i < 5; i++) {
        k.pow3[i] = vdupq_n_u8(pow3[i]);
        __asm__("" : "+w"(k.pow3[i]));
    }
    k.c86 = vdupq_n_u8(86);
    k.c171 = vdupq_n_u8(171);
    return k;
}

MOTE_NEON_INLINE void digits16(const tern_consts *k, uint8x16_t q, const int tpb, int8x16_t d[5]) {
    if (tpb == MOTE_TPB_SLAB2) {
        d[0] = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x03)));
        d[1] = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0C)));
        d[2] = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x30)));
        d[3] = vreinterpretq_s8_u8(vshrq_n_u8(q, 6));
        return;
    }
#pragma GCC unroll 5
    for (int i = 0; i < 5; i++) {
        const uint8x16_t qi = i ? vmulq_u8(q, k->pow3[i]) : q;
        d[i] = vreinterpretq_s8_u8(vaddq_u8(vcgeq_u8(qi, k->c86), vcgeq_u8(qi, k->c171)));
    }
}

MOTE_NEON_INLINE void digits16_plain(const tern_consts *k, uint8x16_t q, const int tpb, int8x16_t d[5]) {
    digits16(k, q, tpb, d);
    if (tpb == MOTE_TPB_SLAB2) {
        d[1] = vshrq_n_s8(d[1], 2);
        d[2] = vshrq_n_s8(d[2], 4);
        return;
    }
#pragma GCC unroll 5
    for (int i = 0; i < 5; i++) d[i] = vnegq_s8(d[i]);
}

/* sum_k d_k x_k from the three accumulators of digits16's operands */
MOTE_NEON_INLINE int32_t digit_total(const int32x4_t acc[3], const int tpb) {
    if (tpb == MOTE_TPB_SLAB2)
        return vaddvq_s32(vaddq_s32(acc[0], vaddq_s32(vshrq_n_s32(acc[1], 2), vshrq_n_s32(acc[2], 4))));
    return -vaddvq_s32(vaddq_s32(acc[0], vaddq_s32(acc[1], acc[2])));
}

#endif
