/* A Qwen2 decoder layer for a chunk of T positions (prefill) or one (a decode step) (layer.h;
 * docs/KERNELS.md section 6). The same maths as runtime/decoder.py's numpy layer (the reference), in one
 * call per half-layer:
 *
 *   attention half          shapes (H hidden, nH / nKV heads, D head dim, token t at pos = start + t, S = pos + 1)
 *     h   = rmsnorm(x, ln_in)                        [T, H]
 *     qkv = h W_qkv^T + b                            [T, nH D + 2 nKV D]   one int-N kernel call when fused
 *     q, k = rope(q, pos), rope(k, pos)              [T, nH, D], [T, nKV, D]
 *     cache[pos] = k, v                              float32, or int8 with scale = max|.| / 127 per head
 *     att_h = softmax(q_h K^T / sqrt(D)) V           [T, nH, D]   causal: S positions; head h reads kv head h / (nH / nKV)
 *     x  += att W_o^T                                [T, H]
 *     h   = rmsnorm(x, ln_post)                      [T, H]
 *   FFN (dense, shared expert, or one routed expert)
 *     y  += coef * down(silu(gate h) * up h)         [T, H]   gate / up: [T, I] each
 *
 * Float steps are the numpy layer's expressions with -ffp-contract=off; sums (norms, attention dots,
 * the f32 GEMV) run in 8 partial sums, a different order than numpy's, so the two agree within the
 * rounding bound the tests derive, not bit for bit. RoPE, the bias adds and the int8 cache write are
 * element-wise and bit-identical.
 */
#include "layer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "scratch.h"
#include "threads.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ---- dot products: 8 partial sums (lane j takes elements j, j + 8, ...), then lanes 0..7 in order.
 * The AVX2 versions keep the 8 lanes in one register with separate multiplies and adds (no FMA), so
 * they are bit-identical to the scalar ones (native/tests/arm_selftest.c checks it). ---- */
#define LANES 8

static float sum_lanes(const float *acc) {
    float s = 0.0f;
    for (int j = 0; j < LANES; j++) s += acc[j];
    return s;
}

float mote_dot_f32_scalar(const float *a, const float *b, int n) {
    float acc[LANES] = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += a[k + j] * b[k + j];
    for (int j = 0; k + j < n; j++) acc[j] += a[k + j] * b[k + j];
    return sum_lanes(acc);
}

float mote_dot_f32_i8_scalar(const float *a, const int8_t *b, int n) {
    float acc[LANES] = {0};
    int k = 0;
    for (; k + LANES <= n; k += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += a[k + j] * (float)b[k + j];
    for (int j = 0; k + j < n; j++) acc[j] += a[k + j] * (float)b[k + j];
    return sum_lanes(acc);
}

/* 8 dots against 8 rows b + r stride (r = 0..7) at once: out[r] = mote_dot_f32(a, b + r stride, n) */
void mote_dot8_f32_scalar(const float *a, const float *b, int64_t stride, int n, float *out) {
    for (int r = 0; r < 8; r++) out[r] = mote_dot_f32_scalar(a, b + r * stride, n);
}

void mote_dot8_f32_i8_scalar(const float *a, const int8_t *b, int64_t stride, int n, float *out) {
    for (int r = 0; r < 8; r++) out[r] = mote_dot_f32_i8_scalar(a, b + r * stride, n);
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static float dot_f32_avx2(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int k = 0;
    for (; k + LANES <= n; k += LANES) acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(b + k)));
    float lanes[LANES];
    _mm256_storeu_ps(lanes, acc);
    for (int j = 0; k + j < n; j++) lanes[j] += a[k + j] * b[k + j];
    return sum_lanes(lanes);
}

__attribute__((target("avx2"))) static float dot_f32_i8_avx2(const float *a, const int8_t *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int k = 0;
    for (; k + LANES <= n; k += LANES) {
        const __m256 bf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(b + k))));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + k), bf));
    }
    float lanes[LANES];
    _mm256_storeu_ps(lanes, acc);
    for (int j = 0; k + j < n; j++) lanes[j] += a[k + j] * (float)b[k + j];
    return sum_lanes(lanes);
}

/* the 8 rows' sums run side by side (8 independent add chains, a's loads shared), each in the scalar
 * dot's order: lane j over k = j, j + 8, ..., the tail into lanes 0.., then the lanes in order */
