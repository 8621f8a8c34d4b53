/* One decode step of a Qwen2 decoder layer, T = 1 (layer.h; docs/KERNELS.md section 6). The same maths as
 * runtime/decoder.py's numpy layer (the reference), in one call per half-layer:
 *
 *   attention half                                   shapes (H hidden, nH / nKV heads, D head dim, S = pos + 1)
 *     h   = rmsnorm(x, ln_in)                        [H]
 *     qkv = W_qkv h + b                              [nH D + 2 nKV D]   one int-N kernel call when fused
 *     q, k = rope(q, pos), rope(k, pos)              [nH, D], [nKV, D]
 *     cache[pos] = k, v                              float32, or int8 with scale = max|.| / 127 per head
 *     att_h = softmax(q_h K^T / sqrt(D)) V           [nH, D]   head h reads kv head h / (nH / nKV)
 *     x  += W_o att                                  [H]
 *     h   = rmsnorm(x, ln_post)                      [H]
 *   FFN (dense, shared expert, or one routed expert)
 *     y  += coef * down(silu(gate h) * up h)         [H]   gate / up: [I] each
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
#endif

mote_dot_fns mote_dot_for(mote_path p) {
#if defined(__x86_64__)
    if (p == MOTE_PATH_AVX2 || p == MOTE_PATH_AVX512)
        return (mote_dot_fns){dot_f32_avx2, dot_f32_i8_avx2, silu_mul_avx2, exp_shift_avx2};
#endif
    return (mote_dot_fns){mote_dot_f32_scalar, mote_dot_f32_i8_scalar, mote_silu_mul_scalar, mote_exp_shift_scalar};
}

#define dot_f32 mote_dot_f32_scalar   /* norms and the f32 GEMV: the portable loop */

void mote_rms_norm(const float *x, const float *w, int n, float eps, float *y) {
    const float ms = dot_f32(x, x, n) / (float)n;
    const float r = sqrtf(ms + eps);
    for (int i = 0; i < n; i++) y[i] = w[i] * (x[i] / r);
}

/* ---- f32 GEMV, rows over the thread pool ---- */
typedef struct {
    const float *W, *x;
    int N, K;
    float *y;
} gemv_job;

static void gemv_task(void *ctx, int i, int n) {
    const gemv_job *j = (const gemv_job *)ctx;
    int n0, n1;
    mote_split_rows(j->N, i, n, 16, &n0, &n1);
    for (int r = n0; r < n1; r++) j->y[r] = dot_f32(j->W + (int64_t)r * j->K, j->x, j->K);
}

void mote_gemv_f32(const float *W, const float *x, int N, int K, float *y, int threads) {
    gemv_job j = {W, x, N, K, y};
    int nth = threads < 1 ? 1 : threads;
    if (nth > (N + 15) / 16) nth = (N + 15) / 16;
    mote_parallel(nth < 1 ? 1 : nth, gemv_task, &j);
}

int mote_linear_gemv(const mote_linear *L, const float *x, float *y, int threads) {
    switch (L->kind) {
        case MOTE_LIN_F32:
            mote_gemv_f32((const float *)L->w, x, L->N, L->K, y, threads);
            return 0;
        case MOTE_LIN_INTN:
            return mote_intn_matmul(L->w, L->scales, L->zeros, L->bits, L->G, x, 1, L->K, L->N, y, threads);
        case MOTE_LIN_TERN:
            return mote_ternary_matmul(MOTE_TPB_FILE, L->w, L->gamma, x, NULL, NULL, 1, L->K, L->N, y, threads);
        case MOTE_LIN_TERN2:
            return mote_ternary_matmul(MOTE_TPB_SLAB2, L->w, L->gamma, x, NULL, NULL, 1, L->K, L->N, y, threads);
    }
    return -1;
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
    const float *q;    /* [nH, D] */
    float *att;        /* [nH, D] */
    float *scores;     /* [nH, S] */
    int S;
    mote_dot_fns dot;
} attn_job;

