/* A Qwen2 decoder layer in C (native/layer.c; docs/KERNELS.md section 6), for a chunk of T positions
 * (prefill) or one (a decode step, T = 1):
 *
 *   mote_attn_chunk: x += O(attention(rope(q), rope(k), v) over the KV cache), h = rmsnorm(x, ln_post)
 *                    with q, k, v = W_qkv rmsnorm(x, ln_in) + b; K / V of the chunk written to the cache
 *                    first, then causal attention over positions 0 .. start + t for token t
 *   mote_ffn_chunk:  y += coef * down(silu(gate(h)) * up(h))   (a dense / shared FFN or one routed expert)
 *
 * A chunk's attention scores come 8 positions at a time from keys transposed once per call (a different
 * summation order than the step's per-position dot), so a chunk and T steps agree within rounding.
 *
 * The matmuls are the dispatched kernels of ternary.c / intn.c (or an f32 GEMV for the --bits 16 / f32
 * schemes); the rest (norms, RoPE, attention, SwiGLU) is portable C. Every size below is checked by the
 * caller (module.c) before these run.
 */
#ifndef MOTE_LAYER_H
#define MOTE_LAYER_H

#include <stdint.h>

#include "kernels.h"

/* a stored [N, K] weight and how to multiply by it */
/* MOTE_LIN_INTN16: int-N in the MOTE_INTN_IL16 layout (4 or 8 bits, G = 128, rows interleaved by 16; kernels.h) */
typedef enum { MOTE_LIN_F32 = 0, MOTE_LIN_INTN = 1, MOTE_LIN_TERN = 2, MOTE_LIN_TERN2 = 3, MOTE_LIN_INTN16 = 4 } mote_lin_kind;

typedef struct {
    int kind;                        /* mote_lin_kind */
    int N, K;
    const void *w;                   /* f32 [N, K] | int-N packed [N, ng G bits / 8] (IL16: blocks) | ternary packed rows */
    const uint16_t *scales, *zeros;  /* int-N: fp16 [N, ng] each (IL16: [N/16][ng][16]) */
    int bits, G;                     /* int-N */
    float gamma;                     /* ternary */
} mote_linear;

/* y[T, N] = x[T, K] W^T (the kernel of L's kind; int-N and ternary quantize each row of x once);
 * 0, or -1 on out of memory. gemv: T = 1. */
int mote_linear_matmul(const mote_linear *L, const float *x, int T, float *y, int threads);
int mote_linear_gemv(const mote_linear *L, const float *x, float *y, int threads);

/* y[T, N] = x[T, K] W^T with W float32 [N, K]: each output one 8-partial-sum dot product, rows split
 * over the thread pool in L2-sized blocks that every token runs over. gemv: T = 1. */
void mote_gemm_f32(const float *W, const float *x, int T, int N, int K, float *y, int threads);
void mote_gemv_f32(const float *W, const float *x, int N, int K, float *y, int threads);

/* The layer's vector helpers; the AVX2 versions (x86-64 avx2 / avx512 paths) are bit-identical to the
 * scalar ones. f32 / f32_i8: sum_k a[k] b[k] in 8 partial sums (lane j: k = j, j + 8, ...), then the
 * lanes in order; f32_rows8 / f32_i8_rows8: out[r] = f32(a, b + r stride, n) for 8 rows r (decode scores). silu_mul: g[i] = g[i] / (1 + exp(-g[i])) * u[i]. exp_shift: x[i] = exp(x[i] - m).
 * exp is Cephes' expf polynomial (layer.c), within ~1 ulp of expf on [-88.37, 88.37].
 * scores_kt: out[8 b + j] = sum_d q[d] kt[(b D + d) 8 + j] for nb blocks of 8 keys, each in d order.
 * pv_f32 / pv_i8: o[d] = sum_s p[s] (vs[s]) v[s D + d], in s order from 0. */
