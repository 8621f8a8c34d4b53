/* Group-wise int-N x int8 rows for aarch64: the body of intn_neon.c and intn_dotprod.c, which differ
 * only in the dot primitive (arm_dot.h) and the function name.
 *
 * T >= 2, and 3 bits or 2 bits at G = 32: per row, unpack the bit planes once into kp signed bytes w - off
 * (off = 128 at 8 bits so that 0..255 fits int8, else 0; planes of >= 16 bytes split in registers,
 * narrower ones through mote_unpack_group), then tiles of up to 4 tokens share each 16-byte weight load.
 * T = 1 at 8, 4 and 2 bits (G / 4 >= 16): each group is split in registers and multiplied at once. Per (token, group)
 * the int32 dot is exact: sum q x = sum (q - off) x + off sumx, and the float part is the scalar
 * path's statement, group after group in order,
 *   y += (float)(dot - zero * sumx) * (scale * (1 / s))
 * so the result is bit-identical to mote_intn_rows_scalar (float steps in the same order; the build
 * does not contract a * b + c into a fused multiply-add: -ffp-contract=off / ISO C). */
#include "arm_dot.h"

#define INLINE static inline __attribute__((always_inline))

/* one row's ng packed groups (src) -> dst [ng G] signed bytes w - off */
static void unpack_row(const mote_intn_args *a, const uint8_t *src, int8_t *dst) {
    const int G = a->G, bits = a->bits, gb = G * bits / 8, m2 = G / 4, m1 = G / 8;
    const uint8x16_t m3 = vdupq_n_u8(3), one = vdupq_n_u8(1);
    for (int g = 0; g < a->ng; g++, src += gb, dst += G) {
        if (bits == 8) {
            for (int j = 0; j < G; j += 16) vst1q_s8(dst + j, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(src + j), vdupq_n_u8(0x80))));
            continue;
        }
        if (bits == 4) {   /* byte j = value j | value j + G/2 << 4 */
            for (int j = 0; j < G / 2; j += 16) {
                const uint8x16_t q = vld1q_u8(src + j);
                vst1q_u8((uint8_t *)dst + j, vandq_u8(q, vdupq_n_u8(0x0F)));
                vst1q_u8((uint8_t *)dst + G / 2 + j, vshrq_n_u8(q, 4));
            }
            continue;
        }
        if (m2 % 16 || (bits == 3 && m1 % 16)) {   /* planes narrower than a vector */
            mote_unpack_group(src, bits, G, (uint8_t *)dst);
            continue;
        }
        for (int j = 0; j < m2; j += 16) {   /* 2-bit plane: byte j = values j + i G/4 at bits 2i */
            const uint8x16_t q = vld1q_u8(src + j);
            for (int i = 0; i < 4; i++) vst1q_u8((uint8_t *)dst + i * m2 + j, vandq_u8(vshlq_u8(q, vdupq_n_s8((int8_t)(-2 * i))), m3));
        }
        if (bits == 3)   /* + 1-bit plane of bit 2: byte j bit i -> value j + i G/8 */
            for (int j = 0; j < m1; j += 16) {
                const uint8x16_t h = vld1q_u8(src + m2 + j);
                for (int i = 0; i < 8; i++) {
                    uint8_t *v = (uint8_t *)dst + i * m1 + j;
                    const uint8x16_t bit = vandq_u8(vshlq_u8(h, vdupq_n_s8((int8_t)-i)), one);
                    vst1q_u8(v, vorrq_u8(vld1q_u8(v), vshlq_n_u8(bit, 2)));
                }
            }
    }
}

/* the scalar path's statement for group g of token t, given dot = sum (q - off) x: the term
 * (float)(sum q x - zero sumx) * (scale * (1 / s)) that y accumulates, group after group */