/* kv heads [g0, g1) of the split, each with its group of query heads (GQA): every cached K and V row is
 * read once for the whole group. Per head h: att_h = softmax(q_h K^T / sqrt(D)) V over S positions. */
static void attn_task(void *ctx, int i, int n) {
    const attn_job *j = (const attn_job *)ctx;
    const mote_attn_layer *L = j->L;
    const int D = L->D, S = j->S, group = L->n_heads / L->n_kv;
    const int g0 = (int)((int64_t)L->n_kv * i / n), g1 = (int)((int64_t)L->n_kv * (i + 1) / n);
    const float scale = (float)(1.0 / sqrt((double)D));
    const int64_t plane = (int64_t)L->n_kv * L->context;   /* positions per k or v plane */
    for (int g = g0; g < g1; g++) {
        const int64_t row0 = (int64_t)g * L->context;     /* position 0 of this kv head in a plane */
        const float *q = j->q + (int64_t)g * group * D;   /* the group's heads [group, D] */
        float *sc = j->scores + (int64_t)g * group * S, *out = j->att + (int64_t)g * group * D;
        for (int s = 0; s < S; s++) {                                        /* scores [group, S] */
            for (int h = 0; h < group; h++) {
                float dot;
                if (L->kv_bits == 32) {
                    dot = j->dot.f32(q + (int64_t)h * D, (const float *)L->kv + (row0 + s) * D, D);
                } else {
                    dot = j->dot.f32_i8(q + (int64_t)h * D, (const int8_t *)L->kv + (row0 + s) * D, D) *
                          L->kv_scales[row0 + s];
                }
                sc[(int64_t)h * S + s] = dot * scale;
            }
        }
        for (int h = 0; h < group; h++) {                                    /* softmax per head */
            float *p = sc + (int64_t)h * S, m = -INFINITY, sum = 0.0f;
            for (int s = 0; s < S; s++) m = p[s] > m ? p[s] : m;
            j->dot.exp_shift(p, m, S);
            for (int s = 0; s < S; s++) sum += p[s];
            for (int s = 0; s < S; s++) p[s] = p[s] / sum;
        }
        for (int d = 0; d < group * D; d++) out[d] = 0.0f;
        for (int s = 0; s < S; s++) {                                        /* out [group, D] = p V */
            if (L->kv_bits == 32) {
                const float *v = (const float *)L->kv + (plane + row0 + s) * D;
                for (int h = 0; h < group; h++) {
                    const float p = sc[(int64_t)h * S + s];
                    float *o = out + (int64_t)h * D;
                    for (int d = 0; d < D; d++) o[d] += p * v[d];
                }
            } else {
                const int8_t *v = (const int8_t *)L->kv + (plane + row0 + s) * D;
                const float vs = L->kv_scales[plane + row0 + s];
                for (int h = 0; h < group; h++) {
                    const float p = sc[(int64_t)h * S + s] * vs;
                    float *o = out + (int64_t)h * D;
                    for (int d = 0; d < D; d++) o[d] += p * (float)v[d];
                }
            }
        }
    }
}

