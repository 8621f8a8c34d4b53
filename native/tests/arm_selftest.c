/* Bit-exact self test of every SIMD kernel path against the scalar path, in C (no Python).
 *
 * Calls each kernel through the dispatch layer (mote_set_path, then the same entry points module.c
 * uses): the int8 activation quantizer, the ternary matmul in both packed layouts (file, 2-bit slab),
 * the file -> slab re-lay and the int-N matmul (2/3/4/8 bits, G = 32/64/128), on random and edge-case
 * inputs (every byte value, odd K and N, every tail length, GEMV / T = 2 / GEMM token counts, 1 and 2
 * threads, zero, huge, tiny, infinite and NaN activations, pre-quantized activations with -128), and
 * compares each path's output with the scalar path's byte for byte. Also the decode-step layer's dot
 * products (native/layer.c) and its attention half with float32 weights, float and int8 KV caches.
 *
 * aarch64 (make test-arm, under qemu-aarch64-static): checks neon and, where the CPU has it, dotprod.
 * x86-64 (make test-selftest): checks avx2 / avx512, whichever the CPU has. The x86 int-N paths sum the
 * per-group products in another float order (docs/KERNELS.md), so there int-N is checked only where every
 * float step is exact (scales 1, integer activations with max |x| = 127 per group, K <= 3 G), and the
 * inf / NaN activations are left out (x86 scalar and AVX-512 convert a NaN product differently).
 *
 *   arm_selftest [--expect-best PATH] [--expect-current PATH]
 * --expect-best: fail unless PATH is the best path this CPU supports (proves the run-time detection);
 * --expect-current: fail unless PATH is the path in use before any set (proves MOTE_KERNEL_PATH).
 * Prints the paths that ran; exits 1 on any mismatch. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "kernels.h"
#include "layer.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) {   /* xorshift64* */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}
static float rnd_unit(void) { return (float)(rnd() >> 40) / (float)(1 << 24); }             /* [0, 1) */
static float rnd_normal(void) { return (rnd_unit() + rnd_unit() + rnd_unit() - 1.5f) * 2.0f; }  /* ~N(0, 1) */

static mote_path simd[8];   /* the SIMD paths this CPU supports (not scalar) */
static int nsimd, checks, failures;

/* ---- inputs ---- */
enum { X_NORMAL, X_SCALED, X_TINY, X_ZERO, X_HUGE, X_SPECIAL, X_CONST, X_KINDS };
static const char *xkind_name[X_KINDS] = {"normal", "scaled", "tiny", "zero", "huge", "inf/nan", "const"};

static void fill_x(float *x, size_t n, int kind) {
    const float scale = powf(10.0f, rnd_unit() * 6.0f - 3.0f);
    for (size_t i = 0; i < n; i++) {
        switch (kind) {
            case X_NORMAL: x[i] = rnd_normal(); break;
            case X_SCALED: x[i] = rnd_normal() * scale; break;
            case X_TINY: x[i] = rnd_normal() * 1e-7f; break;   /* max|x| < 1e-5: the scale's floor */
            case X_ZERO: x[i] = (rnd() & 1) ? 0.0f : -0.0f; break;
            case X_HUGE: x[i] = (rnd() & 1) ? 3e38f : -3e38f; break;
            case X_SPECIAL: {
                const uint64_t r = rnd() % 16;
                x[i] = r == 0 ? INFINITY : r == 1 ? -INFINITY : r == 2 ? NAN : rnd_normal();
                break;
            }
            default: x[i] = 127.0f / 3.0f; break;   /* ties and equal values */
        }
    }
    if (kind == X_SCALED && n > 2) x[rnd() % n] = 0.5f / 127.0f * 255.0f;   /* rounding ties after scaling */
}

enum { W_RANDOM, W_ZERO, W_FF, W_KINDS };
static void fill_bytes(uint8_t *w, size_t n, int kind) {
    for (size_t i = 0; i < n; i++) w[i] = kind == W_ZERO ? 0 : kind == W_FF ? 0xFF : (uint8_t)rnd();
}

/* a positive normal fp16 in [2^-14, 2) */
static uint16_t rnd_half(void) { return (uint16_t)(((1 + rnd() % 15) << 10) | (rnd() & 0x3FF)); }
/* the integer v (0..255) as fp16 bits (exact) */
static uint16_t half_of_int(int v) {
    if (v == 0) return 0;
    int e = 0;
    while ((v >> e) > 1) e++;
    return (uint16_t)(((e + 15) << 10) | (((unsigned)v << (10 - e)) & 0x3FF));
}