__attribute__((target("avx2"))) static void dot8_f32_avx2(const float *a, const float *b, int64_t stride, int n,
                                                         float *out) {
    __m256 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + LANES <= n; k += LANES) {
        const __m256 av = _mm256_loadu_ps(a + k);
        for (int r = 0; r < 8; r++) acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(av, _mm256_loadu_ps(b + r * stride + k)));
    }
    float lanes[8][LANES];
    for (int r = 0; r < 8; r++) {
        _mm256_storeu_ps(lanes[r], acc[r]);
        for (int j = 0; k + j < n; j++) lanes[r][j] += a[k + j] * b[r * stride + k + j];
    }
    for (int r = 0; r < 8; r++) out[r] = sum_lanes(lanes[r]);
}

__attribute__((target("avx2"))) static void dot8_f32_i8_avx2(const float *a, const int8_t *b, int64_t stride, int n,
                                                            float *out) {
    __m256 acc[8];
    for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + LANES <= n; k += LANES) {
        const __m256 av = _mm256_loadu_ps(a + k);
        for (int r = 0; r < 8; r++) {
            const __m256 bf = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)(b + r * stride + k))));
            acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(av, bf));
        }
    }
    float lanes[8][LANES];
    for (int r = 0; r < 8; r++) {
        _mm256_storeu_ps(lanes[r], acc[r]);
        for (int j = 0; k + j < n; j++) lanes[r][j] += a[k + j] * (float)b[r * stride + k + j];
    }
    for (int r = 0; r < 8; r++) out[r] = sum_lanes(lanes[r]);
}
#endif

/* ---- exp and SwiGLU's silu(g) u, element-wise ----
 * exp(x) = 2^n p(r): n = rint(x log2 e), r = x - n ln2 (in two parts), p the degree-7 polynomial of
 * Cephes' expf (~1 ulp). x is clamped to [-88, 88], so n stays in -127..127 (2^n by its exponent bits;
 * n = -127 gives 0): exp(x) below -87.3 comes out as 0 or a small normal instead of a denormal, above 88
 * as exp(88) instead of up to inf. Every step is a float multiply, add, compare or rint, the same in the
 * scalar and the AVX2 version, so the two are bit-identical. */
#define EXP_HI 88.0f
#define EXP_LO -88.0f

static inline float exp_scalar(float x) {
    x = x < EXP_HI ? x : EXP_HI;   /* = _mm256_min_ps(x, hi): a NaN becomes hi, as there */
    x = x > EXP_LO ? x : EXP_LO;
    const float n = nearbyintf(x * 1.44269504088896341f);
    const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    union { int32_t i; float f; } two_n = {.i = ((int32_t)n + 127) << 23};
    return p * two_n.f;
}

/* g[i] = g[i] / (1 + exp(-g[i])) * u[i]: silu(gate) * up (decoder.py's SwiGLU) */
void mote_silu_mul_scalar(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) g[i] = g[i] / (1.0f + exp_scalar(-g[i])) * u[i];
}

/* x[i] = exp(x[i] - m) */
void mote_exp_shift_scalar(float *x, float m, int n) {
    for (int i = 0; i < n; i++) x[i] = exp_scalar(x[i] - m);
}

/* ---- attention's inner loops ----
 * scores_kt: out[8 b + j] = sum_d q[d] kt[b][d][j] for nb transposed key blocks kt [nb, D, 8] (8 positions
 *            each), every lane summed in d order (prefill: one query against 8 keys, no horizontal sum);
 * pv:        o[d] = sum_s p[s] v[s][d] over S rows v [S, D] in s order, from 0; v float32, or int8 with
 *            p[s] times the row's scale vs[s] (the softmax-weighted sum of values). */
void mote_scores_kt_scalar(const float *q, const float *kt, int D, int nb, float *out) {
    for (int b = 0; b < nb; b++) {
        const float *blk = kt + (int64_t)b * D * LANES;
        float acc[LANES] = {0};
        for (int d = 0; d < D; d++)
            for (int j = 0; j < LANES; j++) acc[j] += q[d] * blk[(int64_t)d * LANES + j];
        memcpy(out + (int64_t)b * LANES, acc, sizeof acc);
    }
}

void mote_pv_f32_scalar(float *o, const float *p, const float *v, int S, int D) {
    for (int d = 0; d < D; d++) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += p[s] * v[(int64_t)s * D + d];
        o[d] = acc;
    }
}

