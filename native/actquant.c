/* BitLinear's int8 activation quantization, bit-exact with mote_edge.quant.ternary:
 *   s = 127 / max(max|x|, 1e-5)  (float32);  xq = clip(rint(x * s), -128, 127)  (half to even)
 * ISO C11 keeps float expressions uncontracted, so x * s rounds exactly as numpy's float32 does. */
#include <math.h>

#include "kernels.h"

float mote_quantize_act(const float *x, int n, int8_t *xq, int32_t *sum) {
    float amax = 0.0f;
    for (int i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        amax = a > amax ? a : amax;
    }
    if (!(amax >= 1e-5f)) amax = 1e-5f;
    float s = 127.0f / amax;
    int32_t acc = 0;
    for (int i = 0; i < n; i++) {
        float r = nearbyintf(x[i] * s);
        int v = r > 127.0f ? 127 : r < -128.0f ? -128 : (int)r;
        xq[i] = (int8_t)v;
        acc += v;
    }
    *sum = acc;
    return s;
}