/* ---- comparison ---- */
static void compare(const void *ref, const void *got, size_t bytes, mote_path p, const char *what) {
    checks++;
    if (memcmp(ref, got, bytes) == 0) return;
    failures++;
    size_t i = 0;
    while (((const uint8_t *)ref)[i] == ((const uint8_t *)got)[i]) i++;
    if (failures <= 20) printf("MISMATCH path %s: %s (first differing byte %zu of %zu)\n", mote_path_name(p), what, i, bytes);
}

static void use(mote_path p) {
    if (mote_set_path(p) != 0) {
        printf("cannot set path %s\n", mote_path_name(p));
        exit(2);
    }
}

/* ---- activation quantizer ---- */
static void check_actquant(int n, int kind) {
    float *x = malloc(sizeof(float) * (size_t)(n + 1));
    int8_t *ref = malloc((size_t)n + 1), *got = malloc((size_t)n + 1);
    fill_x(x, (size_t)n, kind);
    int32_t sref, sgot;
    use(MOTE_PATH_SCALAR);
    const float s_ref = mote_quantize_act(x, n, ref, &sref);
    char what[96];
    for (int i = 0; i < nsimd; i++) {
        use(simd[i]);
        const float s = mote_quantize_act(x, n, got, &sgot);
        snprintf(what, sizeof what, "actquant n=%d x=%s", n, xkind_name[kind]);
        compare(ref, got, (size_t)n, simd[i], what);
        compare(&sref, &sgot, sizeof sref, simd[i], what);
        compare(&s_ref, &s, sizeof s, simd[i], what);
    }
    free(x), free(ref), free(got);
}

/* ---- ternary ---- */
static void check_ternary(int tpb, int T, int K, int N, int xkind, int wkind, int threads, int prequant) {
    const int64_t rb = (K + tpb - 1) / tpb;
    uint8_t *w = malloc((size_t)(N * rb) + 1);
    float *x = malloc(sizeof(float) * (size_t)(T * K + 1)), *s = malloc(sizeof(float) * (size_t)(T + 1));
    int8_t *xq = malloc((size_t)(T * K) + 1);
    float *ref = malloc(sizeof(float) * (size_t)(T * N + 1)), *got = malloc(sizeof(float) * (size_t)(T * N + 1));
    fill_bytes(w, (size_t)(N * rb), wkind);
    fill_x(x, (size_t)T * K, xkind);
    for (int64_t i = 0; i < (int64_t)T * K; i++) xq[i] = (int8_t)rnd();   /* -128 included */
    for (int t = 0; t < T; t++) s[t] = 0.5f + rnd_unit() * 100.0f;
    const float gamma = 0.37f + rnd_unit();
    use(MOTE_PATH_SCALAR);
    if (mote_ternary_matmul(tpb, w, gamma, prequant ? NULL : x, xq, s, T, K, N, ref, 1) != 0) exit(3);
    char what[128];
    snprintf(what, sizeof what, "ternary %s T=%d K=%d N=%d x=%s w=%d threads=%d%s", tpb == MOTE_TPB_FILE ? "file" : "slab2",
             T, K, N, prequant ? "int8" : xkind_name[xkind], wkind, threads, prequant ? " (pre-quantized)" : "");
    for (int i = 0; i < nsimd; i++) {
        use(simd[i]);
        memset(got, 0xA5, sizeof(float) * (size_t)(T * N));
        if (mote_ternary_matmul(tpb, w, gamma, prequant ? NULL : x, xq, s, T, K, N, got, threads) != 0) exit(3);
        compare(ref, got, sizeof(float) * (size_t)(T * N), simd[i], what);
    }
    free(w), free(x), free(s), free(xq), free(ref), free(got);
}

static void check_relayout(int N, int K) {
    const int64_t rb5 = (K + 4) / 5, rb4 = (K + 3) / 4;
    uint8_t *src = malloc((size_t)(N * rb5) + 1), *ref = malloc((size_t)(N * rb4) + 1), *got = malloc((size_t)(N * rb4) + 1);
    fill_bytes(src, (size_t)(N * rb5), W_RANDOM);
    use(MOTE_PATH_SCALAR);
    if (mote_ternary_file_to_slab2(src, N, K, ref) != 0) exit(3);
    char what[64];
    snprintf(what, sizeof what, "file_to_slab2 N=%d K=%d", N, K);
    for (int i = 0; i < nsimd; i++) {
        use(simd[i]);
        if (mote_ternary_file_to_slab2(src, N, K, got) != 0) exit(3);
        compare(ref, got, (size_t)(N * rb4), simd[i], what);
    }
    free(src), free(ref), free(got);
}

/* ---- int-N ---- */
#if defined(__aarch64__)
static const int intn_float_exact_only = 0;   /* the aarch64 paths keep the scalar float order */
#else
static const int intn_float_exact_only = 1;
#endif

