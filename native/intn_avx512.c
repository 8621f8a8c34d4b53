/* Group-wise int-N x int8 matmul, AVX-512 VNNI.
 *
 * A group's weights become up to two u8 vectors ("chunks") of L values each, matched by the
 * activations at x + g*G + c*L:  8-bit: chunks of min(G, 64) bytes;  4-bit: the low nibbles
 * (values 0..G/2-1) and the high nibbles (G/2..G-1) of G/2 bytes;  2/3-bit: the row is first
 * unpacked to bytes (scalar) and then read as 8-bit. Per group and token: vpdpbusd into a fresh
 * int32 vector, zero-point * sum(x) subtracted from lane 0 (exact), then one float FMA with
 * scale / s into a float accumulator; one horizontal sum per output.
 */
#if defined(__x86_64__)   /* x86-64 only: setup.py leaves this file out elsewhere */
#include <immintrin.h>
#include <string.h>

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
        _mm_prefetch((const char *)(r->src + (int64_t)g * r->gbytes + 2048), MOTE_PF_HINT);
        if (r->gbytes > 64) _mm_prefetch((const char *)(r->src + (int64_t)g * r->gbytes + 2048 + 64), MOTE_PF_HINT);
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


/* ---- GEMV (T == 1) for G = 128 at 4 or 8 bits: (row, group) pairs as one flat stream ----
 * The packed rows are contiguous and a G = 128 group is exactly one (4-bit) or two (8-bit) 64-byte
 * lines; scales and zeros ([N, ng]) are contiguous in the same order. So the groups of rows
 * [n, n + rows) form one stream: per group two vpdpbusd into a fresh vector; per 16 groups one
 * transposed reduction gives their 16 exact dots, then, as vectors over the 16 pairs,
 * float(dot - zero sumx_g) * (scale / s_g) (sumx and 1/s repeated per row: rs_ext[i] = rs[i % ng])
 * into a buffer; each row then sums its ng products. No per-group broadcast / convert, no
 * per-row horizontal integer sum in the hot loop. */
#define DPBUSD(acc, a, b) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b))
/* GEMV software prefetch distance in bytes of the weight stream: 12 KiB ahead for 2 / 3 / 4-bit groups,
 * 1 KiB (8 groups of 128 bytes) for 8-bit ones. Cold GEMV on Zen 4 (EPYC family 25 model 17; 1 thread,
 * huge pages; docs/KERNELS.md section 4): int4 22 -> 28 GB/s at every 0.5B shape going from 4 to 8 KiB
 * (DRAM probe 35 GB/s); a decode step's int4 matrices in their order (q/k/v, o, gate/up, down of 24 layers,
 * each read once; 2026-12-05, probe 35.5 GB/s) 8 -> 12 KiB: q/k/v 24.8 -> 25.7, o 25.2 -> 26.9, gate/up
 * 27.0 -> 28.9, down 28.0 -> 30.0 GB/s (16 KiB in between, none 20-24); int8 (the 0.5B lm_head) 22 -> 27 GB/s
 * going from 4 KiB to 1 KiB (768 B, 2 KiB and none: level with 1 KiB). */
#ifndef MOTE_INTN_PF
#define MOTE_INTN_PF 12288
#endif
#ifndef MOTE_INTN_PF8
#define MOTE_INTN_PF8 1024
#endif

/* one G = 128 group at `bits` -> its values 0..63 (v[0]) and 64..127 (v[1]) as u8, vectorized for
 * every width (docs/KERNELS.md bit planes). 2-bit: 32 bytes, field i of byte j = value j + 32 i:
 * both 256-bit halves get the bytes, 16-bit variable shifts by (0 | 2) and (4 | 6), AND 3.
 * 3-bit: that, plus the 1-bit plane (16 bytes, bit i of byte j = bit 2 of value j + 16 i) in all
 * four 128-bit lanes, shifted by (0, 1, 2, 3) and (4, 5, 6, 7), AND 1, times 4. */
TGT static inline __attribute__((always_inline)) void unpack128(const uint8_t *p, const int bits, __m512i v[2]) {
    if (bits == 8) {
        v[0] = _mm512_loadu_si512(p);
        v[1] = _mm512_loadu_si512(p + 64);
    } else if (bits == 4) {
        const __m512i raw = _mm512_loadu_si512(p), lo4 = _mm512_set1_epi8(0x0F);
        v[0] = _mm512_and_si512(raw, lo4);
        v[1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4);
    } else {
        const __m512i r = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(const void *)p));
        const __m512i c02 = _mm512_set_epi64(0x0002000200020002LL, 0x0002000200020002LL, 0x0002000200020002LL,
                                             0x0002000200020002LL, 0, 0, 0, 0);
        const __m512i three = _mm512_set1_epi8(3);
        v[0] = _mm512_and_si512(_mm512_srlv_epi16(r, c02), three);
        v[1] = _mm512_and_si512(_mm512_srlv_epi16(r, _mm512_add_epi16(c02, _mm512_set1_epi16(4))), three);
        if (bits == 3) {
            const __m512i h = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(const void *)(p + 32)));
            const __m512i c03 = _mm512_set_epi64(0x0003000300030003LL, 0x0003000300030003LL, 0x0002000200020002LL,
                                                 0x0002000200020002LL, 0x0001000100010001LL, 0x0001000100010001LL, 0, 0);
            const __m512i one = _mm512_set1_epi8(1);
            v[0] = _mm512_or_si512(v[0], _mm512_slli_epi16(_mm512_and_si512(_mm512_srlv_epi16(h, c03), one), 2));
            v[1] = _mm512_or_si512(v[1], _mm512_slli_epi16(
                _mm512_and_si512(_mm512_srlv_epi16(h, _mm512_add_epi16(c03, _mm512_set1_epi16(4))), one), 2));
        }
    }
}

