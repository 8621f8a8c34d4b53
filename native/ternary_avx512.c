/* Ternary x int8 matmul, AVX-512 (BW + VBMI + VNNI).
 *
 * Digit decode by byte LUTs: for digit i, a 256-entry table T_i[q] (the multiply-by-3-and-carry
 * result, tern_luts.h) is looked up with two vpermi2b (128 entries each, index bits 0..6) and a
 * blend on bit 7: 3 instructions per 64 digits. The digits {0,1,2} go to vpdpbusd as the unsigned
 * operand against the int8 activations; sum(x) is subtracted once per row (see ternary.c).
 *
 * GEMV (T == 1): two LUTs per byte instead of five (digit 0, and digits 1..4 in 2-bit fields split
 * by ANDs; see block_dot), two rows per pass sharing the activation loads, software prefetch of
 * the rows one or more passes ahead. T == 2: the five-LUT decode fused with the dot products.
 * GEMM (T > 2): decode a row once into scratch, then run 4-token tiles over it.
 */
#if defined(__x86_64__)   /* x86-64 only: setup.py leaves this file out elsewhere */
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

/* GEMV decode: two byte LUTs per packed byte q instead of five. d0 = mote_tern_lut[0][q] and
 * g = mote_tern_lut_g[q] = d1 | d2 << 2 | d3 << 4 | d4 << 6; each digit is then one AND away
 * (g & 0x03 = d1, g & 0x0C = 4 d2, g & 0x30 = 16 d3, g & 0xC0 = 64 d4). Digits scaled by 4^k
 * go to their own accumulator, which is shifted right by 2k (exact: every lane is a multiple of
 * 4^k) before the row sum. Per 64-byte block: 4 vpermi2b + 2 blends + 4 ANDs + 5 vpdpbusd
 * (instead of 10 vpermi2b + 5 blends + 5 vpdpbusd); vpermi2b and vpdpbusd share the same two
 * execution ports on this core class, the blends and ANDs do not. */
/* acc += u8 a . s8 b in place. The intrinsic makes GCC copy every accumulator twice per
 * iteration in these register-heavy loops (it does not tie the accumulator to its register). */
#define DPBUSD(acc, a, b) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))

typedef struct {
    __m512i z0, z1, z2, z3;   /* digit 0: entries 0..63, 64..127, 128..191, 192..255 */
    __m512i g0, g1, g2, g3;   /* packed digits 1..4 */
} luts2;

TGT static inline void load_luts2(luts2 *L) {
    L->z0 = _mm512_loadu_si512(mote_tern_lut[0] + 0);
    L->z1 = _mm512_loadu_si512(mote_tern_lut[0] + 64);
    L->z2 = _mm512_loadu_si512(mote_tern_lut[0] + 128);
    L->z3 = _mm512_loadu_si512(mote_tern_lut[0] + 192);
    L->g0 = _mm512_loadu_si512(mote_tern_lut_g + 0);
    L->g1 = _mm512_loadu_si512(mote_tern_lut_g + 64);
    L->g2 = _mm512_loadu_si512(mote_tern_lut_g + 128);
    L->g3 = _mm512_loadu_si512(mote_tern_lut_g + 192);
}

/* acc[0..3] += the five digit planes of block q against the block's five activation runs:
 * acc[0] gets d0 and d1 (scale 1), acc[1] 4 d2, acc[2] 16 d3, acc[3] 64 d4 */
TGT static inline __attribute__((always_inline)) void block_dot(const luts2 *L, __m512i q, const __m512i xv[5],
                                                                __m512i acc[4]) {
    const __mmask64 top = _mm512_movepi8_mask(q);
    const __m512i d0 = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(L->z0, q, L->z1),
                                              _mm512_permutex2var_epi8(L->z2, q, L->z3));
    const __m512i g = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(L->g0, q, L->g1),
                                             _mm512_permutex2var_epi8(L->g2, q, L->g3));
    DPBUSD(acc[0], d0, xv[0]);
    DPBUSD(acc[0], _mm512_and_si512(g, _mm512_set1_epi8(0x03)), xv[1]);
    DPBUSD(acc[1], _mm512_and_si512(g, _mm512_set1_epi8(0x0C)), xv[2]);
    DPBUSD(acc[2], _mm512_and_si512(g, _mm512_set1_epi8(0x30)), xv[3]);
    DPBUSD(acc[3], _mm512_and_si512(g, _mm512_set1_epi8((char)0xC0)), xv[4]);
}

