/* Group-wise int-N x int8 matmul, AVX2 (no VNNI). A row is first unpacked to one byte per value
 * (4-bit with shifts and masks, 2/3-bit scalar; 8-bit rows are read in place), then each group
 * of 32-byte chunks is multiplied with vpmaddubsw + vpmaddwd. vpmaddubsw saturates at int16, so
 * 8-bit values are split into nibbles: q x = lo x + 16 hi x. Zero-point and scales as intn.c. */
#if defined(__x86_64__)   /* x86-64 only: setup.py leaves this file out elsewhere */
#include <immintrin.h>

#include "kernels.h"

#define TGT __attribute__((target("avx2,fma")))

/* 4-bit row -> one byte per value (bit-plane groups: byte j = value j | value j + G/2 << 4) */
TGT static void unpack4_row(const mote_intn_args *a, const uint8_t *src, uint8_t *dst) {
    const int G = a->G, m = G / 2;
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    for (int g = 0; g < a->ng; g++, src += m, dst += G) {
        if (m < 32) {
            for (int j = 0; j < m; j++) {
                dst[j] = src[j] & 0x0F;
                dst[j + m] = src[j] >> 4;
            }
            continue;
        }
        for (int j = 0; j < m; j += 32) {
            __m256i raw = _mm256_loadu_si256((const __m256i *)(src + j));
            _mm256_storeu_si256((__m256i *)(dst + j), _mm256_and_si256(raw, lo4));
            _mm256_storeu_si256((__m256i *)(dst + m + j), _mm256_and_si256(_mm256_srli_epi16(raw, 4), lo4));
        }
    }
}

/* 32 values (u8) . 32 int8 activations -> 8 int32 partial sums */
TGT static inline __m256i dot32(__m256i v, const int8_t *x, int wide) {
    const __m256i ones = _mm256_set1_epi16(1), lo4 = _mm256_set1_epi8(0x0F);
    __m256i xv = _mm256_loadu_si256((const __m256i *)x);
    if (!wide) return _mm256_madd_epi16(_mm256_maddubs_epi16(v, xv), ones);
    __m256i lo = _mm256_maddubs_epi16(_mm256_and_si256(v, lo4), xv);
    __m256i hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), lo4), xv);
    return _mm256_add_epi32(_mm256_madd_epi16(lo, ones), _mm256_madd_epi16(hi, _mm256_set1_epi16(16)));
}

TGT static inline float hsum_ps(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_hadd_ps(r, r);
    r = _mm_hadd_ps(r, r);
    return _mm_cvtss_f32(r);
}

TGT void mote_intn_rows_avx2(const mote_intn_args *a, int n0, int n1, uint8_t *scratch) {
    const int G = a->G, wide = a->bits == 8;
    for (int n = n0; n < n1; n++) {
        const uint8_t *src = a->w + n * a->rb, *q = scratch;
        if (a->bits == 8) {
            q = src;
        } else if (a->bits == 4) {
            unpack4_row(a, src, scratch);
        } else {
            for (int g = 0; g < a->ng; g++)
                mote_unpack_group(src + g * (G * a->bits / 8), a->bits, G, scratch + g * G);
        }
        const float *sc;
        const int32_t *zp;
        mote_intn_row_params(a, n, scratch, &sc, &zp);
        for (int t = 0; t < a->T; t++) {
            const int8_t *x = a->xq + t * a->kp;
            __m256 accf = _mm256_setzero_ps();
            for (int g = 0; g < a->ng; g++) {
                __m256i acc = _mm256_setzero_si256();
                for (int k = g * G; k < (g + 1) * G; k += 32)
                    acc = _mm256_add_epi32(acc, dot32(_mm256_loadu_si256((const __m256i *)(q + k)), x + k, wide));
                int64_t ix = (int64_t)t * a->ng + g;
                acc = _mm256_sub_epi32(acc, _mm256_setr_epi32(zp[g] * a->sumx[ix], 0, 0, 0, 0, 0, 0, 0));
                accf = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(sc[g] * a->rs[ix]), accf);
            }
            a->y[(int64_t)t * a->N + n] = hsum_ps(accf);
        }
    }
}

#endif