/* exact int32 dot of a G = 128 group */
TGT static inline __attribute__((always_inline)) __m512i group_dot(const uint8_t *p, const int8_t *x, const int bits) {
    __m512i acc = _mm512_setzero_si512(), v[2];
    unpack128(p, bits, v);
    DPBUSD(acc, v[0], _mm512_loadu_si512(x));
    DPBUSD(acc, v[1], _mm512_loadu_si512(x + 64));
    return acc;
}

/* 16 consecutive groups of the stream from p (group g of its row) -> their 16 exact dots; the
 * transposed reduction is interleaved with the dot products to keep few vectors live */
TGT static inline __attribute__((always_inline)) __m512i dots16(const mote_intn_args *a, const uint8_t **pp, int *gp,
                                                                int cnt, const int bits) {
    const int ng = a->ng, gb = 16 * bits;
    const uint8_t *p = *pp;
    int g = *gp;
    __m512i t[8], u[4];
#pragma GCC unroll 16
    for (int j = 0; j < 16; j += 2) {
        __m512i v[2];
        for (int k = 0; k < 2; k++) {
            if (j + k < cnt) {
                const int pf = bits == 8 ? MOTE_INTN_PF8 : MOTE_INTN_PF;
                _mm_prefetch((const char *)(p + pf), MOTE_PF_HINT);
                if (bits == 8) _mm_prefetch((const char *)(p + pf + 64), MOTE_PF_HINT);
                v[k] = group_dot(p, a->xq + (int64_t)g * 128, bits);
                p += gb;
                g = g + 1 == ng ? 0 : g + 1;
            } else {
                v[k] = _mm512_setzero_si512();
            }
        }
        t[j / 2] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[0], v[1]), _mm512_unpackhi_epi32(v[0], v[1]));
        if (j & 2)
            u[j / 4] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[j / 2 - 1], t[j / 2]),
                                        _mm512_unpackhi_epi64(t[j / 2 - 1], t[j / 2]));
    }
    *pp = p;
    *gp = g;
    __m512i w0 = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xDD));
    __m512i w1 = _mm512_add_epi32(_mm512_shuffle_i32x4(u[2], u[3], 0x88), _mm512_shuffle_i32x4(u[2], u[3], 0xDD));
    return _mm512_add_epi32(_mm512_shuffle_i32x4(w0, w1, 0x88), _mm512_shuffle_i32x4(w0, w1, 0xDD));
}

typedef struct {
    const float *rs_ext;      /* [ng + 16] 1 / s of group i % ng */
    const int32_t *sx_ext;    /* [ng + 16] sumx of group i % ng */
} flat_ext;

/* the m (row, group) pairs starting at flat index f0 of the stream of rows from n: products
 * prod[i] = float(dot - zero * sumx) * (scale / s) */
TGT static inline __attribute__((always_inline)) void flat_products(const mote_intn_args *a, const flat_ext *e, int n,
                                                                    int64_t f0, int m, float *prod, const int bits) {
    const uint8_t *p = a->w + (int64_t)n * a->rb + f0 * 16 * bits;
    const uint16_t *s16 = a->scales + (int64_t)n * a->ng + f0, *z16 = a->zeros + (int64_t)n * a->ng + f0;
    int g = (int)(f0 % a->ng);
    for (int i = 0; i < m; i += 16) {
        const int cnt = m - i < 16 ? m - i : 16;
        const int g0 = g;
        const __m512i d = cnt == 16 ? dots16(a, &p, &g, 16, bits) : dots16(a, &p, &g, cnt, bits);
        const __mmask16 k = cnt == 16 ? 0xFFFF : (__mmask16)((1u << cnt) - 1);
        _mm_prefetch((const char *)(s16 + i + 512), MOTE_PF_HINT);
        _mm_prefetch((const char *)(z16 + i + 512), MOTE_PF_HINT);
        const __m512 sc = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, s16 + i));
        const __m512i z = _mm512_cvtps_epi32(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, z16 + i)));
        const __m512i c = _mm512_sub_epi32(d, _mm512_mullo_epi32(z, _mm512_loadu_si512(e->sx_ext + g0)));
        _mm512_storeu_ps(prod + i, _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(sc, _mm512_loadu_ps(e->rs_ext + g0))));
    }
}

/* sum of the ng products of one row. ng <= 8 (K <= 1024: the q/k/v, gate/up and lm_head rows at 0.5B) in
 * 256-bit halves: one row sum per 7 groups is a tenth of such a row's instructions, and the 512-bit masked
 * load + reduction cost twice the 256-bit one on Zen 4 (a decode step's q/k/v 22.5 -> 24.6 GB/s, gate/up
 * 25.5 -> 26.5 cold on 2026-12-05, probe 32.6 GB/s) */
TGT static inline float row_sum(const float *prod, int ng) {
    if (ng <= 8) {
        const __m256 v = _mm256_maskz_loadu_ps((__mmask8)((1u << ng) - 1), prod);
        __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        q = _mm_add_ps(q, _mm_movehl_ps(q, q));
        q = _mm_add_ss(q, _mm_movehdup_ps(q));
        return _mm_cvtss_f32(q);
    }
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < ng; g += 16) {
        __mmask16 m = ng - g >= 16 ? 0xFFFF : (__mmask16)((1u << (ng - g)) - 1);
        acc = _mm512_add_ps(acc, _mm512_maskz_loadu_ps(m, prod + g));
    }
    return _mm512_reduce_add_ps(acc);
}

