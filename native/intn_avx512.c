/* Group-wise int-N x int8 matmul, AVX-512 VNNI.
 *
 * A group's weights become up to two u8 vectors ("chunks") of L values each, matched by the
 * activations at x + g*G + c*L:  8-bit: chunks of min(G, 64) bytes;  4-bit: the low nibbles
 * (values 0..G/2-1) and the high nibbles (G/2..G-1) of G/2 bytes;  2/3-bit: the row is first
 * unpacked to bytes (scalar) and then read as 8-bit. Per group and token: vpdpbusd into a fresh
 * int32 vector, zero-point * sum(x) subtracted from lane 0 (exact), then one float FMA with
 * scale / s into a float accumulator; one horizontal sum per output.
 */
#include <immintrin.h>

#include "kernels.h"

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi")))
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    const uint8_t *src;   /* row data */
    int bits;             /* 8 or 4 (2/3 are unpacked to 8 first) */
    int gbytes, L, nch;
    __mmask64 m;          /* first L bytes */
} rowview;

TGT INLINE int chunks(const rowview *r, int g, __m512i v[2]) {
    const uint8_t *p = r->src + (int64_t)g * r->gbytes;
    if (r->bits == 4) {
        __m512i raw = _mm512_maskz_loadu_epi8(r->m, p), lo4 = _mm512_set1_epi8(0x0F);
        v[0] = _mm512_and_si512(raw, lo4);
        v[1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4);
        return 2;
    }
    v[0] = _mm512_maskz_loadu_epi8(r->m, p);
    v[1] = r->nch > 1 ? _mm512_loadu_si512(p + 64) : _mm512_setzero_si512();
    return r->nch;
}

/* per group of row n and token t0 + t: fac = scale * (1/s) and corr = zero * sum(xq), 16 groups at a time */
TGT static void row_factors(const mote_intn_args *a, int n, int t0, int nt, float *fac, int32_t *corr) {
    const int ng = a->ng;
    const uint16_t *s16 = a->scales + (int64_t)n * ng, *z16 = a->zeros + (int64_t)n * ng;
    for (int g = 0; g < ng; g += 16) {
        __mmask16 m = ng - g >= 16 ? 0xFFFF : (__mmask16)((1u << (ng - g)) - 1);
        __m512 sc = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s16 + g));
        __m512i z = _mm512_cvtps_epi32(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, z16 + g)));
        for (int t = 0; t < nt; t++) {
            int64_t ix = (int64_t)(t0 + t) * ng + g;
            _mm512_mask_storeu_ps(fac + t * ng + g, m, _mm512_mul_ps(sc, _mm512_maskz_loadu_ps(m, a->rs + ix)));
            _mm512_mask_storeu_epi32(corr + t * ng + g, m,
                                     _mm512_mullo_epi32(z, _mm512_maskz_loadu_epi32(m, a->sumx + ix)));
        }
    }
}

/* nt tokens (1..4, a compile-time constant after inlining) of row n */
TGT INLINE void tile(const mote_intn_args *a, const rowview *r, float *fac, int32_t *corr, int n, int t0,
                     const int nt) {
    const int ng = a->ng;
    row_factors(a, n, t0, nt, fac, corr);
    __m512 accf[4];
    for (int t = 0; t < nt; t++) accf[t] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m512i v[2];
        /* software prefetch 2 KiB ahead of the weight stream (rows are consecutive) */
        _mm_prefetch((const char *)(r->src + (int64_t)g * r->gbytes + 2048), _MM_HINT_T0);
        if (r->gbytes > 64) _mm_prefetch((const char *)(r->src + (int64_t)g * r->gbytes + 2048 + 64), _MM_HINT_T0);
        int nch = chunks(r, g, v);
        for (int t = 0; t < nt; t++) {
            const int8_t *x = a->xq + (t0 + t) * a->kp + (int64_t)g * a->G;
            __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v[0], _mm512_loadu_si512(x));
            if (nch > 1) acc = _mm512_dpbusd_epi32(acc, v[1], _mm512_loadu_si512(x + r->L));
            acc = _mm512_mask_sub_epi32(acc, 1, acc, _mm512_set1_epi32(corr[t * ng + g]));
            accf[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_set1_ps(fac[t * ng + g]), accf[t]);
        }
    }
    for (int t = 0; t < nt; t++) a->y[(int64_t)(t0 + t) * a->N + n] = _mm512_reduce_add_ps(accf[t]);
}

TGT void mote_intn_rows_avx512(const mote_intn_args *a, int n0, int n1, uint8_t *scratch) {
    float *fac = (float *)(void *)(scratch + ((a->kp + 64) & ~(int64_t)63));   /* [4, ng] */
    int32_t *corr = (int32_t *)(void *)(fac + 4 * a->ng);                       /* [4, ng] */
    for (int n = n0; n < n1; n++) {
        rowview r;
        r.src = a->w + n * a->rb;
        r.bits = a->bits;
        if (a->bits == 2 || a->bits == 3) {
            for (int g = 0; g < a->ng; g++)
                mote_unpack_group(r.src + g * (a->G * a->bits / 8), a->bits, a->G, scratch + g * a->G);
            r.src = scratch;
            r.bits = 8;
        }
        r.gbytes = a->G * r.bits / 8;
        r.L = r.bits == 4 ? a->G / 2 : (a->G < 64 ? a->G : 64);
        r.nch = r.bits == 4 ? 2 : a->G / r.L;
        r.m = r.L >= 64 ? ~0ULL : (1ULL << r.L) - 1;
        int t = 0;
        for (; t + 4 <= a->T; t += 4) tile(a, &r, fac, corr, n, t, 4);
        switch (a->T - t) {
            case 3: tile(a, &r, fac, corr, n, t, 3); break;
            case 2: tile(a, &r, fac, corr, n, t, 2); break;
            case 1: tile(a, &r, fac, corr, n, t, 1); break;
            default: break;
        }
    }
}
