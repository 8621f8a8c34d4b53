/* Group-wise int-N x int8 rows for aarch64: the body of intn_neon.c and intn_dotprod.c, which differ
 * only in the dot primitive (arm_dot.h) and the function name.
 *
 * Per row: unpack the bit planes once into kp signed bytes w - off (off = 128 at 8 bits so that
 * 0..255 fits int8, else 0; planes of >= 16 bytes split in registers, narrower ones through
 * mote_unpack_group), then tiles of up to 4 tokens share each 16-byte weight load. Per (token, group)
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

/* tokens [t0, t0 + NT) of row n, unpacked in wq [kp]; NT <= 4, wide = 8 bits */
INLINE void row_tokens(const mote_intn_args *a, const int8_t *wq, int n, int t0, const int NT, const int wide,
                       const float *sc, const int32_t *zp) {
    const int G = a->G, off = wide ? 128 : 0;
    float y[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int g = 0; g < a->ng; g++) {
        int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
        const int8_t *w = wq + (int64_t)g * G, *x = a->xq + (int64_t)t0 * a->kp + (int64_t)g * G;
        for (int k = 0; k < G; k += 16) {
            const int8x16_t wv = vld1q_s8(w + k);
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++) {
                const int8x16_t xv = vld1q_s8(x + t * a->kp + k);
                acc[t] = wide ? dot16(acc[t], wv, xv) : dot16_small(acc[t], wv, xv);
            }
        }
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const int64_t ix = (int64_t)(t0 + t) * a->ng + g;
            const int32_t dot = vaddvq_s32(acc[t]) + off * a->sumx[ix];
            const int32_t acc_g = dot - zp[g] * a->sumx[ix];
            y[t] += (float)acc_g * (sc[g] * a->rs[ix]);
        }
    }
    for (int t = 0; t < NT; t++) a->y[(int64_t)(t0 + t) * a->N + n] = y[t];
}

static void row_tokens_any(const mote_intn_args *a, const int8_t *wq, int n, int t0, int NT, int wide,
                           const float *sc, const int32_t *zp) {
    switch ((wide ? 4 : 0) + NT - 1) {
        case 0: row_tokens(a, wq, n, t0, 1, 0, sc, zp); break;
        case 1: row_tokens(a, wq, n, t0, 2, 0, sc, zp); break;
        case 2: row_tokens(a, wq, n, t0, 3, 0, sc, zp); break;
        case 3: row_tokens(a, wq, n, t0, 4, 0, sc, zp); break;
        case 4: row_tokens(a, wq, n, t0, 1, 1, sc, zp); break;
        case 5: row_tokens(a, wq, n, t0, 2, 1, sc, zp); break;
        case 6: row_tokens(a, wq, n, t0, 3, 1, sc, zp); break;
        default: row_tokens(a, wq, n, t0, 4, 1, sc, zp); break;
    }
}

/* scratch: mote_intn_scratch_bytes(a) (the unpacked row, then the row's scales and zeros) */
void MOTE_ARM_PATH(mote_intn_rows)(const mote_intn_args *a, int n0, int n1, uint8_t *scratch) {
    int8_t *wq = (int8_t *)scratch;   /* [kp] */
    for (int n = n0; n < n1; n++) {
        unpack_row(a, a->w + (int64_t)n * a->rb, wq);
        const float *sc;
        const int32_t *zp;
        mote_intn_row_params(a, n, scratch, &sc, &zp);
        for (int t = 0; t < a->T; t += 4) row_tokens_any(a, wq, n, t, a->T - t >= 4 ? 4 : a->T - t, a->bits == 8, sc, zp);
    }
}