TGT static inline __attribute__((always_inline)) void gemv_flat(const mote_intn_args *a, int n0, int n1, uint8_t *buf,
                                                                const int bits) {
    const int ng = a->ng;
    float *prod = (float *)(void *)buf;
    float *rs_ext = prod + (ng > MOTE_INTN_FLAT ? ng : MOTE_INTN_FLAT) + 16;
    int32_t *sx_ext = (int32_t *)(void *)(rs_ext + ng + 16);
    for (int i = 0; i < ng + 16; i++) {
        rs_ext[i] = a->rs[i % ng];
        sx_ext[i] = a->sumx[i % ng];
    }
    const flat_ext e = {rs_ext, sx_ext};
    int rows = MOTE_INTN_FLAT / ng;
    if (rows < 1) rows = 1;
    for (int n = n0; n < n1; n += rows) {
        const int nr = n1 - n < rows ? n1 - n : rows;
        const int64_t total = (int64_t)nr * ng;
        for (int64_t f = 0; f < total; f += MOTE_INTN_FLAT) {   /* > 1 stretch only if ng > MOTE_INTN_FLAT */
            const int m = total - f < MOTE_INTN_FLAT ? (int)(total - f) : MOTE_INTN_FLAT;
            flat_products(a, &e, n, f, m, prod + f, bits);
        }
        for (int r = 0; r < nr; r++) a->y[n + r] = row_sum(prod + (int64_t)r * ng, ng);
    }
}

static int flat_ok(const mote_intn_args *a) { return a->T == 1 && a->G == 128; }


/* ---- GEMV (T == 1) over the MOTE_INTN_IL16 layout (4 or 8 bits, G = 128, blocks of 16 rows; kernels.h) ----
 * Output rows in the 16 lanes: per 64-byte line (4 bytes of each of 16 rows) one load and vpdpbusd whose s8
 * operand is 4 activation bytes broadcast from memory ({1to16}). 4-bit: 16 lines a group, AND / shift / AND and
 * two vpdpbusd per line (values 4j..4j+3 in the low nibbles, 64+4j.. in the high); 8-bit: 32 lines a group,
 * one vpdpbusd per line on the bytes as loaded (values 4j..4j+3). No horizontal sums: per group and block one
 * exact correction (acc - zero sumx), one int32 -> float, a multiply by scale * (1 / s) and an add, so each
 * row sums its groups' products in group order, as the scalar path does (bit-identical to it).
 * The weights are one sequential stream with no software prefetch: the hardware prefetchers keep up with it.
 * On Zen 4 (EPYC family 25 model 17, 1 thread; docs/KERNELS.md section 4): int4, a decode step's matrices
 * (2026-12-06, benchmarks/intn_layout_ab.py), il16 / rows layout with no prefetch 1.09-1.12x, L2 hint 2 KiB
 * 1.08x, L1 hint 1 / 2 / 4 / 8 KiB 0.89-0.96x, L2 hint 12 KiB (the rows GEMV's) 0.79x; int8, the 0.5B lm_head
 * (896 -> 151936, 2026-12-06, probe 33.5-35.3 GB/s, three runs) no prefetch 1.11-1.31x (81-98% of the probe;
 * a plain read 98%), L2 hint 1 / 2 KiB level with none, L2 4 KiB 1.29x, L2 8 KiB 0.87x, L1 1 / 2 / 4 KiB
 * 1.04-1.14x; 2 accumulators level with 4, 8 slower (1.14-1.25x). -DMOTE_INTN_IL_PF=bytes turns a prefetch on. */
#ifndef MOTE_INTN_IL_PF
#define MOTE_INTN_IL_PF 0
#endif
#ifndef MOTE_INTN_IL_PF_HINT
#define MOTE_INTN_IL_PF_HINT _MM_HINT_T1
#endif
#define DPBUSD_B(acc, xv, p) __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(xv), "m"(*(const int32_t *)(p)))

TGT static inline __attribute__((always_inline)) void gemv_il16(const mote_intn_args *a, int n0, int n1, const int bits) {
    const int ng = a->ng;
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    for (int n = n0; n < n1; n += 16) {   /* n0, n1: multiples of 16 */
        const uint8_t *p = a->w + (int64_t)n * a->rb;                                        /* [ng][lines][16][4] */
        const uint16_t *s16 = a->scales + (int64_t)n * ng, *z16 = a->zeros + (int64_t)n * ng;   /* [ng][16] */
        __m512 y = _mm512_setzero_ps();
        for (int g = 0; g < ng; g++) {
            const int8_t *x = a->xq + (int64_t)g * 128;
            __m512i acc[4];   /* 4 chains of 8 vpdpbusd: the exact group dot of 16 rows */
            for (int i = 0; i < 4; i++) acc[i] = _mm512_setzero_si512();
#pragma GCC unroll 32
            for (int j = 0; j < 4 * bits; j++) {   /* the group's 16 (4-bit) or 32 (8-bit) lines */
#if MOTE_INTN_IL_PF > 0
                _mm_prefetch((const char *)(p + MOTE_INTN_IL_PF), MOTE_INTN_IL_PF_HINT);
#endif
                const __m512i raw = _mm512_loadu_si512(p);
                if (bits == 4) {
                    DPBUSD_B(acc[(2 * j) % 4], _mm512_and_si512(raw, lo4), x + 4 * j);
                    DPBUSD_B(acc[(2 * j + 1) % 4], _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4), x + 64 + 4 * j);
                } else {
                    DPBUSD_B(acc[j % 4], raw, x + 4 * j);
                }
                p += 64;
            }
            const __m512i dot = _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
            const __m512 sc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(s16 + g * 16)));
            const __m512i z = _mm512_cvtps_epi32(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(z16 + g * 16))));
            const __m512i c = _mm512_sub_epi32(dot, _mm512_mullo_epi32(z, _mm512_set1_epi32(a->sumx[g])));
            y = _mm512_add_ps(y, _mm512_mul_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(sc, _mm512_set1_ps(a->rs[g]))));
        }
        _mm512_storeu_ps(a->y + n, y);
    }
}