int mote_attn_step(const mote_attn_layer *L, float *x, int pos, float *h, int threads) {
    const int H = L->H, D = L->D, nq = L->n_heads * D, nk = L->n_kv * D, S = pos + 1;
    float *buf = malloc(sizeof(float) * ((size_t)nq + 2 * (size_t)nk + (size_t)nq + (size_t)L->n_heads * S + H));
    if (!buf) return -1;
    float *q = buf, *k = q + nq, *v = k + nk;        /* [nH D], [nKV D], [nKV D]: one fused output */
    float *att = v + nk, *scores = att + nq, *o = scores + (size_t)L->n_heads * S;
    int rc = 0;

    mote_rms_norm(x, L->ln_in, H, L->eps, h);                              /* h = rmsnorm(x)     [H] */
    if (L->nqkv == 1) {                                                    /* qkv = W h          */
        rc |= mote_linear_gemv(&L->qkv[0], h, q, threads);
    } else {
        rc |= mote_linear_gemv(&L->qkv[0], h, q, threads);
        rc |= mote_linear_gemv(&L->qkv[1], h, k, threads);
        rc |= mote_linear_gemv(&L->qkv[2], h, v, threads);
    }
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

    attn_job job = {L, q, att, scores, S, mote_dot_for(mote_get_path())};   /* att = softmax(q K^T) V */
    int nth = threads < 1 ? 1 : threads > L->n_kv ? L->n_kv : threads;
    mote_parallel(nth, attn_task, &job);

    rc |= mote_linear_gemv(&L->o, att, o, threads);                        /* x += W_o att       */
    for (int i = 0; i < H; i++) x[i] += o[i];
    mote_rms_norm(x, L->ln_post, H, L->eps, h);                            /* h = rmsnorm(x)     */
    free(buf);
    return rc ? -1 : 0;
}

/* ---- FFN ---- */
static int is_ternary(const mote_linear *L) { return L->kind == MOTE_LIN_TERN || L->kind == MOTE_LIN_TERN2; }

int mote_ffn_gate_up(const mote_linear *gate_up, int ngu, const float *h, float *act, int threads) {
    const int I = ngu == 1 ? gate_up[0].N / 2 : gate_up[0].N, K = gate_up[0].K;
    float *buf = ngu == 1 ? malloc(sizeof(float) * 2 * (size_t)I) : malloc(sizeof(float) * (size_t)I);
    int8_t *xq = NULL;
    if (!buf) return -1;
    float *gate = ngu == 1 ? buf : act, *up = ngu == 1 ? buf + I : buf;
    int rc = 0;
    if (ngu == 1) {                                                        /* [gate | up] = W h  [2 I] */
        rc |= mote_linear_gemv(&gate_up[0], h, buf, threads);
    } else if (is_ternary(&gate_up[0]) && is_ternary(&gate_up[1])) {       /* h quantized once */
        xq = malloc((size_t)K + 64);
        if (!xq) {
            free(buf);
            return -1;
        }
        int32_t sum;
        float s = mote_quantize_act(h, K, xq, &sum);
        for (int p = 0; p < 2; p++) {
            const int tpb = gate_up[p].kind == MOTE_LIN_TERN ? MOTE_TPB_FILE : MOTE_TPB_SLAB2;
            rc |= mote_ternary_matmul(tpb, gate_up[p].w, gate_up[p].gamma, NULL, xq, &s, 1, K, I, p ? up : gate,
                                      threads);
        }
    } else {
        rc |= mote_linear_gemv(&gate_up[0], h, gate, threads);
        rc |= mote_linear_gemv(&gate_up[1], h, up, threads);
    }
    mote_dot_for(mote_get_path()).silu_mul(gate, up, I);                  /* silu(gate) up      [I] */
    if (ngu == 1) memcpy(act, gate, sizeof(float) * (size_t)I);
    free(buf);
    free(xq);
    return rc ? -1 : 0;
}

int mote_ffn_down(const mote_linear *down, const float *act, float coef, float *y, int threads) {
    const int H = down->N;
    float *d = malloc(sizeof(float) * (size_t)H);
    if (!d) return -1;
    int rc = mote_linear_gemv(down, act, d, threads);                      /* d = down(act)      [H] */
    for (int i = 0; i < H; i++) y[i] += d[i] * coef;                       /* y += coef d        */
    free(d);
    return rc ? -1 : 0;
}

int mote_ffn_step(const mote_linear *gate_up, int ngu, const mote_linear *down, const float *h, float coef, float *y,
                  int threads) {
    float *act = malloc(sizeof(float) * (size_t)down->K);                 /* silu(gate h) up h  [I] */
    if (!act) return -1;
    int rc = mote_ffn_gate_up(gate_up, ngu, h, act, threads);
    rc |= mote_ffn_down(down, act, coef, y, threads);
    free(act);
    return rc ? -1 : 0;
}
