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

/* fused decode + dot for nt (1 or 2) tokens of one row; one accumulator per digit so the five
 * vpdpbusd of a block are independent */
TGT static inline __attribute__((always_inline)) void gemv_row(const mote_tern_args *a, const luts512 *L, int n, int t0, int nt) {
    const uint8_t *w = a->w + n * a->rb;
    const int8_t *x0 = a->xq + t0 * a->kx, *x1 = x0 + (nt > 1 ? a->kx : 0);
    __m512i acc0[5], acc1[5];
    for (int i = 0; i < 5; i++) acc0[i] = acc1[i] = _mm512_setzero_si512();
    for (int b = 0; b < a->nblk; b++) {
        __m512i q = load_block(w, b, a);
        __mmask64 top = _mm512_movepi8_mask(q);
        const int8_t *xb0 = x0 + (int64_t)b * 320, *xb1 = x1 + (int64_t)b * 320;
        for (int i = 0; i < 5; i++) {
            __m512i d = digit(L, q, top, i);
            acc0[i] = _mm512_dpbusd_epi32(acc0[i], d, _mm512_loadu_si512(xb0 + 64 * i));
            if (nt > 1) acc1[i] = _mm512_dpbusd_epi32(acc1[i], d, _mm512_loadu_si512(xb1 + 64 * i));
        }
    }
    for (int t = 0; t < nt; t++) {
        __m512i *acc = t ? acc1 : acc0;
        __m512i s = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]),
                                     _mm512_add_epi32(_mm512_add_epi32(acc[2], acc[3]), acc[4]));
        a->y[(int64_t)(t0 + t) * a->N + n] = (float)(_mm512_reduce_add_epi32(s) - a->sumx[t0 + t]) * a->f[t0 + t];
    }
}

/* one token, two rows: the activation loads are shared */
TGT static inline __attribute__((always_inline)) void gemv_2rows(const mote_tern_args *a, const luts512 *L, int n) {
    const uint8_t *w0 = a->w + n * a->rb, *w1 = w0 + a->rb;
    const int8_t *x = a->xq;
    /* software prefetch k row pairs ahead (>= 2 KiB): the hardware prefetcher loses two
     * interleaved row streams that jump at every pair when rows are long (large K) */
    const int64_t pairs = 2 * a->rb, pf = pairs * (pairs >= 2048 ? 1 : (2048 + pairs - 1) / pairs);
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, b0 = a0, b1 = a0;
    for (int b = 0; b < a->nblk; b++) {
        _mm_prefetch((const char *)(w0 + pf + 64 * b), _MM_HINT_T0);
        _mm_prefetch((const char *)(w1 + pf + 64 * b), _MM_HINT_T0);
        __m512i q0 = load_block(w0, b, a), q1 = load_block(w1, b, a);
        __mmask64 t0 = _mm512_movepi8_mask(q0), t1 = _mm512_movepi8_mask(q1);
        const int8_t *xb = x + (int64_t)b * 320;
        for (int i = 0; i < 5; i++) {
            __m512i xv = _mm512_loadu_si512(xb + 64 * i);
            if (i & 1) {
                a1 = _mm512_dpbusd_epi32(a1, digit(L, q0, t0, i), xv);
                b1 = _mm512_dpbusd_epi32(b1, digit(L, q1, t1, i), xv);
            } else {
                a0 = _mm512_dpbusd_epi32(a0, digit(L, q0, t0, i), xv);
                b0 = _mm512_dpbusd_epi32(b0, digit(L, q1, t1, i), xv);
            }
        }
    }
    int32_t s0 = _mm512_reduce_add_epi32(_mm512_add_epi32(a0, a1)), s1 = _mm512_reduce_add_epi32(_mm512_add_epi32(b0, b1));
    a->y[n] = (float)(s0 - a->sumx[0]) * a->f[0];
    a->y[n + 1] = (float)(s1 - a->sumx[0]) * a->f[0];
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

/* u8 digits of nr (1 or 2) rows [nr, kx] . int8 activations of 4 tokens: 8 independent chains */
TGT static inline __attribute__((always_inline)) void dot_tile(const mote_tern_args *a, const uint8_t *d, int n,
                                                               const int nr, int t0) {
    const int8_t *x = a->xq + t0 * a->kx;
    const int64_t kx = a->kx;
    __m512i c[2][4];
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 4; t++) c[r][t] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kx; k += 64) {
        __m512i xv[4];
        for (int t = 0; t < 4; t++) xv[t] = _mm512_loadu_si512(x + t * kx + k);
        for (int r = 0; r < nr; r++) {
            __m512i v = _mm512_loadu_si512(d + r * kx + k);
            for (int t = 0; t < 4; t++) c[r][t] = _mm512_dpbusd_epi32(c[r][t], v, xv[t]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int t = 0; t < 4; t++)
            a->y[(int64_t)(t0 + t) * a->N + n + r] =
                (float)(_mm512_reduce_add_epi32(c[r][t]) - a->sumx[t0 + t]) * a->f[t0 + t];
}

TGT void mote_tern_rows_avx512(const mote_tern_args *a, int n0, int n1, uint8_t *scratch) {
    luts512 L;
    load_luts(&L);
    if (a->T <= 2) {
        if (a->T == 1) {
            int n = n0;
            for (; n + 2 <= n1; n += 2) gemv_2rows(a, &L, n);
            for (; n < n1; n++) gemv_row(a, &L, n, 0, 1);
        } else {
            for (int n = n0; n < n1; n++) gemv_row(a, &L, n, 0, 2);
        }
        return;
    }
    for (int n = n0; n < n1; n += 2) {   /* GEMM: decode 2 rows, then 2 x 4 tiles */
        const int nr = n + 1 < n1 ? 2 : 1;
        for (int r = 0; r < nr; r++) decode_row(a, &L, n + r, scratch + r * a->kx);
        int t = 0;
        for (; t + 4 <= a->T; t += 4) {
            if (nr == 2)
                dot_tile(a, scratch, n, 2, t);
            else
                dot_tile(a, scratch, n, 1, t);
        }
        for (; t < a->T; t++)   /* leftover tokens: fused path on the packed rows */
            for (int r = 0; r < nr; r++) gemv_row(a, &L, n + r, t, 1);
    }
}
