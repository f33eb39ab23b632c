/* qc_threads.c -- the worker pool of qc's C backend (see qc_threads.h). POSIX threads, one
 * mutex and two condition variables; a bounded poll before sleeping. No malloc. */
#if !defined(QC_THREADS)
#error "qc_threads.c is for builds with -DQC_THREADS=1 -pthread (qc compile --threads; the Makefile passes both)"
#endif
#define _POSIX_C_SOURCE 200112L
#include "qc_threads.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#if defined(__GNUC__)
#define QC_LOAD(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define QC_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define QC_POLL QC_THREADS_SPIN
#else /* no atomics in C99: writes stay under the mutex, nobody polls */
#define QC_LOAD(p) (*(p))
#define QC_STORE(p, v) (*(p) = (v))
#define QC_POLL 0
#endif

#if defined(__aarch64__) && defined(__GNUC__)
#define QC_PAUSE() __asm__ __volatile__("yield" ::: "memory")
#else
#define QC_PAUSE() ((void)0)
#endif

static pthread_mutex_t qc_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t qc_start = PTHREAD_COND_INITIALIZER; /* a new dispatch (or stop) */
static pthread_cond_t qc_done = PTHREAD_COND_INITIALIZER;  /* the last worker finished */
static pthread_t qc_workers[QC_MAX_THREADS > 1 ? QC_MAX_THREADS - 1 : 1];
static int qc_nthreads = 1;  /* caller included */
static unsigned qc_gen;      /* bumped by every dispatch and by shutdown (written under qc_lock) */
static unsigned qc_gen0;     /* qc_gen when the workers were created */
static int qc_stop;
static int qc_pending;       /* workers with tasks that have not finished this dispatch */
static qc_task_fn qc_fn;
static void *qc_ctx;
static int qc_ntasks;

static void *qc_worker(void *arg)
{
    const int id = (int)(intptr_t)arg;
    unsigned seen = qc_gen0;
    for (;;) {
        qc_task_fn fn;
        void *ctx;
        int ntasks, n, t, i;
        for (i = 0; i < QC_POLL && QC_LOAD(&qc_gen) == seen; ++i) QC_PAUSE();
        pthread_mutex_lock(&qc_lock);
        while (qc_gen == seen) pthread_cond_wait(&qc_start, &qc_lock);
        seen = qc_gen;
        if (qc_stop) {
            pthread_mutex_unlock(&qc_lock);
            return NULL;
        }
        fn = qc_fn;
        ctx = qc_ctx;
        ntasks = qc_ntasks;
        n = qc_nthreads;
        pthread_mutex_unlock(&qc_lock);
        if (id >= ntasks) continue;
        for (t = id; t < ntasks; t += n) fn(ctx, t, ntasks);
        pthread_mutex_lock(&qc_lock);
        QC_STORE(&qc_pending, qc_pending - 1);
        if (qc_pending == 0) pthread_cond_signal(&qc_done);
        pthread_mutex_unlock(&qc_lock);
    }
}

void qc_threads_shutdown(void)
{
    int w;
    if (qc_nthreads <= 1) return;
    pthread_mutex_lock(&qc_lock);
    qc_stop = 1;
    QC_STORE(&qc_gen, qc_gen + 1u);
    pthread_cond_broadcast(&qc_start);
    pthread_mutex_unlock(&qc_lock);
    for (w = 0; w < qc_nthreads - 1; ++w) pthread_join(qc_workers[w], NULL);
    qc_stop = 0;
    qc_nthreads = 1;
}

int qc_threads_init(int n)
{
    int w;
    if (n < 1) n = 1;
    if (n > QC_MAX_THREADS) n = QC_MAX_THREADS;
    if (n == qc_nthreads) return n;
    qc_threads_shutdown();
    qc_gen0 = qc_gen;
    for (w = 0; w < n - 1; ++w) {
        if (pthread_create(&qc_workers[w], NULL, qc_worker, (void *)(intptr_t)(w + 1)) != 0) break;
    }
    qc_nthreads = 1 + w;
    return qc_nthreads;
}

int qc_threads_count(void)
{
    return qc_nthreads;
}

int qc_threads_env(int fallback)
{
    const char *s = getenv("QC_THREADS");
    char *end;
    long v;
    if (s == NULL || *s == 0) return fallback;
    v = strtol(s, &end, 10);
    return (*end == 0 && v >= 1) ? (v > QC_MAX_THREADS ? QC_MAX_THREADS : (int)v) : fallback;
}

int qc_threads_tasks(int max_tasks)
{
    return max_tasks < qc_nthreads ? max_tasks : qc_nthreads;
}

void qc_split_range(int extent, int granule, int task, int ntasks, int *lo, int *hi)
{
    const long long g = ((long long)extent + granule - 1) / granule;
    const long long a = g * task / ntasks * granule, b = g * (task + 1) / ntasks * granule;
    *lo = (int)a;
    *hi = (int)(b < extent ? b : extent);
}

void qc_parallel_for(int ntasks, qc_task_fn fn, void *ctx)
{
    const int n = qc_nthreads;
    int t, i;
    if (ntasks <= 0) return;
    if (n <= 1 || ntasks == 1) {
        for (t = 0; t < ntasks; ++t) fn(ctx, t, ntasks);
        return;
    }
    pthread_mutex_lock(&qc_lock);
    qc_fn = fn;
    qc_ctx = ctx;
    qc_ntasks = ntasks;
    QC_STORE(&qc_pending, (ntasks < n ? ntasks : n) - 1);
    QC_STORE(&qc_gen, qc_gen + 1u);
    pthread_cond_broadcast(&qc_start);
    pthread_mutex_unlock(&qc_lock);
    for (t = 0; t < ntasks; t += n) fn(ctx, t, ntasks);
    for (i = 0; i < QC_POLL && QC_LOAD(&qc_pending) != 0; ++i) QC_PAUSE();
    pthread_mutex_lock(&qc_lock);
    while (qc_pending != 0) pthread_cond_wait(&qc_done, &qc_lock);
    pthread_mutex_unlock(&qc_lock);
}