static void check_intn(int bits, int G, int T, int K, int N, int xkind, int wkind, int threads) {
    if (intn_float_exact_only && (K > 3 * G || xkind != X_NORMAL)) return;
    const int ng = (K + G - 1) / G;
    const int64_t rb = (int64_t)ng * G * bits / 8;
    uint8_t *w = malloc((size_t)(N * rb) + 1);
    uint16_t *sc = malloc(sizeof(uint16_t) * (size_t)(N * ng + 1)), *zp = malloc(sizeof(uint16_t) * (size_t)(N * ng + 1));
    float *x = malloc(sizeof(float) * (size_t)(T * K + 1));
    float *ref = malloc(sizeof(float) * (size_t)(T * N + 1)), *got = malloc(sizeof(float) * (size_t)(T * N + 1));
    fill_bytes(w, (size_t)(N * rb), wkind);
    for (int i = 0; i < N * ng; i++) {
        sc[i] = (i % 7 == 0) ? 0x3C00 : rnd_half();   /* some 1.0 */
        zp[i] = half_of_int((int)(rnd() % (1u << bits)));
    }
    fill_x(x, (size_t)T * K, xkind);
    if (intn_float_exact_only) {   /* s = 1 per group, scale 1: every float step exact */
        for (int i = 0; i < N * ng; i++) sc[i] = 0x3C00;
        for (int64_t i = 0; i < (int64_t)T * K; i++) x[i] = (float)((int)(rnd() % 255) - 127);
        for (int t = 0; t < T; t++)
            for (int k = 0; k < K; k += G) x[(int64_t)t * K + k] = 127.0f;
    }
    use(MOTE_PATH_SCALAR);
    if (mote_intn_matmul(w, sc, zp, bits, G, x, T, K, N, ref, 1) != 0) exit(3);
    char what[128];
    snprintf(what, sizeof what, "intn bits=%d G=%d T=%d K=%d N=%d x=%s w=%d threads=%d", bits, G, T, K, N,
             xkind_name[xkind], wkind, threads);
    for (int i = 0; i < nsimd; i++) {
        use(simd[i]);
        memset(got, 0xA5, sizeof(float) * (size_t)(T * N));
        if (mote_intn_matmul(w, sc, zp, bits, G, x, T, K, N, got, threads) != 0) exit(3);
        compare(ref, got, sizeof(float) * (size_t)(T * N), simd[i], what);
    }
    free(w), free(sc), free(zp), free(x), free(ref), free(got);
}

/* int4 / int8, G = 128 in the 16-row interleaved layout (kernels.h MOTE_INTN_IL16): every path gives what it gives on
 * the rows layout, byte for byte (the AVX-512 GEMM, T >= MOTE_INTN_IL_MIN, reads the layout natively with the rows
 * layout's per-(row, token) operations; the paths without an IL16 kernel de-interleave 16 rows into scratch), except
 * the AVX-512 GEMV (T = 1), which reads the layout natively and sums each row's groups in the scalar order:
 * there the scalar path's rows-layout result, byte for byte, for any floats. */