TGT static inline __m512i acc_total(const __m512i acc[4]) {
    return _mm512_add_epi32(_mm512_add_epi32(acc[0], _mm512_srai_epi32(acc[1], 2)),
                            _mm512_add_epi32(_mm512_srai_epi32(acc[2], 4), _mm512_srai_epi32(acc[3], 6)));
}

#ifndef MOTE_TERN_PF
#define MOTE_TERN_PF 8192
#endif
#ifndef MOTE_TERN_L2_ROW_BYTES   /* file-layout GEMV rows at least this long prefetch into L2 (gemv_t1) */
#define MOTE_TERN_L2_ROW_BYTES 512
#endif

/* sum of the 16 lanes of A -> lane 0, of B -> lane 8 (fewer shuffles than two reductions) */
TGT static inline void reduce2(__m512i A, __m512i B, int32_t *sa, int32_t *sb) {
    __m512i c = _mm512_add_epi32(_mm512_shuffle_i64x2(A, B, 0x44), _mm512_shuffle_i64x2(A, B, 0xEE));
    c = _mm512_add_epi32(c, _mm512_shuffle_i64x2(c, c, 0xB1));
    c = _mm512_add_epi32(c, _mm512_shuffle_epi32(c, (_MM_PERM_ENUM)0x4E));
    c = _mm512_add_epi32(c, _mm512_shuffle_epi32(c, (_MM_PERM_ENUM)0xB1));
    *sa = _mm_cvtsi128_si32(_mm512_castsi512_si128(c));
    *sb = _mm_cvtsi128_si32(_mm512_extracti32x4_epi32(c, 2));
}

/* r[i] = sum of the 16 lanes of v[i]: a transposed reduction, 45 instructions for 16 rows */
TGT static inline __m512i reduce16(const __m512i v[16]) {
    __m512i t[8], u[4];
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * i], t[2 * i + 1]), _mm512_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
    /* u[i], 128-bit lane l: partial sums of rows 4i..4i+3 */
    __m512i w0 = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xDD));
    __m512i w1 = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2], u[3], 0x88), _mm512_shuffle_i32x4(u[2], u[3], 0xDD));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(w0, w1, 0x88), _mm512_shuffle_i32x4(w0, w1, 0xDD));
}

/* software prefetch into L1 (l2 = 0) or L2 (l2 = 1); see gemv_t1 */
#define PREFETCH(p, l2) _mm_prefetch((const char *)(p), (l2) ? _MM_HINT_T1 : _MM_HINT_T0)

/* one token, R (1 or 2) rows per pass sharing the activation loads: nfull full blocks, then the
 * tail block (masked load: B bytes, the rest 0) */