void mote_pv_i8_scalar(float *o, const float *p, const float *vs, const int8_t *v, int S, int D) {
    for (int d = 0; d < D; d++) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += p[s] * vs[s] * (float)v[(int64_t)s * D + d];
        o[d] = acc;
    }
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) static inline __m256 exp_avx2(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(EXP_HI));
    x = _mm256_max_ps(x, _mm256_set1_ps(EXP_LO));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 r = _mm256_sub_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f))),
                                   _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2"))) static void silu_mul_avx2(float *g, const float *u, int n) {
    int i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp_avx2(_mm256_sub_ps(zero, x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
    mote_silu_mul_scalar(g + i, u + i, n - i);
}

__attribute__((target("avx2"))) static void exp_shift_avx2(float *x, float m, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(m))));
    mote_exp_shift_scalar(x + i, m, n - i);
}

/* 4 blocks at a time: 4 independent sums (one chain would wait on the add latency) */
__attribute__((target("avx2"))) static void scores_kt_avx2(const float *q, const float *kt, int D, int nb, float *out) {
    const int64_t bs = (int64_t)D * LANES;   /* floats per block */
    int b = 0;
    for (; b + 4 <= nb; b += 4) {
        const float *k0 = kt + b * bs;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int d = 0; d < D; d++) {
            const __m256 qd = _mm256_set1_ps(q[d]);
            const float *k = k0 + (int64_t)d * LANES;
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(qd, _mm256_loadu_ps(k)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(qd, _mm256_loadu_ps(k + bs)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(qd, _mm256_loadu_ps(k + 2 * bs)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(qd, _mm256_loadu_ps(k + 3 * bs)));
        }
        float *o = out + (int64_t)b * LANES;
        _mm256_storeu_ps(o, a0), _mm256_storeu_ps(o + 8, a1), _mm256_storeu_ps(o + 16, a2), _mm256_storeu_ps(o + 24, a3);
    }
    for (; b < nb; b++) {
        __m256 acc = _mm256_setzero_ps();
        for (int d = 0; d < D; d++)
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(q[d]), _mm256_loadu_ps(kt + b * bs + (int64_t)d * LANES)));
        _mm256_storeu_ps(out + (int64_t)b * LANES, acc);
    }
}

/* 32 columns of o in registers per pass over the S rows */
__attribute__((target("avx2"))) static void pv_f32_avx2(float *o, const float *p, const float *v, int S, int D) {
    int d = 0;
    for (; d + 32 <= D; d += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int s = 0; s < S; s++) {
            const __m256 ps = _mm256_set1_ps(p[s]);
            const float *r = v + (int64_t)s * D + d;
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(ps, _mm256_loadu_ps(r)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(ps, _mm256_loadu_ps(r + 8)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(ps, _mm256_loadu_ps(r + 16)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(ps, _mm256_loadu_ps(r + 24)));
        }
        _mm256_storeu_ps(o + d, a0), _mm256_storeu_ps(o + d + 8, a1), _mm256_storeu_ps(o + d + 16, a2);
        _mm256_storeu_ps(o + d + 24, a3);
    }
    for (; d + 8 <= D; d += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int s = 0; s < S; s++)
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(p[s]), _mm256_loadu_ps(v + (int64_t)s * D + d)));
        _mm256_storeu_ps(o + d, acc);
    }
    for (; d < D; d++) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += p[s] * v[(int64_t)s * D + d];
        o[d] = acc;
    }
}

static inline __attribute__((target("avx2"))) __m256 i8_to_f32(const int8_t *v) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)v)));
}

__attribute__((target("avx2"))) static void pv_i8_avx2(float *o, const float *p, const float *vs, const int8_t *v, int S,
                                                       int D) {
    int d = 0;
    for (; d + 32 <= D; d += 32) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int s = 0; s < S; s++) {
            const __m256 ps = _mm256_set1_ps(p[s] * vs[s]);
            const int8_t *r = v + (int64_t)s * D + d;
            a0 = _mm256_add_ps(a0, _mm256_mul_ps(ps, i8_to_f32(r)));
            a1 = _mm256_add_ps(a1, _mm256_mul_ps(ps, i8_to_f32(r + 8)));
            a2 = _mm256_add_ps(a2, _mm256_mul_ps(ps, i8_to_f32(r + 16)));
            a3 = _mm256_add_ps(a3, _mm256_mul_ps(ps, i8_to_f32(r + 24)));
        }
        _mm256_storeu_ps(o + d, a0), _mm256_storeu_ps(o + d + 8, a1), _mm256_storeu_ps(o + d + 16, a2);
        _mm256_storeu_ps(o + d + 24, a3);
    }
    for (; d + 8 <= D; d += 8) {
        __m256 acc = _mm256_setzero_ps();
        for (int s = 0; s < S; s++)
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(p[s] * vs[s]), i8_to_f32(v + (int64_t)s * D + d)));
        _mm256_storeu_ps(o + d, acc);
    }
    for (; d < D; d++) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += p[s] * vs[s] * (float)v[(int64_t)s * D + d];
        o[d] = acc;
    }
}
#endif