/* ---- GEMM (T >= MOTE_INTN_IL_MIN) over the MOTE_INTN_IL16 layout: output rows in the lanes, as the GEMV ----
 * Per pair of blocks (32 rows) and tile of up to 4 tokens (gemm_il16_tile2; a part's odd last block: one block x
 * up to 8 tokens, gemm_il16_tile): each 64-byte line is loaded (and at 4 bits split into its nibbles) once and
 * feeds one vpdpbusd chain per token, the token's 4 activation bytes broadcast from xq. Per group and token one
 * exact correction (acc - zero sumx) and one FMA with scale * (1 / s): per (row, token) the operations of the
 * tokens-in-lanes GEMM the rows layout takes (gemm_il below, same exact int32, same product, same fused add in group
 * order), so il16 and rows give the same bytes. No de-interleave, no unpacked copy, no xil: the tile's weights
 * (32 row lengths: 14-76 KiB at the 0.5B's shapes) stay in L1 / L2 across the token tiles; the next pair (block)
 * is prefetched into L2, a share per token tile (int8 [9728, 896] x 236: 0.90 -> 0.98x the rows layout with it,
 * one block x 8 tokens). Two blocks x 4 tokens rather than one x 8: each broadcast feeds two vpdpbusd, and a
 * token's outputs are 128 contiguous bytes of y ([T, N], token rows N * 4 bytes apart, 0.8-17 MiB at the prefill
 * shapes: every line a store miss, each on its own 4 KiB page); one block x 8 tokens ran at 1.06-1.29x the rows
 * layout at the 0.5B's prefill shapes and 1.00x at [17920, 1536] x 236 (1.08x with y on huge pages), two x 4 at
 * 1.21-1.45x and 1.17x (2026-12-06, benchmarks/intn_prefill_ab.py). */
#define IL16_NT 8   /* one block: 8 int32 + 8 float accumulators */

