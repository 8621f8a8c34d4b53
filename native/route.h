/* MoE routing of T positions in one call (native/route.c; docs/KERNELS.md section 6): runtime/decoder.py's
 * MoE.router_top_k in C.
 *
 *   logits = h Wg^T                        [T, E]   mote_gemm_f32: the same bits as the matmul_f32 it replaces
 *   p      = exp(l - max l) / sum          [T, E]   expf; the sum in numpy's pairwise order (bit-identical sums)
 *   idx    = the k largest p, in order     [T, k]   ties to the lower expert (numpy's argmax, stable argsort of -p)
 *   weight = p[idx]                        [T, k]   k = 1: the raw probability
 *          = p[idx] / max(sum p[idx], FLT_EPSILON)  k > 1: renormalised over the chosen k
 * p differs from numpy's softmax by an ulp where numpy's exp and expf round differently (docs/KERNELS.md).
 */
#ifndef MOTE_ROUTE_H
#define MOTE_ROUTE_H

#include <stdint.h>

/* W [E, H] float32, h [T, H]; 1 <= k <= E. 0, or -1 on out of memory. */
int mote_route(const float *W, const float *h, int T, int E, int H, int k, int64_t *idx, float *weight, int threads);

/* numpy's float32 add.reduce of n contiguous values (pairwise summation, blocks of 128) */
float mote_pairwise_sum(const float *a, int64_t n);

#endif
