/* Ternary x int8 matmul, AVX2 (no VNNI), both packed layouts (a->tpb). File layout: digits by
 * unsigned compares: with q the byte after i rounds of q = 3q mod 256, digit i = [q >= 86] +
 * [q >= 171] (= (3q) >> 8). 2-bit slab layout: digit i = (q >> 2i) & 3. Products by
 * vpmaddubsw (digits <= 2, so int16 cannot saturate) and vpmaddwd. Tail blocks are copied
 * into a zeroed 64-byte buffer. Same structure as ternary_avx512.c. */
#if defined(__x86_64__)   /* x86-64 only: setup.py leaves this file out elsewhere */
#include <immintrin.h>
#include <string.h>

#include "kernels.h"

#define TGT __attribute__((target("avx2,fma")))

/* 32 packed bytes -> their tpb digits (5: base 3; 4: 2-bit fields by shift and mask) */
TGT static inline void digits32(__m256i q, __m256i d[5], int tpb) {
    if (tpb == MOTE_TPB_SLAB2) {
        const __m256i m3 = _mm256_set1_epi8(3);
        for (int i = 0; i < 4; i++) d[i] = _mm256_and_si256(_mm256_srli_epi16(q, 2 * i), m3);
        return;
    }
    const __m256i c86 = _mm256_set1_epi8((char)86), c171 = _mm256_set1_epi8((char)171);
    for (int i = 0; i < 5; i++) {
        __m256i ge1 = _mm256_cmpeq_epi8(_mm256_max_epu8(q, c86), q);    /* -1 where q >= 86 */
        __m256i ge2 = _mm256_cmpeq_epi8(_mm256_max_epu8(q, c171), q);
        d[i] = _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), ge1), ge2);
        q = _mm256_add_epi8(q, _mm256_add_epi8(q, q));
    }
}

/* the 64 packed bytes of block b (tail padded with zeros) */
static inline const uint8_t *block_ptr(const mote_tern_args *a, const uint8_t *w, int b, uint8_t *tmp) {
    if (b < a->nfull) return w + (int64_t)b * 64;
    memset(tmp, 0, 64);
    memcpy(tmp, w + (int64_t)b * 64, (size_t)a->tail);
    return tmp;
}

TGT static inline __m256i dot16(__m256i d, const int8_t *x) {
    return _mm256_maddubs_epi16(d, _mm256_loadu_si256((const __m256i *)x));
}

TGT static void gemv_row(const mote_tern_args *a, int n, int t) {
    const uint8_t *w = a->w + n * a->rb;
    const int8_t *x = a->xq + t * a->kx;
    const __m256i ones = _mm256_set1_epi16(1);
    uint8_t tmp[64];
    __m256i acc = _mm256_setzero_si256();
    for (int b = 0; b < a->nblk; b++) {
        const uint8_t *p = block_ptr(a, w, b, tmp);
        const int8_t *xb = x + (int64_t)b * 64 * a->tpb;
        __m256i s16 = _mm256_setzero_si256();   /* <= 10 products of <= 254 per lane: no overflow */
        for (int h = 0; h < 2; h++) {
            __m256i d[5];
            digits32(_mm256_loadu_si256((const __m256i *)(p + 32 * h)), d, a->tpb);
            for (int i = 0; i < a->tpb; i++) s16 = _mm256_add_epi16(s16, dot16(d[i], xb + 64 * i + 32 * h));
        }
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s16, ones));
    }
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    r = _mm_hadd_epi32(r, r);
    r = _mm_hadd_epi32(r, r);
    a->y[(int64_t)t * a->N + n] = (float)(_mm_cvtsi128_si32(r) - a->sumx[t]) * a->f[t];
}

TGT static void decode_row(const mote_tern_args *a, int n, uint8_t *dst) {
    const uint8_t *w = a->w + n * a->rb;
    uint8_t tmp[64];
    for (int b = 0; b < a->nblk; b++) {
        const uint8_t *p = block_ptr(a, w, b, tmp);
        for (int h = 0; h < 2; h++) {
            __m256i d[5];
            digits32(_mm256_loadu_si256((const __m256i *)(p + 32 * h)), d, a->tpb);
            for (int i = 0; i < a->tpb; i++)
                _mm256_storeu_si256((__m256i *)(dst + (int64_t)b * 64 * a->tpb + 64 * i + 32 * h), d[i]);
        }
    }
}

TGT static inline int32_t hsum(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    r = _mm_hadd_epi32(r, r);
    r = _mm_hadd_epi32(r, r);
    return _mm_cvtsi128_si32(r);
}

/* u8 digits [kx] . int8 activations for 4 tokens */
TGT static void dot_tile4(const mote_tern_args *a, const uint8_t *d, int n, int t0) {
    const int8_t *x = a->xq + t0 * a->kx;
    const int64_t kx = a->kx;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i c[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                    _mm256_setzero_si256()};
    for (int64_t k = 0; k < kx; k += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(d + k));
        for (int t = 0; t < 4; t++)
            c[t] = _mm256_add_epi32(c[t], _mm256_madd_epi16(dot16(v, x + t * kx + k), ones));
    }
    for (int t = 0; t < 4; t++)
        a->y[(int64_t)(t0 + t) * a->N + n] = (float)(hsum(c[t]) - a->sumx[t0 + t]) * a->f[t0 + t];
}

/* both layouts */
TGT void mote_tern_rows_avx2(const mote_tern_args *a, int n0, int n1, uint8_t *scratch) {
    for (int n = n0; n < n1; n++) {
        int t = 0;
        if (a->T > 2) {
            decode_row(a, n, scratch);
            for (; t + 4 <= a->T; t += 4) dot_tile4(a, scratch, n, t);
        }
        for (; t < a->T; t++) gemv_row(a, n, t);
    }
}

#endif
