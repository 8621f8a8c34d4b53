/* A plain streaming read of a buffer: what "DRAM read bandwidth" means in benchmarks/kernels.py. */
#include "kernels.h"

uint64_t mote_read_sum(const uint64_t *p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    for (; i < n; i++) a += p[i];
    return a + b + c + d;
}
