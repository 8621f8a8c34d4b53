/* File layout -> 2-bit slab layout on full blocks with NEON (both aarch64 paths), the two steps of
 * mote_ternary_file_to_slab2 (ternary.c, which does the tail blocks):
 *   digits: 64 file bytes (block b) -> 320 digits in natural order, d[320 b + 64 i + j] = digit i of byte j;
 *   pack:   256 digits (block b) -> 64 bytes, out[64 b + j] = d[256 b + j] | d[.. + 64 + j] << 2 | ... << 6. */
#include "kernels.h"

#if defined(__aarch64__)
#include "tern_digits_neon.h"

void mote_tern_digits_neon(const uint8_t *w, int nfull, uint8_t *d) {
    const tern_consts k = tern_consts_init();
    for (int64_t b = 0; b < nfull; b++)
        for (int c = 0; c < 64; c += 16) {
            int8x16_t dig[5];
            digits16_plain(&k, vld1q_u8(w + 64 * b + c), MOTE_TPB_FILE, dig);
            for (int i = 0; i < 5; i++) vst1q_u8(d + MOTE_TBLOCK_COLS * b + 64 * i + c, vreinterpretq_u8_s8(dig[i]));
        }
}

void mote_tern2_pack_neon(const uint8_t *d, int nfull, uint8_t *out) {
    for (int64_t b = 0; b < nfull; b++)
        for (int c = 0; c < 64; c += 16) {
            const uint8_t *s = d + 256 * b + c;
            uint8x16_t v = vld1q_u8(s);
            v = vsliq_n_u8(v, vld1q_u8(s + 64), 2);    /* digits <= 2 use 2 bits: shift-insert keeps the rest */
            v = vsliq_n_u8(v, vld1q_u8(s + 128), 4);
            v = vsliq_n_u8(v, vld1q_u8(s + 192), 6);
            vst1q_u8(out + 64 * b + c, v);
        }
}
#endif
