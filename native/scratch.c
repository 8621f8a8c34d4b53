/* Per-thread persistent kernel buffers (scratch.h).
 *
 * Placement: every buffer starts a 4 KiB-aligned block at an offset of MOTE_SCRATCH_STAGGER x its slot
 * (mod 4 KiB), so the buffers a kernel call touches at once (activation, row scratch, the layer's
 * buffers) begin in different L1 sets instead of all at the same offset in a page; the block is
 * grow-only, so the addresses stay put from one decode step to the next.
 */
#define _POSIX_C_SOURCE 200809L
#include "scratch.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef MOTE_SCRATCH_STAGGER
#define MOTE_SCRATCH_STAGGER 512
#endif
#define PAGE 4096

typedef struct {
    void *block[MOTE_SCR_COUNT];   /* posix_memalign'd, PAGE-aligned */
    size_t cap[MOTE_SCR_COUNT];    /* usable bytes from the slot's offset */
    int registered;                /* the exit destructor is armed */
} scratch_set;

static _Thread_local scratch_set tls;
static pthread_key_t exit_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void free_set(void *set) {
    scratch_set *s = (scratch_set *)set;
    for (int i = 0; i < MOTE_SCR_COUNT; i++) {
        free(s->block[i]);
        s->block[i] = NULL;
        s->cap[i] = 0;
    }
}

static void make_key(void) { (void)pthread_key_create(&exit_key, free_set); }

static size_t offset_of(mote_scratch_slot slot) { return ((size_t)slot * MOTE_SCRATCH_STAGGER) % PAGE; }

void *mote_scratch(mote_scratch_slot slot, size_t bytes) {
    scratch_set *s = &tls;
    const size_t off = offset_of(slot);
    if (bytes > s->cap[slot] || !s->block[slot]) {
        if (!s->registered) {   /* free this thread's buffers when it exits (loader / server threads come and go) */
            (void)pthread_once(&key_once, make_key);
            s->registered = pthread_setspecific(exit_key, s) == 0;
        }
        free(s->block[slot]);
        s->block[slot] = NULL;
        s->cap[slot] = 0;
        const size_t total = (off + bytes + PAGE - 1) / PAGE * PAGE;   /* whole pages */
        void *p = NULL;
        if (bytes > SIZE_MAX - 2 * PAGE || posix_memalign(&p, PAGE, total ? total : PAGE) != 0) return NULL;
        s->block[slot] = p;
        s->cap[slot] = (total ? total : PAGE) - off;
    }
    return (uint8_t *)s->block[slot] + off;
}

void mote_scratch_release(mote_scratch_slot slot, int keep) {
    scratch_set *s = &tls;
    if (!keep || s->cap[slot] > MOTE_SCRATCH_KEEP) {
        free(s->block[slot]);
        s->block[slot] = NULL;
        s->cap[slot] = 0;
    }
}

size_t mote_scratch_held(void) {
    size_t n = 0;
    for (int i = 0; i < MOTE_SCR_COUNT; i++)
        if (tls.block[i]) n += tls.cap[i] + offset_of((mote_scratch_slot)i);
    return n;
}
