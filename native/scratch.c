/* Per-thread persistent kernel buffers (scratch.h).
 *
 * Placement: every buffer starts a 4 KiB-aligned block at an offset of MOTE_SCRATCH_STAGGER x its slot
 * (mod 4 KiB), so the buffers a kernel call touches at once (activation, row scratch, the layer's
 * buffers) begin in different L1 sets instead of all at the same offset in a page; the block is
 * grow-only, so the addresses stay put from one decode step to the next.
 */
#define _POSIX_C_SOURCE 200809L
#define _DEFAULT_SOURCE  /* MAP_ANONYMOUS (glibc, musl) */
#include "scratch.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#if defined(MAP_ANONYMOUS)
#define MOTE_SCRATCH_MMAP 1
#endif
#endif

#ifndef MOTE_SCRATCH_STAGGER
#define MOTE_SCRATCH_STAGGER 512
#endif
#define PAGE 4096

typedef struct {
    void *block[MOTE_SCR_COUNT];   /* PAGE-aligned: posix_memalign'd, or its own mapping (mapped()) */
    size_t cap[MOTE_SCR_COUNT];    /* usable bytes from the slot's offset (0: no block) */
    int hold;                      /* mote_scratch_hold: release keeps every block */
    int registered;                /* the exit destructor is armed */
} scratch_set;

static _Thread_local scratch_set tls;
static pthread_key_t exit_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static size_t offset_of(mote_scratch_slot slot) { return ((size_t)slot * MOTE_SCRATCH_STAGGER) % PAGE; }

/* a block of `total` bytes (whole pages) that outlives no call (> MOTE_SCRATCH_KEEP) is its own mapping, so
 * freeing it returns its pages to the system at once and leaves malloc's heap and its mmap threshold as
 * they were */
static int mapped(size_t total) {
#ifdef MOTE_SCRATCH_MMAP
    return total > MOTE_SCRATCH_KEEP;
#else
    (void)total;
    return 0;
#endif
}

static void free_block(scratch_set *s, int i) {
#ifdef MOTE_SCRATCH_MMAP
    const size_t total = s->cap[i] + offset_of((mote_scratch_slot)i);
    if (s->block[i] && mapped(total)) (void)munmap(s->block[i], total);
    else
#endif
        free(s->block[i]);
    s->block[i] = NULL;
    s->cap[i] = 0;
}

static void *alloc_block(size_t total) {
#ifdef MOTE_SCRATCH_MMAP
    if (mapped(total)) {
        void *p = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
#endif
    void *p = NULL;
    return posix_memalign(&p, PAGE, total) == 0 ? p : NULL;
}

static void free_set(void *set) {
    scratch_set *s = (scratch_set *)set;
    for (int i = 0; i < MOTE_SCR_COUNT; i++) free_block(s, i);
}

static void make_key(void) { (void)pthread_key_create(&exit_key, free_set); }

void *mote_scratch(mote_scratch_slot slot, size_t bytes) {
    scratch_set *s = &tls;
    const size_t off = offset_of(slot);
    if (bytes > s->cap[slot] || !s->block[slot]) {
        if (!s->registered) {   /* free this thread's buffers when it exits (loader / server threads come and go) */
            (void)pthread_once(&key_once, make_key);
            s->registered = pthread_setspecific(exit_key, s) == 0;
        }
        free_block(s, slot);
        if (bytes > SIZE_MAX - 2 * PAGE) return NULL;
        size_t total = (off + bytes + PAGE - 1) / PAGE * PAGE;   /* whole pages */
        if (!total) total = PAGE;
        void *p = alloc_block(total);
        if (!p) return NULL;
        s->block[slot] = p;
        s->cap[slot] = total - off;
    }
    return (uint8_t *)s->block[slot] + off;
}

void mote_scratch_release(mote_scratch_slot slot, int keep) {
    scratch_set *s = &tls;
    if (!s->hold && (!keep || s->cap[slot] > MOTE_SCRATCH_KEEP)) free_block(s, slot);
}

void mote_scratch_hold(int on) {
    scratch_set *s = &tls;
    s->hold = on != 0;
    if (!s->hold)
        for (int i = 0; i < MOTE_SCR_COUNT; i++)
            if (s->cap[i] > MOTE_SCRATCH_KEEP) free_block(s, i);   /* the large ones */
}

size_t mote_scratch_held(void) {
    size_t n = 0;
    for (int i = 0; i < MOTE_SCR_COUNT; i++)
        if (tls.block[i]) n += tls.cap[i] + offset_of((mote_scratch_slot)i);
    return n;
}
