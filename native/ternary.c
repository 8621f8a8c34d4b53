/* Ternary x int8 matmul: driver (activation prep, threading, dispatch) and the scalar path.
 *
 * Weights: rows of ceil(K/5) bytes; full 64-byte blocks hold 320 columns (byte j: columns j,
 * j+64, ..., j+256), the tail block of B bytes holds columns j, j+B, ..., j+4B. Each byte is
 * ceil(v * 256 / 243) of the base-3 number v = 81 d0 + 27 d1 + 9 d2 + 3 d3 + d4 with digits
 * d = trit + 1, so  d_i = (3 q) >> 8;  q = (3 q) & 255  peels them off in order.
 *
 * Activations are re-laid in "block order" (kx = nblk * 320 columns per token) so that every
 * block, tail included, is five runs of 64 activations: run i of block b = columns
 * b*320 + 64 i + j for a full block; for the tail, column nfull*320 + B i + j at j < B and 0
 * beyond. Then  sum_k t_k x_k = sum_k d_k x_k - sum_k x_k  with digits in {0,1,2} (u8) times
 * int8 activations: exactly what vpdpbusd multiplies.
 *   y[t, n] = (float)(sum_k d_k xq_k - sumx_t) * (gamma / s_t)     (bit-exact with numpy)
 *
 * The 2-bit cache-slab layout (tpb = 4, mote_edge/quant/ternary_slab.py) is the same with blocks
 * of 256 columns (four runs of 64) and digit i of a byte in bits 2i..2i+1: a faster decode for
 * 25% more bytes. Everything above applies with 4 for 5 and 256 for 320.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "scratch.h"
#include "threads.h"

/* ---- scalar path: one row, one token at a time; the readable reference (both layouts) ---- */
static int32_t tern_dot_scalar(const uint8_t *w, const int8_t *x, int nfull, int tail, int tpb) {
    int32_t acc = 0;
    for (int b = 0; b <= nfull; b++) {
        int nbytes = b < nfull ? MOTE_TBLOCK_BYTES : tail;
        const uint8_t *wb = w + (int64_t)b * MOTE_TBLOCK_BYTES;
        const int8_t *xb = x + (int64_t)b * MOTE_TBLOCK_BYTES * tpb;
        for (int j = 0; j < nbytes; j++) {
            unsigned q = wb[j];
            if (tpb == MOTE_TPB_SLAB2) {   /* 2-bit fields, digit i in bits 2i..2i+1 */
                for (int i = 0; i < 4; i++) acc += (int32_t)((q >> (2 * i)) & 3u) * xb[64 * i + j];
                continue;
            }
            for (int i = 0; i < 5; i++) {   /* base 3: multiply by 3 and carry */
                unsigned q3 = q * 3u;
                acc += (int32_t)(q3 >> 8) * xb[64 * i + j];
                q = q3 & 0xFFu;
            }
        }
    }
    return acc;
}

void mote_tern_rows_scalar(const mote_tern_args *a, int n0, int n1, uint8_t *scratch) {
    for (int n = n0; n < n1; n++)
        for (int t = 0; t < a->T; t++) {
            int32_t acc = tern_dot_scalar(a->w + n * a->rb, a->xq + t * a->kx, a->nfull, a->tail, a->tpb);
            a->y[(int64_t)t * a->N + n] = (float)(acc - a->sumx[t]) * a->f[t];
        }
}

/* ---- driver ---- */
static mote_tern_rows_fn tern_rows_for(mote_path p, int tpb) {
    switch (p) {
#if defined(__x86_64__)
        case MOTE_PATH_AVX512: return tpb == MOTE_TPB_SLAB2 ? mote_tern2_rows_avx512 : mote_tern_rows_avx512;
        case MOTE_PATH_AVX2: return mote_tern_rows_avx2;
#endif
#if defined(__aarch64__)
        case MOTE_PATH_DOTPROD: return mote_tern_rows_dotprod;
        case MOTE_PATH_NEON: return mote_tern_rows_neon;
#endif
        default: return mote_tern_rows_scalar;
    }
}