TGT static inline __attribute__((always_inline)) void gemv_rows(const mote_tern_args *a, const luts2 *L, int n,
                                                                const int R, int64_t pf, const int l2, __m512i *tot) {
    const uint8_t *w0 = a->w + n * a->rb, *w1 = w0 + a->rb;
    const int8_t *x = a->xq;
    __m512i acc0[4], acc1[4], xv[5];
    for (int i = 0; i < 4; i++) acc0[i] = acc1[i] = _mm512_setzero_si512();
    for (int b = 0; b < a->nfull; b++) {
        for (int i = 0; i < 5; i++) xv[i] = _mm512_loadu_si512(x + 64 * i);
        x += 320;
        PREFETCH(w0 + pf, l2);
        block_dot(L, _mm512_loadu_si512(w0), xv, acc0);
        w0 += 64;
        if (R > 1) {
            PREFETCH(w1 + pf, l2);
            block_dot(L, _mm512_loadu_si512(w1), xv, acc1);
            w1 += 64;
        }
    }
    if (a->tail) {
        const __mmask64 m = a->tail >= 64 ? ~0ULL : (1ULL << a->tail) - 1;
        for (int i = 0; i < 5; i++) xv[i] = _mm512_loadu_si512(x + 64 * i);
        block_dot(L, _mm512_maskz_loadu_epi8(m, w0), xv, acc0);
        if (R > 1) block_dot(L, _mm512_maskz_loadu_epi8(m, w1), xv, acc1);
    }
    if (tot) {   /* the caller reduces 16 rows at once */
        tot[0] = acc_total(acc0);
        if (R > 1) tot[1] = acc_total(acc1);
        return;
    }
    const int32_t sx = a->sumx[0];
    const float f = a->f[0];
    if (R > 1) {
        int32_t s0, s1;
        reduce2(acc_total(acc0), acc_total(acc1), &s0, &s1);
        a->y[n] = (float)(s0 - sx) * f;
        a->y[n + 1] = (float)(s1 - sx) * f;
    } else {
        a->y[n] = (float)(_mm512_reduce_add_epi32(acc_total(acc0)) - sx) * f;
    }
}


/* two tokens, one row: the digits decoded once (block_dot's LUTs) feed both tokens' activations */
TGT static inline __attribute__((always_inline)) void block_dot_2tok(const luts2 *L, __m512i q, const int8_t *x0,
                                                                     const int8_t *x1, __m512i acc0[4], __m512i acc1[4]) {
    const __mmask64 top = _mm512_movepi8_mask(q);
    const __m512i d0 = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(L->z0, q, L->z1),
                                              _mm512_permutex2var_epi8(L->z2, q, L->z3));
    const __m512i g = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(L->g0, q, L->g1),
                                             _mm512_permutex2var_epi8(L->g2, q, L->g3));
    const __m512i d[5] = {d0, _mm512_and_si512(g, _mm512_set1_epi8(0x03)), _mm512_and_si512(g, _mm512_set1_epi8(0x0C)),
                          _mm512_and_si512(g, _mm512_set1_epi8(0x30)), _mm512_and_si512(g, _mm512_set1_epi8((char)0xC0))};
    static const int slot[5] = {0, 0, 1, 2, 3};
    for (int i = 0; i < 5; i++) {
        DPBUSD(acc0[slot[i]], d[i], _mm512_loadu_si512(x0 + 64 * i));
        DPBUSD(acc1[slot[i]], d[i], _mm512_loadu_si512(x1 + 64 * i));
    }
}

