#include "cpu.h"

#if defined(__aarch64__) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

mote_cpu_features mote_detect_cpu(void) {
    mote_cpu_features f = {0, 0, 0, 0, 0, 0, 0, 0};
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.fma = __builtin_cpu_supports("fma");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
    f.avx512vbmi = __builtin_cpu_supports("avx512vbmi");
#elif defined(__aarch64__) && defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP);
    f.asimd = (hw & HWCAP_ASIMD) != 0;
    f.asimddp = f.asimd && (hw & HWCAP_ASIMDDP) != 0;
#elif defined(__aarch64__)
    f.asimd = 1;   /* Advanced SIMD is part of every AArch64 CPU; dotprod unknown without HWCAP */
#endif
    return f;
}