typedef struct {
    float (*f32)(const float *a, const float *b, int n);
    float (*f32_i8)(const float *a, const int8_t *b, int n);
    void (*f32_rows8)(const float *a, const float *b, int64_t stride, int n, float *out);
    void (*f32_i8_rows8)(const float *a, const int8_t *b, int64_t stride, int n, float *out);
    void (*silu_mul)(float *g, const float *u, int n);
    void (*exp_shift)(float *x, float m, int n);
    void (*scores_kt)(const float *q, const float *kt, int D, int nb, float *out);
    void (*pv_f32)(float *o, const float *p, const float *v, int S, int D);
    void (*pv_i8)(float *o, const float *p, const float *vs, const int8_t *v, int S, int D);
} mote_dot_fns;
float mote_dot_f32_scalar(const float *a, const float *b, int n);
float mote_dot_f32_i8_scalar(const float *a, const int8_t *b, int n);
void mote_dot8_f32_scalar(const float *a, const float *b, int64_t stride, int n, float *out);
void mote_dot8_f32_i8_scalar(const float *a, const int8_t *b, int64_t stride, int n, float *out);
void mote_silu_mul_scalar(float *g, const float *u, int n);
void mote_exp_shift_scalar(float *x, float m, int n);
void mote_scores_kt_scalar(const float *q, const float *kt, int D, int nb, float *out);
void mote_pv_f32_scalar(float *o, const float *p, const float *v, int S, int D);
void mote_pv_i8_scalar(float *o, const float *p, const float *vs, const int8_t *v, int S, int D);
mote_dot_fns mote_dot_for(mote_path p);

/* y[n] = w[n] * (x[n] / sqrt(mean(x^2) + eps)) */
void mote_rms_norm(const float *x, const float *w, int n, float eps, float *y);

typedef struct {
    int H, n_heads, n_kv, D, context;
    float eps;
    const float *ln_in, *ln_post;            /* [H] */
    mote_linear qkv[3];                      /* one fused [(nH + 2 nKV) D, H] weight (nqkv = 1) or q, k, v */
    int nqkv;
    const float *bq, *bk, *bv;               /* [nH D], [nKV D], [nKV D] */
    mote_linear o;                           /* [H, nH D] */
    const float *cos, *sin;                  /* [context, D] RoPE tables (rotate_half layout) */
    int kv_bits;                             /* 32: float cache, 8: int8 values + a float scale per (head, pos) */
    void *kv;                                /* [2 (k, v), nKV, context, D] float32 or int8 */
    float *kv_scales;                        /* kv_bits 8: [2, nKV, context] */
} mote_attn_layer;

/* x[T, H] += attention half of the layer at positions start .. start + T - 1 (their K/V written to the
 * cache); h[T, H] = rmsnorm(x, ln_post). Work split over the threads: the matmuls' rows, and (kv head,
 * token) pairs in attention. 0, or -1 on out of memory. step: T = 1 at pos. */
int mote_attn_chunk(const mote_attn_layer *L, float *x, int T, int start, float *h, int threads);
int mote_attn_step(const mote_attn_layer *L, float *x, int pos, float *h, int threads);

/* y[T, H] += coef[t] * down(silu(gate h_t) * up h_t) per token t: gate_up is one fused [2 I, H] weight
 * (ngu = 1) or gate, up (ngu = 2; ternary ones share one quantization of each row of h). 0, or -1 on out
 * of memory. step: T = 1 with one coef. */
int mote_ffn_chunk(const mote_linear *gate_up, int ngu, const mote_linear *down, const float *h, int T,
                   const float *coef, float *y, int threads);
int mote_ffn_step(const mote_linear *gate_up, int ngu, const mote_linear *down, const float *h, float coef, float *y,
                  int threads);

/* mote_ffn_step's two halves (it runs them back to back): act[I] = silu(gate h) * up h, then
 * y[H] += coef * down(act). A routed expert whose down_proj is still loading runs the first. */
int mote_ffn_gate_up(const mote_linear *gate_up, int ngu, const float *h, float *act, int threads);
int mote_ffn_down(const mote_linear *down, const float *act, float coef, float *y, int threads);

#endif
