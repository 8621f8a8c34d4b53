/* MoE routing in C (route.h): router GEMV, softmax, top-k and the coefficient rule, one call. */
#include "route.h"

#include <float.h>
#include <math.h>

#include "layer.h"
#include "scratch.h"

#define PW_BLOCK 128   /* numpy's PW_BLOCKSIZE */

/* numpy's pairwise_sum: below 8 one running sum from 0; up to 128 eight running sums combined as a tree,
 * then the rest one by one; above, two halves (the first a multiple of 8) recursively */
float mote_pairwise_sum(const float *a, int64_t n) {
    if (n < 8) {
        float res = 0.0f;
        for (int64_t i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= PW_BLOCK) {
        float r[8];
        for (int j = 0; j < 8; j++) r[j] = a[j];
        int64_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (int j = 0; j < 8; j++) r[j] += a[i + j];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    int64_t n2 = n / 2;
    n2 -= n2 % 8;
    return mote_pairwise_sum(a, n2) + mote_pairwise_sum(a + n2, n - n2);
}

/* one position: p [E] (the logits, turned into probabilities in place) -> idx [k], weight [k] */
static void route_row(float *p, int E, int k, int64_t *idx, float *weight) {
    float m = p[0];
    for (int e = 1; e < E; e++) m = p[e] > m ? p[e] : m;
    for (int e = 0; e < E; e++) p[e] = expf(p[e] - m);
    const float sum = mote_pairwise_sum(p, E);
    for (int e = 0; e < E; e++) p[e] = p[e] / sum;
    float top[64];   /* k <= 64 (module.c checks) */
    for (int j = 0; j < k; j++) {   /* the j-th largest: the first expert above every other not yet taken */
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int i = 0; i < j; i++) taken |= idx[i] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        idx[j] = best;
        top[j] = p[best];
    }
    if (k == 1) {
        weight[0] = top[0];
        return;
    }
    float s = mote_pairwise_sum(top, k);
    s = s > FLT_EPSILON ? s : FLT_EPSILON;
    for (int j = 0; j < k; j++) weight[j] = top[j] / s;
}

int mote_route(const float *W, const float *h, int T, int E, int H, int k, int64_t *idx, float *weight, int threads) {
    float *logits = mote_scratch(MOTE_SCR_ROUTE, sizeof(float) * (size_t)T * E);   /* [T, E] */
    if (!logits) return -1;
    mote_gemm_f32(W, h, T, E, H, logits, threads);
    for (int t = 0; t < T; t++) route_row(logits + (int64_t)t * E, E, k, idx + (int64_t)t * k, weight + (int64_t)t * k);
    mote_scratch_release(MOTE_SCR_ROUTE, T == 1);
    return 0;
}
