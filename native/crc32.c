/* CRC-32 (the zlib / PNG / .mote checksum: reflected polynomial 0xEDB88320, initial and final
 * inversion), fast enough that checking an expert record costs less than reading it.
 *
 * zlib 1.2.13's crc32 runs at ~0.8 GB/s on the 2-core EPYC box, slower than one O_DIRECT reader
 * (~1.6 GB/s): the loader spent two thirds of each record on its checksum. Two paths:
 *   scalar  slice-by-8 tables (built once), portable; the path on aarch64 and under
 *           MOTE_KERNEL_PATH=scalar
 *   clmul   x86-64 with PCLMULQDQ + SSE4.1 (any non-scalar x86 path): four 128-bit lanes folded
 *           over 64-byte blocks by carry-less multiplication, then 128 -> 64 -> 32 bits and a Barrett
 *           reduction (Gopal et al., "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ",
 *           Intel 2009; the constants are x^(k) mod P(x) in the reflected domain, from that paper)
 * Both give zlib's value bit for bit (tests/test_crc32.py, both paths). */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels.h"

static uint32_t table[8][256];
static int table_ready = 0;

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++) table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xFF];
    table_ready = 1;
}

/* c: the running CRC without its inversions */
static uint32_t crc_scalar(uint32_t c, const uint8_t *p, size_t n) {
    if (!table_ready) build_table();   /* idempotent: racing threads write the same values */
    for (; n && ((uintptr_t)p & 7); n--) c = (c >> 8) ^ table[0][(c ^ *p++) & 0xFF];
    for (; n >= 8; n -= 8, p += 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= c;   /* little-endian byte order: the zlib tables' order on x86-64 and aarch64 */
        c = table[7][lo & 0xFF] ^ table[6][(lo >> 8) & 0xFF] ^ table[5][(lo >> 16) & 0xFF] ^ table[4][lo >> 24] ^
            table[3][hi & 0xFF] ^ table[2][(hi >> 8) & 0xFF] ^ table[1][(hi >> 16) & 0xFF] ^ table[0][hi >> 24];
    }
    for (; n; n--) c = (c >> 8) ^ table[0][(c ^ *p++) & 0xFF];
    return c;
}

#if defined(__x86_64__)
#include <immintrin.h>

#define CLMUL __attribute__((target("pclmul,sse4.1")))

/* a * k_lo xor a_hi * k_hi: one 128-bit lane folded forward by the distance k encodes */
CLMUL static inline __m128i fold(__m128i a, __m128i k) {
    return _mm_xor_si128(_mm_clmulepi64_si128(a, k, 0x00), _mm_clmulepi64_si128(a, k, 0x11));
}

/* n >= 64 and a multiple of 16; c: the running CRC without its inversions */
CLMUL static uint32_t crc_clmul(uint32_t c, const uint8_t *p, size_t n) {
    const __m128i k1k2 = _mm_set_epi64x(0x01c6e41596LL, 0x0154442bd4LL);  /* fold 512 bits */
    const __m128i k3k4 = _mm_set_epi64x(0x00ccaa009eLL, 0x01751997d0LL);  /* fold 128 bits */
    const __m128i k5 = _mm_set_epi64x(0, 0x0163cd6124LL);                 /* 64 -> 32 bits */
    const __m128i poly = _mm_set_epi64x(0x01f7011641LL, 0x01db710641LL);  /* P'(x), Barrett mu */
    const __m128i low32 = _mm_setr_epi32(-1, 0, -1, 0);
    __m128i x0 = _mm_xor_si128(_mm_loadu_si128((const __m128i *)p), _mm_cvtsi32_si128((int)c));
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    for (p += 64, n -= 64; n >= 64; p += 64, n -= 64) {
        x0 = _mm_xor_si128(fold(x0, k1k2), _mm_loadu_si128((const __m128i *)p));
        x1 = _mm_xor_si128(fold(x1, k1k2), _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = _mm_xor_si128(fold(x2, k1k2), _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = _mm_xor_si128(fold(x3, k1k2), _mm_loadu_si128((const __m128i *)(p + 48)));
    }
    x0 = _mm_xor_si128(fold(x0, k3k4), x1);   /* four lanes -> one */
    x0 = _mm_xor_si128(fold(x0, k3k4), x2);
    x0 = _mm_xor_si128(fold(x0, k3k4), x3);
    for (; n >= 16; p += 16, n -= 16) x0 = _mm_xor_si128(fold(x0, k3k4), _mm_loadu_si128((const __m128i *)p));
    /* 128 -> 64 bits */
    x0 = _mm_xor_si128(_mm_srli_si128(x0, 8), _mm_clmulepi64_si128(x0, k3k4, 0x10));
    /* 64 -> 32 bits */
    x0 = _mm_xor_si128(_mm_srli_si128(x0, 4), _mm_clmulepi64_si128(_mm_and_si128(x0, low32), k5, 0x00));
    /* Barrett reduction */
    __m128i t = _mm_clmulepi64_si128(_mm_and_si128(x0, low32), poly, 0x10);
    t = _mm_clmulepi64_si128(_mm_and_si128(t, low32), poly, 0x00);
    return (uint32_t)_mm_extract_epi32(_mm_xor_si128(x0, t), 1);
}

static int clmul_supported(void) {
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
    }
    return known;
}
#endif

int mote_crc32_simd(void) {
#if defined(__x86_64__)
    return mote_get_path() != MOTE_PATH_SCALAR && clmul_supported();
#else
    return 0;
#endif
}

uint32_t mote_crc32(uint32_t crc, const uint8_t *p, size_t n) {
    uint32_t c = ~crc;
#if defined(__x86_64__)
    if (n >= 64 && mote_crc32_simd()) {
        size_t body = n & ~(size_t)15;
        c = crc_clmul(c, p, body);
        p += body;
        n -= body;
    }
#endif
    return ~crc_scalar(c, p, n);
}
