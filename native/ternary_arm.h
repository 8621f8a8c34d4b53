/* Ternary x int8 rows for aarch64, both packed layouts (a->tpb): the body of ternary_neon.c and
 * ternary_dotprod.c, which differ only in the dot primitive (arm_dot.h) and the function name.
 *
 * T <= 2 (decode): each 16-byte chunk of packed weights is decoded in registers (tern_digits_neon.h)
 *   and multiplied with the activations of the matching five (four) 64-column runs of the block-ordered
 *   token (kernels.h): T = 1 two rows per pass share the activation loads, T = 2 one row per pass shares
 *   its decode between both tokens. Three accumulators per (row, token); the tail block is copied into a
 *   zeroed 64-byte buffer (its activations beyond the tail are zero, so the padding adds nothing).
 * T >= 3 (prefill): two rows decoded to digits in the scratch ([2, kx] bytes), then tiles of 2 rows x up
 *   to 4 tokens: per 16 columns 2 + 4 loads and 8 dot products.
 * Either way y[t, n] = (float)(sum_k d_k x_k - sumx[t]) * f[t], the scalar path's expression. */
#include <string.h>

#include "arm_dot.h"
#include "tern_digits_neon.h"

#define INLINE MOTE_NEON_INLINE

/* the 64 bytes of block b of a row: in place for a full block, else the tail copied into tmp, zero padded */
INLINE const uint8_t *block_bytes(const mote_tern_args *a, const uint8_t *row, int b, uint8_t *tmp) {
    if (b < a->nfull) return row + (int64_t)b * MOTE_TBLOCK_BYTES;
    memset(tmp, 0, MOTE_TBLOCK_BYTES);
    memcpy(tmp, row + (int64_t)b * MOTE_TBLOCK_BYTES, (size_t)a->tail);
    return tmp;
}

/* one 64-byte block: rows p[0 .. R) x tokens [0, NT) (activations xb + t kx, the block's tpb runs of 64) */
INLINE void block_dot(const tern_consts *k, const uint8_t *const p[2], const int8_t *xb, int64_t kx, const int R,
                      const int NT, const int tpb, int32x4_t acc[2][2][3]) {
#pragma GCC unroll 1   /* fully unrolled, GCC spills at R = 2 (measured in the objdump) */
    for (int c = 0; c < MOTE_TBLOCK_BYTES; c += 16) {
        int8x16_t xv[2][5];
#pragma GCC unroll 2
        for (int t = 0; t < NT; t++)
#pragma GCC unroll 5
            for (int i = 0; i < tpb; i++) xv[t][i] = vld1q_s8(xb + t * kx + 64 * i + c);
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) {
            int8x16_t d[5];
            digits16(k, vld1q_u8(p[r] + c), tpb, d);
#pragma GCC unroll 2
            for (int t = 0; t < NT; t++)
#pragma GCC unroll 5
                for (int i = 0; i < tpb; i++) acc[r][t][i % 3] = dot16_small(acc[r][t][i % 3], d[i], xv[t][i]);
        }
    }
}

/* rows [n, n + R) x tokens [t0, t0 + NT), R * NT <= 2, straight from the packed bytes */
INLINE void direct(const mote_tern_args *a, const tern_consts *k, int n, const int R, int t0, const int NT,
                   const int tpb) {
    int32x4_t acc[2][2][3];
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 2; t++)
            for (int c = 0; c < 3; c++) acc[r][t][c] = vdupq_n_s32(0);
    const uint8_t *p[2] = {a->w + (int64_t)n * a->rb, a->w + (int64_t)(n + R - 1) * a->rb};
    const int8_t *xb = a->xq + (int64_t)t0 * a->kx;
    for (int b = 0; b < a->nfull; b++) {   /* pointers bumped per block: loads at constant offsets */
        block_dot(k, p, xb, a->kx, R, NT, tpb, acc);
        p[0] += MOTE_TBLOCK_BYTES;
        p[1] += MOTE_TBLOCK_BYTES;
        xb += MOTE_TBLOCK_BYTES * tpb;
    }
    if (a->tail) {
        uint8_t tmp[2][MOTE_TBLOCK_BYTES];
        const uint8_t *pt[2] = {tmp[0], tmp[1]};
        for (int r = 0; r < R; r++) block_bytes(a, a->w + (int64_t)(n + r) * a->rb, a->nfull, tmp[r]);
        block_dot(k, pt, xb, a->kx, R, NT, tpb, acc);
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < NT; t++)
            a->y[(int64_t)(t0 + t) * a->N + n + r] =
                (float)(digit_total(acc[r][t], tpb) - a->sumx[t0 + t]) * a->f[t0 + t];
}