mote_dot_fns mote_dot_for(mote_path p) {
#if defined(__x86_64__)
    if (p == MOTE_PATH_AVX2 || p == MOTE_PATH_AVX512)
        return (mote_dot_fns){dot_f32_avx2, dot_f32_i8_avx2, dot8_f32_avx2, dot8_f32_i8_avx2, silu_mul_avx2, exp_shift_avx2, scores_kt_avx2,
                              pv_f32_avx2, pv_i8_avx2};
#endif
    return (mote_dot_fns){mote_dot_f32_scalar, mote_dot_f32_i8_scalar, mote_dot8_f32_scalar, mote_dot8_f32_i8_scalar,
                          mote_silu_mul_scalar, mote_exp_shift_scalar,
                          mote_scores_kt_scalar, mote_pv_f32_scalar, mote_pv_i8_scalar};
}

#define dot_f32 mote_dot_f32_scalar   /* norms and the f32 GEMV: the portable loop */

void mote_rms_norm(const float *x, const float *w, int n, float eps, float *y) {
    const float ms = dot_f32(x, x, n) / (float)n;
    const float r = sqrtf(ms + eps);
    for (int i = 0; i < n; i++) y[i] = w[i] * (x[i] / r);
}

/* ---- f32 GEMV / GEMM, rows over the thread pool ----
 * y[t, r] = dot(W_r, x_t): each output is one dot product in the 8-lane order, whatever T is, so a chunk's
 * rows equal T separate GEMVs bit for bit. A thread takes a block of rows and runs every token over each
 * block of F32_ROW_BLOCK rows (~224 KB of W at K = 896: L2), so W streams from DRAM once per chunk. */
#define F32_ROW_BLOCK 64

typedef struct {
    const float *W, *x;
    int T, N, K;
    float *y;
} gemm_job;

static void gemm_task(void *ctx, int i, int n) {
    const gemm_job *j = (const gemm_job *)ctx;
    int n0, n1;
    mote_split_rows(j->N, i, n, 16, &n0, &n1);
    for (int b0 = n0; b0 < n1; b0 += F32_ROW_BLOCK) {
        const int b1 = b0 + F32_ROW_BLOCK < n1 ? b0 + F32_ROW_BLOCK : n1;
        for (int t = 0; t < j->T; t++) {
            const float *x = j->x + (int64_t)t * j->K;
            float *y = j->y + (int64_t)t * j->N;
            for (int r = b0; r < b1; r++) y[r] = dot_f32(j->W + (int64_t)r * j->K, x, j->K);
        }
    }
}

void mote_gemm_f32(const float *W, const float *x, int T, int N, int K, float *y, int threads) {
    gemm_job j = {W, x, T, N, K, y};
    int nth = threads < 1 ? 1 : threads;
    if (nth > (N + 15) / 16) nth = (N + 15) / 16;
    mote_parallel(nth < 1 ? 1 : nth, gemm_task, &j);
}

void mote_gemv_f32(const float *W, const float *x, int N, int K, float *y, int threads) {
    mote_gemm_f32(W, x, 1, N, K, y, threads);
}

int mote_linear_matmul(const mote_linear *L, const float *x, int T, float *y, int threads) {
    switch (L->kind) {
        case MOTE_LIN_F32:
            mote_gemm_f32((const float *)L->w, x, T, L->N, L->K, y, threads);
            return 0;
        case MOTE_LIN_INTN:
            return mote_intn_matmul(L->w, L->scales, L->zeros, L->bits, L->G, x, T, L->K, L->N, y, threads);
        case MOTE_LIN_INTN16:
            return mote_intn_matmul_layout(L->w, L->scales, L->zeros, L->bits, L->G, MOTE_INTN_IL16, x, T, L->K, L->N, y,
                                           threads);
        case MOTE_LIN_TERN:
            return mote_ternary_matmul(MOTE_TPB_FILE, L->w, L->gamma, x, NULL, NULL, T, L->K, L->N, y, threads);
        case MOTE_LIN_TERN2:
            return mote_ternary_matmul(MOTE_TPB_SLAB2, L->w, L->gamma, x, NULL, NULL, T, L->K, L->N, y, threads);
    }
    return -1;
}

