/* Ternary x int8 matmul, AVX-512 (BW + VBMI + VNNI).
 *
 * Digit decode by byte LUTs: for digit i, a 256-entry table T_i[q] (the multiply-by-3-and-carry
 * result, tern_luts.h) is looked up with two vpermi2b (128 entries each, index bits 0..6) and a
 * blend on bit 7: 3 instructions per 64 digits. The digits {0,1,2} go to vpdpbusd as the unsigned
 * operand against the int8 activations; sum(x) is subtracted once per row (see ternary.c).
 *
 * GEMV (T <= 2): decode fused with the dot products. GEMM (T > 2): decode a row once into scratch,
 * then run 4-token tiles over it.
 */
#include <immintrin.h>

#include "kernels.h"
#include "tern_luts.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")))

typedef struct {
    __m512i lo0[5], lo1[5], hi0[5], hi1[5];
} luts512;

TGT static inline void load_luts(luts512 *L) {
    for (int i = 0; i < 5; i++) {
        L->lo0[i] = _mm512_loadu_si512(mote_tern_lut[i] + 0);
        L->lo1[i] = _mm512_loadu_si512(mote_tern_lut[i] + 64);
        L->hi0[i] = _mm512_loadu_si512(mote_tern_lut[i] + 128);
        L->hi1[i] = _mm512_loadu_si512(mote_tern_lut[i] + 192);
    }
}

/* 64 packed bytes -> digit i of each byte */
TGT static inline __m512i digit(const luts512 *L, __m512i q, __mmask64 top, int i) {
    __m512i lo = _mm512_permutex2var_epi8(L->lo0[i], q, L->lo1[i]);
    __m512i hi = _mm512_permutex2var_epi8(L->hi0[i], q, L->hi1[i]);
    return _mm512_mask_blend_epi8(top, lo, hi);
}

TGT static inline __m512i load_block(const uint8_t *w, int b, const mote_tern_args *a) {
    if (b < a->nfull) return _mm512_loadu_si512(w + (int64_t)b * 64);
    __mmask64 m = a->tail >= 64 ? ~0ULL : (1ULL << a->tail) - 1;   /* tail: B bytes, rest 0 */
    return _mm512_maskz_loadu_epi8(m, w + (int64_t)b * 64);
}

/* fused decode + dot for nt (1 or 2) tokens of one row */
TGT static inline void gemv_row(const mote_tern_args *a, const luts512 *L, int n, int t0, int nt) {
    const uint8_t *w = a->w + n * a->rb;
    const int8_t *x0 = a->xq + t0 * a->kx, *x1 = x0 + (nt > 1 ? a->kx : 0);
    __m512i acc0a = _mm512_setzero_si512(), acc0b = acc0a, acc1a = acc0a, acc1b = acc0a;
    for (int b = 0; b < a->nblk; b++) {
        __m512i q = load_block(w, b, a);
        __mmask64 top = _mm512_movepi8_mask(q);
        const int8_t *xb0 = x0 + (int64_t)b * 320, *xb1 = x1 + (int64_t)b * 320;
        for (int i = 0; i < 5; i++) {
            __m512i d = digit(L, q, top, i);
            if (i & 1) {
                acc0b = _mm512_dpbusd_epi32(acc0b, d, _mm512_loadu_si512(xb0 + 64 * i));
                if (nt > 1) acc1b = _mm512_dpbusd_epi32(acc1b, d, _mm512_loadu_si512(xb1 + 64 * i));
            } else {
                acc0a = _mm512_dpbusd_epi32(acc0a, d, _mm512_loadu_si512(xb0 + 64 * i));
                if (nt > 1) acc1a = _mm512_dpbusd_epi32(acc1a, d, _mm512_loadu_si512(xb1 + 64 * i));
            }
        }
    }
    int32_t s0 = _mm512_reduce_add_epi32(_mm512_add_epi32(acc0a, acc0b));
    a->y[(int64_t)t0 * a->N + n] = (float)(s0 - a->sumx[t0]) * a->f[t0];
    if (nt > 1) {
        int32_t s1 = _mm512_reduce_add_epi32(_mm512_add_epi32(acc1a, acc1b));
        a->y[(int64_t)(t0 + 1) * a->N + n] = (float)(s1 - a->sumx[t0 + 1]) * a->f[t0 + 1];
    }
}

/* decode one row into digits in block order: d[b*320 + 64 i + j] */
TGT static inline void decode_row(const mote_tern_args *a, const luts512 *L, int n, uint8_t *d) {
    const uint8_t *w = a->w + n * a->rb;
    for (int b = 0; b < a->nblk; b++) {
        __m512i q = load_block(w, b, a);
        __mmask64 top = _mm512_movepi8_mask(q);
        for (int i = 0; i < 5; i++) _mm512_storeu_si512(d + (int64_t)b * 320 + 64 * i, digit(L, q, top, i));
    }
}

/* u8 digits [kx] . int8 activations, 4 tokens at a time */
TGT static inline void dot_tile4(const mote_tern_args *a, const uint8_t *d, int n, int t0) {
    const int8_t *x = a->xq + t0 * a->kx;
    const int64_t kx = a->kx;
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
    for (int64_t k = 0; k < kx; k += 64) {
        __m512i v = _mm512_loadu_si512(d + k);
        c0 = _mm512_dpbusd_epi32(c0, v, _mm512_loadu_si512(x + k));
        c1 = _mm512_dpbusd_epi32(c1, v, _mm512_loadu_si512(x + kx + k));
        c2 = _mm512_dpbusd_epi32(c2, v, _mm512_loadu_si512(x + 2 * kx + k));
        c3 = _mm512_dpbusd_epi32(c3, v, _mm512_loadu_si512(x + 3 * kx + k));
    }
    int32_t s[4] = {_mm512_reduce_add_epi32(c0), _mm512_reduce_add_epi32(c1), _mm512_reduce_add_epi32(c2),
                    _mm512_reduce_add_epi32(c3)};
    for (int t = 0; t < 4; t++) a->y[(int64_t)(t0 + t) * a->N + n] = (float)(s[t] - a->sumx[t0 + t]) * a->f[t0 + t];
}

TGT void mote_tern_rows_avx512(const mote_tern_args *a, int n0, int n1, uint8_t *scratch) {
    luts512 L;
    load_luts(&L);
    if (a->T <= 2) {
        for (int n = n0; n < n1; n++) gemv_row(a, &L, n, 0, a->T);
        return;
    }
    for (int n = n0; n < n1; n++) {
        decode_row(a, &L, n, scratch);
        int t = 0;
        for (; t + 4 <= a->T; t += 4) dot_tile4(a, scratch, n, t);
        for (; t < a->T; t++) {   /* leftover tokens: fused path on the packed row */
            gemv_row(a, &L, n, t, 1);
        }
    }
}