static void check_intn_il16(int bits, int T, int K, int N, int xkind, int threads) {
    const int ng = (K + 127) / 128;
    const int64_t rb = (int64_t)ng * 16 * bits, nc = rb / 64;   /* nc 64-byte chunks a row */
    uint8_t *w = malloc((size_t)(N * rb)), *wi = malloc((size_t)(N * rb));
    uint16_t *sc = malloc(sizeof(uint16_t) * (size_t)(N * ng)), *zp = malloc(sizeof(uint16_t) * (size_t)(N * ng));
    uint16_t *sci = malloc(sizeof(uint16_t) * (size_t)(N * ng)), *zpi = malloc(sizeof(uint16_t) * (size_t)(N * ng));
    float *x = malloc(sizeof(float) * (size_t)(T * K + 1));
    float *ref = malloc(sizeof(float) * (size_t)(T * N)), *got = malloc(sizeof(float) * (size_t)(T * N));
    float *sref = malloc(sizeof(float) * (size_t)(T * N));
    fill_bytes(w, (size_t)(N * rb), W_RANDOM);
    for (int i = 0; i < N * ng; i++) {
        sc[i] = (i % 7 == 0) ? 0x3C00 : rnd_half();
        zp[i] = half_of_int((int)(rnd() % (1u << bits)));
    }
    for (int b = 0; b < N / 16; b++)   /* [N/16][nc][16 lines][16 rows][4 bytes], scales / zeros [N/16][ng][16] */
        for (int r = 0; r < 16; r++) {
            for (int64_t c = 0; c < nc; c++)
                for (int j = 0; j < 16; j++)
                    memcpy(wi + (((int64_t)b * nc + c) * 16 + j) * 64 + 4 * r, w + (int64_t)(16 * b + r) * rb + c * 64 + 4 * j, 4);
            for (int g = 0; g < ng; g++) {
                sci[((int64_t)b * ng + g) * 16 + r] = sc[(int64_t)(16 * b + r) * ng + g];
                zpi[((int64_t)b * ng + g) * 16 + r] = zp[(int64_t)(16 * b + r) * ng + g];
            }
        }
    fill_x(x, (size_t)T * K, xkind);
    char what[128];
    snprintf(what, sizeof what, "intn il16 bits=%d T=%d K=%d N=%d x=%s threads=%d", bits, T, K, N, xkind_name[xkind], threads);
    use(MOTE_PATH_SCALAR);
    if (mote_intn_matmul(w, sc, zp, bits, 128, x, T, K, N, sref, threads) != 0) exit(3);
    for (int i = -1; i < nsimd; i++) {
        const mote_path p = i < 0 ? MOTE_PATH_SCALAR : simd[i];
        use(p);
        if (mote_intn_matmul(w, sc, zp, bits, 128, x, T, K, N, ref, threads) != 0) exit(3);
        memset(got, 0xA5, sizeof(float) * (size_t)(T * N));
        if (mote_intn_matmul_layout(wi, sci, zpi, bits, 128, MOTE_INTN_IL16, x, T, K, N, got, threads) != 0) exit(3);
        compare(p == MOTE_PATH_AVX512 && T == 1 ? sref : ref, got, sizeof(float) * (size_t)(T * N), p, what);
    }
    /* what the layout does not allow: -1, nothing written */
    if (mote_intn_matmul_layout(wi, sci, zpi, bits, 64, MOTE_INTN_IL16, x, T, K, N, got, threads) != -1 ||
        mote_intn_matmul_layout(wi, sci, zpi, 2, 128, MOTE_INTN_IL16, x, T, K, N, got, threads) != -1 ||
        mote_intn_matmul_layout(wi, sci, zpi, 3, 128, MOTE_INTN_IL16, x, T, K, N, got, threads) != -1 ||
        (N > 16 && mote_intn_matmul_layout(wi, sci, zpi, bits, 128, MOTE_INTN_IL16, x, T, K, N - 1, got, threads) != -1) ||
        mote_intn_matmul_layout(wi, sci, zpi, bits, 128, 2, x, T, K, N, got, threads) != -1) {
        printf("FAIL %s: an invalid layout call did not return -1\n", what);
        failures++;
    }
    checks++;
    free(w), free(wi), free(sc), free(zp), free(sci), free(zpi), free(x), free(ref), free(got), free(sref);
}

