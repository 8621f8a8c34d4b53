/* Group-wise int-N x int8 matmul: driver (activation prep, threading, dispatch), the bit-plane
 * unpacker and the scalar path.
 *
 * Per row n, token t and group g (G columns; docs/KERNELS.md):
 *   acc = sum_k q_k * xq_k - zero_g * sum_k xq_k       exact int32
 *   y[t, n] += (float)acc * (scale_g * (1 / s_tg))     float32
 * with xq, s BitLinear's int8 quantization of each (token, group) of x.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "scratch.h"
#include "threads.h"

float mote_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {                       /* subnormal: normalize */
        int e = -1;
        do {
            man <<= 1;
            e++;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* one p-bit plane of G values: byte j holds value j + i*m at bits [i*p, (i+1)*p), m = G*p/8 */
static void unpack_plane(const uint8_t *src, int p, int G, int shift, uint8_t *q) {
    int per = 8 / p, m = G * p / 8;
    unsigned mask = (1u << p) - 1u;
    for (int i = 0; i < per; i++)
        for (int j = 0; j < m; j++) q[j + i * m] |= (uint8_t)(((src[j] >> (i * p)) & mask) << shift);
}

void mote_unpack_group(const uint8_t *src, int bits, int G, uint8_t *q) {
    memset(q, 0, (size_t)G);
    if (bits == 3) {               /* 2-bit plane of q & 3, then 1-bit plane of q >> 2 */
        unpack_plane(src, 2, G, 0, q);
        unpack_plane(src + G / 4, 1, G, 2, q);
    } else {
        unpack_plane(src, bits, G, 0, q);
    }
}

size_t mote_intn_scratch_bytes(const mote_intn_args *a) {
    size_t flat = 4 * ((size_t)(a->ng > MOTE_INTN_FLAT ? a->ng : MOTE_INTN_FLAT) + 16) + 8 * ((size_t)a->ng + 16);
    size_t tiles = 32 * (size_t)a->ng;                          /* [4, ng] floats + [4, ng] int32 */
    if (a->xil) return 4 * ((size_t)a->kp + 64) + 48 * (size_t)a->ng + 64;   /* 4 rows + [4, ng] x 3 words */
    return (size_t)a->kp + 128 + (flat > tiles ? flat : tiles);   /* + one unpacked row */
}

void mote_intn_row_params(const mote_intn_args *a, int n, uint8_t *scratch, const float **sc, const int32_t **zp) {
    float *s = (float *)(void *)(scratch + ((a->kp + 64) & ~(int64_t)63));
    int32_t *z = (int32_t *)(void *)(s + a->ng);
    const uint16_t *s16 = a->scales + (int64_t)n * a->ng, *z16 = a->zeros + (int64_t)n * a->ng;
    for (int g = 0; g < a->ng; g++) {
        s[g] = mote_half_to_float(s16[g]);
        z[g] = (int32_t)mote_half_to_float(z16[g]);
    }
    *sc = s;
    *zp = z;
}

/* ---- scalar path: decode a row once, then every token ---- */
void mote_intn_rows_scalar(const mote_intn_args *a, int n0, int n1, uint8_t *scratch) {
    const int G = a->G, gbytes = G * a->bits / 8;
    uint8_t *q = scratch;  /* [kp] */
    for (int n = n0; n < n1; n++) {
        for (int g = 0; g < a->ng; g++) mote_unpack_group(a->w + n * a->rb + g * gbytes, a->bits, G, q + g * G);
        const float *sc;
        const int32_t *zp;
        mote_intn_row_params(a, n, scratch, &sc, &zp);
        for (int t = 0; t < a->T; t++) {
            const int8_t *x = a->xq + t * a->kp;
            float y = 0.0f;
            for (int g = 0; g < a->ng; g++) {
                int32_t dot = 0;
                for (int k = g * G; k < (g + 1) * G; k++) dot += (int32_t)q[k] * x[k];
                int32_t acc = dot - zp[g] * a->sumx[t * a->ng + g];
                y += (float)acc * (sc[g] * a->rs[t * a->ng + g]);
            }
            a->y[(int64_t)t * a->N + n] = y;
        }
    }
}

/* ---- the MOTE_INTN_IL16 layout (kernels.h) ---- */
void mote_intn_il16_block_to_rows(const mote_intn_args *a, int n, uint8_t *w, uint16_t *scales, uint16_t *zeros) {
    const int ng = a->ng;
    const int64_t nc = a->rb / 64;   /* 64-byte chunks of a row: 1 per group at 4 bits, 2 at 8 */
    const uint8_t *src = a->w + (int64_t)n * a->rb;   /* block n / 16: 16 rb bytes, [nc][16 lines][16 rows][4] */
    const uint16_t *s16 = a->scales + (int64_t)n * ng, *z16 = a->zeros + (int64_t)n * ng;   /* [ng][16] */
    for (int64_t c = 0; c < nc; c++)
        for (int j = 0; j < 16; j++)
            for (int r = 0; r < 16; r++) memcpy(w + (int64_t)r * a->rb + c * 64 + 4 * j, src + ((c * 16 + j) * 16 + r) * 4, 4);
    for (int g = 0; g < ng; g++) {
        for (int r = 0; r < 16; r++) {
            scales[r * ng + g] = s16[g * 16 + r];
            zeros[r * ng + g] = z16[g * 16 + r];
        }
    }
}

int mote_intn_il16_ok(int layout, int bits, int G, int N) {
    return layout == MOTE_INTN_IL16 && (bits == 4 || bits == 8) && G == 128 && N % 16 == 0;
}

/* a path without an IL16 kernel: each block of 16 rows de-interleaved into blk, then the path's rows function */
static void rows_from_il16(const mote_intn_args *a, mote_intn_rows_fn rows, int n0, int n1, uint8_t *scratch,
                           uint8_t *blk) {
    mote_intn_args b = *a;
    uint16_t *sc = (uint16_t *)(void *)(blk + 16 * a->rb), *zp = sc + 16 * a->ng;
    b.il16 = 0;
    b.w = blk;
    b.scales = sc;
    b.zeros = zp;
#if defined(__x86_64__)
    const int avx512 = mote_get_path() == MOTE_PATH_AVX512;
#else
    const int avx512 = 0;
#endif
    for (int n = n0; n < n1; n += 16) {   /* n0, n1: multiples of 16 (N % 16 == 0, parts split on 16 rows) */
#if defined(__x86_64__)
        if (avx512) mote_intn_il16_block_to_rows_avx512(a, n, blk, sc, zp);
        else
#endif
            mote_intn_il16_block_to_rows(a, n, blk, sc, zp);
        b.y = a->y + n;                    /* rows 0..15 of the block are y's columns n..n+15 */
        rows(&b, 0, 16, scratch);
    }
}

/* ---- driver ---- */
static mote_intn_rows_fn intn_rows_for(mote_path p) {
    switch (p) {
#if defined(__x86_64__)
        case MOTE_PATH_AVX512: return mote_intn_rows_avx512;
        case MOTE_PATH_AVX2: return mote_intn_rows_avx2;
#endif
#if defined(__aarch64__)
        case MOTE_PATH_DOTPROD: return mote_intn_rows_dotprod;
        case MOTE_PATH_NEON: return mote_intn_rows_neon;
#endif
        default: return mote_intn_rows_scalar;
    }
}

typedef struct {
    const mote_intn_args *a;
    mote_intn_rows_fn rows;
    int deint;   /* IL16 weights on a path without an IL16 kernel: de-interleave 16 rows at a time */
    int failed;
} intn_job;

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

static void intn_task(void *ctx, int i, int n) {
    intn_job *job = (intn_job *)ctx;
    int n0, n1;
    mote_split_rows(job->a->N, i, n, 16, &n0, &n1);
    if (n0 >= n1) return;
    const size_t sb = up64(mote_intn_scratch_bytes(job->a));
    const size_t blk = job->deint ? 16 * ((size_t)job->a->rb + 4 * (size_t)job->a->ng) : 0;   /* rows, scales, zeros */
    uint8_t *scratch = mote_scratch(MOTE_SCR_INTN_ROWS, sb + blk);
    if (!scratch) {
        job->failed = 1;
        return;
    }
    if (job->deint)
        rows_from_il16(job->a, job->rows, n0, n1, scratch, scratch + sb);
    else
        job->rows(job->a, n0, n1, scratch);
    mote_scratch_release(MOTE_SCR_INTN_ROWS, 1);
}

int mote_intn_matmul(const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int bits, int G,
                     const float *x, int T, int K, int N, float *y, int threads) {
    return mote_intn_matmul_layout(w, scales, zeros, bits, G, MOTE_INTN_ROWS, x, T, K, N, y, threads);
}

int mote_intn_matmul_layout(const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int bits, int G,
                            int layout, const float *x, int T, int K, int N, float *y, int threads) {
    if (layout != MOTE_INTN_ROWS && !mote_intn_il16_ok(layout, bits, G, N)) return -1;
    if (K == 0 || N == 0 || T == 0) {   /* empty sums (y = 0) or nothing to compute: no kernel runs */
        memset(y, 0, sizeof(float) * (size_t)T * (size_t)N);
        return 0;
    }
    mote_intn_args a;
    a.w = w;
    a.il16 = layout == MOTE_INTN_IL16;
    a.bits = bits;
    a.G = G;
    a.ng = (K + G - 1) / G;
    a.kp = (int64_t)a.ng * G;
    a.rb = a.kp * bits / 8;
    a.scales = scales;
    a.zeros = zeros;
    a.N = N;
    a.T = T;
    const mote_path path = mote_get_path();
    a.ntb = (T + 15) / 16;
    /* IL16 natively: the AVX-512 GEMV (T = 1) and GEMM (T >= MOTE_INTN_IL_MIN; intn_avx512.c), reading xq */
    const int il16_native = a.il16 && path == MOTE_PATH_AVX512 && (T == 1 || T >= MOTE_INTN_IL_MIN);
    const int il = path == MOTE_PATH_AVX512 && T >= MOTE_INTN_IL_MIN && !il16_native;   /* tokens in lanes */
    /* this thread's activation buffer (scratch.h): xq [T, kp] + 128 | sumx [T, ng] | rs [T, ng]
     * (| xil [ntb, kp, 16] + 64 | sumx_il [ntb, ng, 16] | rs_il [ntb, ng, 16] when il), each 64-byte aligned */
    const size_t xq_bytes = up64((size_t)T * a.kp + 128), sum_bytes = up64(sizeof(int32_t) * ((size_t)T * a.ng + 1));
    const size_t xil_bytes = il ? up64((size_t)a.ntb * a.kp * 16 + 64) : 0, il_bytes = il ? up64(4 * (size_t)a.ntb * a.ng * 16) : 0;
    uint8_t *act = mote_scratch(MOTE_SCR_INTN_ACT, xq_bytes + 2 * sum_bytes + xil_bytes + 2 * il_bytes);
    if (!act) return -1;
    int8_t *xq = (int8_t *)act;                                   /* +128: SIMD tails may over-read */
    int32_t *sumx = (int32_t *)(void *)(act + xq_bytes);
    float *rs = (float *)(void *)(act + xq_bytes + sum_bytes);
    for (int t = 0; t < T; t++)   /* zero padding: columns K .. kp of each row, and the tail */
        memset(xq + (int64_t)t * a.kp + K, 0, (size_t)(a.kp - K));
    memset(xq + (int64_t)T * a.kp, 0, 128);
    for (int t = 0; t < T; t++)
        for (int g = 0; g < a.ng; g++) {
            int k0 = g * G, len = K - k0 < G ? K - k0 : G;
            float s = mote_quantize_act(x + (int64_t)t * K + k0, len, xq + t * a.kp + k0, &sumx[t * a.ng + g]);
            rs[t * a.ng + g] = 1.0f / s;
        }
    a.xq = xq;
    a.sumx = sumx;
    a.rs = rs;
    a.y = y;
    a.xil = NULL;
    a.sumx_il = NULL;
    a.rs_il = NULL;
    if (il) {
        const int64_t nch = a.kp / 4;
        uint8_t *xil = act + xq_bytes + 2 * sum_bytes;
        int32_t *sumx_il = (int32_t *)(void *)(xil + xil_bytes);
        float *rs_il = (float *)(void *)(xil + xil_bytes + il_bytes);
        memset(sumx_il, 0, 2 * il_bytes);                        /* 0 for tokens >= T */
        memset(xil, 128, (size_t)(a.ntb * a.kp * 16));
        for (int t = 0; t < T; t++) {
            const int tb = t / 16, l = t % 16;
            const int8_t *src = xq + t * a.kp;
            uint8_t *dst = xil + (int64_t)tb * a.kp * 16 + 4 * l;
            for (int64_t j = 0; j < nch; j++)
                for (int b = 0; b < 4; b++) dst[j * 64 + b] = (uint8_t)(src[4 * j + b] + 128);
            for (int g = 0; g < a.ng; g++) {
                sumx_il[((int64_t)tb * a.ng + g) * 16 + l] = sumx[t * a.ng + g];
                rs_il[((int64_t)tb * a.ng + g) * 16 + l] = rs[t * a.ng + g];
            }
        }
        a.xil = xil;
        a.sumx_il = sumx_il;
        a.rs_il = rs_il;
    }
    intn_job job = {&a, intn_rows_for(path), a.il16 && !il16_native, 0};
    int nth = threads < 1 ? 1 : threads;
    if (nth > (N + 15) / 16) nth = (N + 15) / 16;
    mote_parallel(nth, intn_task, &job);
    mote_scratch_release(MOTE_SCR_INTN_ACT, T == 1);
    return job.failed ? -1 : 0;
}
