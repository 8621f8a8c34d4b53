/* Kernel arguments and entry points shared by the C files (docs/KERNELS.md describes the maths).
 *
 * Every matmul is y[T, N] = x[T, K] @ W[N, K]^T with int8 activations and packed weights.
 * The drivers (ternary.c, intn.c) quantize activations, then split the N output rows across
 * threads; each path (scalar / AVX2 / AVX-512 on x86-64, NEON / dot-product on aarch64) provides one
 * "rows" function over [n0, n1).
 */
#ifndef MOTE_KERNELS_H
#define MOTE_KERNELS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* ---- dispatch (dispatch.c) ---- */
/* x86-64: avx2, avx512; aarch64: neon (ARMv8.0 Advanced SIMD), dotprod (ARMv8.2 SDOT). AUTO stays last. */
typedef enum {
    MOTE_PATH_SCALAR = 0,
    MOTE_PATH_AVX2 = 1,
    MOTE_PATH_AVX512 = 2,
    MOTE_PATH_NEON = 3,
    MOTE_PATH_DOTPROD = 4,
    MOTE_PATH_AUTO = 5
} mote_path;

int mote_path_supported(mote_path p);       /* 1 if this CPU can run path p */
mote_path mote_best_path(void);             /* the fastest supported path */
mote_path mote_get_path(void);              /* the path in use (forced or best) */
int mote_set_path(mote_path p);             /* 0 on success, -1 if not supported */
const char *mote_path_name(mote_path p);

/* Software prefetch of streamed weights goes to L2 (_MM_HINT_T1): on Zen 4 prefetching into L1
 * stalled long-row GEMVs (K >= 4864) at ~10 GB/s cold; into L2 they stream at 18-22 GB/s
 * (docs/KERNELS.md). Build with -DMOTE_PF_HINT=_MM_HINT_T0 to compare. */
#ifndef MOTE_PF_HINT
#define MOTE_PF_HINT _MM_HINT_T1
#endif

/* ---- ternary (ternary.c): two packed layouts, chosen by tpb (trits per byte) ----
 * tpb = 5: the file layout, 1.6 bits per weight (mote_edge/quant/ternary.py): blocks of 64 bytes =
 *          320 columns, base-3 bytes;
 * tpb = 4: the 2-bit cache-slab layout (mote_edge/quant/ternary_slab.py): blocks of 64 bytes = 256
 *          columns, byte j holds the digits of columns j, j+64, j+128, j+192 in bits 0-1, 2-3, 4-5, 6-7.
 * Both: the tail block holds columns j + B i in its B bytes; activations are re-laid in block order. */
#define MOTE_TBLOCK_BYTES 64
#define MOTE_TBLOCK_COLS 320
#define MOTE_TPB_FILE 5
#define MOTE_TPB_SLAB2 4

typedef struct {
    int tpb;              /* trits per byte: 5 (file layout) or 4 (2-bit slab layout) */
    const uint8_t *w;     /* [N, rb] packed trits, rb = ceil(K / tpb) */
    int64_t rb;           /* bytes per packed row */
    int nfull;            /* full 64-byte blocks per row */
    int tail;             /* bytes of the tail block (0..63); 0 = no tail */
    int nblk;             /* nfull + (tail > 0) */
    int N, T;
    int64_t kx;           /* nblk * 64 * tpb: columns of the block-ordered activations */
    const int8_t *xq;     /* [T, kx] activations in block order (tail rearranged, zero padded) */
    const int32_t *sumx;  /* [T] sum of xq over the row */
    const float *f;       /* [T] gamma / s: the output scale per token */
    float *y;             /* [T, N] */
} mote_tern_args;

typedef void (*mote_tern_rows_fn)(const mote_tern_args *a, int n0, int n1, uint8_t *scratch);
void mote_tern_rows_scalar(const mote_tern_args *a, int n0, int n1, uint8_t *scratch);
void mote_tern_rows_avx2(const mote_tern_args *a, int n0, int n1, uint8_t *scratch);
void mote_tern_rows_avx512(const mote_tern_args *a, int n0, int n1, uint8_t *scratch);
/* the scalar, AVX2, NEON and dot-product paths read both layouts (a->tpb); AVX-512 has one function per layout */
void mote_tern2_rows_avx512(const mote_tern_args *a, int n0, int n1, uint8_t *scratch);
void mote_tern_rows_neon(const mote_tern_args *a, int n0, int n1, uint8_t *scratch);
void mote_tern_rows_dotprod(const mote_tern_args *a, int n0, int n1, uint8_t *scratch);