INLINE float group_term(const mote_intn_args *a, int t, int g, int32_t dot, int off, const float *sc, const int32_t *zp) {
    const int64_t ix = (int64_t)t * a->ng + g;
    const int32_t acc_g = dot + off * a->sumx[ix] - zp[g] * a->sumx[ix];
    return (float)acc_g * (sc[g] * a->rs[ix]);
}

/* T = 1 without the unpacked row: sum (q - off) x of one group straight from its packed bytes, for
 * 8 bits (q ^ 0x80 = q - 128), 4 bits (nibbles: values j and j + G/2) and 2 bits with G/4 >= 16 bytes */
INLINE int32_t group_dot_packed(const uint8_t *src, const int8_t *x, const int bits, const int G) {
    int32x4_t acc0 = vdupq_n_s32(0), acc1 = vdupq_n_s32(0);
    if (bits == 8) {
#pragma GCC unroll 8
        for (int j = 0; j < G; j += 32) {
            const uint8x16_t s80 = vdupq_n_u8(0x80);
            acc0 = dot16(acc0, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(src + j), s80)), vld1q_s8(x + j));
            acc1 = dot16(acc1, vreinterpretq_s8_u8(veorq_u8(vld1q_u8(src + j + 16), s80)), vld1q_s8(x + j + 16));
        }
    } else if (bits == 4) {
#pragma GCC unroll 4
        for (int j = 0; j < G / 2; j += 16) {
            const uint8x16_t q = vld1q_u8(src + j);
            acc0 = dot16_small(acc0, vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F))), vld1q_s8(x + j));
            acc1 = dot16_small(acc1, vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vld1q_s8(x + G / 2 + j));
        }
    } else {
#pragma GCC unroll 2
        for (int j = 0; j < G / 4; j += 16) {
            const uint8x16_t q = vld1q_u8(src + j), m3 = vdupq_n_u8(3);
            acc0 = dot16_small(acc0, vreinterpretq_s8_u8(vandq_u8(q, m3)), vld1q_s8(x + j));
            acc1 = dot16_small(acc1, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q, 2), m3)), vld1q_s8(x + G / 4 + j));
            acc0 = dot16_small(acc0, vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(q, 4), m3)), vld1q_s8(x + G / 2 + j));
            acc1 = dot16_small(acc1, vreinterpretq_s8_u8(vshrq_n_u8(q, 6)), vld1q_s8(x + 3 * G / 4 + j));
        }
    }
    return vaddvq_s32(vaddq_s32(acc0, acc1));
}

/* T = 1, rows [n0, n1) read in place (bits 8 / 4 / 2 as above; bits and G compile-time constants) */
INLINE void rows_packed(const mote_intn_args *a, int n0, int n1, uint8_t *scratch, const int bits, const int G) {
    const int gb = G * bits / 8, off = bits == 8 ? 128 : 0;
    for (int n = n0; n < n1; n++) {
        const float *sc;
        const int32_t *zp;
        mote_intn_row_params(a, n, scratch, &sc, &zp);
        const uint8_t *src = a->w + (int64_t)n * a->rb;
        float y = 0.0f;
        for (int g = 0; g < a->ng; g++)
            y += group_term(a, 0, g, group_dot_packed(src + (int64_t)g * gb, a->xq + (int64_t)g * G, bits, G), off, sc, zp);
        a->y[n] = y;
    }
}

/* 1 if rows_packed ran rows [n0, n1) */
static int gemv_packed(const mote_intn_args *a, int n0, int n1, uint8_t *scratch) {
    if (a->T != 1) return 0;
    switch (a->bits * 1000 + a->G) {
        case 8032: rows_packed(a, n0, n1, scratch, 8, 32); return 1;
        case 8064: rows_packed(a, n0, n1, scratch, 8, 64); return 1;
        case 8128: rows_packed(a, n0, n1, scratch, 8, 128); return 1;
        case 4032: rows_packed(a, n0, n1, scratch, 4, 32); return 1;
        case 4064: rows_packed(a, n0, n1, scratch, 4, 64); return 1;
        case 4128: rows_packed(a, n0, n1, scratch, 4, 128); return 1;
        case 2064: rows_packed(a, n0, n1, scratch, 2, 64); return 1;
        case 2128: rows_packed(a, n0, n1, scratch, 2, 128); return 1;
        default: return 0;   /* 3 bits, 2 bits at G = 32: through the unpacked row */
    }
}

