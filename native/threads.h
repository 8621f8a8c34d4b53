/* Fork-join over output rows: fn(ctx, i, n) runs once for every i in [0, n) on n threads. */
#ifndef MOTE_THREADS_H
#define MOTE_THREADS_H

typedef void (*mote_task_fn)(void *ctx, int i, int n);

/* Runs fn for i = 0 .. n-1, i = 0 on the calling thread; returns 0, or -1 if a thread failed to start
 * (the work is then still done, on the calling thread). */
int mote_parallel(int n, mote_task_fn fn, void *ctx);

/* rows [*n0, *n1) of part i of n for N rows, split on multiples of `align` rows */
void mote_split_rows(int N, int i, int n, int align, int *n0, int *n1);

#endif