TGT static inline __attribute__((always_inline)) void gemm_il16_tile(const mote_intn_args *a, int n, int n_end, int t0,
                                                                     const int NT, const int bits, const uint8_t *pf,
                                                                     int64_t pf_bytes) {
    const int ng = a->ng;
    const int64_t kp = a->kp;
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    const uint8_t *p = a->w + (int64_t)n * a->rb;                                            /* [ng][lines][16][4] */
    const uint16_t *s16 = a->scales + (int64_t)n * ng, *z16 = a->zeros + (int64_t)n * ng;   /* [ng][16] */
    const int8_t *x0 = a->xq + (int64_t)t0 * kp;
    const int64_t pf_step = ng > 0 ? ((pf_bytes / ng) + 63) & ~(int64_t)63 : 0;
    __m512 y[IL16_NT];
    for (int t = 0; t < NT; t++) y[t] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        for (int64_t o = 0; o < pf_step; o += 64) _mm_prefetch((const char *)(pf + g * pf_step + o), _MM_HINT_T1);
        const int8_t *xg = x0 + (int64_t)g * 128;
        __m512i acc[IL16_NT];
        for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_si512();
#pragma GCC unroll 32
        for (int j = 0; j < 4 * bits; j++) {   /* the group's 16 (4-bit) or 32 (8-bit) lines */
            const __m512i raw = _mm512_loadu_si512(p);
            if (bits == 4) {
                const __m512i lo = _mm512_and_si512(raw, lo4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4);
                for (int t = 0; t < NT; t++) {
                    DPBUSD_B(acc[t], lo, xg + t * kp + 4 * j);
                    DPBUSD_B(acc[t], hi, xg + t * kp + 64 + 4 * j);
                }
            } else {
                for (int t = 0; t < NT; t++) DPBUSD_B(acc[t], raw, xg + t * kp + 4 * j);
            }
            p += 64;
        }
        const __m512 sc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(s16 + g * 16)));
        const __m512i z = _mm512_cvtps_epi32(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)(z16 + g * 16))));
        for (int t = 0; t < NT; t++) {
            const int64_t ix = (int64_t)(t0 + t) * ng + g;
            const __m512i c = _mm512_sub_epi32(acc[t], _mm512_mullo_epi32(z, _mm512_set1_epi32(a->sumx[ix])));
            y[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(sc, _mm512_set1_ps(a->rs[ix])), y[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm512_storeu_ps(a->y + (int64_t)(t0 + t) * a->N + n, y[t]);
    /* the next tile's y lines (tokens t0 + NT.., or the next block's first tokens) for writing: every line of y
     * is a store miss (9728 x 236, one block x 8 tokens: 24 -> 21 us per block with this, 2026-12-06; prefetching
     * 2 or 4 tiles ahead was slower) */
    const int tn = t0 + NT < a->T ? t0 + NT : 0, nn = t0 + NT < a->T ? n : n + 16;
    if (nn < n_end)
        for (int t = tn; t < tn + IL16_NT && t < a->T; t++)
            _mm_prefetch((const char *)(a->y + (int64_t)t * a->N + nn), _MM_HINT_ET0);
}

/* two blocks (32 rows) x NT (<= 4) tokens: each token's 4 activation bytes broadcast once into a register and fed
 * to both blocks' lines (8 int32 + 8 float accumulators); a token's 32 outputs are 128 contiguous bytes of y, whose
 * lines for the next tile are prefetched for writing as in gemm_il16_tile */
#define IL16_NT2 4
TGT static inline __attribute__((always_inline)) void gemm_il16_tile2(const mote_intn_args *a, int n, int n_end, int t0,
                                                                      const int NT, const int bits, const uint8_t *pf,
                                                                      int64_t pf_bytes) {
    const int ng = a->ng;
    const int64_t kp = a->kp, rb16 = 16 * a->rb;
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    const uint8_t *p = a->w + (int64_t)n * a->rb;
    const uint16_t *s16 = a->scales + (int64_t)n * ng, *z16 = a->zeros + (int64_t)n * ng;   /* block b: + 16 b ng */
    const int8_t *x0 = a->xq + (int64_t)t0 * kp;
    const int64_t pf_step = ng > 0 ? ((pf_bytes / ng) + 63) & ~(int64_t)63 : 0;
    __m512 y[2][IL16_NT2];
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < NT; t++) y[b][t] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        for (int64_t o = 0; o < pf_step; o += 64) _mm_prefetch((const char *)(pf + g * pf_step + o), _MM_HINT_T1);
        const int8_t *xg = x0 + (int64_t)g * 128;
        __m512i acc[2][IL16_NT2];
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < NT; t++) acc[b][t] = _mm512_setzero_si512();
#pragma GCC unroll 32
        for (int j = 0; j < 4 * bits; j++) {
            const __m512i r0 = _mm512_loadu_si512(p), r1 = _mm512_loadu_si512(p + rb16);
            if (bits == 4) {
                const __m512i l0 = _mm512_and_si512(r0, lo4), h0 = _mm512_and_si512(_mm512_srli_epi16(r0, 4), lo4);
                const __m512i l1 = _mm512_and_si512(r1, lo4), h1 = _mm512_and_si512(_mm512_srli_epi16(r1, 4), lo4);
                for (int t = 0; t < NT; t++) {
                    const __m512i xl = _mm512_set1_epi32(*(const int32_t *)(const void *)(xg + t * kp + 4 * j));
                    const __m512i xh = _mm512_set1_epi32(*(const int32_t *)(const void *)(xg + t * kp + 64 + 4 * j));
                    DPBUSD(acc[0][t], l0, xl);
                    DPBUSD(acc[1][t], l1, xl);
                    DPBUSD(acc[0][t], h0, xh);
                    DPBUSD(acc[1][t], h1, xh);
                }
            } else {
                for (int t = 0; t < NT; t++) {
                    const __m512i xv = _mm512_set1_epi32(*(const int32_t *)(const void *)(xg + t * kp + 4 * j));
                    DPBUSD(acc[0][t], r0, xv);
                    DPBUSD(acc[1][t], r1, xv);
                }
            }
            p += 64;
        }
        for (int b = 0; b < 2; b++) {
            const uint16_t *sb = s16 + (int64_t)b * 16 * ng + g * 16, *zb = z16 + (int64_t)b * 16 * ng + g * 16;
            const __m512 sc = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)sb));
            const __m512i z = _mm512_cvtps_epi32(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(const void *)zb)));
            for (int t = 0; t < NT; t++) {
                const int64_t ix = (int64_t)(t0 + t) * ng + g;
                const __m512i c = _mm512_sub_epi32(acc[b][t], _mm512_mullo_epi32(z, _mm512_set1_epi32(a->sumx[ix])));
                y[b][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(sc, _mm512_set1_ps(a->rs[ix])), y[b][t]);
            }
        }
    }
    for (int t = 0; t < NT; t++) {
        _mm512_storeu_ps(a->y + (int64_t)(t0 + t) * a->N + n, y[0][t]);
        _mm512_storeu_ps(a->y + (int64_t)(t0 + t) * a->N + n + 16, y[1][t]);
    }
    const int tn = t0 + NT < a->T ? t0 + NT : 0, nn = t0 + NT < a->T ? n : n + 32;
    if (nn + 32 <= n_end)
        for (int t = tn; t < tn + IL16_NT2 && t < a->T; t++) {
            _mm_prefetch((const char *)(a->y + (int64_t)t * a->N + nn), _MM_HINT_ET0);
            _mm_prefetch((const char *)(a->y + (int64_t)t * a->N + nn + 16), _MM_HINT_ET0);
        }
}

