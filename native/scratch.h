/* Per-thread persistent kernel buffers (native/scratch.c; docs/KERNELS.md section 6).
 *
 * A decode step calls ~100 kernels; each used to malloc / calloc its activation copy, sums and per-thread row
 * scratch and free them again, so where those buffers landed changed from call to call (and moved the
 * kernels' speed ~10%). Here every thread (the caller, each pool worker, a second Engine's thread) owns one
 * buffer per slot, 64-byte aligned and grow-only, kept between calls: a decode step allocates nothing.
 *
 *   p = mote_scratch(slot, bytes)     this thread's buffer of slot, >= bytes, 64-byte aligned (NULL: out of memory);
 *                                     its contents are whatever the last user left (callers zero what they read)
 *   mote_scratch_release(slot, keep)  done with it: kept for the next call if keep (a decode step's call) and it is
 *                                     at most MOTE_SCRATCH_KEEP, else freed (a prefill chunk's: its activations
 *                                     are the plan's scratch, runtime/plan.py), unless this thread holds them
 *   mote_scratch_hold(on)             on: release keeps every block of this thread (a prefill holds its chunk
 *                                     buffers from layer to layer and chunk to chunk: faulted in once, never
 *                                     freed into malloc's heap); off: frees the blocks above MOTE_SCRATCH_KEEP
 *
 * A block above MOTE_SCRATCH_KEEP is its own mapping (mmap), not malloc's: freed, its pages go back to the
 * system at once. From malloc, a freed multi-MB block raised glibc's dynamic mmap threshold, later blocks of
 * that size came from the heap, and a heap fragmented by the allocations between them kept up to tens of MB
 * resident past the memory plan (benchmarks/plan_tightness.py, worst case).
 *
 * One slot per role, so the buffers one call holds at once never share a slot: a driver's activation buffer
 * (held while its row tasks run) and the row scratch of the task the calling thread runs itself, the layer's
 * buffers (held while it calls the drivers). Threads never share a buffer, so concurrent callers need no lock.
 * A thread's buffers are freed when it exits.
 */
#ifndef MOTE_SCRATCH_H
#define MOTE_SCRATCH_H

#include <stddef.h>

typedef enum {
    MOTE_SCR_INTN_ACT = 0,   /* intn.c driver: xq, sumx, rs (+ the tokens-in-lanes copies of a GEMM) */
    MOTE_SCR_INTN_ROWS,      /* intn.c row task: one unpacked row, scales, zero points */
    MOTE_SCR_TERN_ACT,       /* ternary.c driver: block-ordered xq, sumx, f */
    MOTE_SCR_TERN_ROWS,      /* ternary.c row task: decoded rows (GEMM paths) */
    MOTE_SCR_ATTN,           /* layer.c attention half: qkv, att, scores, o (+ the chunk's transposed keys) */
    MOTE_SCR_FFN,            /* layer.c FFN: gate | up, down's output */
    MOTE_SCR_FFN_Q,          /* layer.c FFN: h quantized once for ternary gate and up */
    MOTE_SCR_ROUTE,          /* route.c: the router's logits */
    MOTE_SCR_COUNT
} mote_scratch_slot;

/* a buffer above this many bytes is freed on release: what stays allocated is at most MOTE_SCR_COUNT x
 * MOTE_SCRATCH_KEEP per thread that ran a kernel; decode steps keep ~150 KB on the calling thread (synth 0.5B;
 * 1.5B ~240 KB: the FFN's gate | up the largest; the attention scores grow by 4 bytes per cached position and
 * query head of a kv group) and the row scratch (< 50 KB) on each pool worker */
#define MOTE_SCRATCH_KEEP ((size_t)256 << 10)

void *mote_scratch(mote_scratch_slot slot, size_t bytes);
void mote_scratch_release(mote_scratch_slot slot, int keep);
void mote_scratch_hold(int on);

/* bytes this thread keeps allocated now (tests: tests/test_native_kernels.py) */
size_t mote_scratch_held(void);

#endif