TGT static void gemv_2tok(const mote_tern_args *a, const luts2 *L, int n) {
    const uint8_t *w = a->w + n * a->rb;
    const int8_t *x0 = a->xq, *x1 = a->xq + a->kx;
    __m512i acc0[4], acc1[4];
    for (int i = 0; i < 4; i++) acc0[i] = acc1[i] = _mm512_setzero_si512();
    for (int b = 0; b < a->nfull; b++) {
        PREFETCH(w + MOTE_TERN_PF, 0);
        block_dot_2tok(L, _mm512_loadu_si512(w), x0, x1, acc0, acc1);
        w += 64, x0 += 320, x1 += 320;
    }
    if (a->tail) {
        const __mmask64 m = a->tail >= 64 ? ~0ULL : (1ULL << a->tail) - 1;
        block_dot_2tok(L, _mm512_maskz_loadu_epi8(m, w), x0, x1, acc0, acc1);
    }
    int32_t s0, s1;
    reduce2(acc_total(acc0), acc_total(acc1), &s0, &s1);
    a->y[n] = (float)(s0 - a->sumx[0]) * a->f[0];
    a->y[(int64_t)a->N + n] = (float)(s1 - a->sumx[1]) * a->f[1];
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

/* u8 digits of NR (1 or 4) decoded rows (d: [NR, kx]) . int8 activations of NT (1..4) tokens from
 * t0: NR * NT independent vpdpbusd chains; a 4 x 4 tile ends in one transposed reduction */
TGT static inline __attribute__((always_inline)) void dot_tile(const mote_tern_args *a, const uint8_t *d, int n,
                                                               const int NR, int t0, const int NT) {
    const int8_t *x = a->xq + t0 * a->kx;
    const int64_t kx = a->kx;
    __m512i c[16];   /* c[4 t + r] */
    for (int i = 0; i < 16; i++) c[i] = _mm512_setzero_si512();
    for (int64_t k = 0; k < kx; k += 64) {
        __m512i w[4];
        for (int r = 0; r < NR; r++) w[r] = _mm512_loadu_si512(d + r * kx + k);
        for (int t = 0; t < NT; t++) {
            const __m512i xv = _mm512_loadu_si512(x + t * kx + k);
            for (int r = 0; r < NR; r++) DPBUSD(c[4 * t + r], w[r], xv);
        }
    }
    if (NR == 4 && NT == 4) {
        /* lane 4 t + r: output (t0 + t, n + r); 128-bit lane t = 4 consecutive outputs of token t0 + t */
        const __m512i tok = _mm512_srli_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 2);
        const __m512i sx = _mm512_permutexvar_epi32(tok, _mm512_maskz_loadu_epi32(0xF, a->sumx + t0));
        const __m512 f = _mm512_permutexvar_ps(tok, _mm512_maskz_loadu_ps(0xF, a->f + t0));
        const __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(reduce16(c), sx)), f);
        float *yo = a->y + (int64_t)t0 * a->N + n;
        _mm_storeu_ps(yo, _mm512_castps512_ps128(y));
        _mm_storeu_ps(yo + a->N, _mm512_extractf32x4_ps(y, 1));
        _mm_storeu_ps(yo + 2 * (int64_t)a->N, _mm512_extractf32x4_ps(y, 2));
        _mm_storeu_ps(yo + 3 * (int64_t)a->N, _mm512_extractf32x4_ps(y, 3));
    } else {
        for (int t = 0; t < NT; t++)
            for (int r = 0; r < NR; r++)
                a->y[(int64_t)(t0 + t) * a->N + n + r] =
                    (float)(_mm512_reduce_add_epi32(c[4 * t + r]) - a->sumx[t0 + t]) * a->f[t0 + t];
    }
}

/* all T tokens of NR (1 or 4) decoded rows */
TGT static inline __attribute__((always_inline)) void dot_rows(const mote_tern_args *a, const uint8_t *d, int n,
                                                               const int NR) {
    int t = 0;
    for (; t + 4 <= a->T; t += 4) dot_tile(a, d, n, NR, t, 4);
    switch (a->T - t) {
        case 3: dot_tile(a, d, n, NR, t, 3); break;
        case 2: dot_tile(a, d, n, NR, t, 2); break;
        case 1: dot_tile(a, d, n, NR, t, 1); break;
        default: break;
    }
}

/* ---- the 2-bit cache-slab layout (tpb = 4): byte j of a block holds digits of columns j + 64 i
 * in bits 2i..2i+1. GEMV: the digits scaled by 4^i are one AND away (q & 0x03, 0x0C, 0x30, 0xC0),
 * each into its own accumulator (acc_total shifts them back): per 64-byte block (256 weights)
 * 4 ANDs + 4 vpdpbusd, against ~19 ops per 320 weights for the base-3 layout. ---- */
TGT static inline __attribute__((always_inline)) void block2_dot(__m512i q, const __m512i xv[4], __m512i acc[4]) {
    DPBUSD(acc[0], _mm512_and_si512(q, _mm512_set1_epi8(0x03)), xv[0]);
    DPBUSD(acc[1], _mm512_and_si512(q, _mm512_set1_epi8(0x0C)), xv[1]);
    DPBUSD(acc[2], _mm512_and_si512(q, _mm512_set1_epi8(0x30)), xv[2]);
    DPBUSD(acc[3], _mm512_and_si512(q, _mm512_set1_epi8((char)0xC0)), xv[3]);
}