TGT static inline __attribute__((always_inline)) void gemm_il16(const mote_intn_args *a, int n0, int n1, const int bits) {
    const int T = a->T, ntiles = (T + IL16_NT - 1) / IL16_NT;
    const int64_t blk = 16 * a->rb;
    int n = n0;
    const int ntiles2 = (T + IL16_NT2 - 1) / IL16_NT2;
    for (; n + 32 <= n1; n += 32) {
        const int64_t share = n + 64 <= n1 ? (2 * blk / ntiles2 + 63) & ~(int64_t)63 : 0;
        const uint8_t *next = a->w + (int64_t)(n + 32) * a->rb;
        int t = 0, i = 0;
        for (; t + IL16_NT2 <= T; t += IL16_NT2, i++) gemm_il16_tile2(a, n, n1, t, IL16_NT2, bits, next + i * share, share);
        const uint8_t *pf = next + i * share;
        switch (T - t) {
            case 3: gemm_il16_tile2(a, n, n1, t, 3, bits, pf, share); break;
            case 2: gemm_il16_tile2(a, n, n1, t, 2, bits, pf, share); break;
            case 1: gemm_il16_tile2(a, n, n1, t, 1, bits, pf, share); break;
            default: break;
        }
    }
    for (; n < n1; n += 16) {   /* n0, n1: multiples of 16 */
        /* the next block (if any) into L2, a share per token tile */
        const int64_t share = n + 16 < n1 ? (blk / ntiles + 63) & ~(int64_t)63 : 0;
        const uint8_t *next = a->w + (int64_t)(n + 16) * a->rb;
        int t = 0, i = 0;
        for (; t + IL16_NT <= T; t += IL16_NT, i++) gemm_il16_tile(a, n, n1, t, IL16_NT, bits, next + i * share, share);
        const uint8_t *pf = next + i * share;
        switch (T - t) {
            case 7: gemm_il16_tile(a, n, n1, t, 7, bits, pf, share); break;
            case 6: gemm_il16_tile(a, n, n1, t, 6, bits, pf, share); break;
            case 5: gemm_il16_tile(a, n, n1, t, 5, bits, pf, share); break;
            case 4: gemm_il16_tile(a, n, n1, t, 4, bits, pf, share); break;
            case 3: gemm_il16_tile(a, n, n1, t, 3, bits, pf, share); break;
            case 2: gemm_il16_tile(a, n, n1, t, 2, bits, pf, share); break;
            case 1: gemm_il16_tile(a, n, n1, t, 1, bits, pf, share); break;
            default: break;
        }
    }
}


/* ---- GEMM with tokens in lanes (T >= MOTE_INTN_IL_MIN) ----
 * vpdpbusd lanes = 16 tokens: the u8 operand is 4 activation bytes of each of 16 tokens (xil, offset
 * by +128 to be unsigned), the s8 operand 4 weight bytes of one row broadcast from memory
 * ({1to16}). Rows are unpacked once into w_s = q - off (off = 128 at 8 bits, else 0; fits s8), so
 *   sum (q - off)(x + 128) = sum q x + 128 sum q - off sum x - 128 off G
 *   => sum q x - z sum x = acc - A_g - (z - off) sum x,   A_g = 128 sum_g q - 128 off G   (exact)
 * No horizontal sums: per group and 4 rows x 16 tokens, 4 G/4 vpdpbusd, then per row one exact
 * correction and one FMA over the 16 tokens. */

/* row n -> ws [kp] (s8 weights), A [ng], zo [ng], sc [ng]. sum q from the registers (a reload of
 * the masked stores would wait for them: no store forwarding) */
TGT static void unpack_row_s(const mote_intn_args *a, int n, uint8_t *ws, int32_t *A, int32_t *zo, float *sc) {
    const int G = a->G, ng = a->ng, gbytes = G * a->bits / 8;
    const uint8_t *src = a->w + (int64_t)n * a->rb;
    const int off = a->bits == 8 ? 128 : 0;
    const __m512i zero = _mm512_setzero_si512(), lo4 = _mm512_set1_epi8(0x0F);
    for (int g = 0; g < ng; g++) {
        const uint8_t *p = src + (int64_t)g * gbytes;
        uint8_t *q = ws + (int64_t)g * G;
        __m512i s = zero;
        if (G == 128) {
            __m512i v[2];
            unpack128(p, a->bits, v);
            s = _mm512_add_epi64(_mm512_sad_epu8(v[0], zero), _mm512_sad_epu8(v[1], zero));
            if (off) {
                v[0] = _mm512_xor_si512(v[0], _mm512_set1_epi8((char)0x80));
                v[1] = _mm512_xor_si512(v[1], _mm512_set1_epi8((char)0x80));
            }
            _mm512_storeu_si512(q, v[0]);
            _mm512_storeu_si512(q + 64, v[1]);
        } else if (a->bits == 4) {
            const int h = G / 2;
            for (int c = 0; c < h; c += 64) {
                const __mmask64 m = h - c >= 64 ? ~0ULL : (1ULL << (h - c)) - 1;
                const __m512i raw = _mm512_maskz_loadu_epi8(m, p + c);
                const __m512i lo = _mm512_and_si512(raw, lo4), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), lo4);
                _mm512_mask_storeu_epi8(q + c, m, lo);
                _mm512_mask_storeu_epi8(q + h + c, m, hi);
                s = _mm512_add_epi64(s, _mm512_add_epi64(_mm512_sad_epu8(lo, zero), _mm512_sad_epu8(hi, zero)));
            }
        } else if (a->bits == 8) {
            for (int c = 0; c < G; c += 64) {
                const __mmask64 m = G - c >= 64 ? ~0ULL : (1ULL << (G - c)) - 1;
                const __m512i raw = _mm512_maskz_loadu_epi8(m, p + c);
                _mm512_mask_storeu_epi8(q + c, m, _mm512_xor_si512(raw, _mm512_set1_epi8((char)0x80)));
                s = _mm512_add_epi64(s, _mm512_sad_epu8(raw, zero));
            }
        } else {
            mote_unpack_group(p, a->bits, G, q);
            for (int c = 0; c < G; c += 64) {
                const __mmask64 m = G - c >= 64 ? ~0ULL : (1ULL << (G - c)) - 1;
                s = _mm512_add_epi64(s, _mm512_sad_epu8(_mm512_maskz_loadu_epi8(m, q + c), zero));
            }
        }
        A[g] = 128 * (int32_t)_mm512_reduce_add_epi64(s) - 128 * off * G;
    }
    const uint16_t *s16 = a->scales + (int64_t)n * ng, *z16 = a->zeros + (int64_t)n * ng;
    for (int g = 0; g < ng; g += 16) {
        const __mmask16 m = ng - g >= 16 ? 0xFFFF : (__mmask16)((1u << (ng - g)) - 1);
        _mm512_mask_storeu_ps(sc + g, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, s16 + g)));
        _mm512_mask_storeu_epi32(zo + g, m, _mm512_sub_epi32(_mm512_cvtps_epi32(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, z16 + g))),
                                                             _mm512_set1_epi32(off)));
    }
}

