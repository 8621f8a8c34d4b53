/* Fork-join with pthreads. Each part writes only its own output rows, so results do not depend on
 * the number of threads. */
#define _POSIX_C_SOURCE 200809L
#include "threads.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define MOTE_MAX_THREADS 256

typedef struct {
    mote_task_fn fn;
    void *ctx;
    int i, n;
} task;

static void *run_task(void *arg) {
    task *t = (task *)arg;
    t->fn(t->ctx, t->i, t->n);
    return NULL;
}

int mote_parallel(int n, mote_task_fn fn, void *ctx) {
    if (n <= 1) {
        fn(ctx, 0, 1);
        return 0;
    }
    if (n > MOTE_MAX_THREADS) n = MOTE_MAX_THREADS;
    task tasks[MOTE_MAX_THREADS];
    pthread_t tid[MOTE_MAX_THREADS];
    int started[MOTE_MAX_THREADS] = {0};
    int rc = 0;
    for (int i = 1; i < n; i++) {
        tasks[i] = (task){fn, ctx, i, n};
        started[i] = pthread_create(&tid[i], NULL, run_task, &tasks[i]) == 0;
    }
    fn(ctx, 0, n);
    for (int i = 1; i < n; i++) {
        if (started[i]) {
            pthread_join(tid[i], NULL);
        } else {            /* could not start: do that part here */
            fn(ctx, i, n);
            rc = -1;
        }
    }
    return rc;
}

void mote_split_rows(int N, int i, int n, int align, int *n0, int *n1) {
    int64_t units = (N + align - 1) / align;
    int64_t u0 = units * i / n, u1 = units * (i + 1) / n;
    int64_t a = u0 * align, b = u1 * align;
    *n0 = (int)(a < N ? a : N);
    *n1 = (int)(b < N ? b : N);
}