/* tokens [t0, t0 + NT) of row n, unpacked in wq [kp]; NT <= 4, wide = 8 bits, G = a->G (a constant here,
 * so the group's loop of G / 16 steps unrolls) */
INLINE void row_tokens(const mote_intn_args *a, const int8_t *wq, int n, int t0, const int NT, const int wide,
                       const int G, const float *sc, const int32_t *zp) {
    const int off = wide ? 128 : 0;
    float y[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int g = 0; g < a->ng; g++) {
        int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        const int8_t *w = wq + (int64_t)g * G, *x = a->xq + (int64_t)t0 * a->kp + (int64_t)g * G;
#pragma GCC unroll 8
        for (int k = 0; k < G; k += 16) {
            const int8x16_t wv = vld1q_s8(w + k);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const int8x16_t xv = vld1q_s8(x + t * a->kp + k);
                acc[t] = wide ? dot16(acc[t], wv, xv) : dot16_small(acc[t], wv, xv);
            }
        }
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) y[t] += group_term(a, t0 + t, g, vaddvq_s32(acc[t]), off, sc, zp);
    }
    for (int t = 0; t < NT; t++) a->y[(int64_t)(t0 + t) * a->N + n] = y[t];
}

INLINE void row_tokens_g(const mote_intn_args *a, const int8_t *wq, int n, int t0, int NT, const int wide,
                         const int G, const float *sc, const int32_t *zp) {
    switch (NT) {
        case 1: row_tokens(a, wq, n, t0, 1, wide, G, sc, zp); break;
        case 2: row_tokens(a, wq, n, t0, 2, wide, G, sc, zp); break;
        case 3: row_tokens(a, wq, n, t0, 3, wide, G, sc, zp); break;
        default: row_tokens(a, wq, n, t0, 4, wide, G, sc, zp); break;
    }
}

/* NT (1..4), the width class and G (32, 64, 128) as compile-time constants */
static void row_tokens_any(const mote_intn_args *a, const int8_t *wq, int n, int t0, int NT, int wide,
                           const float *sc, const int32_t *zp) {
    switch (a->G * 2 + wide) {
        case 64: row_tokens_g(a, wq, n, t0, NT, 0, 32, sc, zp); break;
        case 65: row_tokens_g(a, wq, n, t0, NT, 1, 32, sc, zp); break;
        case 128: row_tokens_g(a, wq, n, t0, NT, 0, 64, sc, zp); break;
        case 129: row_tokens_g(a, wq, n, t0, NT, 1, 64, sc, zp); break;
        case 256: row_tokens_g(a, wq, n, t0, NT, 0, 128, sc, zp); break;
        default: row_tokens_g(a, wq, n, t0, NT, 1, 128, sc, zp); break;
    }
}

/* scratch: mote_intn_scratch_bytes(a) (the unpacked row, then the row's scales and zeros) */
void MOTE_ARM_PATH(mote_intn_rows)(const mote_intn_args *a, int n0, int n1, uint8_t *scratch) {
    if (gemv_packed(a, n0, n1, scratch)) return;
    int8_t *wq = (int8_t *)scratch;   /* [kp] */
    for (int n = n0; n < n1; n++) {
        unpack_row(a, a->w + (int64_t)n * a->rb, wq);
        const float *sc;
        const int32_t *zp;
        mote_intn_row_params(a, n, scratch, &sc, &zp);
        for (int t = 0; t < a->T; t += 4) row_tokens_any(a, wq, n, t, a->T - t >= 4 ? 4 : a->T - t, a->bits == 8, sc, zp);
    }
}