/* one token, R (1 or 2) rows per pass sharing the activation loads (as gemv_rows) */
TGT static inline __attribute__((always_inline)) void gemv2_rows(const mote_tern_args *a, int n, const int R,
                                                                 int64_t pf, __m512i *tot) {
    const uint8_t *w0 = a->w + n * a->rb, *w1 = w0 + a->rb;
    const int8_t *x = a->xq;
    __m512i acc0[4], acc1[4], xv[4];
    for (int i = 0; i < 4; i++) acc0[i] = acc1[i] = _mm512_setzero_si512();
    for (int b = 0; b < a->nblk; b++) {
        for (int i = 0; i < 4; i++) xv[i] = _mm512_loadu_si512(x + 64 * i);
        x += 256;
        const int full = b < a->nfull;
        const __mmask64 m = full || a->tail >= 64 ? ~0ULL : (1ULL << a->tail) - 1;
        PREFETCH(w0 + pf, 1);   /* into L2 at every row length (gemv_t1) */
        block2_dot(full ? _mm512_loadu_si512(w0) : _mm512_maskz_loadu_epi8(m, w0), xv, acc0);
        w0 += 64;
        if (R > 1) {
            PREFETCH(w1 + pf, 1);
            block2_dot(full ? _mm512_loadu_si512(w1) : _mm512_maskz_loadu_epi8(m, w1), xv, acc1);
            w1 += 64;
        }
    }
    if (tot) {
        tot[0] = acc_total(acc0);
        if (R > 1) tot[1] = acc_total(acc1);
        return;
    }
    const int32_t sx = a->sumx[0];
    const float f = a->f[0];
    a->y[n] = (float)(_mm512_reduce_add_epi32(acc_total(acc0)) - sx) * f;
    if (R > 1) a->y[n + 1] = (float)(_mm512_reduce_add_epi32(acc_total(acc1)) - sx) * f;
}

/* One token over rows [n0, n1) in either layout (tpb, l2: compile-time constants after inlining):
 * 16 rows, then one transposed reduction. Software prefetch: the same place in rows one or more
 * passes ahead, >= MOTE_TERN_PF bytes on (the hardware prefetcher loses interleaved row streams
 * that jump at every pass), into L2 (l2 = 1) or L1. On Zen 4 cold, L1 held file-layout rows of >= 973
 * bytes (K = 4864, 8960) to ~10 GB/s and L2 lifted them to 12-16 GB/s, while L1 stayed better for
 * rows of <= 308 bytes (K = 896, 1536); the 2-bit layout gains from L2 at every length (docs/KERNELS.md). */
TGT static inline __attribute__((always_inline)) void gemv_t1(const mote_tern_args *a, int n0, int n1,
                                                              const int tpb, const int l2) {
    luts2 L2;
    if (tpb == MOTE_TPB_FILE) load_luts2(&L2);
    const int64_t pass = a->rb > 0 ? 2 * a->rb : 1, pf = pass * ((MOTE_TERN_PF + pass - 1) / pass);   /* K = 0: rb = 0 */
#define ROWS(n, R, tot) (tpb == MOTE_TPB_FILE ? gemv_rows(a, &L2, n, R, pf, l2, tot) : gemv2_rows(a, n, R, pf, tot))
    const __m512i sx = _mm512_set1_epi32(a->sumx[0]);
    const __m512 f = _mm512_set1_ps(a->f[0]);
    int n = n0;
    for (; n + 16 <= n1; n += 16) {
        __m512i tot[16];
        for (int r = 0; r < 16; r += 2) ROWS(n + r, 2, tot + r);
        const __m512i s = _mm512_sub_epi32(reduce16(tot), sx);
        _mm512_storeu_ps(a->y + n, _mm512_mul_ps(_mm512_cvtepi32_ps(s), f));
    }
    for (; n + 2 <= n1; n += 2) ROWS(n, 2, NULL);
    for (; n < n1; n++) ROWS(n, 1, NULL);
#undef ROWS
}

