/* Fork-join over a persistent pthread pool (created on first use, grown on demand).
 *
 * mote_parallel(n, fn, ctx) runs fn(ctx, i, n) for i = 0 .. n-1: i = 0 on the calling thread,
 * the rest on pool workers. Workers spin briefly on a generation counter after each job (a decode
 * step calls many small matmuls back to back), then sleep on a condition variable. Each part
 * writes only its own output rows, so results do not depend on the number of threads. Calls from
 * several threads at once are serialized. After fork() the child starts with an empty pool.
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
static atomic_int pending;       /* workers still busy with the current job */
static mote_task_fn job_fn;
static void *job_ctx;
static int job_n;
static unsigned start_gen[MOTE_MAX_WORKERS + 1];   /* gen when worker i was created */

/* spin step s: pause, and every 64th step yield, in case the thread we wait for shares our CPU */
static inline void cpu_relax(int s) {
    if ((s & 63) == 63) {
        sched_yield();
        return;
    }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
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
        used = idx < job_n;
        if (!used) continue;
        job_fn(job_ctx, idx, job_n);
        if (atomic_fetch_sub(&pending, 1) == 1) {
            pthread_mutex_lock(&mu);
            pthread_cond_signal(&cv_done);
            pthread_mutex_unlock(&mu);
        }
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
    int rc = 0, helpers = nworkers < n - 1 ? nworkers : n - 1;
    if (helpers > 0) {
        job_fn = fn;
        job_ctx = ctx;
        job_n = n;
        atomic_store(&pending, helpers);
        pthread_mutex_lock(&mu);
        atomic_fetch_add(&gen, 1);
        pthread_cond_broadcast(&cv_work);
        pthread_mutex_unlock(&mu);
    }
    fn(ctx, 0, n);
    for (int i = helpers + 1; i < n; i++) {   /* parts no worker could be started for */
        fn(ctx, i, n);
        rc = -1;
    }
    if (helpers > 0) {
        for (int s = 0; s < MOTE_SPIN && atomic_load(&pending) > 0; s++) cpu_relax(s);
        pthread_mutex_lock(&mu);
        while (atomic_load(&pending) > 0) pthread_cond_wait(&cv_done, &mu);
        pthread_mutex_unlock(&mu);
    }
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