/* row n -> its kx digits (0..2) in block order, the activations' order */
INLINE void decode_row(const mote_tern_args *a, const tern_consts *k, int n, int8_t *dst, const int tpb) {
    uint8_t tmp[MOTE_TBLOCK_BYTES];
    const uint8_t *row = a->w + (int64_t)n * a->rb;
    for (int b = 0; b < a->nblk; b++) {
        const uint8_t *p = block_bytes(a, row, b, tmp);
        int8_t *db = dst + (int64_t)b * MOTE_TBLOCK_BYTES * tpb;
        for (int c = 0; c < MOTE_TBLOCK_BYTES; c += 16) {
            int8x16_t d[5];
            digits16_plain(k, vld1q_u8(p + c), tpb, d);
#pragma GCC unroll 5
            for (int i = 0; i < tpb; i++) vst1q_s8(db + 64 * i + c, d[i]);
        }
    }
}

/* decoded rows d [R, kx] (rows n ..) x tokens [t0, t0 + NT): R <= 2, NT <= 4 */
INLINE void tile(const mote_tern_args *a, const int8_t *d, int n, const int R, int t0, const int NT) {
    int32x4_t acc[2][4];
    for (int r = 0; r < 2; r++)
        for (int t = 0; t < 4; t++) acc[r][t] = vdupq_n_s32(0);
    const int8_t *x = a->xq + (int64_t)t0 * a->kx;
    for (int64_t k = 0; k < a->kx; k += 16) {
        int8x16_t dv[2];
#pragma GCC unroll 2
        for (int r = 0; r < R; r++) dv[r] = vld1q_s8(d + r * a->kx + k);
#pragma GCC unroll 4
        for (int t = 0; t < NT; t++) {
            const int8x16_t xv = vld1q_s8(x + t * a->kx + k);
#pragma GCC unroll 2
            for (int r = 0; r < R; r++) acc[r][t] = dot16_small(acc[r][t], dv[r], xv);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < NT; t++)
            a->y[(int64_t)(t0 + t) * a->N + n + r] = (float)(vaddvq_s32(acc[r][t]) - a->sumx[t0 + t]) * a->f[t0 + t];
}

static void tile_any(const mote_tern_args *a, const int8_t *d, int n, int R, int t0, int NT) {
    switch ((R == 2 ? 4 : 0) + NT - 1) {
        case 0: tile(a, d, n, 1, t0, 1); break;
        case 1: tile(a, d, n, 1, t0, 2); break;
        case 2: tile(a, d, n, 1, t0, 3); break;
        case 3: tile(a, d, n, 1, t0, 4); break;
        case 4: tile(a, d, n, 2, t0, 1); break;
        case 5: tile(a, d, n, 2, t0, 2); break;
        case 6: tile(a, d, n, 2, t0, 3); break;
        default: tile(a, d, n, 2, t0, 4); break;
    }
}

INLINE void rows_layout(const mote_tern_args *a, int n0, int n1, uint8_t *scratch, const int tpb) {
    const tern_consts k = tern_consts_init();
    if (a->T == 1) {
        int n = n0;
        for (; n + 2 <= n1; n += 2) direct(a, &k, n, 2, 0, 1, tpb);
        if (n < n1) direct(a, &k, n, 1, 0, 1, tpb);
        return;
    }
    if (a->T == 2) {
        for (int n = n0; n < n1; n++) direct(a, &k, n, 1, 0, 2, tpb);
        return;
    }
    int8_t *d = (int8_t *)scratch;   /* [2, kx] */
    for (int n = n0; n < n1; n += 2) {
        const int R = n1 - n >= 2 ? 2 : 1;
        for (int r = 0; r < R; r++) decode_row(a, &k, n + r, d + r * a->kx, tpb);
        for (int t = 0; t < a->T; t += 4) tile_any(a, d, n, R, t, a->T - t >= 4 ? 4 : a->T - t);
    }
}

/* both layouts; scratch: >= 2 kx bytes */
void MOTE_ARM_PATH(mote_tern_rows)(const mote_tern_args *a, int n0, int n1, uint8_t *scratch) {
    if (a->tpb == MOTE_TPB_SLAB2)
        rows_layout(a, n0, n1, scratch, MOTE_TPB_SLAB2);
    else
        rows_layout(a, n0, n1, scratch, MOTE_TPB_FILE);
}
