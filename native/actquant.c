/* BitLinear's int8 activation quantization, bit-exact with mote_edge.quant.ternary:
 *   s = 127 / max(max|x|, 1e-5)  (float32);  xq = clip(rint(x * s), -128, 127)  (half to even)
 * ISO C11 keeps float expressions uncontracted, so x * s rounds exactly as numpy's float32 does;
 * the AVX-512 version rounds with vrndscaleps (nearest even) and is bit-identical; the NEON one
 * (actquant_neon.c, both aarch64 paths) with frintn. */
#include <math.h>

#include "kernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

float mote_act_scale(float amax) {
    if (!(amax >= 1e-5f)) amax = 1e-5f;
    return 127.0f / amax;
}

/* x[n] -> xq[n]; the max ignores NaN (a > amax is false), and a NaN product converts to 0 */
float mote_quantize_act_scalar(const float *x, int n, int8_t *xq, int32_t *sum) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    float s = mote_act_scale(amax);
    int32_t acc = 0;
    for (int i = 0; i < n; i++) xq[i] = mote_quantize_one(x[i], s, &acc);
    *sum = acc;
    return s;
}

#if defined(__x86_64__)
__attribute__((target("avx512f,avx512bw,avx512vl"))) static float quantize_avx512(const float *x, int n, int8_t *xq,
                                                                        int32_t *sum) {
    __m512 vmax = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_maskz_loadu_ps(m, x + i)));
    }
    float s = mote_act_scale(_mm512_reduce_max_ps(vmax));
    const __m512 vs = _mm512_set1_ps(s), lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    __m512i acc = _mm512_setzero_si512();
    for (int i = 0; i < n; i += 16) {
        __mmask16 m = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512i v = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(r, lo), hi));
        acc = _mm512_add_epi32(acc, v);
        _mm_mask_storeu_epi8(xq + i, m, _mm512_cvtepi32_epi8(v));
    }
    *sum = _mm512_reduce_add_epi32(acc);
    return s;
}

#endif

float mote_quantize_act(const float *x, int n, int8_t *xq, int32_t *sum) {
    switch (mote_get_path()) {
#if defined(__x86_64__)
        case MOTE_PATH_AVX512: return quantize_avx512(x, n, xq, sum);
#endif
#if defined(__aarch64__)
        case MOTE_PATH_NEON:
        case MOTE_PATH_DOTPROD: return mote_quantize_act_neon(x, n, xq, sum);
#endif
        default: return mote_quantize_act_scalar(x, n, xq, sum);
    }
}