int mote_linear_gemv(const mote_linear *L, const float *x, float *y, int threads) {
    return mote_linear_matmul(L, x, 1, y, threads);
}

/* ---- attention half ---- */
/* rotate_half RoPE of one head at one position: y = x cos + rotate_half(x) sin (decoder.py's Rope.apply) */
static void rope(float *x, const float *cos, const float *sin, int D) {
    const int half = D / 2;
    for (int i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos[i] + (-b) * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* one head's D values -> int8 with scale = max(max|x|, 1e-12) / 127 (runtime/kv_cache.py's write) */
static void quantize_head(const float *x, int D, int8_t *q, float *scale) {
    float amax = 0.0f;
    for (int d = 0; d < D; d++) amax = fabsf(x[d]) > amax ? fabsf(x[d]) : amax;
    const float s = (amax > 1e-12f ? amax : 1e-12f) / 127.0f;
    for (int d = 0; d < D; d++) {
        float r = nearbyintf(x[d] / s);
        q[d] = (int8_t)(r > 127.0f ? 127 : r < -127.0f ? -127 : (int)r);
    }
    *scale = s;
}

typedef struct {
    const mote_attn_layer *L;
    const float *qkv;  /* [T, nH D + 2 nKV D]: q of token t at row t */
    float *att;        /* [T, nH, D] */
    float *scores;     /* [threads, group (start + T) + 8]: one block per thread (8: scores_kt writes past S) */
    const float *kt;   /* T > 1: [nKV, nblk, D, 8] keys in transposed blocks of 8 positions (keys_t); else NULL */
    int T, start, nblk;
    mote_dot_fns dot;
} attn_job;

/* Prefill: every position's key of every kv head, transposed in blocks of 8 positions (zero past
 * start + T): kt[g][b][d][j] = K[g][8 b + j][d] as float (int8 values unscaled: the scale multiplies the sum) */
static void keys_t(const mote_attn_layer *L, int S, int nblk, float *kt) {
    const int D = L->D;
    for (int g = 0; g < L->n_kv; g++) {
        for (int b = 0; b < nblk; b++) {
            float *blk = kt + ((int64_t)g * nblk + b) * D * LANES;
            for (int j = 0; j < LANES; j++) {
                const int s = b * LANES + j;
                const int64_t at = ((int64_t)g * L->context + s) * D;
                for (int d = 0; d < D; d++)
                    blk[(int64_t)d * LANES + j] = s >= S ? 0.0f : L->kv_bits == 32 ? ((const float *)L->kv)[at + d]
                                                                                    : (float)((const int8_t *)L->kv)[at + d];
            }
        }
    }
}

/* Work items (kv head g, query t), g major, split evenly over the threads: item g T + t runs the group of
 * query heads of kv head g (GQA) for token t over its S = start + t + 1 causal positions, reading every
 * cached K and V row once for the group. Per head h: att_h = softmax(q_h K^T / sqrt(D)) V. Scores: one
 * dot per position (decode), or 8 positions at a time from the transposed blocks (prefill). */
static void attn_task(void *ctx, int i, int n) {
    const attn_job *j = (const attn_job *)ctx;
    const mote_attn_layer *L = j->L;
    const int D = L->D, group = L->n_heads / L->n_kv, T = j->T, width = (L->n_heads + 2 * L->n_kv) * D;
    const int64_t items = (int64_t)L->n_kv * T, it0 = items * i / n, it1 = items * (i + 1) / n;
    const float scale = (float)(1.0 / sqrt((double)D));
    const int64_t plane = (int64_t)L->n_kv * L->context;   /* positions per k or v plane */
    float *sc = j->scores + (int64_t)i * (group * (j->start + T) + LANES);   /* this thread's block */
    for (int64_t it = it0; it < it1; it++) {
        const int g = (int)(it / T), t = (int)(it % T), S = j->start + t + 1;
        const int64_t row0 = (int64_t)g * L->context;                    /* position 0 of kv head g */
        const float *q = j->qkv + (int64_t)t * width + (int64_t)g * group * D;   /* the group's heads [group, D] */
        float *out = j->att + ((int64_t)t * L->n_heads + (int64_t)g * group) * D;
        if (j->kt) {                                                         /* scores [group, S], 8 at a time */
            const int nb = (S + LANES - 1) / LANES;
            for (int h = 0; h < group; h++) {
                float *p = sc + (int64_t)h * S;                                 /* (writes up to 7 past S: slack) */
                j->dot.scores_kt(q + (int64_t)h * D, j->kt + (int64_t)g * j->nblk * D * LANES, D, nb, p);
                for (int s = 0; s < S; s++) p[s] = (L->kv_bits == 32 ? p[s] : p[s] * L->kv_scales[row0 + s]) * scale;
            }
        } else {                                                             /* scores [group, S], 8 rows at a time */
            for (int h = 0; h < group; h++) {
                const float *qh = q + (int64_t)h * D;
                float *p = sc + (int64_t)h * S;
                int s = 0;
                if (L->kv_bits == 32) {
                    const float *K = (const float *)L->kv + row0 * D;
                    for (; s + 8 <= S; s += 8) j->dot.f32_rows8(qh, K + (int64_t)s * D, D, D, p + s);
                    for (; s < S; s++) p[s] = j->dot.f32(qh, K + (int64_t)s * D, D);
                    for (s = 0; s < S; s++) p[s] = p[s] * scale;
                } else {
                    const int8_t *K = (const int8_t *)L->kv + row0 * D;
                    for (; s + 8 <= S; s += 8) j->dot.f32_i8_rows8(qh, K + (int64_t)s * D, D, D, p + s);
                    for (; s < S; s++) p[s] = j->dot.f32_i8(qh, K + (int64_t)s * D, D);
                    for (s = 0; s < S; s++) p[s] = p[s] * L->kv_scales[row0 + s] * scale;
                }
            }
        }
        for (int h = 0; h < group; h++) {                                    /* softmax per head */
            float *p = sc + (int64_t)h * S, m = -INFINITY, sum = 0.0f;
            for (int s = 0; s < S; s++) m = p[s] > m ? p[s] : m;
            j->dot.exp_shift(p, m, S);
            for (int s = 0; s < S; s++) sum += p[s];
            for (int s = 0; s < S; s++) p[s] = p[s] / sum;
        }
        for (int h = 0; h < group; h++) {                                    /* out [group, D] = p V */
            const float *p = sc + (int64_t)h * S;
            if (L->kv_bits == 32)
                j->dot.pv_f32(out + (int64_t)h * D, p, (const float *)L->kv + (plane + row0) * D, S, D);
            else
                j->dot.pv_i8(out + (int64_t)h * D, p, L->kv_scales + plane + row0, (const int8_t *)L->kv + (plane + row0) * D,
                             S, D);
        }
    }
}

/* q, k, v of token t (row t of qkv [T, width]) at position pos: + bias, RoPE on q and k, K / V into the cache */
static void place_token(const mote_attn_layer *L, float *row, int pos) {
    const int D = L->D, nq = L->n_heads * D, nk = L->n_kv * D;
    float *q = row, *k = q + nq, *v = k + nk;
    for (int i = 0; i < nq; i++) q[i] += L->bq[i];                         /* + bias             */
    for (int i = 0; i < nk; i++) k[i] += L->bk[i];
    for (int i = 0; i < nk; i++) v[i] += L->bv[i];
    const float *cos = L->cos + (int64_t)pos * D, *sin = L->sin + (int64_t)pos * D;
    for (int hd = 0; hd < L->n_heads; hd++) rope(q + (int64_t)hd * D, cos, sin, D);
    for (int hd = 0; hd < L->n_kv; hd++) rope(k + (int64_t)hd * D, cos, sin, D);

    const int64_t plane = (int64_t)L->n_kv * L->context;                   /* cache[k|v, kvh, pos] = k|v */
    for (int hd = 0; hd < L->n_kv; hd++) {
        const int64_t at = (int64_t)hd * L->context + pos;
        if (L->kv_bits == 32) {
            memcpy((float *)L->kv + at * D, k + (int64_t)hd * D, sizeof(float) * (size_t)D);
            memcpy((float *)L->kv + (plane + at) * D, v + (int64_t)hd * D, sizeof(float) * (size_t)D);
        } else {
            quantize_head(k + (int64_t)hd * D, D, (int8_t *)L->kv + at * D, &L->kv_scales[at]);
            quantize_head(v + (int64_t)hd * D, D, (int8_t *)L->kv + (plane + at) * D, &L->kv_scales[plane + at]);
        }
    }
}

int mote_attn_chunk(const mote_attn_layer *L, float *x, int T, int start, float *h, int threads) {
    const int H = L->H, D = L->D, nq = L->n_heads * D, nk = L->n_kv * D, width = nq + 2 * nk;
    const int group = L->n_heads / L->n_kv;
    const int64_t items = (int64_t)L->n_kv * T;
    const int nth = threads < 1 ? 1 : threads > items ? (int)items : threads;
    const size_t split = L->nqkv == 1 ? 0 : (size_t)T * nq;              /* unfused: q, k, v before interleaving */
    const size_t per_thread = (size_t)group * ((size_t)start + T) + LANES;   /* scores + scores_kt's overrun */
    const size_t n_floats = (size_t)T * width + (size_t)T * nq + (size_t)nth * per_thread +
                            (size_t)T * H + split;
    const int nblk = T > 1 ? (start + T + LANES - 1) / LANES : 0;         /* prefill: keys transposed once */
    const size_t kt_floats = (size_t)L->n_kv * nblk * D * LANES;          /* [nKV, nblk, D, 8] */
    float *buf = mote_scratch(MOTE_SCR_ATTN, sizeof(float) * (n_floats + kt_floats));   /* this thread's (scratch.h) */
    if (!buf) return -1;
    float *qkv = buf, *att = qkv + (size_t)T * width;                     /* [T, width], [T, nq] */
    float *scores = att + (size_t)T * nq, *o = scores + (size_t)nth * per_thread;   /* o [T, H] */
    float *part = o + (size_t)T * H;                                       /* [T, nq] (unfused only) */
    int rc = 0;

    for (int t = 0; t < T; t++)                                            /* h = rmsnorm(x)  [T, H] */
        mote_rms_norm(x + (int64_t)t * H, L->ln_in, H, L->eps, h + (int64_t)t * H);
    if (L->nqkv == 1) {                                                    /* qkv = h W^T     [T, width] */
        rc |= mote_linear_matmul(&L->qkv[0], h, T, qkv, threads);
    } else {
        const int off[3] = {0, nq, nq + nk}, cols[3] = {nq, nk, nk};
        for (int p = 0; p < 3; p++) {
            rc |= mote_linear_matmul(&L->qkv[p], h, T, part, threads);
            for (int t = 0; t < T; t++)
                memcpy(qkv + (int64_t)t * width + off[p], part + (int64_t)t * cols[p], sizeof(float) * (size_t)cols[p]);
        }
    }
    for (int t = 0; t < T; t++) place_token(L, qkv + (int64_t)t * width, start + t);

    float *kt = nblk ? buf + n_floats : NULL;
    if (kt) keys_t(L, start + T, nblk, kt);
    attn_job job = {L, qkv, att, scores, kt, T, start, nblk, mote_dot_for(mote_get_path())};   /* att = softmax(q K^T) V */
    mote_parallel(nth, attn_task, &job);

    rc |= mote_linear_matmul(&L->o, att, T, o, threads);                   /* x += att W_o^T  [T, H] */
    for (int64_t i = 0; i < (int64_t)T * H; i++) x[i] += o[i];
    for (int t = 0; t < T; t++)                                            /* h = rmsnorm(x)  */
        mote_rms_norm(x + (int64_t)t * H, L->ln_post, H, L->eps, h + (int64_t)t * H);
    mote_scratch_release(MOTE_SCR_ATTN, T == 1);
    return rc ? -1 : 0;
}

int mote_attn_step(const mote_attn_layer *L, float *x, int pos, float *h, int threads) {
    return mote_attn_chunk(L, x, 1, pos, h, threads);
}

/* ---- FFN ---- */
static int is_ternary(const mote_linear *L) { return L->kind == MOTE_LIN_TERN || L->kind == MOTE_LIN_TERN2; }

/* act = silu(h W_gate^T) * (h W_up^T) for T rows, into buf [T, 2 I]: the result is its first T * I floats. */
static int gate_up_rows(const mote_linear *gate_up, int ngu, const float *h, int T, float *buf, int threads) {
    const int fused = ngu == 1;                                            /* [T, 2 I]: row t = [gate_t | up_t] */
    const int I = fused ? gate_up[0].N / 2 : gate_up[0].N, K = gate_up[0].K;
    float *gate = buf, *up = gate + (size_t)T * I;                         /* [T, I], [T, I] unless fused */
    int rc = 0;
    if (fused) {                                                           /* [gate | up] = h W^T  [T, 2 I] */
        rc |= mote_linear_matmul(&gate_up[0], h, T, gate, threads);
    } else if (is_ternary(&gate_up[0]) && is_ternary(&gate_up[1])) {       /* h quantized once per row */
        const size_t xq_bytes = ((size_t)T * K + 64 + 63) & ~(size_t)63;   /* xq [T, K] + 64 | s [T] */
        int8_t *xq = mote_scratch(MOTE_SCR_FFN_Q, xq_bytes + sizeof(float) * (size_t)T);
        if (!xq) return -1;
        float *s = (float *)(void *)(xq + xq_bytes);
        for (int t = 0; t < T; t++) {
            int32_t sum;
            s[t] = mote_quantize_act(h + (int64_t)t * K, K, xq + (int64_t)t * K, &sum);
        }
        for (int p = 0; p < 2; p++) {
            const int tpb = gate_up[p].kind == MOTE_LIN_TERN ? MOTE_TPB_FILE : MOTE_TPB_SLAB2;
            rc |= mote_ternary_matmul(tpb, gate_up[p].w, gate_up[p].gamma, NULL, xq, s, T, K, I, p ? up : gate,
                                      threads);
        }
        mote_scratch_release(MOTE_SCR_FFN_Q, T == 1);
    } else {
        rc |= mote_linear_matmul(&gate_up[0], h, T, gate, threads);
        rc |= mote_linear_matmul(&gate_up[1], h, T, up, threads);
    }
    const mote_dot_fns fn = mote_dot_for(mote_get_path());
    for (int t = 0; t < T; t++) {                                          /* gate = silu(gate) up  [T, I] */
        float *g = gate + (int64_t)t * I;
        const float *u = fused ? gate + (int64_t)t * 2 * I + I : up + (int64_t)t * I;
        if (fused && t) memmove(g, gate + (int64_t)t * 2 * I, sizeof(float) * (size_t)I);   /* rows < t are consumed */
        fn.silu_mul(g, u, I);
    }
    return rc;
}

/* y += coef[t] * (act W_down^T) for T rows; d is [T, H] scratch. */
static int down_rows(const mote_linear *down, const float *act, int T, const float *coef, float *y, float *d,
                     int threads) {
    const int H = down->N;
    int rc = mote_linear_matmul(down, act, T, d, threads);                 /* d = act W_down^T  [T, H] */
    for (int t = 0; t < T; t++)                                            /* y += coef d       */
        for (int i = 0; i < H; i++) y[(int64_t)t * H + i] += d[(int64_t)t * H + i] * coef[t];
    return rc;
}

int mote_ffn_chunk(const mote_linear *gate_up, int ngu, const mote_linear *down, const float *h, int T,
                   const float *coef, float *y, int threads) {
    const int I = down->K, H = down->N;
    const size_t act_floats = (2 * (size_t)T * I + 15) & ~(size_t)15;   /* [T, 2 I] then d [T, H], 64-byte aligned */
    float *buf = mote_scratch(MOTE_SCR_FFN, sizeof(float) * (act_floats + (size_t)T * H));   /* this thread's (scratch.h) */
    if (!buf) return -1;
    int rc = gate_up_rows(gate_up, ngu, h, T, buf, threads);
    if (!rc) rc = down_rows(down, buf, T, coef, y, buf + act_floats, threads);
    mote_scratch_release(MOTE_SCR_FFN, T == 1);
    return rc ? -1 : 0;
}

int mote_ffn_step(const mote_linear *gate_up, int ngu, const mote_linear *down, const float *h, float coef, float *y,
                  int threads) {
    return mote_ffn_chunk(gate_up, ngu, down, h, 1, &coef, y, threads);
}

/* mote_ffn_step's two halves, bit for bit: act [I] = silu(gate h) * up h, then y += coef * down(act). */
int mote_ffn_gate_up(const mote_linear *gate_up, int ngu, const float *h, float *act, int threads) {
    const int I = ngu == 1 ? gate_up[0].N / 2 : gate_up[0].N;
    float *buf = mote_scratch(MOTE_SCR_FFN, sizeof(float) * 2 * (size_t)I);   /* [2 I] */
    if (!buf) return -1;
    int rc = gate_up_rows(gate_up, ngu, h, 1, buf, threads);
    if (!rc) memcpy(act, buf, sizeof(float) * (size_t)I);
    mote_scratch_release(MOTE_SCR_FFN, 1);
    return rc ? -1 : 0;
}

int mote_ffn_down(const mote_linear *down, const float *act, float coef, float *y, int threads) {
    float *d = mote_scratch(MOTE_SCR_FFN, sizeof(float) * (size_t)down->N);   /* [H] */
    if (!d) return -1;
    int rc = down_rows(down, act, 1, &coef, y, d, threads);
    mote_scratch_release(MOTE_SCR_FFN, 1);
    return rc ? -1 : 0;
}