/* ---- decode-step layer (layer.c): dot products, and the attention half with f32 weights ---- */
static void check_dots(int n, int kind) {
    float *a = malloc(sizeof(float) * (size_t)(n + 1)), *b = malloc(sizeof(float) * (size_t)(n + 1));
    int8_t *b8 = malloc((size_t)n + 1);
    fill_x(a, (size_t)n, kind);
    fill_x(b, (size_t)n, X_NORMAL);
    fill_bytes((uint8_t *)b8, (size_t)n, W_RANDOM);
    const mote_dot_fns ref = mote_dot_for(MOTE_PATH_SCALAR);
    const float r32 = ref.f32(a, b, n), r8 = ref.f32_i8(a, b8, n);
    float *silu_ref = malloc(sizeof(float) * (size_t)(n + 1)), *silu = malloc(sizeof(float) * (size_t)(n + 1));
    float *exp_ref = malloc(sizeof(float) * (size_t)(n + 1)), *ex = malloc(sizeof(float) * (size_t)(n + 1));
    float *sa = malloc(sizeof(float) * (size_t)(n + 1));
    for (int k = 0; k < n; k++) sa[k] = a[k] * 8.0f;   /* silu / exp arguments over +-~40 (and the huge / special kinds) */
    memcpy(silu_ref, sa, sizeof(float) * (size_t)n);
    memcpy(exp_ref, sa, sizeof(float) * (size_t)n);
    ref.silu_mul(silu_ref, b, n);
    ref.exp_shift(exp_ref, 3.0f, n);
    char what[96];
    for (int i = 0; i < nsimd; i++) {
        const mote_dot_fns fn = mote_dot_for(simd[i]);
        const float g32 = fn.f32(a, b, n), g8 = fn.f32_i8(a, b8, n);
        snprintf(what, sizeof what, "dot n=%d x=%s", n, xkind_name[kind]);
        compare(&r32, &g32, sizeof r32, simd[i], what);
        compare(&r8, &g8, sizeof r8, simd[i], what);
        memcpy(silu, sa, sizeof(float) * (size_t)n);
        memcpy(ex, sa, sizeof(float) * (size_t)n);
        fn.silu_mul(silu, b, n);
        fn.exp_shift(ex, 3.0f, n);
        snprintf(what, sizeof what, "silu_mul / exp n=%d x=%s", n, xkind_name[kind]);
        compare(silu_ref, silu, sizeof(float) * (size_t)n, simd[i], what);
        compare(exp_ref, ex, sizeof(float) * (size_t)n, simd[i], what);
    }
    free(silu_ref), free(silu), free(exp_ref), free(ex), free(sa);

    /* 8 rows at once (decode scores): rows of n at a stride of n + 3 */
    const int64_t st = n + 3;
    float *rows = malloc(sizeof(float) * (size_t)(8 * st + 1)), rw_ref[2][8], rw[2][8];
    int8_t *rows8 = malloc((size_t)(8 * st + 1));
    fill_x(rows, (size_t)(8 * st), X_NORMAL);
    fill_bytes((uint8_t *)rows8, (size_t)(8 * st), W_RANDOM);
    ref.f32_rows8(a, rows, st, n, rw_ref[0]);
    ref.f32_i8_rows8(a, rows8, st, n, rw_ref[1]);
    for (int r = 0; r < 8; r++) {   /* the scalar rows8 is 8 scalar dots */
        const float d32 = ref.f32(a, rows + r * st, n), d8 = ref.f32_i8(a, rows8 + r * st, n);
        if (memcmp(&d32, &rw_ref[0][r], sizeof d32) || memcmp(&d8, &rw_ref[1][r], sizeof d8)) exit(4);
    }
    for (int i = 0; i < nsimd; i++) {
        const mote_dot_fns fn = mote_dot_for(simd[i]);
        fn.f32_rows8(a, rows, st, n, rw[0]);
        fn.f32_i8_rows8(a, rows8, st, n, rw[1]);
        snprintf(what, sizeof what, "dot 8 rows n=%d x=%s", n, xkind_name[kind]);
        compare(rw_ref, rw, sizeof rw, simd[i], what);
    }
    free(rows), free(rows8);

    /* attention's inner loops: q [n] against 3 transposed key blocks [3, n, 8]; p [n] over n value rows of 43 */
    enum { NB = 3, PD = 43 };
    float *kt = malloc(sizeof(float) * ((size_t)NB * n * 8 + 1)), *v = malloc(sizeof(float) * ((size_t)n * PD + 1));
    int8_t *v8 = malloc((size_t)n * PD + 1);
    fill_x(kt, (size_t)NB * n * 8, X_NORMAL);
    fill_x(v, (size_t)n * PD, kind);
    fill_bytes((uint8_t *)v8, (size_t)n * PD, W_RANDOM);
    float sk_ref[NB * 8], sk[NB * 8], pv_ref[2][PD], pv[2][PD];
    ref.scores_kt(a, kt, n, NB, sk_ref);
    ref.pv_f32(pv_ref[0], a, v, n, PD);
    ref.pv_i8(pv_ref[1], a, b, v8, n, PD);
    for (int i = 0; i < nsimd; i++) {
        const mote_dot_fns fn = mote_dot_for(simd[i]);
        fn.scores_kt(a, kt, n, NB, sk);
        fn.pv_f32(pv[0], a, v, n, PD);
        fn.pv_i8(pv[1], a, b, v8, n, PD);
        snprintf(what, sizeof what, "scores_kt / pv n=%d x=%s", n, xkind_name[kind]);
        compare(sk_ref, sk, sizeof sk, simd[i], what);
        compare(pv_ref, pv, sizeof pv, simd[i], what);
    }
    free(kt), free(v), free(v8), free(a), free(b), free(b8);
}

static float *random_floats(size_t n, float scale) {
    float *x = malloc(sizeof(float) * (n + 1));
    fill_x(x, n, X_NORMAL);
    for (size_t i = 0; i < n; i++) x[i] *= scale;
    return x;
}

