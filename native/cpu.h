/* Run-time CPU feature detection: the shipped build is portable, SIMD paths are picked here.
 * x86-64 fields are 0 on aarch64 and the other way round. */
#ifndef MOTE_CPU_H
#define MOTE_CPU_H

typedef struct {
    int avx2;
    int fma;
    int avx512f;
    int avx512bw;
    int avx512vnni;
    int avx512vbmi;
    int asimd;      /* aarch64 Advanced SIMD (NEON): HWCAP_ASIMD */
    int asimddp;    /* aarch64 SDOT / UDOT (ARMv8.2 dotprod): HWCAP_ASIMDDP */
} mote_cpu_features;

mote_cpu_features mote_detect_cpu(void);

#endif
