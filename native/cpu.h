/* Run-time CPU feature detection: the shipped build is portable, SIMD paths are picked here. */
#ifndef MOTE_CPU_H
#define MOTE_CPU_H

typedef struct {
    int avx2;
    int fma;
    int avx512f;
    int avx512bw;
    int avx512vnni;
    int avx512vbmi;
} mote_cpu_features;

mote_cpu_features mote_detect_cpu(void);

#endif