static void check_attn(int H, int nH, int nKV, int D, int context, int pos, int T, int kv_bits, int threads) {
    const int nq = nH * D, nk = nKV * D;
    const size_t cells = 2 * (size_t)nKV * context;
    float *wqkv = random_floats((size_t)(nq + 2 * nk) * H, 0.1f), *wo = random_floats((size_t)H * nq, 0.1f);
    float *ln = random_floats((size_t)H, 1.0f), *b = random_floats((size_t)(nq + 2 * nk), 0.1f);
    float *cs = random_floats((size_t)context * D, 1.0f), *sn = random_floats((size_t)context * D, 1.0f);
    float *x0 = random_floats((size_t)T * H, 1.0f), *kv0 = random_floats(cells * D, 1.0f);
    float *sc0 = random_floats(cells, 0.01f);
    int8_t *kv8 = malloc(cells * D + 1);
    fill_bytes((uint8_t *)kv8, cells * D, W_RANDOM);
    mote_attn_layer L = {H, nH, nKV, D, context, 1e-6f, ln, ln, {{0}}, 1, b, b + nq, b + nq + nk, {0}, cs, sn,
                         kv_bits, NULL, NULL};
    L.qkv[0] = (mote_linear){MOTE_LIN_F32, nq + 2 * nk, H, wqkv, NULL, NULL, 0, 0, 0.0f};
    L.o = (mote_linear){MOTE_LIN_F32, H, nq, wo, NULL, NULL, 0, 0, 0.0f};
    const size_t kv_bytes = cells * D * (kv_bits == 32 ? 4 : 1);
    float *out[2][3];   /* [ref | got][x, h, kv scales]; the cache itself below */
    void *kv_out[2];
    for (int r = 0; r < 2; r++) {
        out[r][0] = malloc(sizeof(float) * T * H), out[r][1] = malloc(sizeof(float) * T * H);
        out[r][2] = malloc(sizeof(float) * cells);
        kv_out[r] = malloc(kv_bytes);
    }
    char what[96];
    snprintf(what, sizeof what, "attn H=%d heads=%d/%d D=%d pos=%d T=%d kv=%d threads=%d", H, nH, nKV, D, pos, T,
             kv_bits, threads);
    for (int i = -1; i < nsimd; i++) {
        const int r = i < 0 ? 0 : 1;
        use(i < 0 ? MOTE_PATH_SCALAR : simd[i]);
        memcpy(out[r][0], x0, sizeof(float) * T * H);
        memcpy(out[r][2], sc0, sizeof(float) * cells);
        memcpy(kv_out[r], kv_bits == 32 ? (void *)kv0 : (void *)kv8, kv_bytes);
        L.kv = kv_out[r];
        L.kv_scales = kv_bits == 32 ? NULL : out[r][2];
        if ((T == 1 ? mote_attn_step(&L, out[r][0], pos, out[r][1], threads)
                    : mote_attn_chunk(&L, out[r][0], T, pos, out[r][1], threads)) != 0)
            exit(3);
        if (r == 0) continue;
        compare(out[0][0], out[1][0], sizeof(float) * T * H, simd[i], what);
        compare(out[0][1], out[1][1], sizeof(float) * T * H, simd[i], what);
        compare(kv_out[0], kv_out[1], kv_bytes, simd[i], what);
        compare(out[0][2], out[1][2], sizeof(float) * cells, simd[i], what);
    }
    for (int r = 0; r < 2; r++) free(out[r][0]), free(out[r][1]), free(out[r][2]), free(kv_out[r]);
    free(wqkv), free(wo), free(ln), free(b), free(cs), free(sn), free(x0), free(kv0), free(sc0), free(kv8);
}

static mote_path path_named(const char *name) {
    for (int p = MOTE_PATH_SCALAR; p <= MOTE_PATH_AUTO; p++)
        if (strcmp(name, mote_path_name((mote_path)p)) == 0) return (mote_path)p;
    printf("unknown path %s\n", name);
    exit(2);
}

int main(int argc, char **argv) {
    const char *expect_best = NULL, *expect_current = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--expect-best") == 0) expect_best = argv[i + 1];
        else if (strcmp(argv[i], "--expect-current") == 0) expect_current = argv[i + 1];
    }
    const mote_cpu_features f = mote_detect_cpu();
    const mote_path current = mote_get_path();   /* before any set: MOTE_KERNEL_PATH or the best */
    const char *env = getenv("MOTE_KERNEL_PATH");
    printf("cpu: asimd=%d asimddp=%d avx2=%d avx512f=%d avx512vnni=%d avx512vbmi=%d\n", f.asimd, f.asimddp, f.avx2,
           f.avx512f, f.avx512vnni, f.avx512vbmi);
    printf("best path: %s; in use: %s (MOTE_KERNEL_PATH=%s)\n", mote_path_name(mote_best_path()),
           mote_path_name(current), env ? env : "unset");
    int bad_setup = 0;
    if (expect_best && mote_best_path() != path_named(expect_best)) {
        printf("FAIL: expected best path %s\n", expect_best);
        bad_setup = 1;
    }
    if (expect_current && current != path_named(expect_current)) {
        printf("FAIL: expected path in use %s\n", expect_current);
        bad_setup = 1;
    }
    for (int p = MOTE_PATH_SCALAR + 1; p < MOTE_PATH_AUTO; p++)
        if (mote_path_supported((mote_path)p)) simd[nsimd++] = (mote_path)p;
    printf("checking against scalar:");
    for (int i = 0; i < nsimd; i++) printf(" %s", mote_path_name(simd[i]));
    printf("%s\n", nsimd ? "" : " (no SIMD path on this CPU)");
    /* x86 scalar and AVX-512 convert NaN products differently (an existing x86 difference, not checked here) */