/* R (1 or 4) unpacked rows x NB (1 or 2) blocks of 16 tokens from tb: R * NB vpdpbusd chains, the
 * weights broadcast into registers once per 4 columns and shared by the token blocks */
TGT static inline __attribute__((always_inline)) void il_tile(const mote_intn_args *a, const uint8_t *ws, int64_t kpa,
                                                              const int32_t *A, const int32_t *zo, const float *sc,
                                                              int n, int tb, const int R, const int NB) {
    const int G = a->G, ng = a->ng;
    const int64_t xstride = a->kp * 16;   /* bytes per token block */
    const uint8_t *xb = a->xil + (int64_t)tb * xstride;
    __m512 yf[2][4];
    for (int b = 0; b < NB; b++)
        for (int r = 0; r < R; r++) yf[b][r] = _mm512_setzero_ps();
    for (int g = 0; g < ng; g++) {
        __m512i acc[2][4];
        for (int b = 0; b < NB; b++)
            for (int r = 0; r < R; r++) acc[b][r] = _mm512_setzero_si512();
        const uint8_t *xg = xb + (int64_t)g * G * 16, *wg = ws + (int64_t)g * G;
#pragma GCC unroll 4
        for (int j = 0; j < G / 4; j++) {
            __m512i wv[4], xv[2];
            for (int r = 0; r < R; r++) wv[r] = _mm512_set1_epi32(*(const int32_t *)(const void *)(wg + r * kpa + 4 * j));
            for (int b = 0; b < NB; b++) xv[b] = _mm512_loadu_si512(xg + b * xstride + 64 * j);
            for (int b = 0; b < NB; b++)
                for (int r = 0; r < R; r++) DPBUSD(acc[b][r], xv[b], wv[r]);
        }
        for (int b = 0; b < NB; b++) {
            const int64_t ix = ((int64_t)(tb + b) * ng + g) * 16;
            const __m512i sx = _mm512_loadu_si512(a->sumx_il + ix);
            const __m512 rsv = _mm512_loadu_ps(a->rs_il + ix);
            for (int r = 0; r < R; r++) {
                const __m512i c = _mm512_sub_epi32(_mm512_sub_epi32(acc[b][r], _mm512_set1_epi32(A[r * ng + g])),
                                                   _mm512_mullo_epi32(_mm512_set1_epi32(zo[r * ng + g]), sx));
                yf[b][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(c), _mm512_mul_ps(_mm512_set1_ps(sc[r * ng + g]), rsv), yf[b][r]);
            }
        }
    }
    for (int b = 0; b < NB; b++) {
        const int nt = a->T - 16 * (tb + b) < 16 ? a->T - 16 * (tb + b) : 16;
        for (int r = 0; r < R; r++) {
            float v[16];
            _mm512_storeu_ps(v, yf[b][r]);
            for (int l = 0; l < nt; l++) a->y[(int64_t)(16 * (tb + b) + l) * a->N + n + r] = v[l];
        }
    }
}

/* R unpacked rows x all token blocks */
TGT static inline __attribute__((always_inline)) void il_rows(const mote_intn_args *a, const uint8_t *ws, int64_t kpa,
                                                              const int32_t *A, const int32_t *zo, const float *sc,
                                                              int n, const int R) {
    int tb = 0;
    for (; tb + 2 <= a->ntb; tb += 2) il_tile(a, ws, kpa, A, zo, sc, n, tb, R, 2);
    if (tb < a->ntb) il_tile(a, ws, kpa, A, zo, sc, n, tb, R, 1);
}

