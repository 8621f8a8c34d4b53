/* Fork-join over a persistent pthread pool (created on first use, grown on demand).
 *
 * mote_parallel(n, fn, ctx) runs fn(ctx, i, n) once for every part i = 0 .. n-1. The parts are
 * claimed from one atomic ticket by the calling thread and the pool workers alike, so a worker the
 * OS has not scheduled (another process holds its core) never stalls the job: the caller runs the
 * parts nobody claimed, and waits only for parts already started. Workers spin briefly on a
 * generation counter after each job (a decode step calls many small matmuls back to back), then
 * sleep on a condition variable. Each part writes only its own output rows with the same code
 * whichever thread runs it, so results do not depend on the number of threads or on who ran what.
 * Calls from several threads at once are serialized. After fork() the child starts with an empty pool.
 */
#define _POSIX_C_SOURCE 200809L
#include "threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <unistd.h>

#define MOTE_MAX_WORKERS 255
#define MOTE_SPIN 4000

static pthread_mutex_t call_mu = PTHREAD_MUTEX_INITIALIZER;   /* one fork-join at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv_work = PTHREAD_COND_INITIALIZER, cv_done = PTHREAD_COND_INITIALIZER;
static int nworkers = 0, atfork_set = 0;
static atomic_uint gen;          /* bumped once per job */
/* (job generation << 32) | (parts << 16) | next part to claim: one atomic, so a claim can never
 * pair one job's generation with another job's part count */
static _Atomic uint64_t ticket;
static atomic_int done_parts;    /* parts of the current job finished */
static mote_task_fn job_fn;      /* written before the job's ticket is published */
static void *job_ctx;
static unsigned start_gen[MOTE_MAX_WORKERS + 1];   /* gen when worker i was created */

/* spin step s: pause, and every 64th step yield, in case the thread we wait for shares our CPU */
static inline void cpu_relax(int s) {
    if ((s & 63) == 63) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* claim and run parts of job g until none is left; returns whether this thread ran any part */
static int run_parts(unsigned g) {
    int ran = 0;
    uint64_t t = atomic_load(&ticket);
    for (;;) {
        const unsigned tg = (unsigned)(t >> 32), n = (unsigned)(t >> 16) & 0xFFFF, i = (unsigned)t & 0xFFFF;
        if (tg != g || i >= n) return ran;
        if (!atomic_compare_exchange_weak(&ticket, &t, t + 1)) continue;   /* t reloaded */
        /* job g cannot finish (so fn / ctx cannot change) before this claimed part is done */
        job_fn(job_ctx, (int)i, (int)n);
        ran = 1;
        if (atomic_fetch_add(&done_parts, 1) + 1 == (int)n) {
            pthread_mutex_lock(&mu);
            pthread_cond_signal(&cv_done);
            pthread_mutex_unlock(&mu);
        }
        t = atomic_load(&ticket);
    }
}

static void *worker(void *arg) {
    int idx = (int)(intptr_t)arg;   /* 1 .. nworkers */
    unsigned seen = start_gen[idx];   /* not gen itself: the first job may already be posted */
    int used = 1;                     /* had a part in the last job: spin before sleeping */
    for (;;) {
        for (int s = 0; used && s < MOTE_SPIN && atomic_load(&gen) == seen; s++) cpu_relax(s);
        if (atomic_load(&gen) == seen) {
            pthread_mutex_lock(&mu);
            while (atomic_load(&gen) == seen) pthread_cond_wait(&cv_work, &mu);
            pthread_mutex_unlock(&mu);
        }
        seen = atomic_load(&gen);
        used = run_parts(seen);
    }
    return NULL;
}

static void reset_after_fork(void) {   /* the child has no workers; locks are re-initialized */
    nworkers = 0;
    pthread_mutex_init(&call_mu, NULL);
    pthread_mutex_init(&mu, NULL);
    pthread_cond_init(&cv_work, NULL);
    pthread_cond_init(&cv_done, NULL);
}

int mote_parallel(int n, mote_task_fn fn, void *ctx) {
    if (n <= 1) {
        fn(ctx, 0, 1);
        return 0;
    }
    static long cpus = 0;   /* more threads than CPUs only adds waiting (sysconf reads /sys: once) */
    if (cpus == 0) cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (cpus >= 1 && n > cpus) n = (int)cpus;
    if (n > MOTE_MAX_WORKERS + 1) n = MOTE_MAX_WORKERS + 1;
    if (n <= 1) {
        fn(ctx, 0, 1);
        return 0;
    }
    pthread_mutex_lock(&call_mu);
    if (!atfork_set) atfork_set = pthread_atfork(NULL, NULL, reset_after_fork) == 0;
    while (nworkers < n - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        start_gen[nworkers + 1] = atomic_load(&gen);
        int ok = pthread_create(&t, &attr, worker, (void *)(intptr_t)(nworkers + 1)) == 0;
        pthread_attr_destroy(&attr);
        if (!ok) break;
        nworkers++;
    }
    const int rc = nworkers < n - 1 ? -1 : 0;   /* fewer workers: the caller claims their parts */
    job_fn = fn;
    job_ctx = ctx;
    atomic_store(&done_parts, 0);
    const unsigned g = atomic_load(&gen) + 1;
    atomic_store(&ticket, ((uint64_t)g << 32) | ((uint64_t)n << 16));
    pthread_mutex_lock(&mu);
    atomic_store(&gen, g);
    pthread_cond_broadcast(&cv_work);
    pthread_mutex_unlock(&mu);
    run_parts(g);
    for (int s = 0; s < MOTE_SPIN && atomic_load(&done_parts) < n; s++) cpu_relax(s);
    pthread_mutex_lock(&mu);
    while (atomic_load(&done_parts) < n) pthread_cond_wait(&cv_done, &mu);
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&call_mu);
    return rc;
}

void mote_split_rows(int N, int i, int n, int align, int *n0, int *n1) {
    int64_t units = (N + align - 1) / align;
    int64_t u0 = units * i / n, u1 = units * (i + 1) / n;
    int64_t a = u0 * align, b = u1 * align;
    *n0 = (int)(a < N ? a : N);
    *n1 = (int)(b < N ? b : N);
}