/* the file layout's [N, ceil(K/5)] bytes -> the 2-bit slab layout's [N, ceil(K/4)]; 0, or -1 on out of memory.
 * Digits are copied as they decode (the 13 non-code bytes of the file layout decode to digits <= 2 too). */
int mote_ternary_file_to_slab2(const uint8_t *src, int N, int K, uint8_t *dst);
void mote_tern_digits_avx512(const uint8_t *w, int nfull, uint8_t *d);
void mote_tern2_pack_avx512(const uint8_t *d, int nfull, uint8_t *out);
/* the same two steps on full blocks with NEON (ternary_relayout_neon.c) */
void mote_tern_digits_neon(const uint8_t *w, int nfull, uint8_t *d);
void mote_tern2_pack_neon(const uint8_t *d, int nfull, uint8_t *out);

/* x [T, K] float32 or (xq [T, K] int8, s [T]) -> y [T, N]; returns 0, or -1 on out of memory */
int mote_ternary_matmul(int tpb, const uint8_t *w, float gamma, const float *x, const int8_t *xq_in,
                        const float *s_in, int T, int K, int N, float *y, int threads);

/* ---- int-N group-wise (intn.c): packed layout in mote_edge/quant/intn.py ----
 * Two layouts of the same bytes (mote_edge/quant/intn.py, docs/KERNELS.md section 2):
 *   MOTE_INTN_ROWS  rows one after the other: packed [N, rb], scales / zeros [N, ng];
 *   MOTE_INTN_IL16  4 or 8 bits, G = 128, N % 16 == 0 only: blocks of 16 rows; a row's rb bytes are rb / 64
 *                   chunks of 64 (one per group at 4 bits, two at 8), and per block and chunk 16 lines of 64
 *                   bytes, line j = bytes 64c + 4j .. 64c + 4j + 3 of each of the 16 rows (4-bit: values 4j..4j+3
 *                   of the group in the low nibbles, 64+4j.. in the high; 8-bit: values 64h + 4j.. of chunk h of
 *                   the group), i.e. packed [N/16][rb/64 chunks][16 lines][16 rows][4 bytes], scales / zeros
 *                   [N/16][ng][16 rows]. */
#define MOTE_INTN_ROWS 0
#define MOTE_INTN_IL16 1

typedef struct {
    const uint8_t *w;        /* [N, rb] bit-plane packed groups (or the MOTE_INTN_IL16 blocks) */
    int il16;                /* 1: w, scales, zeros in the MOTE_INTN_IL16 layout */
    int64_t rb;              /* bytes per row = ng * G * bits / 8 */
    const uint16_t *scales;  /* [N, ng] fp16 */
    const uint16_t *zeros;   /* [N, ng] fp16 holding integers */
    int bits, G, ng, N, T;
    int64_t kp;              /* ng * G */
    const int8_t *xq;        /* [T, kp] activations, zero padded */
    const int32_t *sumx;     /* [T, ng] */
    const float *rs;         /* [T, ng] 1 / s per token and group */
    float *y;                /* [T, N] */
    /* GEMM operands with tokens in lanes (built by the driver for the AVX-512 path when
     * T >= MOTE_INTN_IL_MIN, else NULL): ntb = ceil(T / 16) blocks of 16 tokens;
     * xil[tb][j][l][b] = xq[16 tb + l][4 j + b] + 128 (u8; 128 for tokens >= T),
     * sumx_il[tb][g][l], rs_il[tb][g][l] (0 for tokens >= T) */
    const uint8_t *xil;
    const int32_t *sumx_il;
    const float *rs_il;
    int ntb;
} mote_intn_args;

#define MOTE_INTN_IL_MIN 8