TGT void mote_tern_rows_avx512(const mote_tern_args *a, int n0, int n1, uint8_t *scratch) {
    luts512 L;
    load_luts(&L);
    if (a->T <= 2) {
        if (a->T == 1) {
            if (a->rb >= MOTE_TERN_L2_ROW_BYTES) gemv_t1(a, n0, n1, MOTE_TPB_FILE, 1);
            else gemv_t1(a, n0, n1, MOTE_TPB_FILE, 0);
        } else {
            luts2 L2;
            load_luts2(&L2);
            for (int n = n0; n < n1; n++) gemv_2tok(a, &L2, n);
        }
        return;
    }
    int n = n0;   /* GEMM: decode 4 rows into scratch, then 4 x 4 tiles over all tokens */
    for (; n + 4 <= n1; n += 4) {
        for (int r = 0; r < 4; r++) decode_row(a, &L, n + r, scratch + r * a->kx);
        dot_rows(a, scratch, n, 4);
    }
    for (; n < n1; n++) {
        decode_row(a, &L, n, scratch);
        dot_rows(a, scratch, n, 1);
    }
}

/* decode one 2-bit row into digits in block order: d[b*256 + 64 i + j] */
TGT static inline void decode_row2(const mote_tern_args *a, int n, uint8_t *d) {
    const uint8_t *w = a->w + n * a->rb;
    for (int b = 0; b < a->nblk; b++) {
        const __m512i q = load_block(w, b, a);
        for (int i = 0; i < 4; i++)
            _mm512_storeu_si512(d + (int64_t)b * 256 + 64 * i,
                                _mm512_and_si512(_mm512_srli_epi16(q, 2 * i), _mm512_set1_epi8(3)));
    }
}

TGT void mote_tern2_rows_avx512(const mote_tern_args *a, int n0, int n1, uint8_t *scratch) {
    if (a->T == 1) {
        gemv_t1(a, n0, n1, MOTE_TPB_SLAB2, 1);
        return;
    }
    int n = n0;
    for (; n + 4 <= n1; n += 4) {   /* T >= 2: decode 4 rows into scratch, then the tiles of the base-3 GEMM */
        for (int r = 0; r < 4; r++) decode_row2(a, n + r, scratch + r * a->kx);
        dot_rows(a, scratch, n, 4);
    }
    for (; n < n1; n++) {
        decode_row2(a, n, scratch);
        dot_rows(a, scratch, n, 1);
    }
}

/* ---- file layout -> 2-bit slab layout (ternary.c drives; these do the full blocks) ---- */
/* nfull 64-byte file blocks -> their 320 nfull digits in natural column order */
TGT void mote_tern_digits_avx512(const uint8_t *w, int nfull, uint8_t *d) {
    luts512 L;
    load_luts(&L);
    for (int b = 0; b < nfull; b++) {
        const __m512i q = _mm512_loadu_si512(w + (int64_t)b * 64);
        const __mmask64 top = _mm512_movepi8_mask(q);
        for (int i = 0; i < 5; i++) _mm512_storeu_si512(d + (int64_t)b * 320 + 64 * i, digit(&L, q, top, i));
    }
}

/* 256 nfull digits in natural order -> nfull 64-byte 2-bit slab blocks (digits <= 2: a 16-bit
 * shift by up to 6 never carries into the next byte) */
TGT void mote_tern2_pack_avx512(const uint8_t *d, int nfull, uint8_t *out) {
    for (int b = 0; b < nfull; b++) {
        const uint8_t *p = d + (int64_t)b * 256;
        const __m512i v = _mm512_or_si512(
            _mm512_or_si512(_mm512_loadu_si512(p), _mm512_slli_epi16(_mm512_loadu_si512(p + 64), 2)),
            _mm512_or_si512(_mm512_slli_epi16(_mm512_loadu_si512(p + 128), 4), _mm512_slli_epi16(_mm512_loadu_si512(p + 192), 6)));
        _mm512_storeu_si512(out + (int64_t)b * 64, v);
    }
}

#endif