TGT static void gemm_il(const mote_intn_args *a, int n0, int n1, uint8_t *scratch) {
    const int64_t kpa = (a->kp + 63) & ~(int64_t)63;
    uint8_t *ws = scratch;
    int32_t *A = (int32_t *)(void *)(scratch + 4 * kpa), *zo = A + 4 * a->ng;
    float *sc = (float *)(void *)(zo + 4 * a->ng);
    int n = n0;
    for (; n + 4 <= n1; n += 4) {
        for (int r = 0; r < 4; r++) unpack_row_s(a, n + r, ws + r * kpa, A + r * a->ng, zo + r * a->ng, sc + r * a->ng);
        if (n + 8 <= n1) {   /* the next 4 rows into L2 while these are multiplied */
            const uint8_t *nx = a->w + (int64_t)(n + 4) * a->rb;
            for (int64_t o = 0; o < 4 * a->rb; o += 64) _mm_prefetch((const char *)(nx + o), _MM_HINT_T1);
            _mm_prefetch((const char *)(a->scales + (int64_t)(n + 4) * a->ng), _MM_HINT_T1);
            _mm_prefetch((const char *)(a->zeros + (int64_t)(n + 4) * a->ng), _MM_HINT_T1);
        }
        il_rows(a, ws, kpa, A, zo, sc, n, 4);
    }
    for (; n < n1; n++) {
        unpack_row_s(a, n, ws, A, zo, sc);
        il_rows(a, ws, kpa, A, zo, sc, n, 1);
    }
}

/* mote_intn_il16_block_to_rows (intn.c) with each 64-byte chunk's 16 lines x 16 rows of 4 bytes transposed in registers
 * (a 16 x 16 transpose of 32-bit words: unpack 32, unpack 64, two 128-bit lane shuffles) */
TGT void mote_intn_il16_block_to_rows_avx512(const mote_intn_args *a, int n, uint8_t *w, uint16_t *scales,
                                             uint16_t *zeros) {
    const int ng = a->ng;
    const int64_t nc = a->rb / 64;   /* 64-byte chunks of a row */
    const uint8_t *src = a->w + (int64_t)n * a->rb;
    for (int64_t c = 0; c < nc; c++) {
        __m512i r[16], t[16];
        for (int j = 0; j < 16; j++) r[j] = _mm512_loadu_si512(src + (c * 16 + j) * 64);   /* line j */
        for (int j = 0; j < 16; j += 2) {
            t[j] = _mm512_unpacklo_epi32(r[j], r[j + 1]);
            t[j + 1] = _mm512_unpackhi_epi32(r[j], r[j + 1]);
        }
        for (int j = 0; j < 16; j += 4) {
            r[j] = _mm512_unpacklo_epi64(t[j], t[j + 2]);
            r[j + 1] = _mm512_unpackhi_epi64(t[j], t[j + 2]);
            r[j + 2] = _mm512_unpacklo_epi64(t[j + 1], t[j + 3]);
            r[j + 3] = _mm512_unpackhi_epi64(t[j + 1], t[j + 3]);
        }
        for (int h = 0; h < 16; h += 8)
            for (int k = 0; k < 4; k++) {
                t[h + k] = _mm512_shuffle_i32x4(r[h + k], r[h + k + 4], 0x88);
                t[h + k + 4] = _mm512_shuffle_i32x4(r[h + k], r[h + k + 4], 0xDD);
            }
        for (int k = 0; k < 8; k++) {
            r[k] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0x88);
            r[k + 8] = _mm512_shuffle_i32x4(t[k], t[k + 8], 0xDD);
        }
        for (int q = 0; q < 16; q++) _mm512_storeu_si512(w + (int64_t)q * a->rb + c * 64, r[q]);   /* row q */
    }
    const uint16_t *s16 = a->scales + (int64_t)n * ng, *z16 = a->zeros + (int64_t)n * ng;
    for (int g = 0; g < ng; g++)
        for (int q = 0; q < 16; q++) {
            scales[q * ng + g] = s16[g * 16 + q];
            zeros[q * ng + g] = z16[g * 16 + q];
        }
}

TGT void mote_intn_rows_avx512(const mote_intn_args *a, int n0, int n1, uint8_t *scratch) {
    if (a->il16) {   /* the driver sends IL16 weights here for T == 1 and T >= MOTE_INTN_IL_MIN (else de-interleaved rows) */
        if (a->T == 1) {
            if (a->bits == 8) gemv_il16(a, n0, n1, 8);
            else gemv_il16(a, n0, n1, 4);
        } else {
            if (a->bits == 8) gemm_il16(a, n0, n1, 8);
            else gemm_il16(a, n0, n1, 4);
        }
        return;
    }
    if (a->xil) {
        gemm_il(a, n0, n1, scratch);
        return;
    }
    if (flat_ok(a)) {
        uint8_t *buf = scratch + ((a->kp + 64) & ~(int64_t)63);
        switch (a->bits) {
            case 2: gemv_flat(a, n0, n1, buf, 2); break;
            case 3: gemv_flat(a, n0, n1, buf, 3); break;
            case 4: gemv_flat(a, n0, n1, buf, 4); break;
            default: gemv_flat(a, n0, n1, buf, 8); break;
        }
        return;
    }
    float *fac = (float *)(void *)(scratch + ((a->kp + 64) & ~(int64_t)63));   /* [4, ng] */
    int32_t *corr = (int32_t *)(void *)(fac + 4 * a->ng);                       /* [4, ng] */
    for (int n = n0; n < n1; n++) {
        rowview r;
        r.src = a->w + n * a->rb;
        r.bits = a->bits;
        if (a->bits == 2 || a->bits == 3) {
            for (int g = 0; g < a->ng; g++) {
                const uint8_t *p = r.src + g * (a->G * a->bits / 8);
                if (a->G == 128) {
                    __m512i v[2];
                    unpack128(p, a->bits, v);
                    _mm512_storeu_si512(scratch + g * 128, v[0]);
                    _mm512_storeu_si512(scratch + g * 128 + 64, v[1]);
                } else {
                    mote_unpack_group(p, a->bits, a->G, scratch + g * a->G);
                }
            }
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

#endif
