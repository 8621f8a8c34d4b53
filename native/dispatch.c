/* Run-time choice of the SIMD path: the best the CPU supports unless forced by set_kernel_path()
 * or the MOTE_KERNEL_PATH environment variable (read once, at the first call). x86-64: scalar, avx2,
 * avx512; aarch64: scalar, neon, dotprod (a path of the other architecture is never supported). */
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "kernels.h"

static mote_path forced = MOTE_PATH_AUTO;
static int env_read = 0;

int mote_path_supported(mote_path p) {
    mote_cpu_features f = mote_detect_cpu();
    switch (p) {
        case MOTE_PATH_SCALAR: return 1;
        case MOTE_PATH_AVX2: return f.avx2 && f.fma;
        case MOTE_PATH_AVX512:   /* VBMI for the byte LUTs, VNNI for vpdpbusd */
            return f.avx512f && f.avx512bw && f.avx512vnni && f.avx512vbmi && f.avx2 && f.fma;
        case MOTE_PATH_NEON: return f.asimd;
        case MOTE_PATH_DOTPROD: return f.asimd && f.asimddp;
        case MOTE_PATH_AUTO: return 1;
    }
    return 0;
}

mote_path mote_best_path(void) {
    if (mote_path_supported(MOTE_PATH_DOTPROD)) return MOTE_PATH_DOTPROD;
    if (mote_path_supported(MOTE_PATH_NEON)) return MOTE_PATH_NEON;
    if (mote_path_supported(MOTE_PATH_AVX512)) return MOTE_PATH_AVX512;
    if (mote_path_supported(MOTE_PATH_AVX2)) return MOTE_PATH_AVX2;
    return MOTE_PATH_SCALAR;
}

const char *mote_path_name(mote_path p) {
    static const char *names[] = {"scalar", "avx2", "avx512", "neon", "dotprod", "auto"};
    return (p >= MOTE_PATH_SCALAR && p <= MOTE_PATH_AUTO) ? names[p] : "?";
}

int mote_set_path(mote_path p) {
    if (!mote_path_supported(p)) return -1;
    forced = p;
    env_read = 1;
    return 0;
}

mote_path mote_get_path(void) {
    if (!env_read) {
        env_read = 1;
        const char *e = getenv("MOTE_KERNEL_PATH");
        for (int p = MOTE_PATH_SCALAR; e && p <= MOTE_PATH_AUTO; p++)
            if (strcmp(e, mote_path_name((mote_path)p)) == 0 && mote_path_supported((mote_path)p))
                forced = (mote_path)p;
    }
    return forced == MOTE_PATH_AUTO ? mote_best_path() : forced;
}
