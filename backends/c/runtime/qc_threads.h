/* qc_threads.h -- the worker pool of qc's C backend for Cortex-A (qc compile --threads N).
 *
 * Copied into the output and compiled only when the model was generated with --threads (the
 * Makefile then passes -DQC_THREADS=1 -pthread); Cortex-M builds never see it. C99 + POSIX
 * threads; no malloc: the pool's state is static, sized by QC_MAX_THREADS.
 *
 * qc_threads_init(n) starts n - 1 workers (the caller is thread 0). qc_parallel_for runs
 * fn(ctx, task, ntasks) for task = 0 .. ntasks-1: the calling thread runs task 0 (and every
 * n-th after it), worker w runs tasks w, w + n, ...; it returns when all have finished. The
 * assignment is static, so which thread computes what depends only on (ntasks, n); the generated
 * code splits at granule boundaries (qc_split_range), so the results do not depend on either.
 */
#ifndef QC_THREADS_H
#define QC_THREADS_H

#ifndef QC_MAX_THREADS
#define QC_MAX_THREADS 16
#endif

/* Iterations a waiting thread polls before it sleeps on the condition variable (0: never poll;
   deterministic instruction totals under qemu's counter). */
#ifndef QC_THREADS_SPIN
#define QC_THREADS_SPIN 2000
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*qc_task_fn)(void *ctx, int task, int ntasks);

/* Start the pool with n threads (clamped to 1 .. QC_MAX_THREADS; a running pool of another
   size is stopped first). Returns the number of threads running (fewer if pthread_create
   failed). Not thread-safe: call it from the thread that runs the model. */
int qc_threads_init(int n);
/* Threads of the running pool (1 when none is running). */
int qc_threads_count(void);
/* The QC_THREADS environment variable if it holds a number >= 1, else fallback. */
int qc_threads_env(int fallback);
/* Run fn(ctx, t, ntasks) for t in 0 .. ntasks-1 on the pool; returns when all are done. */
void qc_parallel_for(int ntasks, qc_task_fn fn, void *ctx);
/* Stop and join the workers (qc_threads_count() is 1 afterwards). */
void qc_threads_shutdown(void);

/* min(max_tasks, qc_threads_count()): how many tasks a split call dispatches. */
int qc_threads_tasks(int max_tasks);
/* Task `task` of `ntasks` gets units [*lo, *hi) of 0 .. extent-1, cut at multiples of granule:
   ceil(extent / granule) granules dealt out in contiguous runs (never empty when
   ntasks <= the number of granules). */
void qc_split_range(int extent, int granule, int task, int ntasks, int *lo, int *hi);

#ifdef __cplusplus
}
#endif

#endif /* QC_THREADS_H */