typedef struct {
    const mote_tern_args *a;
    mote_tern_rows_fn rows;
    int failed;
} tern_job;

static void tern_task(void *ctx, int i, int n) {
    tern_job *job = (tern_job *)ctx;
    int n0, n1;
    mote_split_rows(job->a->N, i, n, 16, &n0, &n1);
    if (n0 >= n1) return;
    uint8_t *scratch = mote_scratch(MOTE_SCR_TERN_ROWS, 4 * (size_t)job->a->kx + 64);  /* four decoded rows (GEMM paths) */
    if (!scratch) {
        job->failed = 1;
        return;
    }
    job->rows(job->a, n0, n1, scratch);
    mote_scratch_release(MOTE_SCR_TERN_ROWS, 1);
}

/* one token's int8 activations (natural order, K) -> block order (kx), zero padded */
static void to_block_order(const int8_t *src, int K, int nfull, int tail, int tpb, int8_t *dst, int64_t kx) {
    int64_t full = (int64_t)nfull * MOTE_TBLOCK_BYTES * tpb;
    memcpy(dst, src, (size_t)full);
    memset(dst + full, 0, (size_t)(kx - full));
    for (int i = 0; i < tpb && tail; i++)
        for (int j = 0; j < tail; j++) {
            int64_t col = full + (int64_t)tail * i + j;
            if (col < K) dst[full + 64 * i + j] = src[col];
        }
}

int mote_ternary_matmul(int tpb, const uint8_t *w, float gamma, const float *x, const int8_t *xq_in,
                        const float *s_in, int T, int K, int N, float *y, int threads) {
    if (K == 0 || N == 0 || T == 0) {   /* empty sums (y = 0) or nothing to compute: no kernel runs */
        memset(y, 0, sizeof(float) * (size_t)T * (size_t)N);
        return 0;
    }
    const int cols = MOTE_TBLOCK_BYTES * tpb;   /* columns per full block: 320 or 256 */
    mote_tern_args a;
    a.tpb = tpb;
    a.w = w;
    a.rb = (K + tpb - 1) / tpb;
    a.nfull = K / cols;
    a.tail = (K % cols + tpb - 1) / tpb;
    a.nblk = a.nfull + (a.tail > 0);
    a.N = N;
    a.T = T;
    a.kx = (int64_t)a.nblk * cols;
    /* this thread's activation buffer (scratch.h): xq [T, kx] | row [K] + 64 | sumx [T] | f [T], 64-byte aligned */
    const size_t xq_bytes = ((size_t)T * a.kx + K + 64 + 63) & ~(size_t)63, t_bytes = (4 * ((size_t)T + 1) + 63) & ~(size_t)63;
    uint8_t *act = mote_scratch(MOTE_SCR_TERN_ACT, xq_bytes + 2 * t_bytes);
    if (!act) return -1;
    int8_t *xq = (int8_t *)act;
    int32_t *sumx = (int32_t *)(void *)(act + xq_bytes);
    float *f = (float *)(void *)(act + xq_bytes + t_bytes);
    int8_t *row = xq + T * a.kx;   /* K bytes of scratch for one natural-order row */
    for (int t = 0; t < T; t++) {
        float s;
        if (x) {
            s = mote_quantize_act(x + (int64_t)t * K, K, row, &sumx[t]);
        } else {
            memcpy(row, xq_in + (int64_t)t * K, (size_t)K);
            s = s_in[t];
            int32_t acc = 0;
            for (int k = 0; k < K; k++) acc += row[k];
            sumx[t] = acc;
        }
        f[t] = gamma / s;
        to_block_order(row, K, a.nfull, a.tail, tpb, xq + t * a.kx, a.kx);
    }
    a.xq = xq;
    a.sumx = sumx;
    a.f = f;
    a.y = y;
    tern_job job = {&a, tern_rows_for(mote_get_path(), tpb), 0};
    int nth = threads < 1 ? 1 : threads;
    if (nth > (N + 15) / 16) nth = (N + 15) / 16;
    mote_parallel(nth, tern_task, &job);
    mote_scratch_release(MOTE_SCR_TERN_ACT, T == 1);
    return job.failed ? -1 : 0;
}