typedef void (*mote_intn_rows_fn)(const mote_intn_args *a, int n0, int n1, uint8_t *scratch);
void mote_intn_rows_scalar(const mote_intn_args *a, int n0, int n1, uint8_t *scratch);
void mote_intn_rows_avx2(const mote_intn_args *a, int n0, int n1, uint8_t *scratch);
void mote_intn_rows_avx512(const mote_intn_args *a, int n0, int n1, uint8_t *scratch);
void mote_intn_rows_neon(const mote_intn_args *a, int n0, int n1, uint8_t *scratch);
void mote_intn_rows_dotprod(const mote_intn_args *a, int n0, int n1, uint8_t *scratch);

int mote_intn_matmul(const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int bits, int G,
                     const float *x, int T, int K, int N, float *y, int threads);
/* whether (bits, G, N) can take `layout` MOTE_INTN_IL16 (bits 4 or 8, G 128, N % 16 == 0) */
int mote_intn_il16_ok(int layout, int bits, int G, int N);
/* the same for either layout (MOTE_INTN_ROWS / MOTE_INTN_IL16; IL16 needs mote_intn_il16_ok: -1 else).
 * IL16 runs natively in the AVX-512 GEMV (T = 1, the scalar path's order) and GEMM (T >= MOTE_INTN_IL_MIN, the
 * rows layout's result); every other path and T de-interleaves 16 rows at a time into scratch and runs its row
 * kernel on them. */
int mote_intn_matmul_layout(const uint8_t *w, const uint16_t *scales, const uint16_t *zeros, int bits, int G,
                            int layout, const float *x, int T, int K, int N, float *y, int threads);
/* the 16 rows of IL16 block n / 16 -> the rows layout: w [16, rb], scales / zeros [16, ng] */
void mote_intn_il16_block_to_rows(const mote_intn_args *a, int n, uint8_t *w, uint16_t *scales, uint16_t *zeros);
void mote_intn_il16_block_to_rows_avx512(const mote_intn_args *a, int n, uint8_t *w, uint16_t *scales,
                                         uint16_t *zeros);

#define MOTE_INTN_FLAT 1024   /* AVX-512 int-N GEMV: (row, group) products per stretch */

/* shared helpers (intn.c) */
float mote_half_to_float(uint16_t h);
/* scratch of a rows function: [kp + 64 bytes: one unpacked row][4 * ng floats][4 * ng int32], or
 * after the row, for the AVX-512 GEMV: max(ng, MOTE_INTN_FLAT) + 16 floats, 2 (ng + 16) words */
size_t mote_intn_scratch_bytes(const mote_intn_args *a);
/* row n's scales and zero-points as float / int32, converted into the scratch */
void mote_intn_row_params(const mote_intn_args *a, int n, uint8_t *scratch, const float **sc, const int32_t **zp);
/* unpack one group (G values) of a bits-wide bit-plane group into q[G] */
void mote_unpack_group(const uint8_t *src, int bits, int G, uint8_t *q);

/* ---- activations (actquant.c): BitLinear's int8 quantization, bit-exact with numpy ---- */
/* x[n] -> xq[n] with s = 127 / max(max|x|, 1e-5); returns s, *sum = sum of xq */
float mote_quantize_act(const float *x, int n, int8_t *xq, int32_t *sum);
float mote_quantize_act_scalar(const float *x, int n, int8_t *xq, int32_t *sum);
float mote_quantize_act_neon(const float *x, int n, int8_t *xq, int32_t *sum);   /* actquant_neon.c */
float mote_act_scale(float amax);   /* 127 / max(amax, 1e-5) */
/* one value: clip(rint(v * s), -128, 127) (a NaN product converts as the C cast does); adds it to *acc */
static inline int8_t mote_quantize_one(float v, float s, int32_t *acc) {
    float r = nearbyintf(v * s);
    int q = r > 127.0f ? 127 : r < -128.0f ? -128 : (int)r;
    *acc += q;
    return (int8_t)q;
}

/* ---- CRC-32, zlib's (crc32.c) ---- */
/* crc: the value so far (0 to start), as zlib.crc32(data, crc) takes it */
uint32_t mote_crc32(uint32_t crc, const uint8_t *p, size_t n);
int mote_crc32_simd(void);                  /* 1 if mote_crc32 runs the PCLMULQDQ path */

/* ---- memory bandwidth probe (membench.c) ---- */
uint64_t mote_read_sum(const uint64_t *p, size_t n);

#endif
