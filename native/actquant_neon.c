/* BitLinear's int8 activation quantization with NEON (both aarch64 paths; ARMv8.0 only), bit-exact
 * with mote_quantize_act_scalar (actquant.c):
 *   amax: per lane a > m ? a : m (a compare and a select, so a NaN never wins, as in the scalar loop;
 *         FMAX would propagate it); the lanes hold no NaN, so their max is order-free;
 *   xq:   frintn (nearest, ties to even = nearbyintf in the default rounding mode) of x * s (one
 *         uncontracted FMUL, as ISO C evaluates the scalar x * s), clamped to [-128, 127]; fcvtzs
 *         turns a NaN into 0 like the scalar (int) conversion on aarch64;
 *   sum:  int32 lanes, exact.
 * x [n] float32, xq [n] int8; tails of n % 16 go through the scalar statement (mote_quantize_one). */
#include "kernels.h"

#if defined(__aarch64__)
#include <arm_neon.h>
#include <math.h>

/* 4 floats -> 4 int32 in [-128, 127] */
static inline int32x4_t quantize4(float32x4_t v, float32x4_t vs) {
    const float32x4_t lo = vdupq_n_f32(-128.0f), hi = vdupq_n_f32(127.0f);
    float32x4_t r = vrndnq_f32(vmulq_f32(v, vs));
    return vcvtq_s32_f32(vminq_f32(vmaxq_f32(r, lo), hi));
}

float mote_quantize_act_neon(const float *x, int n, int8_t *xq, int32_t *sum) {
    float32x4_t m0 = vdupq_n_f32(0.0f), m1 = m0, m2 = m0, m3 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        float32x4_t a0 = vabsq_f32(vld1q_f32(x + i)), a1 = vabsq_f32(vld1q_f32(x + i + 4));
        float32x4_t a2 = vabsq_f32(vld1q_f32(x + i + 8)), a3 = vabsq_f32(vld1q_f32(x + i + 12));
        m0 = vbslq_f32(vcgtq_f32(a0, m0), a0, m0);
        m1 = vbslq_f32(vcgtq_f32(a1, m1), a1, m1);
        m2 = vbslq_f32(vcgtq_f32(a2, m2), a2, m2);
        m3 = vbslq_f32(vcgtq_f32(a3, m3), a3, m3);
    }
    float amax = vmaxvq_f32(vmaxq_f32(vmaxq_f32(m0, m1), vmaxq_f32(m2, m3)));
    for (; i < n; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    const float s = mote_act_scale(amax);
    const float32x4_t vs = vdupq_n_f32(s);
    int32x4_t acc = vdupq_n_s32(0);
    for (i = 0; i + 16 <= n; i += 16) {
        int32x4_t q0 = quantize4(vld1q_f32(x + i), vs), q1 = quantize4(vld1q_f32(x + i + 4), vs);
        int32x4_t q2 = quantize4(vld1q_f32(x + i + 8), vs), q3 = quantize4(vld1q_f32(x + i + 12), vs);
        acc = vaddq_s32(vaddq_s32(acc, vaddq_s32(q0, q1)), vaddq_s32(q2, q3));
        int16x8_t h0 = vcombine_s16(vmovn_s32(q0), vmovn_s32(q1)), h1 = vcombine_s16(vmovn_s32(q2), vmovn_s32(q3));
        vst1q_s8(xq + i, vcombine_s8(vmovn_s16(h0), vmovn_s16(h1)));
    }
    int32_t total = vaddvq_s32(acc);
    for (; i < n; i++) xq[i] = mote_quantize_one(x[i], s, &total);
    *sum = total;
    return s;
}
#endif