/* ---- file layout -> 2-bit slab layout ---- */
/* SIMD helpers for the full blocks of the re-lay (NULL: scalar) */
typedef struct {
    void (*digits)(const uint8_t *w, int nfull, uint8_t *d);
    void (*pack)(const uint8_t *d, int nfull, uint8_t *out);
} relayout_simd;

static relayout_simd relayout_for(mote_path p) {
    relayout_simd r = {NULL, NULL};
#if defined(__x86_64__)
    if (p == MOTE_PATH_AVX512) r = (relayout_simd){mote_tern_digits_avx512, mote_tern2_pack_avx512};
#endif
#if defined(__aarch64__)
    if (p == MOTE_PATH_NEON || p == MOTE_PATH_DOTPROD) r = (relayout_simd){mote_tern_digits_neon, mote_tern2_pack_neon};
#endif
    return r;
}

/* one file row -> K digits in natural column order. Block b of the row (64 bytes, or the tail's
 * B bytes) holds in byte j the columns 320 b + j + stride i, stride = 64 (full) or B (tail). */
static void file_row_digits(const uint8_t *w, int K, uint8_t *d, const relayout_simd *simd) {
    const int nfull = K / MOTE_TBLOCK_COLS, B = (K % MOTE_TBLOCK_COLS + 4) / 5;
    if (simd->digits) simd->digits(w, nfull, d);   /* the full blocks */
    for (int b = simd->digits ? nfull : 0; b <= nfull; b++) {
        const int nbytes = b < nfull ? 64 : B;
        for (int j = 0; j < nbytes; j++) {
            unsigned q = w[64 * b + j];
            for (int i = 0; i < 5; i++) {
                unsigned q3 = q * 3u;
                int64_t col = (int64_t)MOTE_TBLOCK_COLS * b + (int64_t)nbytes * i + j;
                if (col < K) d[col] = (uint8_t)(q3 >> 8);
                q = q3 & 0xFFu;
            }
        }
    }
}

/* K digits in natural order -> one 2-bit slab row of ceil(K/4) bytes, the same block / tail scheme
 * with 256 columns per block (padding columns: digit 1 = trit 0) */
static void slab2_row_pack(const uint8_t *d, int K, uint8_t *out, const relayout_simd *simd) {
    const int cols = MOTE_TBLOCK_BYTES * MOTE_TPB_SLAB2, nfull = K / cols, B = (K % cols + 3) / 4;
    if (simd->pack) simd->pack(d, nfull, out);
    for (int b = simd->pack ? nfull : 0; b <= nfull; b++) {
        const int nbytes = b < nfull ? 64 : B;
        for (int j = 0; j < nbytes; j++) {
            unsigned v = 0;
            for (int i = 0; i < 4; i++) {
                int64_t col = (int64_t)cols * b + (int64_t)nbytes * i + j;
                v |= (unsigned)(col < K ? d[col] : 1) << (2 * i);
            }
            out[64 * b + j] = (uint8_t)v;
        }
    }
}

int mote_ternary_file_to_slab2(const uint8_t *src, int N, int K, uint8_t *dst) {
    uint8_t *d = malloc((size_t)K + 64);
    if (!d) return -1;
    const relayout_simd simd = relayout_for(mote_get_path());
    const int64_t rb5 = (K + 4) / 5, rb4 = (K + 3) / 4;
    for (int n = 0; n < N; n++) {
        file_row_digits(src + n * rb5, K, d, &simd);
        slab2_row_pack(d, K, dst + n * rb4, &simd);
    }
    free(d);
    return 0;
}