#if defined(__aarch64__)
    const int nan_ok = 1;
#else
    const int nan_ok = 0;
#endif

    /* activation quantizer: every length 0..80 (vector bodies and tails), longer rows, every input kind */
    for (int kind = 0; kind < X_KINDS; kind++) {
        if (kind == X_SPECIAL && !nan_ok) continue;
        for (int n = 0; n <= 80; n++) check_actquant(n, kind);
        check_actquant(896, kind);
        check_actquant(4099, kind);
    }
    printf("actquant: %d checks\n", checks);

    /* ternary: both layouts, shapes around blocks and GEMM tiles, every tail length, every input kind */
    static const int shapes[][3] = {   /* T, N, K */
        {1, 1, 1}, {1, 3, 5}, {2, 3, 319}, {1, 17, 320}, {3, 5, 321}, {4, 4, 640}, {5, 33, 1000}, {1, 65, 12},
        {9, 19, 7}, {1, 64, 1536}, {8, 19, 896}, {2, 7, 4864}, {7, 3, 257}, {6, 2, 255}, {1, 2, 0}, {3, 3, 0},
        {13, 5, 1541}, {4, 5, 1541}, {1, 31, 2000}, {2, 1, 64}, {3, 2, 256},
    };
    const int c0 = checks;
    for (int tpb = MOTE_TPB_SLAB2; tpb <= MOTE_TPB_FILE; tpb++) {
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int threads = 1; threads <= 2; threads++)
                check_ternary(tpb, shapes[s][0], shapes[s][2], shapes[s][1], X_NORMAL, W_RANDOM, threads, 0);
        for (int K = 1; K <= 2 * 64 * tpb + 70; K += 3)   /* every tail length of both layouts, T = 1, 2, 3 */
            check_ternary(tpb, 1 + K % 3, K, 3, X_SCALED, W_RANDOM, 1, 0);
        for (int kind = 0; kind < X_KINDS; kind++) {
            if (kind == X_SPECIAL && !nan_ok) continue;
            for (int T = 1; T <= 6; T += 5) check_ternary(tpb, T, 1541, 13, kind, W_RANDOM, 1, 0);
        }
        for (int wk = W_ZERO; wk < W_KINDS; wk++) check_ternary(tpb, 3, 777, 5, X_NORMAL, wk, 1, 0);
        for (int T = 1; T <= 5; T++) check_ternary(tpb, T, 777, 9, X_NORMAL, W_RANDOM, 1, 1);
    }
    printf("ternary: %d checks\n", checks - c0);

    const int c1 = checks;
    static const int relayout_k[] = {0, 1, 5, 255, 256, 257, 319, 320, 321, 640, 896, 1000, 1541, 4864};
    for (size_t i = 0; i < sizeof relayout_k / sizeof relayout_k[0]; i++)
        for (int N = 1; N <= 17; N += 8) check_relayout(N, relayout_k[i]);
    printf("file_to_slab2: %d checks\n", checks - c1);

    /* int-N: every width and group size, partial groups, GEMV and token tiles, every input kind */
    const int c2 = checks;
    static const int bits_list[] = {2, 3, 4, 8}, g_list[] = {32, 64, 128};
    for (int bi = 0; bi < 4; bi++)
        for (int gi = 0; gi < 3; gi++) {
            const int b = bits_list[bi], G = g_list[gi];
            const int sh[][3] = {{1, 3, G}, {2, 1, 3 * G + 5}, {5, 18, 2 * G - 1}, {1, 97, 20}, {1, 15, 9 * G - 3},
                                 {1, 7, 40 * G + 1}, {8, 5, 3 * G - 7}, {17, 9, 2 * G + 3}, {4, 6, 4 * G}, {3, 2, 1},
                                 {2, 3, 0}};
            for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++)
                check_intn(b, G, sh[s][0], sh[s][2], sh[s][1], X_NORMAL, W_RANDOM, 1 + (int)(s % 2));
            for (int kind = 0; kind < X_KINDS; kind++) {
                if (kind == X_SPECIAL && !nan_ok) continue;
                check_intn(b, G, 3, 3 * G + 1, 5, kind, W_RANDOM, 1);
            }
            for (int wk = W_ZERO; wk < W_KINDS; wk++) check_intn(b, G, 5, 2 * G, 4, X_NORMAL, wk, 1);
        }
    printf("intn: %d checks\n", checks - c2);

    /* int4 / int8 G = 128, 16-row interleaved: GEMV, T = 2 tiles, the AVX-512 il16 GEMM (T >= 8: token tiles of
     * 8 and every remainder 1..7, one and several blocks per thread); partial groups; every input kind */
    const int cil = checks;
    static const int il_shape[][3] = {{1, 896, 48}, {1, 4864, 32}, {1, 200, 16}, {2, 1000, 32}, {7, 896, 16},
                                      {8, 896, 16}, {9, 896, 16}, {17, 300, 48}, {1, 128, 64}, {64, 896, 48},
                                      {236, 1000, 32}, {31, 4864, 16}};
    for (int bits = 4; bits <= 8; bits += 4) {
        for (size_t s = 0; s < sizeof il_shape / sizeof il_shape[0]; s++)
            for (int th = 1; th <= 2; th++) check_intn_il16(bits, il_shape[s][0], il_shape[s][1], il_shape[s][2], X_NORMAL, th);
        for (int kind = 0; kind < X_KINDS; kind++) {
            if (kind == X_SPECIAL && !nan_ok) continue;
            check_intn_il16(bits, 1, 384, 32, kind, 1);
            check_intn_il16(bits, 3, 384, 32, kind, 1);
        }
    }
    printf("intn il16: %d checks\n", checks - cil);

    /* the layer: dots of every length around the 8 lanes, the attention half at several positions as a
     * decode step (T = 1) and as prefill chunks (T = 2, 7: causal over the cache and the chunk) */
    const int c3 = checks;
    for (int kind = 0; kind < X_KINDS; kind++) {
        if (kind == X_SPECIAL && !nan_ok) continue;
        for (int n = 0; n <= 40; n++) check_dots(n, kind);
        check_dots(128, kind);
    }
    static const int attn_shapes[][4] = {{64, 4, 2, 16}, {56, 7, 1, 8}, {96, 6, 3, 32}, {40, 2, 2, 10}};   /* H, nH, nKV, D */
    for (size_t s = 0; s < sizeof attn_shapes / sizeof attn_shapes[0]; s++)
        for (int kv_bits = 8; kv_bits <= 32; kv_bits += 24)
            for (int pos = 0; pos < 20; pos += 6)
                for (int T = 1; T <= 7 && pos + T <= 20; T += T == 1 ? 1 : 5)
                    check_attn(attn_shapes[s][0], attn_shapes[s][1], attn_shapes[s][2], attn_shapes[s][3], 20, pos, T,
                               kv_bits, 1 + (int)(s % 2));
    printf("layer: %d checks\n", checks - c3);

    /* CRC-32: the known check value, then every length 0..300 at every start offset mod 16 and a few long
     * ones against the scalar tables (the clmul path runs on x86-64 under any SIMD path) */
    const int c4 = checks;
    use(MOTE_PATH_SCALAR);
    checks++;
    if (mote_crc32(0, (const uint8_t *)"123456789", 9) != 0xCBF43926u) {
        printf("FAIL crc32 check value (scalar)\n");
        failures++;
    }
    uint8_t *bytes = malloc(70000 + 16);
    for (size_t i = 0; i < 70000 + 16; i++) bytes[i] = (uint8_t)rnd();
    static const size_t long_n[] = {4096, 65536 + 7, 70000};
    for (int i = 0; i < nsimd; i++)
        for (size_t n = 0; n <= 300 + 3; n++) {
            const size_t len = n <= 300 ? n : long_n[n - 301];
            for (size_t off = 0; off < 16; off += (len > 300 ? 5 : 1)) {
                const uint32_t start = (uint32_t)rnd();
                use(MOTE_PATH_SCALAR);
                const uint32_t ref = mote_crc32(start, bytes + off, len);
                use(simd[i]);
                const uint32_t got = mote_crc32(start, bytes + off, len);
                compare(&ref, &got, sizeof ref, simd[i], "crc32");
            }
        }
    free(bytes);
    printf("crc32: %d checks\n", checks - c4);

    for (int i = 0; i < nsimd; i++) printf("path %s: ran\n", mote_path_name(simd[i]));
    if (failures || bad_setup) {
        printf("FAILED: %d of %d checks differ from the scalar path\n", failures, checks);
        return 1;
    }
    printf("OK: %d checks, every path bit-exact with scalar\n", checks);
    return 0;
}
